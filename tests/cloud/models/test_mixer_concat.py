"""The concatenation mixer: scaling, PCA whitening vs NumPy, fit preconditions, state-dict round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asymfuse.cloud.models.fusion import FeatureSlot, FusionInputs, GallerySchema
from asymfuse.cloud.models.mixers import ConcatMixer, create_mixer, mixer_from_config
from asymfuse.edge.errors import ConfigError

SCHEMA = GallerySchema(slots=(FeatureSlot("g1", "global", 24), FeatureSlot("g2", "global", 16),
                              FeatureSlot("l1", "local", 8, max_local=6), FeatureSlot("l2", "local", 12, max_local=4)))
TOTAL = 24 + 16 + 8 + 12


def unit(a: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=-1, keepdims=True)
    return np.divide(a, norms, out=np.zeros_like(a), where=norms > 0)


def make_inputs(n: int, *, seed: int = 0, full: bool = False) -> FusionInputs:
    """Correlated unit-norm features (so whitening has work to do); ``full``: no local padding."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 6))
    globals_ = []
    for s in SCHEMA.global_slots:
        mix = rng.standard_normal((6, s.dim))
        globals_.append(torch.from_numpy(unit(latent @ mix + 0.3 * rng.standard_normal((n, s.dim)))))
    locals_, masks = [], []
    for s in SCHEMA.local_slots:
        x = unit(rng.standard_normal((n, s.max_local, s.dim)) + rng.standard_normal(s.dim))
        valid = np.full(n, s.max_local) if full else rng.integers(1, s.max_local + 1, size=n)
        mask = np.arange(s.max_local)[None, :] >= valid[:, None]
        x[mask] = 0.0
        locals_.append(torch.from_numpy(x.astype(np.float32)))
        masks.append(torch.from_numpy(mask))
    return FusionInputs(tuple(g.float() for g in globals_), tuple(locals_), tuple(masks))


def numpy_concat(x: FusionInputs) -> np.ndarray:
    parts = [unit(g.double().numpy()) for g in x.globals_]
    for loc, m in zip(x.locals_, x.local_pads):
        loc, keep = loc.double().numpy(), ~m.numpy()
        parts.append(unit((loc * keep[..., None]).sum(1) / np.maximum(keep.sum(1, keepdims=True), 1)))
    return np.concatenate(parts, axis=1) / np.sqrt(len(parts))


def numpy_whitening(train: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    mu = train.mean(0)
    evals, evecs = np.linalg.eigh(np.cov(train, rowvar=False))
    order = np.argsort(evals)[::-1][:dim]
    evals, evecs = evals[order], evecs[:, order]
    return mu, evecs / np.sqrt(evals + 1e-6 * evals[0])


def build(*, dim: int | None = 20, whiten: bool = True) -> ConcatMixer:
    mixer = create_mixer("concat", schema=SCHEMA, embed_dim=dim, whiten=whiten)
    assert isinstance(mixer, ConcatMixer)
    return mixer


def test_plain_concatenation_matches_numpy_and_is_unit_norm_before_normalising():
    mixer, x = build(dim=None, whiten=False), make_inputs(7, full=True)
    assert mixer.embed_dim == TOTAL and not list(mixer.parameters()) and not list(mixer.buffers())
    np.testing.assert_allclose(mixer.concatenate(x).norm(dim=1).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(mixer(x).numpy(), unit(numpy_concat(x)), atol=1e-6)
    mixer.fit(x)  # no-op without whitening
    assert mixer_from_config(mixer.config()).embed_dim == TOTAL


def test_whitening_matches_numpy_up_to_sign_and_whitens_the_training_rows():
    mixer, train, test = build(dim=20), make_inputs(300, seed=1), make_inputs(9, seed=2)
    mixer.fit(train)
    mu, proj = numpy_whitening(numpy_concat(train), 20)
    np.testing.assert_allclose(mixer.mean.numpy(), mu, atol=1e-6)
    signs = np.sign(np.sum(mixer.projection.double().numpy() * proj, axis=0))
    np.testing.assert_allclose(mixer.projection.numpy(), proj * signs, rtol=1e-4, atol=1e-4)
    want = unit((numpy_concat(test) - mu) @ proj * signs)
    np.testing.assert_allclose(mixer(test).numpy(), want, atol=1e-5)
    with torch.no_grad():
        white = mixer.mix(train).double().numpy()
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(20), atol=1e-4)
    np.testing.assert_allclose(white.mean(0), 0.0, atol=1e-5)


def test_forward_before_fit_raises():
    with pytest.raises(ConfigError, match=r"call fit\(train inputs\) first"):
        build()(make_inputs(3))


def test_dim_too_large_for_the_rows_or_the_features_raises():
    with pytest.raises(ConfigError, match=r"min\(N - 1, D\) = 9"):
        build(dim=20).fit(make_inputs(10))
    with pytest.raises(ConfigError, match=f"concatenated dimension {TOTAL}"):
        build(dim=TOTAL + 1)
    with pytest.raises(ConfigError, match=f"dim={TOTAL}"):
        build(dim=20, whiten=False)
    with pytest.raises(ConfigError, match="dim"):
        build(dim=None, whiten=True)


def test_constant_training_rows_raise():
    x = make_inputs(1)
    same = FusionInputs(*(tuple(t.expand(30, *t.shape[1:]) for t in part)
                          for part in (x.globals_, x.locals_, x.local_pads)))
    with pytest.raises(ConfigError, match="zero variance"):
        build(dim=5).fit(same)


def test_fitted_state_dict_round_trips_into_a_fresh_instance():
    mixer = build(dim=16)
    mixer.fit(make_inputs(100, seed=3))
    fresh = mixer_from_config(mixer.config())
    assert fresh.mean.shape == mixer.mean.shape and fresh.projection.shape == mixer.projection.shape
    with pytest.raises(ConfigError, match="fit"):
        fresh(make_inputs(2))
    fresh.load_state_dict(mixer.state_dict())
    x = make_inputs(5, seed=4)
    assert torch.equal(fresh(x), mixer(x))
    assert set(mixer.state_dict()) == {"mean", "projection", "fitted"}


def test_fit_is_deterministic_including_eigenvector_signs():
    a, b = build(dim=12), build(dim=12)
    a.fit(make_inputs(80, seed=5))
    b.fit(make_inputs(80, seed=5))
    assert torch.equal(a.projection, b.projection)
    col_max = a.projection.abs().argmax(dim=0)
    assert (a.projection[col_max, torch.arange(12)] > 0).all()


def test_input_weights_and_shrink_match_numpy():
    """Weighted concatenation (still unit-norm) and shrinkage whitening, against a NumPy reference."""
    weights, shrink = (1.0, 0.5, 2.0, 0.25), 0.3
    mixer = create_mixer("concat", schema=SCHEMA, embed_dim=20, whiten=True, input_weights=weights, shrink=shrink)
    train, test = make_inputs(300, seed=1, full=True), make_inputs(9, seed=2, full=True)
    mixer.fit(train)
    dims = [s.dim for s in SCHEMA.slots]
    scale = np.repeat(np.asarray(weights), dims) * np.sqrt(len(weights)) / np.linalg.norm(weights)

    def weighted(x: FusionInputs) -> np.ndarray:
        return numpy_concat(x) * scale

    np.testing.assert_allclose(mixer.concatenate(test).norm(dim=1).numpy(), 1.0, atol=1e-6)
    np.testing.assert_allclose(mixer.concatenate(test).numpy(), weighted(test), atol=1e-6)
    t = weighted(train)
    mu = t.mean(0)
    evals, evecs = np.linalg.eigh(np.cov(t, rowvar=False))
    order = np.argsort(evals)[::-1][:20]
    evals, evecs = evals[order], evecs[:, order]
    proj = evecs / np.sqrt(evals + 1e-6 * evals[0] + shrink * evals.mean())
    signs = np.sign(np.sum(mixer.projection.double().numpy() * proj, axis=0))
    np.testing.assert_allclose(mixer.projection.numpy(), proj * signs, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(mixer(test).numpy(), unit((weighted(test) - mu) @ proj * signs), atol=1e-5)
    cfg = mixer.config()
    assert cfg["kwargs"]["input_weights"] == list(weights) and cfg["kwargs"]["shrink"] == shrink
    rebuilt = mixer_from_config(cfg)
    rebuilt.load_state_dict(mixer.state_dict())
    np.testing.assert_allclose(rebuilt(test).numpy(), mixer(test).numpy(), atol=0)
    assert "input_weights" not in build().config()["kwargs"]  # unset options are not recorded


@pytest.mark.parametrize("kwargs, match", [
    ({"input_weights": (1.0, 2.0)}, "2 values for the 4 inputs"),
    ({"input_weights": (1.0, 0.0, 1.0, 1.0)}, "finite numbers > 0"),
    ({"input_weights": (1.0, float("nan"), 1.0, 1.0)}, "finite numbers > 0"),
    ({"shrink": -0.1}, "shrink must be a number >= 0"),
])
def test_bad_input_weights_or_shrink_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        create_mixer("concat", schema=SCHEMA, embed_dim=20, whiten=True, **kwargs)
