"""The global-local ensemble, its grid search, and evaluate_ames against plain search + rerank()."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asymfuse.cloud.ames.ensemble import GAMMAS, LAMS, combine, ensemble_scores, rerank_rows
from asymfuse.cloud.ames.evaluate import evaluate_ames, select_ensemble
from asymfuse.cloud.ames.options import RerankOptions
from asymfuse.cloud.ames.model import create_ames
from asymfuse.cloud.ames.rerank import rerank
from asymfuse.cloud.ames.scorer import AMESScorer
from asymfuse.cloud.ames.sources import ArrayLocals
from asymfuse.cloud.data.records import RetrievalDataset
from asymfuse.cloud.eval.evaluate import evaluate_ranking, rank_features
from asymfuse.edge.errors import ConfigError, ShapeError

D_IN = 8


def dataset(gnd: list[dict[str, list[int]]], nb: int) -> RetrievalDataset:
    nq = len(gnd)
    return RetrievalDataset(name="toy", root="/nonexistent", protocol="revisitop",
                            gallery_paths=[f"g{i}.jpg" for i in range(nb)], gallery_ids=[f"g{i}" for i in range(nb)],
                            query_paths=[f"q{i}.jpg" for i in range(nq)], query_ids=[f"q{i}" for i in range(nq)],
                            gnd=gnd)


def random_gnd(rng: np.random.Generator, nq: int, nb: int) -> list[dict[str, list[int]]]:
    out = []
    for _ in range(nq):
        perm = rng.permutation(nb)
        out.append({"easy": perm[:3].tolist(), "hard": perm[3:6].tolist(), "junk": perm[6:8].tolist()})
    return out


# ------------------------------------------------------------------------------- combine


def test_combine_matches_numpy():
    rng = np.random.default_rng(0)
    g, z = rng.random((4, 7)), rng.normal(0, 5, (4, 7))
    z[0, 0], z[0, 1] = 800.0, -800.0  # no overflow in the sigmoid
    for lam, gamma in ((0.0, 1.0), (0.3, 0.25), (1.0, 8.0), (0.7, 2.0)):
        with np.errstate(over="ignore"):
            want = lam * g + (1 - lam) / (1 + np.exp(-gamma * z))
        np.testing.assert_allclose(combine(g, z, lam=lam, gamma=gamma), want, rtol=1e-12, atol=1e-15)


def test_ensemble_scores_let_the_global_score_stand_for_nan_logits():
    g, z = np.array([0.2, 0.9, 0.5]), np.array([1.0, np.nan, -1.0])
    s = ensemble_scores(g, z, lam=0.4, gamma=2.0)
    np.testing.assert_allclose(s, [0.08 + 0.6 / (1 + np.exp(-2.0)), 0.9, 0.2 + 0.6 / (1 + np.exp(2.0))])
    rows = rerank_rows(np.array([[7, 8, 9]]), g[None], z[None], lam=0.4, gamma=2.0)
    np.testing.assert_array_equal(rows, [[8, 7, 9]])


def test_weights_and_shapes_are_checked():
    with pytest.raises(ConfigError, match="lam"):
        combine(np.ones(2), np.ones(2), lam=-0.1, gamma=1.0)
    with pytest.raises(ConfigError, match="gamma"):
        combine(np.ones(2), np.ones(2), lam=0.5, gamma=0.0)
    with pytest.raises(ShapeError, match="same shape"):
        combine(np.ones(2), np.ones(3), lam=0.5, gamma=1.0)


# ------------------------------------------------------------------------------- grid search


def test_select_ensemble_finds_the_planted_best():
    # Gallery A=0 (the only positive), B=1, C=2. Global: B 0.9 > A 0.5 > C 0.0; logits A 1, B -1, C 2.
    # lam=1: B first. lam=0: C first. lam=.5, gamma=.5: B .639 > A .561. lam=.5, gamma=8: A .750 first.
    ds = dataset([{"easy": [0], "hard": [], "junk": []}], nb=3)
    topm, gs, logits = np.array([[1, 0, 2]]), np.array([[0.9, 0.5, 0.0]]), np.array([[-1.0, 1.0, 2.0]])
    lam, gamma, grid = select_ensemble(dataset=ds, global_scores=gs, topm=topm, logits=logits,
                                       lams=(0.0, 0.5, 1.0), gammas=(0.5, 8.0))
    assert (lam, gamma) == (0.5, 8.0)
    assert len(grid) == 6
    assert [row["mAP_medium"] for row in grid] == pytest.approx([25.0, 25.0, 25.0, 100.0, 25.0, 25.0])


def test_select_ensemble_min_gain_switches_the_reranker_off_below_the_margin():
    # The planted case above: the best pair (0.5, 8) scores 100 against 25 for lam = 1 (gain 75 points).
    ds = dataset([{"easy": [0], "hard": [], "junk": []}], nb=3)
    topm, gs, logits = np.array([[1, 0, 2]]), np.array([[0.9, 0.5, 0.0]]), np.array([[-1.0, 1.0, 2.0]])
    kw = dict(dataset=ds, global_scores=gs, topm=topm, logits=logits, lams=(0.0, 0.5, 1.0), gammas=(0.5, 8.0))
    assert select_ensemble(**kw, min_gain=74.9)[:2] == (0.5, 8.0)
    assert select_ensemble(**kw, min_gain=75.1)[:2] == (1.0, 0.5)  # not enough: the global score alone
    with pytest.raises(ConfigError, match="min_gain"):
        select_ensemble(**kw, min_gain=-1.0)


def test_select_ensemble_grid_matches_a_numpy_rerank():
    rng = np.random.default_rng(1)
    nq, nb, m = 4, 20, 8
    ds = dataset(random_gnd(rng, nq, nb), nb)
    sims = rng.random((nq, nb))
    full = np.argsort(-sims, axis=1, kind="stable")
    topm = full[:, :m]
    gs = np.take_along_axis(sims, topm, axis=1)
    logits = rng.normal(0, 2, (nq, m))
    lam, gamma, grid = select_ensemble(dataset=ds, global_scores=gs, topm=topm, logits=logits, full_ranks=full.T)
    assert len(grid) == len(LAMS) * len(GAMMAS)
    for row in grid:
        s = row["lam"] * gs + (1 - row["lam"]) / (1 + np.exp(-row["gamma"] * logits))
        head = np.stack([topm[i][np.argsort(-s[i], kind="stable")] for i in range(nq)])
        want = evaluate_ranking(np.concatenate([head, full[:, m:]], axis=1).T, ds)
        assert row["mAP_medium"] == pytest.approx(want["mAP_medium"]) and row["mAP_hard"] == pytest.approx(
            want["mAP_hard"])
    assert max(r["mAP_medium"] for r in grid) == next(r for r in grid if (r["lam"], r["gamma"]) == (lam, gamma))[
        "mAP_medium"]
    with pytest.raises(ConfigError, match="first m rows"):
        select_ensemble(dataset=ds, global_scores=gs, topm=topm[:, ::-1], logits=logits, full_ranks=full.T)
    with pytest.raises(ConfigError, match="choose one of"):
        select_ensemble(dataset=ds, global_scores=gs, topm=topm, logits=logits, metric="mAP@100")


# ------------------------------------------------------------------------------- evaluate_ames


@pytest.fixture(scope="module")
def toy_setup():
    rng = np.random.default_rng(2)
    nq, nb = 4, 24
    ds = dataset(random_gnd(rng, nq, nb), nb)
    xq = rng.standard_normal((nq, 16)).astype(np.float32)
    xb = rng.standard_normal((nb, 16)).astype(np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    q_mask = rng.random((nq, 6)) < 0.3
    q_mask[:, 0] = False
    q_mask[3] = True  # query 3 has no local descriptors
    queries = ArrayLocals(rng.standard_normal((nq, 6, D_IN)).astype(np.float32), q_mask)
    gallery = ArrayLocals(rng.standard_normal((nb, 7, D_IN)).astype(np.float32), rng.random((nb, 7)) < 0.3)
    model = create_ames(local_dim=D_IN, seed=3, layers=2).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 3.0)
    return ds, xq, xb, queries, gallery, AMESScorer(model)


def test_evaluate_ames_global_metrics_equal_a_plain_search(toy_setup):
    ds, xq, xb, queries, gallery, scorer = toy_setup
    options = RerankOptions(top_m=10, lam=0.3, gamma=2.0, lx=5)
    with pytest.warns(UserWarning, match="1 of 4 queries"):
        res = evaluate_ames(dataset=ds, xq=xq, xb=xb, query_locals=queries, gallery=gallery, scorer=scorer,
                            options=options)
    plain = rank_features(xq, xb)
    np.testing.assert_array_equal(res.ranks, plain)
    assert res.global_metrics == evaluate_ranking(plain, ds)
    assert res.topm.shape == res.logits.shape == res.global_scores.shape == (4, 10)
    assert np.isnan(res.logits[3]).all() and not np.isnan(res.logits[:3]).any()
    for i in range(3):
        desc, pad = queries.descriptors([i])
        # batched and single scoring differ in float32 summation order: logits reach ~40 here, so allow
        # 1e-4 absolute (a wrong candidate or mask would be off by whole units)
        np.testing.assert_allclose(res.logits[i], scorer.score(desc[0], pad[0], gallery, res.topm[i], lx=5),
                                   rtol=1e-5, atol=1e-4)
        one = rerank(desc[0], res.topm[i], res.global_scores[i], options=options, scorer=scorer, gallery=gallery,
                     q_pad=pad[0])
        np.testing.assert_array_equal(res.ames_ranks[:10, i], one.ids)
    np.testing.assert_array_equal(res.ames_ranks[:, 3], plain[:, 3])  # no locals: the global order stands
    np.testing.assert_array_equal(res.ames_ranks[10:], plain[10:])
    assert res.ames_metrics == evaluate_ranking(res.ames_ranks, ds)
    lam, gamma, grid = select_ensemble(dataset=ds, global_scores=res.global_scores, topm=res.topm,
                                       logits=res.logits, full_ranks=res.ranks)
    assert lam in LAMS and gamma in GAMMAS and len(grid) == len(LAMS) * len(GAMMAS)


def test_evaluate_ames_with_lam_one_is_the_global_search(toy_setup):
    ds, xq, xb, queries, gallery, scorer = toy_setup
    with pytest.warns(UserWarning):
        res = evaluate_ames(dataset=ds, xq=xq, xb=xb, query_locals=queries, gallery=gallery, scorer=scorer,
                            options=RerankOptions(top_m=100, lam=1.0, gamma=1.0))
    assert res.options.top_m == 24
    assert res.ames_metrics == res.global_metrics
    with pytest.raises(ShapeError, match="do not match"):
        evaluate_ames(dataset=ds, xq=xq[:2], xb=xb, query_locals=queries, gallery=gallery, scorer=scorer,
                      options=RerankOptions())
    with pytest.raises(ConfigError, match="top_m must be >= 1"):
        evaluate_ames(dataset=ds, xq=xq, xb=xb, query_locals=queries, gallery=gallery, scorer=scorer,
                      options=RerankOptions(top_m=0))
