"""The closed-form query-head start: ridge regression against NumPy least squares, and the fitted
head of a real query net reproducing its targets on the training images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asymfuse.cloud.models.query_net import create_query_net
from asymfuse.cloud.train.aff_data import AFFImageDataset, load_training_set
from asymfuse.cloud.data.records import TrainingSet
from asymfuse.cloud.train.pooled_cache import pooled_trunk_features
from asymfuse.cloud.train.query_start import fit_query_head, ridge_map
from asymfuse.edge.errors import ConfigError, ShapeError


def test_ridge_map_equals_the_augmented_normal_equations():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((50, 7)) * 3 + 1, rng.standard_normal((50, 4))
    ridge = 0.05
    w, b = ridge_map(x, y, ridge=ridge)
    xc = x - x.mean(0)
    lam = ridge * np.trace(xc.T @ xc) / 7
    # brute force: minimise ||[x 1] theta - y||^2 + lam ||W||^2 (bias unpenalised) by the normal equations
    xa = np.hstack([x, np.ones((50, 1))])
    pen = lam * np.diag([1.0] * 7 + [0.0])
    theta = np.linalg.solve(xa.T @ xa + pen, xa.T @ y)
    np.testing.assert_allclose(w, theta[:7], atol=1e-9)
    np.testing.assert_allclose(b, theta[7], atol=1e-9)


def test_ridge_map_with_tiny_ridge_recovers_an_exact_linear_map():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 6))
    w_true, b_true = rng.standard_normal((6, 3)), rng.standard_normal(3)
    w, b = ridge_map(x, x @ w_true + b_true, ridge=1e-10)
    np.testing.assert_allclose(w, w_true, atol=1e-6)
    np.testing.assert_allclose(b, b_true, atol=1e-6)


@pytest.mark.parametrize(("x", "y", "ridge", "err"), [
    (np.zeros((5, 3)), np.zeros((4, 2)), 0.1, ShapeError),
    (np.full((5, 3), np.nan), np.zeros((5, 2)), 0.1, ShapeError),
    (np.zeros((5, 3)), np.zeros((5, 2)), 0.0, ConfigError),
])
def test_ridge_map_refuses_bad_input(x, y, ridge, err):
    with pytest.raises(err):
        ridge_map(x, y, ridge=ridge)


def test_fit_query_head_sets_the_least_squares_map_of_its_sources(bench):
    ts = load_training_set("benchmark", bench.root)
    net = create_query_net("mobilenet_v2", embed_dim=8, input_size=64, seed=0, pooling="gem_l2")
    rng = np.random.default_rng(2)
    targets = rng.standard_normal((len(ts), 8))
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    half = TrainingSet(name="half", root=ts.root, paths=ts.paths[::2], labels=ts.labels[::2],
                       class_names=ts.class_names)
    fit = fit_query_head(net, sources=[(ts, targets), (half, targets[::2])], ridge=1e-6)
    assert fit.rows == len(ts) + len(half)
    # reference: the same images embedded independently (unit-norm with gem_l2), solved by NumPy least squares
    cpu = torch.device("cpu")
    xs = np.vstack([pooled_trunk_features(net, AFFImageDataset(training_set=t, spec=net.spec, augment=None, seed=0),
                                          epochs=[0], device=cpu) for t in (ts, half)])
    np.testing.assert_allclose(np.linalg.norm(xs, axis=1), 1.0, atol=1e-6)
    xa = np.hstack([xs, np.ones((len(xs), 1))])
    theta, *_ = np.linalg.lstsq(xa, np.vstack([targets, targets[::2]]), rcond=None)
    with torch.no_grad():
        out = net.whiten(torch.from_numpy(xs).float()).numpy()
    np.testing.assert_allclose(out, xa @ theta, atol=2e-3)
    with pytest.raises(ShapeError, match="targets"):
        fit_query_head(net, sources=[(ts, targets[:3])])
    with pytest.raises(ConfigError, match="source"):
        fit_query_head(net, sources=[])
