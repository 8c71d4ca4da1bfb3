"""The untrained mutual-nearest-neighbour re-ranker against hand-computed cases and a brute-force loop."""

from __future__ import annotations

import numpy as np
import pytest

from asymfuse.cloud.ames.mutual_nn import COUNT_SCALE, MutualNNScorer, mutual_nn_counts
from asymfuse.cloud.ames.sources import ArrayLocals
from asymfuse.edge.errors import ConfigError, ShapeError


def brute_force(q, qp, x, xp):
    qv = [i for i in range(len(q)) if not qp[i]]
    out = []
    for g, gp in zip(x, xp):
        xv = [j for j in range(len(g)) if not gp[j]]
        if not qv or not xv:
            out.append(0)
            continue
        cos = lambda a, b: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))  # noqa: E731
        nn_x = {i: max(xv, key=lambda j: cos(q[i], g[j])) for i in qv}
        nn_q = {j: max(qv, key=lambda i: cos(q[i], g[j])) for j in xv}
        out.append(sum(1 for i in qv if nn_q[nn_x[i]] == i))
    return np.array(out)


def test_hand_computed_case():
    e = np.eye(3, dtype=np.float32)
    q = np.stack([e[0], e[1], e[2]])
    # gallery 0: e0 and e1 (two mutual pairs; e2 has no partner of its own: its NN's NN is someone else)
    # gallery 1: only padding; gallery 2: e2 scaled, plus a padded slot holding e0 (must be ignored)
    x = np.stack([np.stack([e[0], e[1] * 5.0]), np.stack([e[0], e[1]]), np.stack([e[2] * 2.0, e[0]])])
    xp = np.array([[False, False], [True, True], [False, True]])
    got = mutual_nn_counts(q, np.zeros(3, bool), x, xp)
    assert got.tolist() == [2, 0, 1]
    # a padded query slot never counts
    assert mutual_nn_counts(q, np.array([True, False, False]), x, xp).tolist() == [1, 0, 1]


def test_matches_a_brute_force_loop_on_random_sets():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(12, 8)).astype(np.float32)
    x = rng.normal(size=(9, 10, 8)).astype(np.float32)
    x[:, :4] = q[:4] + 0.05 * rng.normal(size=(9, 4, 8))  # some true matches
    qp = rng.random(12) < 0.2
    xp = rng.random((9, 10)) < 0.3
    xp[3] = True  # one empty gallery set
    np.testing.assert_array_equal(mutual_nn_counts(q, qp, x, xp), brute_force(q, qp, x, xp))


def test_scorer_reads_each_querys_candidates_and_scales_the_count():
    rng = np.random.default_rng(1)
    gallery = ArrayLocals(rng.normal(size=(6, 7, 8)).astype(np.float32))
    q = rng.normal(size=(5, 8)).astype(np.float32)
    out = MutualNNScorer().score_many([(q, None), (q[:2], np.array([False, True]))], gallery,
                                      [np.array([0, 3]), np.array([5])], lx=4)
    d, p = gallery.descriptors(np.array([0, 3]), length=4)
    np.testing.assert_allclose(out[0], mutual_nn_counts(q, np.zeros(5, bool), d, p) / COUNT_SCALE)
    assert out[0].dtype == np.float32 and out[1].shape == (1,) and out[1][0] == pytest.approx(1 / COUNT_SCALE)


def test_bad_input_is_named():
    with pytest.raises(ShapeError, match="L_q, d"):
        mutual_nn_counts(np.zeros((3, 4)), np.zeros(3, bool), np.zeros((2, 5, 6)), np.zeros((2, 5), bool))
    with pytest.raises(ConfigError, match="candidate lists"):
        MutualNNScorer().score_many([], ArrayLocals(np.ones((1, 2, 4), np.float32)), [np.array([0])])
    with pytest.raises(ConfigError, match="float descriptors"):
        MutualNNScorer().score_many([(np.ones((2, 4)), None)], object(), [np.array([0])])
