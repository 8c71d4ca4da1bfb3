"""Retrieval metrics: hand-computed cases (arithmetic in the comments) and a slow reference."""

from __future__ import annotations

import numpy as np
import pytest
from asymfuse.cloud.eval.metrics import (
    compute_ap,
    compute_map,
    evaluate_revisitop,
    gldv2_map_at_k,
    holidays_map,
    revisitop_gnd,
    ukbench_ns,
)
from asymfuse.edge.errors import ConfigError, ShapeError


def _cols(*rankings: list[int]) -> np.ndarray:
    """Build an (nb, nq) revisitop rank matrix from per-query rankings."""
    return np.array(rankings, dtype=np.int64).T


# ---- compute_ap ----------------------------------------------------------------------------

def test_ap_perfect_ranking_is_one():
    # positives at ranks 0, 1 of 2 positives:
    # j=0, r=0: (1 + 1/1) / 2 = 1;  j=1, r=1: (1/1 + 2/2) / 2 = 1;  (1 + 1) / 2 = 1
    assert compute_ap([0, 1], 2) == pytest.approx(1.0, abs=1e-15)


def test_ap_positive_first_then_late():
    # ranks 0 and 3 of 2 positives:
    # j=0, r=0: (1 + 1) / 2 = 1;  j=1, r=3: (1/3 + 2/4) / 2 = 5/12;  (1 + 5/12) / 2 = 17/24
    assert compute_ap([0, 3], 2) == pytest.approx(17 / 24, abs=1e-15)


def test_ap_unretrieved_positives_count_as_zero():
    # one of 2 positives ranked, at rank 0: (1 + 1) / 2 / 2 = 0.5
    assert compute_ap([0], 2) == pytest.approx(0.5, abs=1e-15)
    assert compute_ap([], 3) == 0.0


def test_ap_rejects_bad_input():
    with pytest.raises(ShapeError, match="strictly increasing"):
        compute_ap([3, 1], 2)
    with pytest.raises(ShapeError, match="1-D int"):
        compute_ap([0.5], 1)
    with pytest.raises(ConfigError, match="n_positives"):
        compute_ap([0, 1, 2], 2)
    with pytest.raises(ConfigError, match="n_positives"):
        compute_ap([], 0)


# ---- compute_map: hand-computed ------------------------------------------------------------

# nb = 7 gallery images, 5 queries (one column each).
HAND_RANKS = _cols(
    [2, 4, 0, 1, 3, 5, 6],  # A: ok {2,4} ranked first: perfect
    [2, 3, 4, 5, 6, 0, 1],  # B: ok {0,1} ranked last
    [5, 2, 0, 6, 3, 1, 4],  # C: ok {0,1}, junk {5,6} interleaved
    [0, 1, 2, 3, 4, 5, 6],  # D: no positives -> skipped
    [0, 2, 3, 1, 4, 5, 6],  # E: ok {0,1}, a positive ranked first
)
HAND_GND = [
    {"ok": np.array([2, 4]), "junk": np.array([], dtype=np.int64)},
    {"ok": np.array([0, 1])},  # "junk" may be absent, as in the reference
    {"ok": np.array([0, 1]), "junk": np.array([5, 6])},
    {"ok": np.array([], dtype=np.int64), "junk": np.array([3])},
    {"ok": np.array([1, 0]), "junk": np.array([], dtype=np.int64)},
]
# A: AP = 1 (perfect). mP@k: 1-based p = [1, 2], max 2 -> k'=1: 1/1; k'=2: 2/2; k'=2: 2/2
# B: ranks 5, 6:  j=0: (0/5 + 1/6)/2 = 1/12 = 7/84;  j=1: (1/6 + 2/7)/2 = 19/84
#    AP = (7/84 + 19/84) / 2 = 13/84.
#    p = [6, 7], max 7 -> P@1: k'=1, 0/1 = 0;  P@5: k'=5, 0/5 = 0;  P@10: k'=7, 2/7
# C: raw ranks of 0, 1: 2 and 5; junk at raw ranks 0 and 3 -> adjusted 2-1 = 1, 5-2 = 3
#    j=0, r=1: (0/1 + 1/2)/2 = 1/4;  j=1, r=3: (1/3 + 2/4)/2 = 5/12;  AP = (1/4 + 5/12)/2 = 1/3
#    p = [2, 4], max 4 -> P@1: 0/1 = 0;  P@5: k'=4, 2/4;  P@10: k'=4, 2/4
# D: skipped (NaN).
# E: ranks 0 and 3 -> AP = 17/24 (see test above). p = [1, 4] -> P@1: 1;  P@5: k'=4, 2/4;  P@10: 2/4
HAND_APS = [1.0, 13 / 84, 1 / 3, np.nan, 17 / 24]
# mAP = (1 + 13/84 + 1/3 + 17/24) / 4 = (168 + 26 + 56 + 119) / 168 / 4 = 369/672
HAND_MAP = 369 / 672
# mP@1 = (1 + 0 + 0 + 1)/4 = 1/2;  mP@5 = (1 + 0 + 1/2 + 1/2)/4 = 1/2;  mP@10 = (1 + 2/7 + 1/2 + 1/2)/4 = 4/7
HAND_MP = [0.5, 0.5, 4 / 7]


def test_compute_map_hand_computed():
    res = compute_map(HAND_RANKS, HAND_GND, kappas=(1, 5, 10))
    np.testing.assert_allclose(res.aps, HAND_APS, rtol=0, atol=1e-14)
    assert res.map == pytest.approx(HAND_MAP, abs=1e-14)
    np.testing.assert_allclose(res.mp_at_k, HAND_MP, rtol=0, atol=1e-14)
    assert res.n_valid == 4
    assert np.isnan(res.p_at_k[3]).all()
    np.testing.assert_allclose(res.p_at_k[1], [0.0, 0.0, 2 / 7], atol=1e-14)


def test_junk_removal_changes_the_result():
    # Query C without junk: raw ranks 2 and 5 -> (0/2 + 1/3)/2 = 1/6; (1/5 + 2/6)/2 = 4/15
    # AP = (1/6 + 4/15)/2 = 13/60, not the 1/3 of the junk-aware computation.
    res = compute_map(HAND_RANKS[:, 2:3], [{"ok": [0, 1]}])
    assert res.map == pytest.approx(13 / 60, abs=1e-14)


def test_faiss_layout_matches_revisitop_layout():
    a = compute_map(HAND_RANKS, HAND_GND)
    b = compute_map(HAND_RANKS.T.copy(), HAND_GND, layout="faiss")
    np.testing.assert_array_equal(a.aps, b.aps)
    np.testing.assert_array_equal(a.mp_at_k, b.mp_at_k)


def test_truncated_ranks_need_n_gallery_and_score_missing_positives_zero():
    # Query B truncated to its first 3 results: no positive ranked -> AP 0, P@k 0.
    gnd = [HAND_GND[1]]
    with pytest.raises(ShapeError, match="n_gallery"):
        compute_map(HAND_RANKS[:3, 1:2], gnd)
    res = compute_map(HAND_RANKS[:3, 1:2], gnd, n_gallery=7)
    assert res.map == 0.0
    np.testing.assert_array_equal(res.mp_at_k, [0.0, 0.0, 0.0])
    # Query E truncated to 2: only positive 0 at rank 0 -> (1 + 1)/2 / 2 = 0.5
    assert compute_map(HAND_RANKS[:2, 4:5], [HAND_GND[4]], n_gallery=7).map == pytest.approx(0.5)


def test_all_queries_without_positives_gives_nan():
    res = compute_map(HAND_RANKS[:, 3:4], [HAND_GND[3]])
    assert np.isnan(res.map) and res.n_valid == 0


# ---- evaluate_revisitop ----------------------------------------------------------------------

def test_evaluate_revisitop_hand_computed():
    # nb = 6, one query: easy {0}, hard {1}, junk {2}; ranking [2, 1, 3, 0, 4, 5]
    ranks = _cols([2, 1, 3, 0, 4, 5])
    gnd = [{"easy": [0], "hard": [1], "junk": [2]}]
    res = evaluate_revisitop(ranks, gnd)
    # easy: ok {0}, junk {2, 1}: 0 is at raw rank 3 behind 2 junk -> adjusted 1
    #   AP = (0/1 + 1/2)/2 / 1 = 1/4 -> 25 %;  p = [2]: P@1 0/1, P@5 k'=2: 1/2, P@10 1/2
    # medium: ok {0, 1}, junk {2}: raw ranks 1 and 3, one junk at 0 -> adjusted 0 and 2
    #   AP = ((1 + 1)/2 + (1/2 + 2/3)/2) / 2 = (1 + 7/12)/2 = 19/24;  p = [1, 3]: 1, 2/3, 2/3
    # hard: ok {1}, junk {2, 0}: raw rank 1, one junk before -> adjusted 0: AP 1, P@k all 1
    assert res.map["easy"] == pytest.approx(25.0, abs=1e-12)
    assert res.map["medium"] == pytest.approx(100 * 19 / 24, abs=1e-12)
    assert res.map["hard"] == pytest.approx(100.0, abs=1e-12)
    np.testing.assert_allclose(res.mp_at_k["easy"], [0.0, 50.0, 50.0], atol=1e-12)
    np.testing.assert_allclose(res.mp_at_k["medium"], [100.0, 200 / 3, 200 / 3], atol=1e-12)
    np.testing.assert_allclose(res.mp_at_k["hard"], [100.0, 100.0, 100.0], atol=1e-12)
    text = res.summary("toy")
    assert ">> toy: mAP E: 25.0, M: 79.17, H: 100.0" in text
    assert "mP@k[1, 5, 10]" in text


def test_revisitop_gnd_settings():
    gnd = [{"easy": [0, 3], "hard": [1], "junk": [2]}]
    assert sorted(revisitop_gnd(gnd, "easy")[0]["junk"]) == [1, 2]
    assert sorted(revisitop_gnd(gnd, "medium")[0]["ok"]) == [0, 1, 3]
    assert sorted(revisitop_gnd(gnd, "hard")[0]["junk"]) == [0, 2, 3]
    with pytest.raises(ConfigError):
        revisitop_gnd(gnd, "extreme")
    with pytest.raises(ShapeError, match="easy, hard and junk"):
        revisitop_gnd([{"ok": [0]}], "easy")


# ---- other protocols ------------------------------------------------------------------------

def test_gldv2_map_at_k_hand_computed():
    ranks = np.array([[1, 0, 4, 7, 2, 3, 5, 6, 8, 9],
                      [2, 3, 5, 0, 1, 4, 6, 7, 8, 9],
                      [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])
    gnd = [{"ok": [1, 4, 7, 9]}, {"ok": [5]}, {"ok": []}]
    # k = 3. q0: top 3 = [1, 0, 4]: hits at 1-based 1 (P=1/1) and 3 (P=2/3) -> (1 + 2/3) / min(4, 3) = 5/9
    #        q1: top 3 = [2, 3, 5]: hit at 3 (P=1/3) -> (1/3) / min(1, 3) = 1/3;  q2 skipped
    #        mean = (5/9 + 3/9) / 2 = 4/9
    assert gldv2_map_at_k(ranks, gnd, k=3, layout="faiss") == pytest.approx(4 / 9, abs=1e-14)
    # k = 100 over these 10 results. q0: hits at 1, 3, 4, 10 -> 1/1 + 2/3 + 3/4 + 4/10 = 169/60;
    #   / min(4, 100) = 169/240.  q1: 1/3.  mean = (169/240 + 80/240) / 2 = 249/480
    assert gldv2_map_at_k(ranks, gnd, layout="faiss") == pytest.approx(249 / 480, abs=1e-14)


def test_holidays_map_hand_computed():
    # nb = 5, query image 0 is junk (removed), positives {1, 3}; ranking [0, 1, 2, 3, 4]
    ranks = _cols([0, 1, 2, 3, 4])
    gnd = [{"ok": [1, 3], "junk": [0]}]
    # adjusted ranks 0 and 2.
    # trapezoid: ((1 + 1)/2 + (1/2 + 2/3)/2) / 2 = (1 + 7/12) / 2 = 19/24
    assert holidays_map(ranks, gnd) == pytest.approx(19 / 24, abs=1e-14)
    # step: (1/1 + 2/3) / 2 = 5/6
    assert holidays_map(ranks, gnd, ap="step") == pytest.approx(5 / 6, abs=1e-14)
    with pytest.raises(ConfigError):
        holidays_map(ranks, gnd, ap="11-point")


def test_ukbench_ns_hand_computed():
    ranks = _cols([0, 5, 1, 2, 3, 4, 6, 7], [4, 5, 6, 7, 0, 1, 2, 3])
    gnd = [{"ok": [0, 1, 2, 3]}, {"ok": [4, 5, 6, 7]}]
    # q0 top 4 = {0, 5, 1, 2}: 3 correct;  q1 top 4 = {4, 5, 6, 7}: 4 correct;  (3 + 4) / 2 = 3.5
    assert ukbench_ns(ranks, gnd) == pytest.approx(3.5)
    assert ukbench_ns(ranks[:4], gnd, n_gallery=8) == pytest.approx(3.5)
    with pytest.raises(ShapeError, match="top 4"):
        ukbench_ns(ranks[:3], gnd, n_gallery=8)


# ---- randomized comparison with a slow, obviously-correct implementation -------------------

def _slow_map(ranks, gnd, kappas):
    """Straight from the protocol text, one query and one rank at a time."""
    aps, prs = [], []
    for q, g in enumerate(gnd):
        ok, junk = set(int(v) for v in g["ok"]), set(int(v) for v in g.get("junk", []))
        if not ok:
            continue
        kept = [int(b) for b in ranks[:, q] if int(b) not in junk]  # junk leaves the ranking
        pos = [r for r, b in enumerate(kept) if b in ok]
        ap = 0.0
        for j, r in enumerate(pos):
            left = 1.0 if r == 0 else j / r
            ap += (left + (j + 1) / (r + 1)) / 2 / len(ok)
        aps.append(ap)
        row = []
        for kappa in kappas:
            if not pos:
                row.append(0.0)
                continue
            kq = min(max(pos) + 1, kappa)
            row.append(sum(1 for r in pos if r + 1 <= kq) / kq)
        prs.append(row)
    return sum(aps) / len(aps), [sum(c) / len(prs) for c in zip(*prs, strict=True)]


def _slow_gldv2(ranks, gnd, k):
    total, n = 0.0, 0
    for q, g in enumerate(gnd):
        ok = set(int(v) for v in g["ok"])
        if not ok:
            continue
        correct, ap = 0, 0.0
        for i, b in enumerate(ranks[:k, q]):
            if int(b) in ok:
                correct += 1
                ap += correct / (i + 1)
        total += ap / min(len(ok), k)
        n += 1
    return total / n


def _random_case(rng, nb, nq):
    ranks = np.stack([rng.permutation(nb) for _ in range(nq)], axis=1)
    gnd = []
    for q in range(nq):
        perm = rng.permutation(nb)
        n_ok, n_junk = rng.integers(1 if q == 0 else 0, 6), rng.integers(0, 6)  # query 0 is scored
        gnd.append({"ok": perm[:n_ok], "junk": perm[n_ok:n_ok + n_junk]})
    return ranks, gnd


@pytest.mark.parametrize("seed", range(5))
def test_compute_map_matches_slow_reference(seed):
    rng = np.random.default_rng(seed)
    ranks, gnd = _random_case(rng, nb=40, nq=25)
    kappas = (1, 3, 5, 10, 50)
    res = compute_map(ranks, gnd, kappas=kappas)
    slow_map, slow_mp = _slow_map(ranks, gnd, kappas)
    assert res.map == pytest.approx(slow_map, abs=1e-12)
    np.testing.assert_allclose(res.mp_at_k, slow_mp, atol=1e-12)
    # truncated rankings agree too
    cut = compute_map(ranks[:15], gnd, kappas=kappas, n_gallery=40)
    slow_cut_map, slow_cut_mp = _slow_map(ranks[:15], gnd, kappas)
    assert cut.map == pytest.approx(slow_cut_map, abs=1e-12)
    np.testing.assert_allclose(cut.mp_at_k, slow_cut_mp, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_gldv2_matches_slow_reference(seed):
    rng = np.random.default_rng(100 + seed)
    ranks, gnd = _random_case(rng, nb=150, nq=20)
    gnd = [{"ok": g["ok"]} for g in gnd]
    for k in (1, 7, 100):
        assert gldv2_map_at_k(ranks, gnd, k=k) == pytest.approx(_slow_gldv2(ranks, gnd, k), abs=1e-12)


# ---- input validation ----------------------------------------------------------------------

def test_shape_mismatch_names_the_fix():
    with pytest.raises(ShapeError, match="layout='faiss'"):
        compute_map(HAND_RANKS.T.copy(), HAND_GND)


@pytest.mark.parametrize("bad, match", [
    (np.array([[0, 1], [7, 0]]), "gallery has 2 images"),
    (np.array([[0, -1], [1, 0]]), r"\[-1, 1\]"),
    (np.array([[0.0, np.nan], [1.0, 0.0]]), "NaN"),
    (np.array([[0, 0], [0, 1]]), "twice"),
    (np.array([0, 1]), "2-D"),
])
def test_bad_ranks_raise_shape_error(bad, match):
    with pytest.raises(ShapeError, match=match):
        compute_map(bad, [{"ok": [0]}, {"ok": [1]}])


def test_bad_gnd_raises():
    ranks = _cols([0, 1, 2])
    with pytest.raises(ShapeError, match="gallery has 3 images"):
        compute_map(ranks, [{"ok": [5]}])
    with pytest.raises(ShapeError, match="'ok'"):
        compute_map(ranks, [{"easy": [0]}])
    with pytest.raises(ShapeError, match="twice"):
        compute_map(ranks, [{"ok": [1, 1]}])
    with pytest.raises(ShapeError, match="both"):
        compute_map(ranks, [{"ok": [1], "junk": [1]}])
    with pytest.raises(ConfigError, match="kappas"):
        compute_map(ranks, [{"ok": [0]}], kappas=(0,))
    with pytest.raises(ConfigError, match="layout"):
        compute_map(ranks, [{"ok": [0]}], layout="columns")
    with pytest.raises(ConfigError, match="positive int"):
        gldv2_map_at_k(ranks, [{"ok": [0]}], k=0)
