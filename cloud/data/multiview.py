"""A small multi-view set from *genuine* image pairs (two cameras, not synthetic warps).

Sources:

- skimage's ``stereo_motorcycle`` (always): the left view is the query, the right view the
  positive. The query ``bbx`` keeps the columns that the right camera also sees (from the
  ground-truth disparity).
- OpenCV's sample images when the Debian package ``opencv-doc`` is installed (looked up in
  :data:`OPENCV_SAMPLE_DIRS`): box/box_in_scene, graf1/graf3, left01/right01, aloeL/aloeR.
  Missing files are skipped silently (logged at INFO).

Labels per pair (documented choice):

- the genuine other view, whole -> ``hard``;
- for pairs whose views overlap densely (stereo, graffiti): a crop of the other view keeping
  >= ``HARD_CROP_AREA`` (0.5) of its area -> ``hard``, a smaller crop -> ``junk``;
- a mild synthetic view of the query image itself (a near duplicate) -> the label
  :func:`~asymfuse.cloud.data.views.view_label` gives it (``easy`` for the mild severities used).

Negatives are random crops of unrelated photos passed in by the caller. The benchmark writes the
set as the revisitop dataset ``<out>/multiview/gnd_<name>-multiview.pkl``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from asymfuse.cloud.data.photos import skimage_data
from asymfuse.cloud.data.views import SourcePhoto, render_view, sample_view_params, view_label
from asymfuse.edge.errors import ConfigError
from asymfuse.edge.preprocess import as_rgb_uint8, load_image

LOG = logging.getLogger(__name__)

OPENCV_SAMPLE_DIRS: tuple[str, ...] = (
    "/usr/share/doc/opencv-doc/examples/data",
    "/usr/share/opencv4/samples/data",
)
# (query stem, other-view stem, the views overlap densely so crops of the other view are valid)
OPENCV_PAIRS: tuple[tuple[str, str, bool], ...] = (
    ("box", "box_in_scene", False),
    ("graf1", "graf3", True),
    ("left01", "right01", True),
    ("aloeL", "aloeR", True),
)
HARD_CROP_AREA = 0.5
_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class ViewPair:
    """Two genuine views of one scene: ``(H, W, 3)`` uint8 RGB each; ``query_bbx`` is pixel-edge."""

    name: str
    query: np.ndarray
    other: np.ndarray
    query_bbx: tuple[float, float, float, float]
    dense_overlap: bool


@dataclass(frozen=True)
class MultiviewSet:
    """A revisitop-style set held in memory.

    ``queries``/``gallery`` are ``[(name, (H, W, 3) uint8 RGB), ...]``; ``gnd`` has one dict per
    query with ``bbx`` (4 floats) and ``easy``/``hard``/``junk`` (0-based gallery indices).
    """

    queries: list[tuple[str, np.ndarray]]
    gallery: list[tuple[str, np.ndarray]]
    gnd: list[dict]
    pairs: list[str]


def stereo_motorcycle_pair() -> ViewPair:
    """skimage's rectified stereo pair; the bbx drops left columns the right camera cannot see.

    Raises:
        MissingDependencyError: scikit-image is not installed.
    """
    left, right, disparity = skimage_data().stereo_motorcycle()
    h, w = disparity.shape
    cols = np.arange(w)[None, :]
    seen = np.isfinite(disparity) & (disparity > 0) & (cols - np.nan_to_num(disparity) >= 0)
    first = int(np.argmax(seen.mean(axis=0) >= 0.5))
    return ViewPair(name="motorcycle", query=as_rgb_uint8(left), other=as_rgb_uint8(right),
                    query_bbx=(float(first), 0.0, float(w), float(h)), dense_overlap=True)


def opencv_sample_pairs(*, search_dirs: Sequence[str | Path] = OPENCV_SAMPLE_DIRS) -> list[ViewPair]:
    """The OpenCV sample pairs found in the first of ``search_dirs`` that holds them.

    Returns:
        Pairs in :data:`OPENCV_PAIRS` order; pairs with a missing file are skipped.

    Raises:
        CorruptDataError: a sample file exists but cannot be decoded.
    """
    pairs = []
    for q_stem, o_stem, dense in OPENCV_PAIRS:
        q_path, o_path = _find(q_stem, search_dirs), _find(o_stem, search_dirs)
        if q_path is None or o_path is None:
            LOG.debug("OpenCV sample pair %s/%s not found in %s; skipped", q_stem, o_stem,
                     ", ".join(map(str, search_dirs)))
            continue
        query = load_image(q_path)
        pairs.append(ViewPair(name=q_stem, query=query, other=load_image(o_path),
                              query_bbx=(0.0, 0.0, float(query.shape[1]), float(query.shape[0])),
                              dense_overlap=dense))
    return pairs


def build_multiview(*, seed: int, max_side: int, negatives: Sequence[np.ndarray], n_distractors: int,
                    search_dirs: Sequence[str | Path] = OPENCV_SAMPLE_DIRS) -> MultiviewSet:
    """Assemble the multi-view set: one query per genuine pair, positives, junk and negatives.

    Args:
        seed: drives crops, the query near-duplicate and the gallery order.
        max_side: every image is resized so its long side is ``max_side`` px.
        negatives: ``(H, W, 3)`` uint8 photos unrelated to the pairs; crops of them are distractors.
        n_distractors: how many distractor crops to add.
        search_dirs: where to look for OpenCV's sample images.

    Raises:
        ConfigError: ``max_side`` < 16, ``n_distractors`` < 0, or distractors without negatives.
        CorruptDataError: a sample image is unreadable.
    """
    if max_side < 16 or n_distractors < 0 or (n_distractors and not negatives):
        raise ConfigError("build_multiview needs max_side >= 16, n_distractors >= 0 and some "
                          "negatives when n_distractors > 0")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    pairs = [stereo_motorcycle_pair(), *opencv_sample_pairs(search_dirs=search_dirs)]
    queries, items = [], []  # items: (name, image, {query index: label})
    for qi, pair in enumerate(pairs):
        query, scale = _fit(pair.query, max_side)
        limits = np.array([query.shape[1], query.shape[0]] * 2, np.float64)
        clipped = np.clip(np.asarray(pair.query_bbx) * scale, 0, limits)
        queries.append((f"{pair.name}_query", query, tuple(float(v) for v in clipped)))
        items.extend(_pair_gallery(qi, pair, rng, max_side))
    for k in range(n_distractors):
        photo = negatives[int(rng.integers(len(negatives)))]
        items.append((f"distractor_{k:03d}", _fit(_crop(photo, rng, (0.4, 0.9)), max_side)[0], {}))
    order = rng.permutation(len(items))
    gallery = [(items[i][0], items[i][1]) for i in order]
    gnd = []
    for qi, (_, _, bbx) in enumerate(queries):
        entry: dict = {"bbx": list(bbx), "easy": [], "hard": [], "junk": []}
        for gi, i in enumerate(order):
            label = items[i][2].get(qi)
            if label is not None:
                entry[label].append(gi)
        gnd.append(entry)
    return MultiviewSet(queries=[(n, im) for n, im, _ in queries], gallery=gallery, gnd=gnd,
                        pairs=[p.name for p in pairs])


def _pair_gallery(qi: int, pair: ViewPair, rng: np.random.Generator, max_side: int) -> list:
    items = [(f"{pair.name}_other", _fit(pair.other, max_side)[0], {qi: "hard"})]
    if pair.dense_overlap:
        for tag, side in (("a", (0.72, 0.88)), ("b", (0.4, 0.52))):
            crop = _crop(pair.other, rng, side)
            area = crop.shape[0] * crop.shape[1] / (pair.other.shape[0] * pair.other.shape[1])
            label = "hard" if area >= HARD_CROP_AREA else "junk"
            items.append((f"{pair.name}_other_crop{tag}", _fit(crop, max_side)[0], {qi: label}))
    box = tuple(int(round(v)) for v in pair.query_bbx)
    params = sample_view_params(rng, severity=float(rng.uniform(0.05, 0.15)), occlusion=False)
    view = render_view(SourcePhoto.from_image(pair.name, pair.query), box, params, max_side=max_side)
    label = view_label(view.visibility, params)
    items.append((f"{pair.name}_near_duplicate", view.image, {} if label is None else {qi: label}))
    return items


def _crop(image: np.ndarray, rng: np.random.Generator, side: tuple[float, float]) -> np.ndarray:
    h, w = image.shape[:2]
    f = float(rng.uniform(*side))
    ch, cw = max(1, int(round(h * f))), max(1, int(round(w * f)))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return image[y:y + ch, x:x + cw]


def _fit(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(image, size, interpolation=interp)), scale


def _find(stem: str, search_dirs: Sequence[str | Path]) -> Path | None:
    for folder in search_dirs:
        for ext in _EXTENSIONS:
            path = Path(folder) / f"{stem}{ext}"
            if path.is_file():
                return path
    return None

