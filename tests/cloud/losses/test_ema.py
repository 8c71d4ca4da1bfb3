"""The momentum classifier: exact EMA arithmetic, buffer semantics, gradients into x only."""

from __future__ import annotations

import pytest
import torch
from asymfuse.cloud.losses import EMAClassifier, arcface_loss
from asymfuse.edge.errors import ConfigError, ShapeError


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_update_is_exact_ema():
    w0, src = _rand(5, 8, seed=0), _rand(5, 8, seed=1)
    ema = EMAClassifier(source=w0, alpha=0.99)
    assert ema.alpha == 0.99
    torch.testing.assert_close(ema.weight, w0, rtol=0, atol=0)
    ema.update(src)
    assert torch.equal(ema.weight, w0 * 0.99 + src * (1.0 - 0.99))
    assert not torch.equal(ema.weight, w0) and not torch.equal(ema.weight, src)
    src2 = _rand(5, 8, seed=2)
    expected = ema.weight * 0.99 + src2 * (1.0 - 0.99)
    ema.update(src2)
    assert torch.equal(ema.weight, expected)


def test_source_is_copied_not_aliased():
    w0 = _rand(3, 4)
    ema = EMAClassifier(source=w0, alpha=0.5)
    ema.update(_rand(3, 4, seed=1))
    assert torch.equal(w0, _rand(3, 4))  # the caller's tensor is untouched


def test_alpha_zero_copies_and_alpha_one_freezes():
    w0, src = _rand(4, 6, seed=0), _rand(4, 6, seed=1)
    ema = EMAClassifier(source=w0, alpha=0.0)
    ema.update(src)
    assert torch.equal(ema.weight, src)
    frozen = EMAClassifier(source=w0, alpha=1.0)
    frozen.update(src)
    assert torch.equal(frozen.weight, w0)


def test_weight_is_a_persistent_buffer_not_a_parameter():
    mix = torch.nn.Parameter(_rand(4, 6))
    ema = EMAClassifier(source=mix, alpha=0.99)
    assert not ema.weight.requires_grad
    assert "weight" in ema.state_dict() and list(ema.parameters()) == []
    assert any(name == "weight" for name, _ in ema.named_buffers())
    restored = EMAClassifier(source=torch.zeros(4, 6), alpha=0.99)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.weight, ema.weight)


def test_gradient_flows_into_x_only():
    mix = torch.nn.Parameter(_rand(4, 6))
    ema = EMAClassifier(source=mix, alpha=0.99, scale=16.0, margin=0.2)
    x = _rand(5, 6, seed=3).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3, 0])
    loss = ema(x, y)
    ref = arcface_loss(x.detach(), ema.weight, y, scale=16.0, margin=0.2)
    assert float(loss.detach()) == pytest.approx(float(ref))
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert ema.weight.grad is None and mix.grad is None
    ema.update(mix)  # updating after backward is allowed (nothing saved the buffer for backward)
    assert ema.logits(x, y).shape == (5, 4)


def test_bad_inputs():
    with pytest.raises(ConfigError, match="alpha"):
        EMAClassifier(source=_rand(3, 4), alpha=1.5)
    with pytest.raises(ConfigError, match="alpha"):
        EMAClassifier(source=_rand(3, 4), alpha=-0.1)
    with pytest.raises(ShapeError):
        EMAClassifier(source=_rand(12), alpha=0.9)
    ema = EMAClassifier(source=_rand(3, 4), alpha=0.9)
    with pytest.raises(ShapeError, match="shape"):
        ema.update(_rand(3, 5))
