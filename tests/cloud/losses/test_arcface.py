"""ArcFace logits/loss/head against a NumPy float64 reference and a hand-computed case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from asymfuse.cloud.losses import ArcFaceHead, arcface_logits, arcface_loss
from asymfuse.edge.errors import ConfigError, ShapeError


def _ref_logits(x, w, y, *, scale, margin):
    """Float64 reference with the insightface easy_margin=False rule, written with arccos."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = np.clip(x @ w.T, -1 + 1e-7, 1 - 1e-7)
    out = cos.copy()
    for i, c in enumerate(y):
        theta = math.acos(cos[i, c])
        if theta + margin < math.pi:  # same as cos(theta) > cos(pi - m)
            out[i, c] = math.cos(theta + margin)
        else:
            out[i, c] = cos[i, c] - math.sin(math.pi - margin) * margin
    return out * scale


def _ref_ce(logits, y):
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def _unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logits_and_loss_match_numpy(seed):
    rng = np.random.default_rng(seed)
    x, w = rng.normal(size=(9, 6)), rng.normal(size=(5, 6)) * 3.0  # weight rows NOT unit-norm
    y = rng.integers(0, 5, size=9)
    xt, wt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(w, dtype=torch.float32), torch.tensor(y)
    got = arcface_logits(xt, wt, yt, scale=32.0, margin=0.3)
    ref = _ref_logits(x, w, y, scale=32.0, margin=0.3)
    assert got.dtype == torch.float32 and got.shape == (9, 5)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-4)
    loss = arcface_loss(xt, wt, yt, scale=32.0, margin=0.3)
    assert loss.ndim == 0
    np.testing.assert_allclose(float(loss), _ref_ce(ref, y), rtol=1e-5, atol=1e-5)


def test_fallback_when_theta_plus_margin_passes_pi():
    # target cosine -0.95 (theta = 2.82 rad); with m = 0.5, theta + m > pi -> fallback branch
    w = np.array([[1.0, 0.0], [0.0, 1.0]])
    x = np.array([[-0.95, math.sqrt(1 - 0.95**2)], [0.8, 0.6]])
    y = np.array([0, 0])
    got = arcface_logits(torch.tensor(x, dtype=torch.float32), torch.tensor(w, dtype=torch.float32),
                         torch.tensor(y), scale=1.0, margin=0.5).numpy()
    assert got[0, 0] == pytest.approx(-0.95 - math.sin(0.5) * 0.5, abs=1e-6)  # fallback
    assert got[1, 0] == pytest.approx(math.cos(math.acos(0.8) + 0.5), abs=1e-6)  # normal branch
    np.testing.assert_allclose(got, _ref_logits(x, w, y, scale=1.0, margin=0.5), atol=1e-6)


def test_hand_computed_two_class_example():
    # x = (1, 0); w0 at 60 deg (cos 1/2), w1 at 30 deg (cos sqrt(3)/2); label 0, m = pi/6, s = 2.
    # target: cos(60 deg + 30 deg) = 0 -> logits (0, 2 * sqrt(3)/2) = (0, sqrt(3));
    # loss = -log(e^0 / (e^0 + e^sqrt(3))) = log(1 + e^sqrt(3)).
    x = torch.tensor([[1.0, 0.0]])
    w = torch.tensor([[0.5, math.sqrt(3) / 2], [math.sqrt(3) / 2, 0.5]])
    y = torch.tensor([0])
    logits = arcface_logits(x, w, y, scale=2.0, margin=math.pi / 6)
    np.testing.assert_allclose(logits.numpy(), [[0.0, math.sqrt(3)]], atol=1e-6)
    loss = arcface_loss(x, w, y, scale=2.0, margin=math.pi / 6)
    assert float(loss) == pytest.approx(math.log(1 + math.exp(math.sqrt(3))), abs=1e-6)


def test_zero_margin_is_scaled_cosine():
    rng = np.random.default_rng(3)
    x, w = _unit(rng.normal(size=(4, 3))), _unit(rng.normal(size=(6, 3)))
    got = arcface_logits(torch.tensor(x, dtype=torch.float32), torch.tensor(w, dtype=torch.float32),
                         torch.tensor([0, 1, 2, 3]), scale=10.0, margin=0.0)
    np.testing.assert_allclose(got.numpy(), 10.0 * np.clip(x @ w.T, -1, 1), atol=1e-5)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gradients_finite_at_cos_plus_minus_one(sign):
    w = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    x = torch.tensor([[sign, 0.0, 0.0], [0.0, sign, 0.0]], requires_grad=True)
    loss = arcface_loss(x, w, torch.tensor([0, 1]), scale=32.0, margin=0.3)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()


def test_float32_under_autocast():
    rng = np.random.default_rng(4)
    x = torch.tensor(rng.normal(size=(5, 8)), dtype=torch.float32)
    w = torch.tensor(rng.normal(size=(3, 8)), dtype=torch.float32)
    y = torch.tensor([0, 1, 2, 0, 1])
    plain = arcface_logits(x, w, y)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        auto = arcface_logits(x.bfloat16(), w, y)
    assert auto.dtype == torch.float32
    np.testing.assert_allclose(auto.numpy(), plain.numpy(), atol=0.3)  # only the bf16 input rounding
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        same = arcface_logits(x, w, y)
    torch.testing.assert_close(same, plain, rtol=0, atol=1e-6)


def test_head_is_deterministic_and_trains():
    a, b = ArcFaceHead(embed_dim=8, num_classes=4, seed=7), ArcFaceHead(embed_dim=8, num_classes=4, seed=7)
    assert isinstance(a.weight, torch.nn.Parameter) and a.weight.shape == (4, 8)
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(a.weight, ArcFaceHead(embed_dim=8, num_classes=4, seed=8).weight)
    torch.testing.assert_close(a.weight.norm(dim=1), torch.ones(4))
    x, y = torch.randn(6, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 0, 1])
    with torch.no_grad():
        assert float(a(x, y)) == pytest.approx(float(arcface_loss(x, a.weight, y, scale=32.0, margin=0.3)))
    assert a.logits(x, y).shape == (6, 4)
    a(x, y).backward()
    assert a.weight.grad is not None and torch.isfinite(a.weight.grad).all()


def test_bad_inputs():
    x, w, y = torch.randn(3, 4), torch.randn(5, 4), torch.tensor([0, 1, 2])
    with pytest.raises(ShapeError, match="dimension"):
        arcface_logits(x, torch.randn(5, 3), y)
    with pytest.raises(ShapeError, match="2-D"):
        arcface_logits(torch.randn(4), w, y)
    with pytest.raises(ShapeError, match="labels"):
        arcface_logits(x, w, torch.tensor([0, 1]))
    with pytest.raises(ShapeError, match="labels"):
        arcface_logits(x, w, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ConfigError, match="labels must lie"):
        arcface_logits(x, w, torch.tensor([0, 1, 5]))
    with pytest.raises(ConfigError, match="labels must lie"):
        arcface_logits(x, w, torch.tensor([0, -1, 2]))
    with pytest.raises(ConfigError, match="scale"):
        arcface_logits(x, w, y, scale=0.0)
    with pytest.raises(ConfigError, match="margin"):
        arcface_logits(x, w, y, margin=-0.1)
    with pytest.raises(ConfigError, match="num_classes"):
        ArcFaceHead(embed_dim=4, num_classes=0)
