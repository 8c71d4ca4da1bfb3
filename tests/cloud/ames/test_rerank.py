"""rerank(): the top-m re-sorted by the ensemble score, the tail in global order, empty local sets,
bad input."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from asymfuse.cloud.ames.ensemble import combine
from asymfuse.cloud.ames.model import create_ames
from asymfuse.cloud.ames.options import RerankOptions
from asymfuse.cloud.ames.rerank import rerank
from asymfuse.cloud.ames.scorer import AMESScorer
from asymfuse.cloud.ames.sources import ArrayLocals
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError

D_IN = 8


class FixedScorer:
    """A stand-in for AMESScorer: logit of gallery item ``i`` is ``table[i]``; records calls."""

    def __init__(self, table: dict[int, float]) -> None:
        self.table = table
        self.model = SimpleNamespace(cfg=SimpleNamespace(local_dim=D_IN))
        self.calls: list[np.ndarray] = []

    def score(self, q, q_pad, gallery, indices, *, lq=None, lx=None) -> np.ndarray:
        self.calls.append(np.asarray(indices))
        return np.array([self.table[int(i)] for i in indices], dtype=np.float32)


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + np.exp(-z))


def full_gallery(n: int = 15) -> ArrayLocals:
    return ArrayLocals(np.ones((n, 3, D_IN), np.float32))


def test_hand_computed_case():
    scorer = FixedScorer({10: -4.0, 12: 0.0, 13: 4.0})
    q = np.ones((2, D_IN), np.float32)
    res = rerank(q, [10, 11, 12, 13, 14], [0.9, 0.5, 0.8, 0.7, 0.1], options=RerankOptions(top_m=3, lam=0.5, gamma=1.0),
                 scorer=scorer, gallery=full_gallery())  # type: ignore[arg-type]
    # global order 10 (0.9), 12 (0.8), 13 (0.7) | 11 (0.5), 14 (0.1); the head is re-scored:
    s10, s12, s13 = 0.45 + 0.5 * sigmoid(-4.0), 0.4 + 0.5 * 0.5, 0.35 + 0.5 * sigmoid(4.0)
    np.testing.assert_array_equal(res.ids, [13, 12, 10, 11, 14])
    np.testing.assert_allclose(res.scores, [s13, s12, s10, 0.5, 0.1], rtol=1e-12)
    np.testing.assert_allclose(res.logits, [4.0, 0.0, -4.0])
    assert res.num_reranked == 3
    np.testing.assert_array_equal(scorer.calls[0], [10, 12, 13])  # only the global top-3 were scored


def test_top_m_zero_or_larger_than_the_list():
    scorer = FixedScorer({0: 3.0, 1: -3.0, 2: 0.0})
    q = np.ones((2, D_IN), np.float32)
    kw = dict(scorer=scorer, gallery=full_gallery())
    res = rerank(q, [0, 1, 2], [0.1, 0.9, 0.5], options=RerankOptions(top_m=0, lam=0.0), **kw)  # type: ignore[arg-type]
    np.testing.assert_array_equal(res.ids, [1, 2, 0])
    assert res.num_reranked == 0 and not scorer.calls
    res = rerank(q, [0, 1, 2], [0.1, 0.9, 0.5], options=RerankOptions(top_m=50, lam=0.0), **kw)  # type: ignore[arg-type]
    np.testing.assert_array_equal(res.ids, [0, 2, 1])  # lam = 0: the AMES order alone


def test_real_scorer_matches_combine_of_its_logits():
    model = create_ames(local_dim=D_IN, seed=0, layers=2).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0, 3.0)
    rng = np.random.default_rng(0)
    gallery = ArrayLocals(rng.standard_normal((20, 6, D_IN)).astype(np.float32), rng.random((20, 6)) < 0.3)
    q = rng.standard_normal((5, D_IN)).astype(np.float32)
    cand = rng.permutation(20)[:12]
    g = rng.random(12)
    scorer = AMESScorer(model)
    res = rerank(q, cand, g, options=RerankOptions(top_m=8, lam=0.3, gamma=2.0), scorer=scorer, gallery=gallery)
    order = np.argsort(-g, kind="stable")
    head = cand[order[:8]]
    s = combine(g[order[:8]], scorer.score(q, None, gallery, head), lam=0.3, gamma=2.0)
    np.testing.assert_array_equal(res.ids[:8], head[np.argsort(-s, kind="stable")])
    np.testing.assert_array_equal(res.ids[8:], cand[order[8:]])
    np.testing.assert_allclose(res.scores[:8], np.sort(s)[::-1], rtol=1e-6)


def test_empty_query_keeps_the_global_order_with_a_warning():
    scorer = FixedScorer({})
    q = np.full((3, D_IN), np.nan, np.float32)  # every slot is padding: its values do not matter
    with pytest.warns(UserWarning, match="no local descriptors"):
        res = rerank(q, [4, 5, 6], [0.2, 0.7, 0.5], options=RerankOptions(top_m=3, lam=0.5, gamma=1.0),
                     scorer=scorer, gallery=full_gallery(), q_pad=np.ones(3, bool))  # type: ignore[arg-type]
    np.testing.assert_array_equal(res.ids, [5, 6, 4])
    np.testing.assert_allclose(res.scores, [0.7, 0.5, 0.2])
    assert res.num_reranked == 0 and not scorer.calls
    with pytest.warns(UserWarning, match="no local descriptors"):
        rerank(np.zeros((0, D_IN), np.float32), [4], [0.2], options=RerankOptions(top_m=3, lam=0.5, gamma=1.0),
               scorer=scorer, gallery=full_gallery())  # type: ignore[arg-type]


def test_candidate_without_local_descriptors_keeps_its_global_score():
    mask = np.zeros((15, 3), bool)
    mask[2] = True
    gallery = ArrayLocals(np.ones((15, 3, D_IN), np.float32), mask)
    scorer = FixedScorer({1: 5.0, 2: 5.0, 3: -5.0})
    with pytest.warns(UserWarning, match="1 of the top-3"):
        res = rerank(np.ones((2, D_IN), np.float32), [1, 2, 3], [0.3, 0.9, 0.6],
                     options=RerankOptions(top_m=3, lam=0.5, gamma=1.0), scorer=scorer, gallery=gallery)  # type: ignore[arg-type]
    s = {1: 0.15 + 0.5 * sigmoid(5.0), 2: 0.9, 3: 0.3 + 0.5 * sigmoid(-5.0)}
    np.testing.assert_array_equal(res.ids, [2, 1, 3])
    np.testing.assert_allclose(res.scores, [s[2], s[1], s[3]])
    assert np.isnan(res.logits[0]) and res.logits[1] == 5.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warn=False (the searcher's per-request path): the same result, silently
        quiet = rerank(np.ones((2, D_IN), np.float32), [1, 2, 3], [0.3, 0.9, 0.6],
                       options=RerankOptions(top_m=3, lam=0.5, gamma=1.0), scorer=scorer, gallery=gallery,
                       warn=False)  # type: ignore[arg-type]
        empty_query = rerank(np.ones((2, D_IN), np.float32), [1, 2, 3], [0.3, 0.9, 0.6], q_pad=np.ones(2, bool),
                             options=RerankOptions(top_m=3, lam=0.5, gamma=1.0), scorer=scorer, gallery=gallery,
                             warn=False)  # type: ignore[arg-type]
    np.testing.assert_array_equal(quiet.ids, res.ids)
    np.testing.assert_array_equal(quiet.scores, res.scores)
    assert empty_query.num_reranked == 0 and empty_query.ids.tolist() == [2, 3, 1]


def test_bad_input():
    model = create_ames(local_dim=D_IN, seed=0, layers=1).eval()
    scorer = AMESScorer(model)
    gallery = full_gallery()
    q = np.ones((3, D_IN), np.float32)
    kw = dict(options=RerankOptions(top_m=2, lam=0.5, gamma=1.0), scorer=scorer, gallery=gallery)
    with pytest.raises(ShapeError, match="local feature the checkpoint was trained on"):
        rerank(np.ones((3, D_IN + 4), np.float32), [0, 1], [0.5, 0.4], **kw)
    bad = q.copy()
    bad[1, 2] = np.nan
    with pytest.raises(CorruptDataError, match="NaN"):
        rerank(bad, [0, 1], [0.5, 0.4], **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NaN in a padding slot is fine: no warning, no error
        rerank(bad, [0, 1], [0.5, 0.4], q_pad=np.array([False, True, False]), **kw)
    with pytest.raises(ShapeError, match="NaN"):
        rerank(q, [0, 1], [0.5, np.nan], **kw)
    with pytest.raises(ShapeError, match="one per candidate"):
        rerank(q, [0, 1], [0.5], **kw)
    with pytest.raises(ConfigError, match="out of range"):
        rerank(q, [0, 99], [0.5, 0.4], **kw)
    with pytest.raises(ConfigError, match="lam"):
        RerankOptions(lam=1.5)
    with pytest.raises(ConfigError, match="top_m"):
        RerankOptions(top_m=-1)
    with pytest.raises(ConfigError, match="lx"):
        RerankOptions(lx=0)
    with pytest.raises(ConfigError, match="RerankOptions"):
        rerank(q, [0, 1], [0.5, 0.4], **{**kw, "options": {"top_m": 2}})
