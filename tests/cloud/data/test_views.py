"""View synthesis: geometry against OpenCV's own warp, visibility against brute force, labels."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from asymfuse.cloud.data import homography as G
from asymfuse.cloud.data import views as V
from asymfuse.edge.errors import ConfigError, ShapeError

BOX = (40, 30, 140, 110)  # 100 x 80 region of a 160 x 200 (H x W) photo


def _id_image(height: int = 160, width: int = 200) -> np.ndarray:
    """Every pixel holds its own index y * W + x (float32, exact)."""
    return np.arange(height * width, dtype=np.float32).reshape(height, width)


def _brute_force_visible(box, params, *, max_side: int) -> float:
    """Warp the pixel-index image with OpenCV (nearest) and count region pixels that show.

    A source pixel counts as visible when at least half of its footprint (the view pixels that
    display it on an unbounded canvas) lies inside the frame and outside the occluder.
    """
    ids = _id_image()
    w, h = V.frame_size(box, max_side=max_side)
    hmat = V.view_homography(box, params, (w, h))
    m = 2 * max(w, h)  # margin: the canvas holds the whole warped region
    shift = np.array([[1.0, 0.0, m], [0.0, 1.0, m], [0.0, 0.0, 1.0]])
    canvas = cv2.warpPerspective(ids, shift @ hmat, (w + 2 * m, h + 2 * m), flags=cv2.INTER_NEAREST,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=-1)
    frame = canvas[m:m + h, m:m + w].copy()
    occ = V.occluder_box(params, (w, h))
    if occ is not None:
        frame[occ[1]:occ[3], occ[0]:occ[2]] = -1
    n = ids.size
    total = np.bincount(canvas[canvas >= 0].astype(np.int64), minlength=n)
    shown = np.bincount(frame[frame >= 0].astype(np.int64), minlength=n)
    visible = (total > 0) & (shown >= 0.5 * total)
    x0, y0, x1, y1 = box
    return float(visible.reshape(ids.shape)[y0:y1, x0:x1].mean())


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_visible_fraction_matches_brute_force_pixel_count(seed):
    rng = np.random.default_rng(seed)
    params = V.sample_view_params(rng, severity=0.9)
    # Magnify (>= ~2x) so every visible source pixel is hit by at least one view pixel centre.
    params = replace(params, zoom=float(rng.uniform(0.9, 1.6)), occlusion=0.15)
    expected = _brute_force_visible(BOX, params, max_side=400)
    size = V.frame_size(BOX, max_side=400)
    hmat = V.view_homography(BOX, params, size)
    got = G.visible_fraction(BOX, hmat, size, occluder=V.occluder_box(params, size), grid=4096)
    assert 0.05 < expected < 0.95  # a partial view: the check can fail
    assert got == pytest.approx(expected, abs=0.005)
    coarse = G.visible_fraction(BOX, hmat, size, occluder=V.occluder_box(params, size))
    assert coarse == pytest.approx(expected, abs=0.03)


def test_visible_fraction_partial_and_hand_computed():
    # Region centred and scaled 1:1 into a frame of the same size, then shifted right by half the
    # frame: exactly the left half of the region stays visible.
    params = V.ViewParams(zoom=1.0, shift=(0.5, 0.0))
    size = V.frame_size(BOX, max_side=100)  # aspect 1.25 -> (100, 80), scale 1
    assert size == (100, 80)
    hmat = V.view_homography(BOX, params, size)
    assert G.visible_fraction(BOX, hmat, size) == pytest.approx(0.5, abs=1e-9)
    assert _brute_force_visible(BOX, params, max_side=100) == pytest.approx(0.5, abs=1e-9)
    left = V.view_homography(BOX, V.ViewParams(zoom=1.0, shift=(-0.5, 0.0)), size)
    assert G.visible_fraction(BOX, left, size) == pytest.approx(0.5, abs=1e-9)
    down = V.view_homography(BOX, V.ViewParams(zoom=1.0, shift=(0.0, -0.25)), size)
    assert G.visible_fraction(BOX, down, size) == pytest.approx(0.75, abs=1e-9)
    # The visible half fills view columns 50..99; an occluder over columns 50..74 hides half of it,
    # one over columns 0..49 hides nothing.
    assert G.visible_fraction(BOX, hmat, size, occluder=(0, 0, 50, 80)) == pytest.approx(0.5, abs=1e-9)
    occ = (50, 0, 75, 80)
    assert G.visible_fraction(BOX, hmat, size, occluder=occ) == pytest.approx(0.25, abs=1e-9)


def test_bbx_hand_computed():
    size = V.frame_size(BOX, max_side=100)
    hmat = V.view_homography(BOX, V.ViewParams(zoom=0.8), size)
    # 100 x 80 region in a 100 x 80 frame at zoom 0.8: an 80 x 64 box centred in the frame.
    assert G.region_bbx(BOX, hmat, size) == pytest.approx((10.0, 8.0, 90.0, 72.0), abs=1e-9)
    # Zoomed in, the box is clipped to the frame.
    hmat = V.view_homography(BOX, V.ViewParams(zoom=2.0), size)
    assert G.region_bbx(BOX, hmat, size) == pytest.approx((0.0, 0.0, 100.0, 80.0))


def test_homography_maps_corners():
    src = G.region_corners(BOX)
    dst = src * 1.7 + np.array([3.0, -5.0]) + np.array([[0, 0], [4, 1], [-2, 3], [1, -1]])
    hmat = G.homography_from_points(src, dst)
    mapped, w = G.apply_homography(hmat, src)
    np.testing.assert_allclose(mapped, dst, atol=1e-9)
    assert np.all(w > 0)


def _photo(height: int = 480, width: int = 600) -> V.SourcePhoto:
    rng = np.random.default_rng(0)
    smooth = cv2.resize(rng.integers(0, 256, (12, 15, 3), dtype=np.uint8), (width, height),
                        interpolation=cv2.INTER_CUBIC)
    return V.SourcePhoto.from_image("smooth", smooth)


def test_render_view_is_consistent_and_pure():
    photo = _photo()
    box = (100, 80, 400, 330)
    params = V.sample_view_params(np.random.default_rng(7), severity=0.7)
    pool = (np.full((50, 60, 3), 200, np.uint8),)
    view = V.render_view(photo, box, params, max_side=160, occluder_pool=pool)
    again = V.render_view(photo, box, params, max_side=160, occluder_pool=pool)
    assert view.image.dtype == np.uint8 and view.image.ndim == 3 and max(view.image.shape[:2]) == 160
    np.testing.assert_array_equal(view.image, again.image)
    size = (view.image.shape[1], view.image.shape[0])
    np.testing.assert_allclose(view.homography, V.view_homography(box, params, size))
    assert view.occluder == V.occluder_box(params, size)
    assert view.visibility == G.visible_fraction(box, view.homography, size, occluder=view.occluder)
    x1, y1, x2, y2 = view.bbx
    assert 0 <= x1 <= x2 <= size[0] and 0 <= y1 <= y2 <= size[1]


def test_pyramid_level_matches_full_resolution_warp():
    photo = _photo(960, 1200)
    assert len(photo.levels) >= 3
    box = (0, 0, 1200, 960)
    params = V.ViewParams(zoom=0.9, rotation_deg=10.0)  # scale ~0.12 -> a coarse pyramid level
    view = V.render_view(photo, box, params, max_side=160)
    size = (view.image.shape[1], view.image.shape[0])
    direct = cv2.warpPerspective(photo.image, view.homography, size, flags=cv2.INTER_AREA)
    inner = (slice(20, -20), slice(20, -20))  # away from the frame border colour
    diff = np.abs(view.image[inner].astype(np.int32) - direct[inner].astype(np.int32))
    assert diff.mean() < 3.0


def test_photometric_changes_apply():
    photo = _photo()
    box = (100, 80, 400, 330)
    base = V.render_view(photo, box, V.ViewParams(), max_side=128).image
    darker = V.render_view(photo, box, V.ViewParams(brightness=-0.2), max_side=128).image
    assert darker.astype(np.float64).mean() < base.astype(np.float64).mean() - 30
    blurred = V.render_view(photo, box, V.ViewParams(blur_sigma=2.0, jpeg_quality=30), max_side=128).image
    assert blurred.shape == base.shape and not np.array_equal(blurred, base)


def test_sample_view_params_is_seeded_and_scales_with_severity():
    a = V.sample_view_params(np.random.default_rng(3), severity=0.5)
    b = V.sample_view_params(np.random.default_rng(3), severity=0.5)
    assert a == b
    mild = V.sample_view_params(np.random.default_rng(3), severity=0.0)
    assert mild.geometric_severity() == 0.0 and mild.photometric_severity() == 0.0
    assert V.view_label(1.0, mild) == "easy"
    strong = [V.sample_view_params(np.random.default_rng(s), severity=1.0) for s in range(20)]
    assert np.mean([p.geometric_severity() for p in strong]) > 0.6
    with pytest.raises(ConfigError):
        V.sample_view_params(np.random.default_rng(0), severity=1.5)


def test_labels_follow_documented_thresholds():
    mild = V.ViewParams()
    assert V.view_label(0.01, mild) is None
    assert V.view_label(0.2, mild) == "junk"
    assert V.view_label(0.5, mild) == "hard"
    assert V.view_label(1.0, mild) == "easy"
    extreme = V.ViewParams(perspective=V.MAX_PERSPECTIVE, rotation_deg=V.MAX_ROTATION_DEG)
    assert V.view_label(1.0, extreme) == "junk"
    rng = np.random.default_rng(0)
    for _ in range(300):
        params = V.sample_view_params(rng, severity=float(rng.uniform()))
        vis = float(rng.uniform())
        label = V.view_label(vis, params)
        if vis < V.JUNK_VISIBILITY:
            assert label in ("junk", None)
        if label == "easy":
            assert vis >= V.HARD_VISIBILITY
            assert V.view_difficulty(vis, params) < V.HARD_DIFFICULTY


def test_invalid_inputs_raise():
    with pytest.raises(ConfigError):
        V.ViewParams(zoom=0.0)
    with pytest.raises(ConfigError):
        V.ViewParams(corner_jitter=(0.0,) * 7)
    with pytest.raises(ConfigError):
        V.ViewParams(jpeg_quality=0)
    with pytest.raises(ShapeError):
        V.SourcePhoto.from_image("grey", np.zeros((64, 64), np.uint8))
    with pytest.raises(ConfigError):
        V.render_view(_photo(), (0, 0, 700, 100), V.ViewParams(), max_side=128)
