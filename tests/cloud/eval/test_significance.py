"""Paired per-query significance of a val gain, the Bonferroni bar, and per-query APs that average
to the reported mAP."""

from __future__ import annotations

import math

import numpy as np
import pytest

from asymfuse.cloud.data.records import RetrievalDataset
from asymfuse.cloud.eval.evaluate import evaluate_ranking, per_query_ap
from asymfuse.cloud.eval.significance import bonferroni_z, paired_gain
from asymfuse.edge.errors import ConfigError, ShapeError


def test_paired_gain_hand_computed():
    # d = [1, 2, 3]: mean 2, sample sd 1, stderr 1/sqrt(3), z = 2 sqrt(3) = 3.464
    g = paired_gain(np.array([11.0, 22.0, 33.0]), np.array([10.0, 20.0, 30.0]))
    assert (g.mean, g.n) == (2.0, 3)
    assert g.stderr == pytest.approx(1 / math.sqrt(3)) and g.z == pytest.approx(2 * math.sqrt(3))
    assert g.beats(3.0) and not g.beats(3.5)
    worse = paired_gain(np.array([10.0, 20.0, 30.0]), np.array([11.0, 22.0, 33.0]))
    assert worse.z == pytest.approx(-2 * math.sqrt(3)) and not worse.beats(-10.0)  # a loss never beats


def test_paired_gain_skips_unscored_queries_and_handles_zero_spread():
    g = paired_gain(np.array([5.0, np.nan, 7.0, 1.0]), np.array([4.0, 3.0, np.nan, 0.0]))
    assert (g.n, g.mean, g.stderr, g.z) == (2, 1.0, 0.0, math.inf) and g.beats(100.0)
    same = paired_gain(np.array([1.0]), np.array([1.0]))
    assert (same.mean, same.stderr, same.z, same.n) == (0.0, 0.0, 0.0, 1) and not same.beats(0.0)
    assert paired_gain(np.array([np.nan]), np.array([2.0])).n == 0
    with pytest.raises(ShapeError, match="same queries"):
        paired_gain(np.zeros(3), np.zeros(4))


def test_bonferroni_bar():
    assert bonferroni_z(0.05, 1) == pytest.approx(1.6449, abs=1e-4)
    assert bonferroni_z(0.05, 16) == pytest.approx(2.7344, abs=1e-4)  # Phi^-1(1 - 0.05 / 16)
    assert bonferroni_z(0.05, 2) == pytest.approx(1.9600, abs=1e-4)
    for alpha, checks in ((0.0, 1), (1.0, 1), (0.05, 0), (True, 1)):
        with pytest.raises(ConfigError):
            bonferroni_z(alpha, checks)


def test_per_query_ap_averages_to_the_reported_map():
    rng = np.random.default_rng(0)
    nq, nb = 6, 30
    gnd = []
    for _ in range(nq):
        idx = rng.permutation(nb)
        gnd.append({"easy": idx[:3].tolist(), "hard": idx[3:6].tolist(), "junk": idx[6:8].tolist(), })
    gnd[5] = {"easy": [], "hard": [], "junk": [1]}  # no positives: skipped (NaN)
    ds = RetrievalDataset(name="toy", root="/nonexistent", protocol="revisitop",
                          gallery_paths=[f"g{j}.jpg" for j in range(nb)], gallery_ids=[f"g{j}" for j in range(nb)],
                          query_paths=[f"q{i}.jpg" for i in range(nq)], query_ids=[f"q{i}" for i in range(nq)],
                          gnd=gnd)
    ranks = np.stack([rng.permutation(nb) for _ in range(nq)], axis=1)  # (nb, nq)
    metrics = evaluate_ranking(ranks, ds)
    for metric in ("mAP_easy", "mAP_medium", "mAP_hard"):
        aps = per_query_ap(ranks, ds, metric=metric)
        assert aps.shape == (nq,) and np.isnan(aps[5])
        assert np.nanmean(aps) == pytest.approx(metrics[metric])
    # query 0 by hand, medium: its positives are easy + hard
    ok = set(gnd[0]["easy"] + gnd[0]["hard"])
    junk = set(gnd[0]["junk"])
    kept = [j for j in ranks[:, 0] if j not in junk]
    hits = [r for r, j in enumerate(kept) if j in ok]
    # revisitop's trapezoid AP over the kept ranking
    ap, prev_recall = 0.0, 0.0
    for k, r in enumerate(hits, start=1):
        recall, prec_lo, prec_hi = k / len(ok), (k - 1) / r if r else 1.0, k / (r + 1)
        ap += (recall - prev_recall) * (prec_lo + prec_hi) / 2
        prev_recall = recall
    assert per_query_ap(ranks, ds, metric="mAP_medium")[0] == pytest.approx(100 * ap)
    assert per_query_ap(ranks, ds, metric="mP@10_medium") is None
