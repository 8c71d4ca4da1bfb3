"""Real photo sources for the embedded benchmark, and their tiling into instance regions.

Two sources exist:

- ``"skimage"``: the real photographs that ship inside scikit-image (no download needed). The
  synthetic images (colour wheel, checkerboard, blobs, logo, phantom, ...) are left out because
  they are not photos, and the stereo pair goes to :mod:`asymfuse.cloud.data.multiview`.
- a folder of the user's own photos (jpg, png, bmp, tif, webp), read non-recursively.

A photo becomes one or more *instances*: big photos are cut into a grid of non-overlapping
regions (:func:`tile_photo`), each region being one instance of the benchmark.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

from asymfuse.edge.errors import ConfigError, missing_dependency, unknown_name
from asymfuse.edge.preprocess import as_rgb_uint8, load_image

LOG = logging.getLogger(__name__)

SKIMAGE_SOURCE = "skimage"

# Real photographs in skimage.data that load offline (the package ships them). Sorted by name.
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass",
    "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket",
    "text",
)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

# Photos whose short side is below this are too small to synthesise views from.
MIN_PHOTO_SIDE = 64


@dataclass(frozen=True)
class Region:
    """One instance region of a source photo.

    ``box`` is ``(x0, y0, x1, y1)`` in source-photo pixels, ``x1``/``y1`` exclusive; ``index`` is
    the row-major position of the region in its photo's grid.
    """

    photo: str
    index: int
    box: tuple[int, int, int, int]

    @property
    def key(self) -> str:
        """A stable id, ``"<photo>#<index>"``."""
        return f"{self.photo}#{self.index}"


def list_skimage_photos() -> list[str]:
    """Names of the offline skimage photographs used as the default source, sorted."""
    return list(SKIMAGE_PHOTOS)


def load_skimage_photo(name: str) -> np.ndarray:
    """Load one skimage photograph as RGB.

    Returns:
        ``(H, W, 3)`` uint8 RGB (grey photos are replicated to three channels).

    Raises:
        UnknownNameError: ``name`` is not in :func:`list_skimage_photos`.
        MissingDependencyError: scikit-image is not installed.
    """
    if name not in SKIMAGE_PHOTOS:
        raise unknown_name("skimage photo", name, SKIMAGE_PHOTOS)
    return as_rgb_uint8(getattr(skimage_data(), name)())


def load_photo_source(source: str | os.PathLike[str]) -> list[tuple[str, np.ndarray]]:
    """Load every photo of a source, in a deterministic order.

    Args:
        source: ``"skimage"`` or the path of a folder of photos (read non-recursively; hidden
            files and files with other extensions are ignored).

    Returns:
        ``[(name, image), ...]`` with ``image`` ``(H, W, 3)`` uint8 RGB. skimage photos are named
        after their loader and come in :data:`SKIMAGE_PHOTOS` order; folder photos are named by
        file name and sorted by it. Photos with a side below :data:`MIN_PHOTO_SIDE` are skipped
        with a warning.

    Raises:
        ConfigError: ``source`` is neither ``"skimage"`` nor an existing folder, or the folder
            holds no photo.
        CorruptDataError: a photo file in the folder cannot be decoded (the message names it).
        MissingDependencyError: ``"skimage"`` was asked for but scikit-image is not installed.
    """
    if os.fspath(source) == SKIMAGE_SOURCE:
        photos = [(name, load_skimage_photo(name)) for name in SKIMAGE_PHOTOS]
    else:
        photos = _load_folder(Path(source))
    kept = []
    for name, image in photos:
        if min(image.shape[:2]) < MIN_PHOTO_SIDE:
            LOG.warning("skipping photo %s: %s is smaller than %d px", name, image.shape[:2],
                        MIN_PHOTO_SIDE)
            continue
        kept.append((name, image))
    if not kept:
        raise ConfigError(f"photo source {os.fspath(source)!r} has no photo of at least "
                          f"{MIN_PHOTO_SIDE} px; add larger photos")
    return kept


def tile_photo(
    name: str,
    shape: tuple[int, ...],
    *,
    tile_side: int = 256,
    min_side: int = 180,
    max_grid: int = 3,
) -> list[Region]:
    """Cut a photo into a grid of non-overlapping regions that together cover it.

    Each axis of length ``L`` gets ``clamp(L // tile_side, 1, max_grid)`` cells, reduced so that
    each cell stays at least ``min_side`` px long (a photo shorter than ``min_side`` keeps one
    cell). So 512-px photos give 2x2, retina (1411 px) 3x3 and a 300x451 photo a single region.

    Args:
        name: the photo name, copied into each region.
        shape: the photo's ``(H, W, ...)`` shape.

    Returns:
        Regions in row-major order.

    Raises:
        ConfigError: a size argument is not positive.
    """
    if min(tile_side, min_side, max_grid) < 1:
        raise ConfigError(f"tile_side, min_side and max_grid must be >= 1, got "
                          f"{tile_side}, {min_side}, {max_grid}")
    height, width = int(shape[0]), int(shape[1])
    ys = _cuts(height, tile_side=tile_side, min_side=min_side, max_grid=max_grid)
    xs = _cuts(width, tile_side=tile_side, min_side=min_side, max_grid=max_grid)
    regions: list[Region] = []
    for r in range(len(ys) - 1):
        for c in range(len(xs) - 1):
            box = (xs[c], ys[r], xs[c + 1], ys[r + 1])
            regions.append(Region(photo=name, index=len(regions), box=box))
    return regions


def _cuts(length: int, *, tile_side: int, min_side: int, max_grid: int) -> list[int]:
    n = min(max(length // tile_side, 1), max_grid, max(length // min_side, 1))
    return [int(v) for v in np.rint(np.linspace(0, length, n + 1))]


def _load_folder(folder: Path) -> list[tuple[str, np.ndarray]]:
    if not folder.is_dir():
        raise ConfigError(f"photo source {os.fspath(folder)!r} is neither 'skimage' nor an "
                          "existing folder; pass 'skimage' or a folder of jpg/png photos")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ConfigError(f"folder {os.fspath(folder)!r} holds no photo with extension "
                          f"{', '.join(IMAGE_EXTENSIONS)}; add some or use source='skimage'")
    return [(p.name, load_image(p)) for p in files]  # load_image raises CorruptDataError


def skimage_data() -> ModuleType:
    """The ``skimage.data`` module, imported lazily.

    Raises:
        MissingDependencyError: scikit-image is not installed (the ``cloud`` extra).
    """
    try:
        import skimage.data
    except ImportError:
        raise missing_dependency("scikit-image", "cloud") from None
    return skimage.data


SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class Instance:
    """A region that is an instance: ``id`` is unique over all splits (the landmark id)."""

    id: int
    region: Region
    split: str


@dataclass(frozen=True)
class Partition:
    """Which photo goes to which split, and which regions are instances or distractors.

    ``regions`` maps each photo to its tiles; ``distractors`` maps each split to its distractor
    regions (regions that are no instance). Every region is exactly one of the two.
    """

    photo_split: dict[str, str]
    regions: dict[str, tuple[Region, ...]]
    instances: tuple[Instance, ...]
    distractors: dict[str, tuple[Region, ...]]


def partition_photos(
    shapes: Sequence[tuple[str, tuple[int, ...]]],
    *,
    seed: int,
    fractions: tuple[float, float, float],
    distractor_fraction: float,
    tiling: tuple[int, int, int] = (256, 180, 3),
) -> Partition:
    """Tile the photos and split them, whole, into train / val / test.

    Photos are taken in a seeded random order; each goes to the split whose instance count is
    furthest below its target ``fraction * total`` (after counting half the photo), so no split
    stays empty while photos remain. Then in each split ``round(distractor_fraction * n_regions)``
    regions (at least one when the fraction is > 0, always leaving one instance) become
    distractors. Instance ids follow the photo order and the row-major region order.

    Args:
        shapes: ``[(photo name, (H, W, ...)), ...]`` in source order.
        seed: drives the split and the distractor choice.
        fractions: target instance fractions of train, val, test.
        distractor_fraction: share of each split's regions kept as distractors, in [0, 1).
        tiling: ``(tile_side, min_side, max_grid)`` for :func:`tile_photo`.

    Raises:
        ConfigError: fewer than three photos, or bad fractions.
    """
    if len(shapes) < len(SPLITS):
        raise ConfigError(f"need at least {len(SPLITS)} photos (one per split), got {len(shapes)}; "
                          "add photos to the source or drop the 'photos' filter")
    if len(fractions) != 3 or min(fractions) <= 0 or not 0 <= distractor_fraction < 1:
        raise ConfigError(f"fractions must be 3 positive values and distractor_fraction in [0, 1), "
                          f"got {fractions}, {distractor_fraction}")
    tile_side, min_side, max_grid = tiling
    regions = {name: tuple(tile_photo(name, shape, tile_side=tile_side, min_side=min_side,
                                      max_grid=max_grid)) for name, shape in shapes}
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    sizes = [(name, len(regions[name])) for name, _ in shapes]
    photo_split = _assign_splits(sizes, fractions, rng)
    distractors: dict[str, tuple[Region, ...]] = {}
    for split in SPLITS:
        pool = [r for name, _ in shapes if photo_split[name] == split for r in regions[name]]
        n = round(distractor_fraction * len(pool))
        n = min(max(n, 1 if distractor_fraction > 0 else 0), len(pool) - 1)
        picked = sorted(rng.choice(len(pool), size=n, replace=False)) if n > 0 else []
        distractors[split] = tuple(pool[i] for i in picked)
    taken = {r.key for rs in distractors.values() for r in rs}
    instances = [r for name, _ in shapes for r in regions[name] if r.key not in taken]
    return Partition(
        photo_split=photo_split, regions=regions, distractors=distractors,
        instances=tuple(Instance(id=i, region=r, split=photo_split[r.photo])
                        for i, r in enumerate(instances)),
    )


def _assign_splits(sizes: list[tuple[str, int]], fractions: tuple[float, float, float],
                   rng: np.random.Generator) -> dict[str, str]:
    targets = np.asarray(fractions, np.float64) / sum(fractions) * sum(n for _, n in sizes)
    counts = np.zeros(len(SPLITS))
    n_photos = [0] * len(SPLITS)
    out = {}
    order = rng.permutation(len(sizes))
    for pos, i in enumerate(order):
        name, n = sizes[i]
        empty = [s for s in range(len(SPLITS)) if n_photos[s] == 0]
        choices = empty if len(order) - pos <= len(empty) else range(len(SPLITS))
        best = max(choices, key=lambda s: (targets[s] - counts[s] - n / 2, -s))
        counts[best] += n
        n_photos[best] += 1
        out[name] = SPLITS[best]
    return out
