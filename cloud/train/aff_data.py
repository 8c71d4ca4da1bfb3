"""Training data of AFF: labelled images for the query net and frozen gallery features for the mixer.

- :func:`load_training_set` / :func:`check_training_set`: the labelled images (benchmark train
  split, GLDv2 train, or an image folder) and the sanity checks ArcFace training needs.
- :class:`AFFImageDataset`: a torch ``Dataset`` of augmented, normalised query-net inputs. Every
  random draw of item ``i`` in epoch ``e`` comes from ``np.random.default_rng([seed, e, i])``, so
  an item never depends on DataLoader workers, DDP ranks, access order or a resume.
- The gallery feature stores of the training images are read by
  :func:`asymfuse.cloud.features.gallery_table.load_gallery_table`.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
import torch
from asymfuse.cloud.data.records import TrainingSet
from asymfuse.cloud.data.registry import create_dataset
from asymfuse.cloud.train.augment import AugmentConfig, augment_image, eval_image
from asymfuse.edge.errors import ConfigError, unknown_name
from asymfuse.edge.preprocess import load_image, normalize_pixels
from asymfuse.edge.spec import ModelSpec
from PIL import Image
from torch.utils.data import Dataset

LOG = logging.getLogger(__name__)

TRAINING_SOURCES = {"benchmark": "benchmark_train", "gldv2": "gldv2-train", "folder": "image-folder"}
"""Training data source -> registered dataset name (see :mod:`asymfuse.cloud.data.registry`)."""

_SHOW = 5  # how many offending names an error message lists


# ---------------------------------------------------------------- labelled images

def load_training_set(source: str, root: str | os.PathLike[str], **kwargs: Any) -> TrainingSet:
    """Load the labelled training images.

    Args:
        source: ``"benchmark"`` (an embedded benchmark folder: its train split), ``"gldv2"``
            (a GLDv2 root with ``train.csv``) or ``"folder"`` (``root/<class>/<image>``).
        root: the folder.
        **kwargs: loader options, e.g. ``csv="train_clean.csv"`` for gldv2.

    Raises:
        UnknownNameError: unknown ``source``.
        ConfigError: an option the loader does not take.
        CorruptDataError: the files are missing or malformed.
    """
    if source not in TRAINING_SOURCES:
        raise unknown_name("training data source", source, list(TRAINING_SOURCES))
    ts = create_dataset(TRAINING_SOURCES[source], root=root, **kwargs)
    if not isinstance(ts, TrainingSet):  # pragma: no cover - the table only names training loaders
        raise ConfigError(f"data source {source!r} did not give a training set")
    return ts


def check_training_set(ts: TrainingSet, *, min_images: int = 2) -> None:
    """Check that ``ts`` can train a classifier-based embedding.

    Every class needs at least ``min_images`` images (ArcFace and the momentum classifier learn
    nothing useful from a class seen once, and a class with no image keeps a dead weight row).

    Raises:
        ConfigError: ``ts`` is empty, or some classes have fewer than ``min_images`` images; the
            message lists the first few, their number, and the fix.
    """
    if not isinstance(min_images, int) or isinstance(min_images, bool) or min_images < 1:
        raise ConfigError(f"min_images must be a positive int, got {min_images!r}")
    if len(ts) == 0 or ts.num_classes == 0:
        raise ConfigError(f"training set {ts.name!r} at {str(ts.root)!r} holds no images; point the data "
                          "root at a folder with labelled images")
    small = ts.classes_with_fewer_than(min_images)
    if small:
        counts = ts.class_counts()
        index = {name: c for c, name in enumerate(ts.class_names)}
        shown = ", ".join(f"{n!r} ({counts[index[n]]})" for n in small[:_SHOW])
        more = f" and {len(small) - _SHOW} more" if len(small) > _SHOW else ""
        raise ConfigError(f"training set {ts.name!r}: {len(small)} of {ts.num_classes} classes have fewer than "
                          f"{min_images} images: {shown}{more}; add images to those classes or remove them "
                          "from the training data")


# ---------------------------------------------------------------- query-net images

class AFFImageDataset(Dataset):
    """Augmented query-net inputs of a :class:`TrainingSet`.

    Item ``i`` is ``{"image": (3, H, W) float32 normalised with spec.mean/std, "label": int64 scalar
    tensor, "index": int64 scalar tensor (= i)}`` with ``(H, W) = spec.input_size``. Its random crop
    and jitter depend only on ``(seed, epoch, i)``.

    ``set_epoch`` changes the epoch of this object only: DataLoader workers started with
    ``persistent_workers=True`` keep the epoch they were forked with, so build the loader with
    ``persistent_workers=False`` (the default) or re-create it each epoch.
    """

    def __init__(self, *, training_set: TrainingSet, spec: ModelSpec, augment: AugmentConfig | None,
                 seed: int, preload_side: int = 0) -> None:
        """
        Args:
            training_set: the images and labels.
            spec: the query net's spec (input size, mean/std, resize policy).
            augment: augmentation settings; None = the spec's deterministic reference
                preprocessing (for embedding training images without augmentation).
            seed: base seed of every random draw.
            preload_side: > 0 decodes every image once here, downscaled (aspect kept, never
                upscaled) so its shorter side is at most ``preload_side``, and keeps the uint8
                pixels in memory; 0 reads each image from disk on every access.

        Raises:
            ConfigError: bad ``seed`` or ``preload_side``, or an empty training set.
            CorruptDataError: ``preload_side > 0`` and an image is unreadable (names the file).
        """
        for name, value in (("seed", seed), ("preload_side", preload_side)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
        if len(training_set) == 0:
            raise ConfigError(f"training set {training_set.name!r} is empty; it needs at least one image")
        self.training_set, self.spec, self.augment = training_set, spec, augment
        self.seed, self.preload_side = seed, preload_side
        self._epoch = 0
        self._images: list[np.ndarray] | None = None
        if preload_side > 0:
            self._images = [downscale_shorter_side(load_image(p), preload_side) for p in training_set.paths]

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws ``__getitem__`` uses.

        Raises:
            ConfigError: ``epoch`` is not an int >= 0.
        """
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ConfigError(f"epoch must be an int >= 0, got {epoch!r}")
        self._epoch = int(epoch)

    @property
    def labels(self) -> np.ndarray:
        """``(n,)`` int64 labels."""
        return self.training_set.labels

    @property
    def num_classes(self) -> int:
        return self.training_set.num_classes

    def __len__(self) -> int:
        return len(self.training_set)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        """Item ``i`` (see the class docstring).

        Raises:
            IndexError: ``i`` is out of range.
            CorruptDataError: the image file is unreadable (names the file).
        """
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -n <= i < n:
            raise IndexError(f"item {i!r} is out of range for a dataset of {n} images")
        i = int(i) % n
        img = self._images[i] if self._images is not None else load_image(self.training_set.paths[i])
        if self.augment is None:
            pixels = eval_image(img, spec=self.spec)
        else:
            rng = np.random.default_rng([self.seed, self._epoch, i])
            pixels = augment_image(img, rng=rng, size=self.spec.input_size, cfg=self.augment)
        return {"image": torch.from_numpy(normalize_pixels(pixels, self.spec)),
                "label": torch.tensor(int(self.training_set.labels[i]), dtype=torch.int64),
                "index": torch.tensor(i, dtype=torch.int64)}


def downscale_shorter_side(img: np.ndarray, side: int) -> np.ndarray:
    """Resize (bilinear, antialiased) so the shorter side is ``side``, keeping the aspect ratio;
    images already that small are returned unchanged. ``(H, W, 3)`` uint8 in and out."""
    h, w = img.shape[:2]
    if min(h, w) <= side:
        return img
    if h <= w:
        new_h, new_w = side, max(side, round(w * side / h))
    else:
        new_h, new_w = max(side, round(h * side / w)), side
    return np.asarray(Image.fromarray(img).resize((new_w, new_h), Image.Resampling.BILINEAR), dtype=np.uint8)
