"""The records every dataset loader returns, plus the small file helpers they share.

Loaders are torch-free: they return paths, ids, labels and ground-truth index arrays, never
tensors. Two records:

- :class:`RetrievalDataset`: a gallery, a query set and per-query ground truth.
- :class:`TrainingSet`: image paths with integer class labels.

Ground truth (``RetrievalDataset.gnd``) is one dict per query of read-only ``int64`` arrays of
0-based gallery indices. Its keys depend on ``protocol``:

- ``"revisitop"``: ``easy``, ``hard`` and ``junk``, exactly as in ``gnd_<name>.pkl``; the
  Easy/Medium/Hard settings are derived from them at evaluation time
  (:func:`asymfuse.cloud.eval.metrics.evaluate_revisitop`).
- ``"gldv2"``, ``"holidays"``, ``"ukbench"``: ``ok`` (positives) and ``junk`` (images removed
  from the ranking before scoring), the form :func:`asymfuse.cloud.eval.metrics.compute_map`
  reads directly.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from asymfuse.edge.errors import ConfigError, CorruptDataError
from asymfuse.edge.preprocess import load_image
from PIL import Image

PROTOCOLS = ("revisitop", "gldv2", "holidays", "ukbench")
GND_KEYS = {
    "revisitop": ("easy", "hard", "junk"),
    "gldv2": ("ok", "junk"),
    "holidays": ("ok", "junk"),
    "ukbench": ("ok", "junk"),
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")

Bbx = tuple[float, float, float, float]


def index_array(values: object, *, n: int, what: str) -> np.ndarray:
    """Turn a list of 0-based indices into a read-only ``(m,)`` int64 array, checked to lie in [0, n).

    Raises:
        CorruptDataError: a value is not an integer or is out of range.
    """
    raw = np.asarray(values if values is not None else [])
    if raw.dtype == np.bool_ or not (raw.size == 0 or np.issubdtype(raw.dtype, np.number)):
        raise CorruptDataError(f"{what} must hold integer indices, got dtype {raw.dtype}")
    raw = raw.ravel()
    if raw.size and not np.issubdtype(raw.dtype, np.integer):
        if not np.all(np.isfinite(raw)) or np.any(raw != np.round(raw)):
            raise CorruptDataError(f"{what} holds non-integer values; indices must be whole numbers")
    out = raw.astype(np.int64)
    if out.size and (out.min() < 0 or out.max() >= n):
        raise CorruptDataError(f"{what} has indices in [{out.min()}, {out.max()}] but the gallery has "
                               f"{n} images; the ground truth does not match this image list")
    out.setflags(write=False)
    return out


def _check_bbx(bbx: object, i: int) -> Bbx | None:
    if bbx is None:
        return None
    try:
        vals = tuple(float(v) for v in np.asarray(bbx, dtype=np.float64).ravel())
    except (TypeError, ValueError) as exc:
        raise CorruptDataError(f"query {i}: bbx {bbx!r} is not numeric") from exc
    if len(vals) != 4 or not all(np.isfinite(vals)) or vals[2] < vals[0] or vals[3] < vals[1]:
        raise CorruptDataError(f"query {i}: bbx {bbx!r} must be finite [x1, y1, x2, y2] with "
                               "x2 >= x1 and y2 >= y1")
    return vals  # type: ignore[return-value]


@dataclass(frozen=True)
class RetrievalDataset:
    """A retrieval benchmark: gallery, queries and ground truth.

    Attributes:
        name: dataset name, e.g. ``"roxford5k"``.
        root: the folder the dataset was loaded from.
        protocol: one of :data:`PROTOCOLS`; says which keys ``gnd`` holds and which metric applies.
        gallery_paths, gallery_ids: ``nb`` image files and their ids (ids are dataset names, e.g.
            revisitop image names without extension); distractors, if any, come last.
        query_paths, query_ids: ``nq`` query image files and their ids.
        gnd: ``nq`` dicts of read-only int64 gallery-index arrays (see the module docstring).
        query_bbx: per query ``(x1, y1, x2, y2)`` crop in pixels or None; None for all queries
            when the protocol has no crops.
        n_distractors: how many of the last gallery entries are distractors (revisitop +1M).
    """

    name: str
    root: Path
    protocol: str
    gallery_paths: tuple[Path, ...]
    gallery_ids: tuple[str, ...]
    query_paths: tuple[Path, ...]
    query_ids: tuple[str, ...]
    gnd: tuple[Mapping[str, np.ndarray], ...]
    query_bbx: tuple[Bbx | None, ...] | None = None
    n_distractors: int = 0

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"protocol {self.protocol!r} is unknown; choose one of {list(PROTOCOLS)}")
        for name in ("gallery_paths", "query_paths"):
            object.__setattr__(self, name, tuple(Path(p) for p in getattr(self, name)))
        for name in ("gallery_ids", "query_ids"):
            object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
        object.__setattr__(self, "root", Path(self.root))
        nb, nq = len(self.gallery_paths), len(self.query_paths)
        if len(self.gallery_ids) != nb or len(self.query_ids) != nq or len(self.gnd) != nq:
            raise ConfigError(f"RetrievalDataset {self.name!r}: {nb} gallery paths vs "
                              f"{len(self.gallery_ids)} ids, {nq} query paths vs {len(self.query_ids)} "
                              f"ids and {len(self.gnd)} ground-truth entries; lengths must agree")
        if not 0 <= self.n_distractors <= nb:
            raise ConfigError(f"n_distractors={self.n_distractors} must lie in [0, {nb}]")
        keys = GND_KEYS[self.protocol]
        gnd = []
        for i, entry in enumerate(self.gnd):
            missing = [k for k in keys if k not in entry]
            if missing:
                raise CorruptDataError(f"{self.name}: ground truth of query {i} lacks {missing}; "
                                       f"protocol {self.protocol!r} needs keys {list(keys)}")
            gnd.append({k: index_array(entry[k], n=nb, what=f"{self.name} query {i} {k!r}") for k in keys})
        object.__setattr__(self, "gnd", tuple(gnd))
        if self.query_bbx is not None:
            if len(self.query_bbx) != nq:
                raise ConfigError(f"query_bbx has {len(self.query_bbx)} entries for {nq} queries")
            boxes = tuple(_check_bbx(b, i) for i, b in enumerate(self.query_bbx))
            object.__setattr__(self, "query_bbx", boxes)

    @property
    def nb(self) -> int:
        """Number of gallery images (distractors included)."""
        return len(self.gallery_paths)

    @property
    def nq(self) -> int:
        """Number of queries."""
        return len(self.query_paths)

    def load_gallery_image(self, i: int) -> np.ndarray:
        """Read gallery image ``i`` as ``(H, W, 3)`` uint8 RGB.

        Raises:
            ConfigError: ``i`` is out of range.
            CorruptDataError: the file is missing or unreadable.
        """
        return load_image(self.gallery_paths[_check_index(i, self.nb, "gallery")])

    def load_query_image(self, i: int) -> np.ndarray:
        """Read query ``i`` as ``(H, W, 3)`` uint8 RGB, cropped to its bbx when it has one.

        The crop follows the revisitop reference (PIL ``Image.crop``): each coordinate is rounded
        with Python's ``round`` and the box is ``[x1, x2) x [y1, y2)``; parts outside the image
        are filled with zeros, exactly as PIL does.

        Raises:
            ConfigError: ``i`` is out of range.
            CorruptDataError: the file is missing or unreadable.
        """
        i = _check_index(i, self.nq, "query")
        img = load_image(self.query_paths[i])
        bbx = self.query_bbx[i] if self.query_bbx is not None else None
        if bbx is None:
            return img
        return np.asarray(Image.fromarray(img).crop(bbx), dtype=np.uint8).copy()


def _check_index(i: int, n: int, what: str) -> int:
    if not isinstance(i, (int, np.integer)) or isinstance(i, bool) or not 0 <= int(i) < n:
        raise ConfigError(f"{what} index {i!r} is out of range; the dataset has {n} {what} images")
    return int(i)


@dataclass(frozen=True)
class TrainingSet:
    """Labelled training images.

    Attributes:
        name: dataset name.
        root: the folder the set was loaded from.
        paths: ``n`` image files.
        labels: ``(n,)`` read-only int64 in ``[0, C)``.
        class_names: ``C`` names; ``class_names[c]`` is the name of label ``c``.
    """

    name: str
    root: Path
    paths: tuple[Path, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "paths", tuple(Path(p) for p in self.paths))
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or len(labels) != len(self.paths) or not np.issubdtype(labels.dtype, np.integer):
            raise ConfigError(f"TrainingSet {self.name!r}: labels must be ({len(self.paths)},) integers, "
                              f"got shape {labels.shape} dtype {labels.dtype}")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise ConfigError(f"TrainingSet {self.name!r}: labels must lie in [0, {len(self.class_names)})")
        if len(set(self.class_names)) != len(self.class_names):
            raise ConfigError(f"TrainingSet {self.name!r}: class names must be unique")
        labels = labels.astype(np.int64, copy=True)
        labels.setflags(write=False)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        """C, the number of classes (including classes with no images)."""
        return len(self.class_names)

    def class_counts(self) -> np.ndarray:
        """``(C,)`` int64 number of images per label."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    def classes_with_fewer_than(self, k: int) -> list[str]:
        """Names of the classes with fewer than ``k`` images, in label order.

        Metric-learning losses that need a positive pair want ``k=2``.

        Raises:
            ConfigError: ``k`` is not a positive int.
        """
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k must be a positive int, got {k!r}")
        counts = self.class_counts()
        return [self.class_names[c] for c in np.flatnonzero(counts < k)]


# ---- shared file helpers -------------------------------------------------------------------

def require_file(path: Path, *, what: str, hint: str) -> Path:
    """Return ``path`` if it is a file.

    Raises:
        CorruptDataError: it is missing; the message names it and says where to get it.
    """
    if not path.is_file():
        raise CorruptDataError(f"{what} {str(path)!r} does not exist; {hint}")
    return path


def require_dir(path: Path, *, what: str, hint: str) -> Path:
    """Return ``path`` if it is a directory.

    Raises:
        CorruptDataError: it is missing; the message names it and says where to get it.
    """
    if not path.is_dir():
        raise CorruptDataError(f"{what} {str(path)!r} is not a directory; {hint}")
    return path


def check_files_exist(paths: Sequence[Path], *, what: str, hint: str) -> None:
    """Raise if any of ``paths`` is not a file, naming the first few missing ones.

    Raises:
        CorruptDataError: at least one file is missing.
    """
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        shown = ", ".join(repr(str(p)) for p in missing[:3])
        raise CorruptDataError(f"{len(missing)} of {len(paths)} {what} are missing (e.g. {shown}); {hint}")


def read_csv(path: Path, *, required: Sequence[str], hint: str) -> list[dict[str, str]]:
    """Read a CSV file with a header row into dicts.

    Raises:
        CorruptDataError: the file is missing, unreadable or lacks a required column.
    """
    require_file(path, what="CSV file", hint=hint)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            missing = [c for c in required if c not in header]
            if missing:
                raise CorruptDataError(f"{str(path)!r} lacks column(s) {missing} (header: {header}); {hint}")
            return [dict(row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CorruptDataError(f"{str(path)!r} is not a readable CSV file ({exc}); {hint}") from exc


def image_files(folder: Path, *, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive, hidden files skipped), sorted by name."""
    exts = tuple(e.lower() for e in extensions)
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in exts)
