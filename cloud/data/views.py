"""Synthesise views of an instance region of a real photo, and grade how hard each view is.

A view is rendered from the *full* source photo with one region as the target, so views show
surrounding context where the photo has some (outside the photo the frame is a constant colour).
Geometry is one homography, source pixels -> view pixels: scale (``zoom``), rotation, an offset of
the region centre (``shift``) and a perspective jitter of the region's four corners. Then come an
occluding rectangle (a patch of another image, or smooth noise), colour changes, Gaussian blur and
a JPEG re-compression.

Coordinates: pixel centres are integers (OpenCV's convention); a box ``(x0, y0, x1, y1)`` of
integer pixel indices is exclusive at ``x1``/``y1``. Reported ``bbx`` values use pixel-edge
coordinates, so the whole view is ``[0, 0, W, H]``.

Visibility is measured honestly: the fraction of the region's source pixels (sampled on a grid of
up to ``grid x grid`` pixel centres) that land inside the view frame and outside the occluder.

Labels (revisitop degrees) come from :func:`view_label`, thresholds below:

- no relation (a negative): visibility < ``MIN_RELATED_VISIBILITY`` (0.02);
- ``junk``: visibility < ``JUNK_VISIBILITY`` (0.3), or geometric severity >= ``EXTREME_WARP``
  (0.9), or difficulty >= ``JUNK_DIFFICULTY`` (0.6);
- ``hard``: visibility < ``HARD_VISIBILITY`` (0.7) or difficulty >= ``HARD_DIFFICULTY`` (0.3);
- ``easy``: everything milder.

``difficulty = 0.5 * (1 - visibility) + 0.35 * geometric + 0.15 * photometric``, each severity in
[0, 1] (see :meth:`ViewParams.geometric_severity` and :meth:`ViewParams.photometric_severity`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import cv2
import numpy as np

from asymfuse.cloud.data.homography import (Box, apply_homography, homography_from_points, region_bbx, region_corners,
                                            visible_fraction)
from asymfuse.edge.errors import ConfigError, ShapeError

Label = Literal["easy", "hard", "junk"]

MIN_RELATED_VISIBILITY = 0.02
JUNK_VISIBILITY = 0.3
HARD_VISIBILITY = 0.7
EXTREME_WARP = 0.9
JUNK_DIFFICULTY = 0.6
HARD_DIFFICULTY = 0.3

# Parameter magnitudes at severity 1; severities are measured against the same scales.
ZOOM_REF = 0.8              # mild views show the region at 80% of the frame, context around it
MAX_LOG_ZOOM = math.log(2.6)
MAX_ROTATION_DEG = 40.0
MAX_PERSPECTIVE = 0.28      # corner jitter, fraction of the region's rendered size
MAX_SHIFT = 0.35            # offset of the region centre, fraction of the frame
MAX_OCCLUSION = 0.45        # occluder area, fraction of the frame
MAX_BLUR_SIGMA = 2.5
JPEG_BEST, JPEG_WORST = 95, 30
MAX_BRIGHTNESS = 0.3        # additive, fraction of 255
MAX_CONTRAST = 0.4          # |contrast - 1|
MAX_SATURATION = 0.6        # |saturation - 1|
MAX_HUE_DEG = 20.0


@dataclass(frozen=True)
class ViewParams:
    """Everything that defines a view; rendering is a pure function of these and the photo.

    ``corner_jitter`` holds 8 values in [-1, 1] (dx, dy per region corner, clockwise from the
    top-left) scaled by ``perspective``; ``occluder_center`` is a frame fraction; ``seed`` drives
    the border colour and the occluder fill.
    """

    zoom: float = ZOOM_REF
    rotation_deg: float = 0.0
    perspective: float = 0.0
    corner_jitter: tuple[float, ...] = (0.0,) * 8
    shift: tuple[float, float] = (0.0, 0.0)
    occlusion: float = 0.0
    occluder_center: tuple[float, float] = (0.5, 0.5)
    occluder_aspect: float = 1.0
    blur_sigma: float = 0.0
    jpeg_quality: int = 100
    brightness: float = 0.0
    contrast: float = 1.0
    saturation: float = 1.0
    hue_deg: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not (self.zoom > 0 and self.contrast > 0 and self.saturation >= 0):
            raise ConfigError(f"zoom and contrast must be > 0 and saturation >= 0, got {self}")
        if len(self.corner_jitter) != 8 or max(abs(v) for v in self.corner_jitter) > 1:
            raise ConfigError("corner_jitter needs 8 values in [-1, 1]")
        if not (0 <= self.perspective <= 0.45 and 0 <= self.occlusion < 1 and self.blur_sigma >= 0):
            raise ConfigError("need 0 <= perspective <= 0.45, 0 <= occlusion < 1, blur_sigma >= 0")
        if not (1 <= self.jpeg_quality <= 100 and self.occluder_aspect > 0):
            raise ConfigError("jpeg_quality must be in [1, 100] and occluder_aspect > 0")

    def geometric_severity(self) -> float:
        """Max of the normalised zoom change, rotation and perspective, in [0, 1]."""
        parts = (abs(math.log(self.zoom / ZOOM_REF)) / MAX_LOG_ZOOM,
                 abs(self.rotation_deg) / MAX_ROTATION_DEG, self.perspective / MAX_PERSPECTIVE)
        return float(min(max(parts), 1.0))

    def photometric_severity(self) -> float:
        """Max of the normalised blur, JPEG and colour changes, in [0, 1]."""
        jpeg = max(JPEG_BEST - self.jpeg_quality, 0) / (JPEG_BEST - JPEG_WORST)
        parts = (self.blur_sigma / MAX_BLUR_SIGMA, jpeg, abs(self.brightness) / MAX_BRIGHTNESS,
                 abs(self.contrast - 1) / MAX_CONTRAST, abs(self.saturation - 1) / MAX_SATURATION,
                 abs(self.hue_deg) / MAX_HUE_DEG)
        return float(min(max(parts), 1.0))

    def to_dict(self) -> dict:
        """JSON-ready copy (tuples become lists)."""
        return asdict(self)


@dataclass(frozen=True)
class SourcePhoto:
    """A photo and its image pyramid: ``levels[k]`` is ``(H_k, W_k, 3)`` uint8, downscaled 2**k."""

    name: str
    levels: tuple[np.ndarray, ...]

    @classmethod
    def from_image(cls, name: str, image: np.ndarray, *, min_side: int = 48) -> SourcePhoto:
        """Build the pyramid (cv2.pyrDown) down to a short side of about ``min_side``.

        Raises:
            ShapeError: ``image`` is not ``(H, W, 3)`` uint8.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ShapeError(f"photo {name!r} must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        levels = [np.ascontiguousarray(image)]
        while min(levels[-1].shape[:2]) >= 2 * min_side:
            levels.append(cv2.pyrDown(levels[-1]))
        return cls(name=name, levels=tuple(levels))

    @property
    def image(self) -> np.ndarray:
        """The full-resolution photo, ``(H, W, 3)`` uint8."""
        return self.levels[0]


@dataclass(frozen=True)
class RenderedView:
    """A rendered view.

    - ``image``: ``(h, w, 3)`` uint8 RGB.
    - ``homography``: ``(3, 3)`` float64, source-photo pixels -> view pixels.
    - ``occluder``: ``(x0, y0, x1, y1)`` view pixels (exclusive), or None.
    - ``visibility``: visible fraction of the target region, in [0, 1].
    - ``bbx``: the target region's bounding box in the view, pixel-edge coordinates, clipped.
    """

    image: np.ndarray
    params: ViewParams
    homography: np.ndarray
    occluder: Box | None
    visibility: float
    bbx: tuple[float, float, float, float]


def sample_view_params(rng: np.random.Generator, *, severity: float, occlusion: bool = True) -> ViewParams:
    """Draw random view parameters whose magnitudes grow with ``severity`` in [0, 1].

    Each magnitude is ``severity * MAX_* * U(0.5, 1)`` with a random sign; occlusion happens with
    probability ``severity`` and blur with ``0.2 + 0.6 * severity``.

    Raises:
        ConfigError: ``severity`` is outside [0, 1].
    """
    if not 0.0 <= severity <= 1.0:
        raise ConfigError(f"severity must be in [0, 1], got {severity}")

    def mag(limit: float) -> float:
        return float(severity * limit * rng.uniform(0.5, 1.0))

    def sign() -> float:
        return float(rng.choice((-1.0, 1.0)))

    angle = rng.uniform(0, 2 * math.pi)
    shift_len = mag(MAX_SHIFT)
    occ = mag(MAX_OCCLUSION) if occlusion and rng.random() < severity else 0.0
    return ViewParams(
        zoom=ZOOM_REF * math.exp(sign() * mag(MAX_LOG_ZOOM)),
        rotation_deg=sign() * mag(MAX_ROTATION_DEG),
        perspective=mag(MAX_PERSPECTIVE),
        corner_jitter=tuple(float(v) for v in rng.uniform(-1, 1, 8)),
        shift=(shift_len * math.cos(angle), shift_len * math.sin(angle)),
        occlusion=occ,
        occluder_center=(float(rng.uniform(0.25, 0.75)), float(rng.uniform(0.25, 0.75))),
        occluder_aspect=float(math.exp(rng.uniform(-0.7, 0.7))),
        blur_sigma=mag(MAX_BLUR_SIGMA) if rng.random() < 0.2 + 0.6 * severity else 0.0,
        jpeg_quality=int(round(JPEG_BEST - mag(JPEG_BEST - JPEG_WORST))),
        brightness=sign() * mag(MAX_BRIGHTNESS),
        contrast=1.0 + sign() * mag(MAX_CONTRAST),
        saturation=1.0 + sign() * mag(MAX_SATURATION),
        hue_deg=sign() * mag(MAX_HUE_DEG),
        seed=int(rng.integers(0, 2**31 - 1)),
    )


def frame_size(box: Box, *, max_side: int) -> tuple[int, int]:
    """View size ``(w, h)``: the region's aspect ratio (clipped to [0.6, 1.67]), long side ``max_side``."""
    aspect = min(max((box[2] - box[0]) / (box[3] - box[1]), 0.6), 1 / 0.6)
    if aspect >= 1:
        return max_side, max(1, round(max_side / aspect))
    return max(1, round(max_side * aspect)), max_side


def view_homography(box: Box, params: ViewParams, size: tuple[int, int]) -> np.ndarray:
    """The ``(3, 3)`` float64 homography mapping source pixels to view pixels for frame ``size`` (w, h)."""
    src = region_corners(box)
    rw, rh = box[2] - box[0], box[3] - box[1]
    w, h = size
    scale = min(w / rw, h / rh) * params.zoom
    theta = math.radians(params.rotation_deg)
    rot = scale * np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    centre_dst = np.array([(w - 1) / 2 + params.shift[0] * w, (h - 1) / 2 + params.shift[1] * h])
    dst = (src - src.mean(axis=0)) @ rot.T + centre_dst
    jitter = np.reshape(params.corner_jitter, (4, 2)) * params.perspective * scale * np.array([rw, rh])
    return homography_from_points(src, dst + jitter)


def occluder_box(params: ViewParams, size: tuple[int, int]) -> Box | None:
    """The occluding rectangle ``(x0, y0, x1, y1)`` in view pixels, or None without occlusion."""
    w, h = size
    area = params.occlusion * w * h
    if area < 1:
        return None
    ow = int(round(min(math.sqrt(area * params.occluder_aspect), w)))
    oh = int(round(min(area / max(ow, 1), h)))
    if ow < 1 or oh < 1:
        return None
    x0 = int(np.clip(round(params.occluder_center[0] * w - ow / 2), 0, w - ow))
    y0 = int(np.clip(round(params.occluder_center[1] * h - oh / 2), 0, h - oh))
    return x0, y0, x0 + ow, y0 + oh


def render_view(photo: SourcePhoto, box: Box, params: ViewParams, *, max_side: int,
                occluder_pool: tuple[np.ndarray, ...] = ()) -> RenderedView:
    """Render one view of region ``box`` of ``photo``.

    Args:
        photo: the source photo with its pyramid.
        box: the target region, source pixels.
        params: the view parameters.
        max_side: long side of the view in pixels.
        occluder_pool: ``(h, w, 3)`` uint8 images the occluder may be cut from (else noise).

    Returns:
        The view; ``image`` is ``(h, w, 3)`` uint8 RGB with ``max(h, w) == max_side``.

    Raises:
        ConfigError: ``box`` is empty or outside the photo, or ``max_side`` < 16.
    """
    height, width = photo.image.shape[:2]
    if not (0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height) or max_side < 16:
        raise ConfigError(f"box {box} must lie inside the {width}x{height} photo and max_side "
                          f"({max_side}) must be >= 16")
    size = frame_size(box, max_side=max_side)
    hmat = view_homography(box, params, size)
    rng = np.random.default_rng(params.seed)
    border = np.clip(rng.integers(0, 256) + rng.integers(-16, 17, 3), 0, 255)  # a muted mat colour
    image = _warp(photo, hmat, size, border=tuple(int(v) for v in border))
    occ = occluder_box(params, size)
    if occ is not None:
        image[occ[1]:occ[3], occ[0]:occ[2]] = _occluder_fill(rng, occ, occluder_pool)
    image = _photometric(image, params)
    return RenderedView(image=image, params=params, homography=hmat, occluder=occ,
                        visibility=visible_fraction(box, hmat, size, occluder=occ),
                        bbx=region_bbx(box, hmat, size))


def _warp(photo: SourcePhoto, hmat: np.ndarray, size: tuple[int, int], *, border: tuple[int, ...]) -> np.ndarray:
    # Local scale (view px per source px) at the frame centre; pick the pyramid level that keeps
    # the minification left to warpPerspective below 2x (it only interpolates bilinearly).
    cx, cy = (size[0] - 1) / 2, (size[1] - 1) / 2
    pts, _ = apply_homography(np.linalg.inv(hmat), np.array([[cx, cy], [cx + 1, cy], [cx, cy + 1]]))
    (ax, ay), (bx, by) = pts[1] - pts[0], pts[2] - pts[0]
    area = abs(ax * by - ay * bx)
    scale = 1.0 / math.sqrt(max(float(area), 1e-12))
    level = 0 if scale >= 1 else min(int(math.floor(math.log2(1 / scale))), len(photo.levels) - 1)
    to_level = np.diag([2.0**level, 2.0**level, 1.0])
    return cv2.warpPerspective(photo.levels[level], hmat @ to_level, size, flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=border)


def _occluder_fill(rng: np.random.Generator, occ: Box, pool: tuple[np.ndarray, ...]) -> np.ndarray:
    ow, oh = occ[2] - occ[0], occ[3] - occ[1]
    if pool and rng.random() < 0.7:
        src = pool[int(rng.integers(len(pool)))]
        sh, sw = src.shape[:2]
        cw = int(rng.integers(max(sw // 3, 1), sw + 1))
        ch = int(min(sh, max(1, round(cw * oh / ow))))
        cx, cy = int(rng.integers(0, sw - cw + 1)), int(rng.integers(0, sh - ch + 1))
        return cv2.resize(src[cy:cy + ch, cx:cx + cw], (ow, oh), interpolation=cv2.INTER_LINEAR)
    coarse = rng.integers(0, 256, (int(rng.integers(2, 9)), int(rng.integers(2, 9)), 3)).astype(np.uint8)
    noise = cv2.resize(coarse, (ow, oh), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    noise += rng.integers(-20, 21, noise.shape).astype(np.int16)
    return np.clip(noise, 0, 255).astype(np.uint8)


def _photometric(image: np.ndarray, params: ViewParams) -> np.ndarray:
    if params.hue_deg:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + round(params.hue_deg / 2)) % 180
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    f = image.astype(np.float32)
    grey = f @ np.array([0.299, 0.587, 0.114], np.float32)
    f = grey[..., None] + (f - grey[..., None]) * np.float32(params.saturation)
    mean = np.float32(grey.mean(dtype=np.float64))
    f = (f - mean) * np.float32(params.contrast) + mean + np.float32(params.brightness * 255)
    image = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    if params.blur_sigma > 0.05:
        image = cv2.GaussianBlur(image, (0, 0), params.blur_sigma)
    if params.jpeg_quality < 100:
        image = jpeg_roundtrip(image, quality=params.jpeg_quality)
    return image


def jpeg_roundtrip(image: np.ndarray, *, quality: int) -> np.ndarray:
    """Compress ``(H, W, 3)`` uint8 RGB to JPEG at ``quality`` and decode it again.

    Raises:
        ShapeError: OpenCV cannot encode the array (wrong shape or dtype).
    """
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
    if decoded is None:
        raise ShapeError(f"OpenCV could not JPEG round-trip an image of shape {image.shape}")
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def view_difficulty(visibility: float, params: ViewParams) -> float:
    """Difficulty in [0, 1]: ``0.5 (1 - visibility) + 0.35 geometric + 0.15 photometric``."""
    score = 0.5 * (1.0 - visibility) + 0.35 * params.geometric_severity() + 0.15 * params.photometric_severity()
    return float(min(max(score, 0.0), 1.0))


def view_label(visibility: float, params: ViewParams) -> Label | None:
    """The revisitop degree of an image showing a region at ``visibility``; None = unrelated.

    Thresholds are documented in the module docstring.
    """
    if visibility < MIN_RELATED_VISIBILITY:
        return None
    difficulty = view_difficulty(visibility, params)
    if (visibility < JUNK_VISIBILITY or params.geometric_severity() >= EXTREME_WARP
            or difficulty >= JUNK_DIFFICULTY):
        return "junk"
    if visibility < HARD_VISIBILITY or difficulty >= HARD_DIFFICULTY:
        return "hard"
    return "easy"
