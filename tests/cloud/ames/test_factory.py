"""Scorer kinds by name: the batched path against AMESScorer (logits and the fp32 ranking), the
resident gallery against its source, the GPU settings (one call, bf16 autocast) run on CPU, misuse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asymfuse.cloud.ames.batched import prepare_ames
from asymfuse.cloud.ames.batched_scorer import BatchedScorer
from asymfuse.cloud.ames.factory import EXACT_KINDS, SCORER_KINDS, PairScorer, create_scorer, order_violations
from asymfuse.cloud.ames.model import create_ames
from asymfuse.cloud.ames.options import RerankOptions
from asymfuse.cloud.ames.packed_build import build_packed_store
from asymfuse.cloud.ames.rerank import rerank
from asymfuse.cloud.ames.resident import ResidentGallery
from asymfuse.cloud.ames.scorer import AMESScorer
from asymfuse.cloud.ames.sources import ArrayLocals, GalleryLocals
from asymfuse.cloud.features.base import LocalFeatures
from asymfuse.cloud.features.store import create_store_from_arrays
from asymfuse.edge.errors import ConfigError, UnknownNameError
from tests.cloud.ames.test_scorer import D_IN, N, gallery_arrays, query_arrays, spread

# realistic serving inputs: SIFT-like 128-d descriptors, the published architecture, binary gallery
LOCAL_DIM, LQ, LX, TOP_M, NB = 128, 32, 32, 100, 160


@pytest.fixture(scope="module")
def serving():
    """A spread binary AMES (published config), a packed gallery of NB images with 1..LX
    descriptors each (unit-norm, clustered around a few shared directions as real local features
    are), one query; returns (model, packed store, query, candidates)."""
    import tempfile

    model = spread(create_ames(local_dim=LOCAL_DIM, binary=True, seed=3), std=0.05, seed=3)
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((24, LOCAL_DIM)).astype(np.float32)
    pick = rng.integers(0, 24, size=(NB, LX))
    desc = centres[pick] + 0.7 * rng.standard_normal((NB, LX, LOCAL_DIM)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=-1, keepdims=True)
    counts = rng.integers(LX // 2, LX + 1, size=NB)
    pad = np.arange(LX)[None, :] >= counts[:, None]
    feats = LocalFeatures(descriptors=desc, weights=np.ones((NB, LX), np.float32), mask=pad,
                          xy=np.zeros((NB, LX, 2), np.float32), scale=np.ones((NB, LX), np.float32))
    tmp = tempfile.TemporaryDirectory()
    store = create_store_from_arrays(f"{tmp.name}/locals", ids=[f"g{i}" for i in range(NB)], features=feats)
    packed = build_packed_store(model, store, f"{tmp.name}/packed", max_local=LX)
    q = centres[rng.integers(0, 24, size=LQ)] + 0.7 * rng.standard_normal((LQ, LOCAL_DIM)).astype(np.float32)
    cand = rng.permutation(NB)[:TOP_M]
    yield model, packed, q, cand
    packed.close()
    store.close()
    tmp.cleanup()


def test_order_violations_counts_inverted_pairs():
    ref = np.array([3.0, 2.0, 2.0005, 1.0])
    assert order_violations(ref, ref) == 0
    assert order_violations(ref, ref[[0, 2, 1, 3]]) == 0  # within the tie
    assert order_violations(ref, np.array([1.0, 2.0, 2.0, 3.0])) == 5  # (0,1) (0,2) (0,3) (1,3) (2,3) inverted
    assert order_violations(ref, ref, tie=0.0) == 0


@pytest.mark.parametrize("kind", EXACT_KINDS)
def test_exact_kinds_keep_the_fp32_top_m_order(serving, kind):
    model, packed, q, cand = serving
    ref = AMESScorer(model).score(q, None, packed, cand)
    assert ref.std() > 0.05  # logits that really vary: the test can fail
    for gallery in (packed, ResidentGallery(packed, model)):
        out = create_scorer(model, kind=kind, device="cpu").score(q, None, gallery, cand)
        assert order_violations(ref, out) == 0
        np.testing.assert_allclose(out, ref, atol=2e-4, rtol=0)
    opts = RerankOptions(top_m=TOP_M, lam=0.5, gamma=0.5)
    g = np.linspace(0.9, 0.5, TOP_M)
    want = rerank(q, cand, g, options=opts, scorer=AMESScorer(model), gallery=packed)
    got = rerank(q, cand, g, options=opts, scorer=create_scorer(model, kind=kind), gallery=packed)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-4, rtol=0)
    by_id = dict(zip(want.ids.tolist(), want.scores.tolist(), strict=True))
    fp32_scores = np.array([by_id[i] for i in got.ids[:TOP_M]])
    # got's order as "scores" (earlier = higher): ties at 1e-3 may swap, nothing else may
    assert order_violations(fp32_scores, -np.arange(TOP_M, dtype=float)) == 0


@pytest.mark.parametrize("kind", sorted(set(SCORER_KINDS) - set(EXACT_KINDS)))
def test_approximate_kinds_stay_close(serving, kind):
    """bf16 and int8 are not promised the exact order; they must still track fp32 closely."""
    model, packed, q, cand = serving
    ref = AMESScorer(model).score(q, None, packed, cand)
    out = create_scorer(model, kind=kind, device="cpu").score(q, None, packed, cand[:40])
    assert np.corrcoef(out, ref[:40])[0, 1] > 0.95
    assert order_violations(ref[:40], out) <= 0.1 * 40 * 39 / 2


@pytest.mark.parametrize("variant", ["fp", "binary"])
def test_batched_scorer_equals_ames_scorer_with_padding_and_budgets(variant):
    model = spread(create_ames(local_dim=D_IN, binary=variant == "binary", seed=4, layers=3), seed=4)
    desc, mask = gallery_arrays(seed=2)
    q, q_pad = query_arrays(seed=2, lq=12)
    gallery = ArrayLocals(desc, mask)
    idx = np.array([3, 0, 7, 1, 11, 5, 2, 9, 9])
    for lq, lx in ((None, None), (4, 5)):
        want = AMESScorer(model, bucket=4).score(q, q_pad, gallery, idx, lq=lq, lx=lx)
        for max_pairs in (None, 1, 4):
            got = BatchedScorer(model, max_pairs=max_pairs).score(q, q_pad, gallery, idx, lq=lq, lx=lx)
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_score_many_and_gpu_settings_run_on_cpu():
    """The GPU setting (one call per query, bf16 autocast) is device-agnostic: run it here."""
    model = spread(create_ames(local_dim=D_IN, binary=True, seed=5, layers=2), seed=5)
    desc, mask = gallery_arrays(seed=5)
    gallery = ResidentGallery(ArrayLocals(desc, mask), model, device="cpu")
    queries = [query_arrays(seed=s, lq=lq) for s, lq in ((0, 9), (1, 3))]
    cands = [np.arange(N), np.array([4, 4, 0])]
    want = AMESScorer(model).score_many(queries, gallery, cands)
    got = BatchedScorer(model, max_pairs=None).score_many(queries, gallery, cands)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=0)
    bf16 = create_scorer(model, kind="bf16", device="cpu", max_pairs=None).score_many(queries, gallery, cands)
    for g, w in zip(bf16, want, strict=True):
        assert g.dtype == np.float32 and np.abs(g - w).max() < 0.1 * (np.abs(w).max() + 1)
    assert BatchedScorer(model).score(*queries[0], gallery, np.zeros(0, np.int64)).shape == (0,)


def test_resident_gallery_matches_its_source(serving):
    model, packed, _, cand = serving
    res = ResidentGallery(packed, model, length=LX // 2)
    assert isinstance(res, GalleryLocals) and len(res) == NB and res.nbytes == NB * (LX // 2) * 128 * 4
    np.testing.assert_array_equal(res.counts(cand), np.minimum(packed.counts(cand), LX // 2))
    tok, pad = res.tokens(model, cand[:5], length=LX)
    src, src_pad = packed.tokens(model, cand[:5], length=LX // 2)
    assert tok.shape == (5, LX, 128) and pad[:, LX // 2:].all()
    torch.testing.assert_close(tok[:, :LX // 2][~src_pad], src[~src_pad])
    assert (tok[pad] == 0).all()
    with pytest.raises(ConfigError, match="another AMES model"):
        res.tokens(create_ames(local_dim=LOCAL_DIM, binary=True, seed=9), cand[:2], length=4)
    with pytest.raises(ConfigError, match="out of range"):
        res.counts([NB])
    with pytest.raises(ConfigError, match="model is on cpu|CUDA is not available"):
        ResidentGallery(packed, model, device="cuda")


def test_create_scorer_misuse(serving):
    model = serving[0]
    assert isinstance(create_scorer(model), AMESScorer)
    assert all(isinstance(create_scorer(model, kind=k), PairScorer) for k in ("fp32", "batched"))
    with pytest.raises(UnknownNameError, match="batched"):
        create_scorer(model, kind="fp64")
    with pytest.raises(ConfigError, match="does not take"):
        create_scorer(model, kind="fp32", max_pairs=3)
    with pytest.raises(ConfigError, match="AMES model"):
        create_scorer(torch.nn.Linear(2, 2), kind="batched")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_pairs"):
        create_scorer(model, kind="batched", max_pairs=0)
    with pytest.raises(ConfigError, match="CPU only"):
        prepare_ames(model, weights="int8", device="cuda")
    with pytest.raises(ConfigError, match="unknown"):
        prepare_ames(model, weights="fp8")
