"""The matching start: the untrained AMES counts mutual nearest neighbours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from asymfuse.cloud.ames.binary import init_binary_projection
from asymfuse.cloud.ames.match_init import MatchStart, init_match_prior
from asymfuse.cloud.ames.model import create_ames
from asymfuse.cloud.ames.mutual_nn import mutual_nn_counts
from asymfuse.cloud.ames.reference import reference_scores
from asymfuse.edge.errors import ConfigError, ShapeError

DIM = 32
L = 24


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM)) + 0.3  # a shared offset, as real descriptors have
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _pairs(rng: np.random.Generator, matches: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """One query set and, per entry of ``matches``, a gallery set sharing that many noisy copies of it."""
    q = _unit(rng, L)
    gallery = []
    for m in matches:
        x = _unit(rng, L)
        x[:m] = q[:m] + 0.02 * rng.normal(size=(m, DIM)).astype(np.float32)
        gallery.append(x)
    return q, np.stack(gallery)


def _model(binary: bool = False, seed: int = 0, **start):
    rng = np.random.default_rng(seed)
    model = create_ames(local_dim=DIM, binary=binary, seed=seed)
    train = _unit(rng, 4000)
    if binary:
        init_binary_projection(model, train, seed=seed)
    # the synthetic 32-d sets were sized for sharpness 100, contrast 0.1 (the real-SIFT default is 50 / 0.05)
    init_match_prior(model, train, start=MatchStart(**{"sharpness": 100.0, "contrast": 0.1, **start}))
    return model.eval()


@pytest.mark.parametrize("binary", [False, True])
def test_untrained_logit_grows_with_the_mutual_neighbours(binary):
    rng = np.random.default_rng(1)
    matches = [0, 6, 12, 18, 24]
    q, x = _pairs(rng, matches)
    counts = mutual_nn_counts(q, np.zeros(L, bool), x, np.zeros(x.shape[:2], bool))
    assert np.all(np.diff(counts) > 0), counts  # the synthetic sets really differ in mutual matches
    model = _model(binary=binary)
    with torch.no_grad():
        no_pad = torch.zeros(len(matches), L, dtype=torch.bool)
        logits = model(torch.from_numpy(q)[None].expand(len(matches), -1, -1), no_pad, torch.from_numpy(x),
                       no_pad).numpy()
    assert np.all(np.diff(logits) > 0), logits
    # measured: fp 8.83 -> 11.32, binary 9.85 -> 11.60 (chance matches between random sets count too)
    assert logits[-1] - logits[0] > 1.5, logits
    assert np.corrcoef(logits, counts)[0, 1] > 0.9  # soft: the sensor saturates (measured 0.93 / 0.94)


def test_padding_counts_nothing_and_the_count_is_not_a_fraction():
    """Padded slots do not change the logit; a pair with more mutual matches in a longer set wins."""
    rng = np.random.default_rng(2)
    q, x = _pairs(rng, [16])
    model = _model()
    t = torch.from_numpy
    with torch.no_grad():
        base = model(t(q)[None], torch.zeros(1, L, dtype=torch.bool), t(x), torch.zeros(1, L, dtype=torch.bool))
        xp = torch.cat([t(x), torch.full((1, 6, DIM), float("nan"))], dim=1)
        pad = torch.cat([torch.zeros(1, L, dtype=torch.bool), torch.ones(1, 6, dtype=torch.bool)], dim=1)
        padded = model(t(q)[None], torch.zeros(1, L, dtype=torch.bool), xp, pad)
        # 4 query slots kept, all 4 matched (fraction 1) vs 16 of 24 matched (fraction 2/3)
        four = torch.zeros(1, 4, dtype=torch.bool)
        short = model(t(q[:4])[None], four, t(x[:, :4]), four)
    torch.testing.assert_close(padded, base, atol=1e-4, rtol=0)
    assert float(base) > float(short)


def test_the_start_keeps_the_published_layout_and_the_reference_agrees():
    model = _model()
    fresh = create_ames(local_dim=DIM)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in fresh.state_dict().items()}
    fresh.load_state_dict(model.state_dict(), strict=True)
    rng = np.random.default_rng(3)
    q, x = _pairs(rng, [0, 6, 20])
    with torch.no_grad():
        fast = model(torch.from_numpy(q)[None].expand(3, -1, -1), torch.zeros(3, L, dtype=torch.bool),
                     torch.from_numpy(x), torch.zeros(3, L, dtype=torch.bool)).numpy()
    with torch.no_grad():
        ref = reference_scores(model, torch.from_numpy(q), torch.zeros(L, dtype=torch.bool), torch.from_numpy(x),
                               torch.zeros(3, L, dtype=torch.bool)).numpy()
    np.testing.assert_allclose(fast, ref, atol=1e-3)


def test_training_moves_every_block_from_the_start():
    """The zeroed residual branches receive gradients: one step changes the output projections."""
    model = _model().train()
    rng = np.random.default_rng(4)
    q, x = _pairs(rng, [0, 16])
    logits = model(torch.from_numpy(q)[None].expand(2, -1, -1), torch.zeros(2, L, dtype=torch.bool),
                   torch.from_numpy(x), torch.zeros(2, L, dtype=torch.bool))
    torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([0.0, 1.0])).backward()
    for i, layer in enumerate(model.decoder.layers):
        for name in ("self_attn", "cross_attn"):
            grad = getattr(layer, name).out_proj.weight.grad
            assert grad is not None and grad.abs().sum() > 0, (i, name)
        assert layer.linear2.weight.grad.abs().sum() > 0, i


def test_bad_input_is_refused():
    rng = np.random.default_rng(5)
    with pytest.raises(ConfigError, match="3 blocks"):
        init_match_prior(create_ames(local_dim=DIM, layers=2), _unit(rng, 100))
    with pytest.raises(ShapeError, match=r"\(n >= 2, 32\)"):
        init_match_prior(create_ames(local_dim=DIM), _unit(rng, 100)[:, :16])
    bad = _unit(rng, 100)
    bad[3, 1] = np.nan
    with pytest.raises(ShapeError, match="NaN"):
        init_match_prior(create_ames(local_dim=DIM), bad)
    with pytest.raises(ConfigError, match="sharpness"):
        MatchStart(sharpness=0.0)
    with pytest.raises(ConfigError, match="whiten"):
        MatchStart(whiten=2.0)


def test_calibration_fits_the_logistic_map_and_refuses_one_class():
    from asymfuse.cloud.ames.match_init import calibrate_classifier

    rng = np.random.default_rng(6)
    z = rng.normal(10.0, 2.0, size=4000)
    y = (rng.random(4000) < 1.0 / (1.0 + np.exp(-(0.5 * z - 5.0)))).astype(np.float64)  # true a = 0.5, b = -5
    model = _model()
    w0, b0 = model.classifier.weight.detach().clone(), model.classifier.bias.detach().clone()
    a, b = calibrate_classifier(model, z, y)
    assert a == pytest.approx(0.5, rel=0.15) and b == pytest.approx(-5.0, rel=0.15)
    torch.testing.assert_close(model.classifier.weight.detach(), a * w0)
    torch.testing.assert_close(model.classifier.bias.detach(), a * b0 + b)
    with pytest.raises(ShapeError, match="both positive and negative"):
        calibrate_classifier(model, z, np.ones_like(z))
    with pytest.raises(ShapeError, match="NaN"):
        calibrate_classifier(model, np.full(4, np.nan), np.array([0, 1, 0, 1]))
