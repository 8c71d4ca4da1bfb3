"""Training augmentation: determinism, shapes, the crop recipe and its fallback, jitter vs a reference."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from asymfuse.cloud.train.augment import AugmentConfig, augment_image, color_jitter, crop_box, eval_image
from asymfuse.edge.errors import ConfigError, ShapeError
from asymfuse.edge.preprocess import resize_to_spec
from asymfuse.edge.spec import ModelSpec


def _image(h: int = 60, w: int = 90, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], axis=-1)
    return np.clip(base + rng.normal(0, 20, size=base.shape), 0, 255).astype(np.uint8)


def test_config_validation():
    AugmentConfig(crop_scale_min=1.0, crop_ratio=[1, 1], color_jitter=0.0, hflip=True)
    for bad in (dict(crop_scale_min=0.0), dict(crop_scale_min=1.5), dict(crop_ratio=(2.0, 1.0)),
                dict(crop_ratio=(0.0, 1.0)), dict(crop_ratio=(1.0,)), dict(color_jitter=1.0),
                dict(color_jitter=-0.1), dict(hflip=1)):
        with pytest.raises(ConfigError):
            AugmentConfig(**bad)


def test_same_rng_same_output_different_rng_different_output():
    img, cfg = _image(), AugmentConfig()
    a = augment_image(img, rng=np.random.default_rng([1, 2, 3]), size=(32, 48), cfg=cfg)
    b = augment_image(img, rng=np.random.default_rng([1, 2, 3]), size=(32, 48), cfg=cfg)
    c = augment_image(img, rng=np.random.default_rng([1, 2, 4]), size=(32, 48), cfg=cfg)
    assert a.shape == (32, 48, 3) and a.dtype == np.uint8 and a.flags.c_contiguous
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("shape", [(60, 90), (90, 60), (7, 5), (40, 40)])
def test_output_shape_for_any_input(shape):
    img = _image(*shape)
    for seed in range(5):
        out = augment_image(img, rng=np.random.default_rng(seed), size=(24, 16), cfg=AugmentConfig())
        assert out.shape == (24, 16, 3) and out.dtype == np.uint8


def test_bad_inputs_raise():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError):
        augment_image(_image(), rng=rng, size=(0, 16), cfg=AugmentConfig())
    with pytest.raises(ShapeError):
        augment_image(np.zeros((0, 4, 3), np.uint8), rng=rng, size=(8, 8), cfg=AugmentConfig())


def test_random_crops_respect_area_and_ratio():
    cfg = AugmentConfig(crop_scale_min=0.3, crop_ratio=(0.5, 2.0))
    h, w = 300, 400
    areas = []
    for seed in range(200):
        top, left, ch, cw = crop_box(h, w, rng=np.random.default_rng(seed), cfg=cfg)
        assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
        # rounding to whole pixels moves area and ratio by well under 2 % at these sizes
        assert 0.3 * h * w * 0.98 <= ch * cw <= h * w
        assert 0.5 * 0.98 <= cw / ch <= 2.0 * 1.02
        areas.append(ch * cw / (h * w))
    assert min(areas) < 0.45 and max(areas) > 0.85  # the fraction really spans the range


def test_crop_falls_back_to_centre_crop():
    # full-area crops with aspect ratio >= 2 never fit a square image -> centre crop of ratio 2
    cfg = AugmentConfig(crop_scale_min=1.0, crop_ratio=(2.0, 3.0), color_jitter=0.0)
    assert crop_box(100, 100, rng=np.random.default_rng(0), cfg=cfg) == (25, 0, 50, 100)
    # a very wide image: every draw is too tall -> full height, widest allowed ratio
    wide = AugmentConfig(crop_scale_min=0.9, crop_ratio=(3 / 4, 4 / 3))
    assert crop_box(20, 200, rng=np.random.default_rng(1), cfg=wide) == (0, (200 - 27) // 2, 20, 27)
    # and the output pixels are that crop, resized bilinearly
    img = _image(100, 100)
    out = augment_image(img, rng=np.random.default_rng(0), size=(10, 20), cfg=cfg)
    expected = np.asarray(Image.fromarray(img).resize((20, 10), Image.Resampling.BILINEAR, box=(0, 25, 100, 75)))
    assert np.array_equal(out, expected)


def test_whole_image_crop_without_jitter_equals_plain_resize():
    img = _image(64, 64)
    cfg = AugmentConfig(crop_scale_min=1.0, crop_ratio=(1.0, 1.0), color_jitter=0.0)
    spec = ModelSpec(arch="t", embed_dim=4, input_size=(24, 40), embedding_space_id="es-test")
    out = augment_image(img, rng=np.random.default_rng(5), size=(24, 40), cfg=cfg)
    assert np.array_equal(out, resize_to_spec(img, spec))


def _jitter_reference(img: np.ndarray, b: float, c: float, s: float) -> np.ndarray:
    x = img.astype(np.float64)
    x = np.clip(x * b, 0, 255)
    luma = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    x = np.clip((x - luma.mean()) * c + luma.mean(), 0, 255)
    luma = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    x = np.clip((x - luma[..., None]) * s + luma[..., None], 0, 255)
    return np.rint(x)


def test_color_jitter_matches_reference():
    img = _image(30, 40)
    for seed in range(5):
        b, c, s = np.random.default_rng(seed).uniform(0.6, 1.4, size=3)
        out = color_jitter(img, rng=np.random.default_rng(seed), strength=0.4)
        ref = _jitter_reference(img, b, c, s)
        assert out.dtype == np.uint8
        assert np.abs(out.astype(np.int64) - ref).max() <= 1  # float32 vs float64 rounding
    assert not np.array_equal(color_jitter(img, rng=np.random.default_rng(0), strength=0.4), img)


def test_hflip_mirrors_about_half_the_time():
    img = _image(48, 48)
    base = AugmentConfig(color_jitter=0.0)
    flipped = 0
    for seed in range(20):
        plain = augment_image(img, rng=np.random.default_rng(seed), size=(16, 16), cfg=base)
        maybe = augment_image(img, rng=np.random.default_rng(seed), size=(16, 16),
                              cfg=AugmentConfig(color_jitter=0.0, hflip=True))
        if np.array_equal(maybe, plain[:, ::-1]) and not np.array_equal(maybe, plain):
            flipped += 1
        else:
            assert np.array_equal(maybe, plain)
    assert 3 <= flipped <= 17


def test_eval_image_is_the_spec_reference():
    img = _image(50, 70)
    for resize in ("squash", "center_crop", "letterbox"):
        spec = ModelSpec(arch="t", embed_dim=4, input_size=(32, 32), embedding_space_id="es-test", resize=resize)
        assert np.array_equal(eval_image(img, spec=spec), resize_to_spec(img, spec))
