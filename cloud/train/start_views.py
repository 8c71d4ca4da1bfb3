"""Extra gallery rows for the closed-form starts: random crops of the training images.

A few hundred training images are too few rows to learn a PCA whitening of a 1,000+-dim
concatenation (measured on the embedded benchmark: whitening gem_lite1 + SIFT to 256-d on its
300 train images scores 70.45 mAP-M on test against 71.31 for gem_lite1 alone; with more rows it
matches or beats it). Random resized crops of the same photos are free rows: each crop is written
once, as a PNG file, to ``<features_dir>/_views/<key>/``, and the frozen gallery extractors embed
it like any other image, into the cache part :func:`views_part` (``train-crops-v<V>-s<seed>-c<scale>``).
Crop ``k`` of image ``i`` depends only on ``(seed, i, k)``, and a finished file is never rewritten.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from asymfuse.cloud.data.records import TrainingSet
from asymfuse.cloud.train.augment import AugmentConfig, crop_box
from asymfuse.edge.errors import ConfigError
from asymfuse.edge.fileio import atomic_write
from asymfuse.edge.preprocess import load_image

VIEWS_FOLDER = "_views"


def views_part(*, views: int, seed: int, crop_scale_min: float) -> str:
    """The feature-cache part of the crop views: ``train-crops-v<views>-s<seed>-c<crop_scale_min>``."""
    return f"train-crops-v{views}-s{seed}-c{crop_scale_min:g}"


def crop_views(training_set: TrainingSet, *, features_dir: str | os.PathLike[str], views: int, seed: int,
               crop_scale_min: float) -> TrainingSet:
    """``views`` random crops of every training image, as a training set with the source labels.

    Args:
        training_set: the ``n`` labelled images.
        features_dir: the feature-cache folder; crops go under ``_views/<views_part>/``.
        views: crops per image (>= 1).
        seed: seed of the crop boxes.
        crop_scale_min: smallest crop area as a fraction of the image.

    Returns:
        A TrainingSet of ``n * views`` PNG files (image-major: rows ``i * views + k``), same classes.

    Raises:
        ConfigError: ``views < 1`` or a bad ``crop_scale_min``.
        CorruptDataError: a training image is unreadable.
    """
    if isinstance(views, bool) or not isinstance(views, int) or views < 1:
        raise ConfigError(f"views must be an int >= 1, got {views!r}")
    cfg = AugmentConfig(crop_scale_min=crop_scale_min, color_jitter=0.0)
    folder = Path(features_dir) / VIEWS_FOLDER / views_part(views=views, seed=seed, crop_scale_min=crop_scale_min)
    folder.mkdir(parents=True, exist_ok=True)
    paths, labels = [], []
    for i, (src, label) in enumerate(zip(training_set.paths, training_set.labels)):
        targets = [folder / f"{i:06d}_v{k}.png" for k in range(views)]
        if not all(t.is_file() for t in targets):
            img = load_image(src)
            for k, target in enumerate(targets):
                top, left, h, w = crop_box(img.shape[0], img.shape[1], rng=np.random.default_rng([seed, i, k]),
                                           cfg=cfg)
                crop = Image.fromarray(np.ascontiguousarray(img[top:top + h, left:left + w]))
                # lossless at any level; level 1 writes a crop in ~10 ms instead of ~35 ms (2,400 crops per demo)
                atomic_write(target, lambda fh, c=crop: c.save(fh, format="PNG", compress_level=1))
        paths += targets
        labels += [int(label)] * views
    return TrainingSet(name=f"{training_set.name}-crops", root=folder, paths=tuple(paths),
                       labels=np.asarray(labels, dtype=np.int64), class_names=training_set.class_names)

