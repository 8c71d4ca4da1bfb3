"""Training pairs of AMES: the training images' local descriptors, hard negatives, and every draw.

- :class:`TrainingLocals`: the top-``K`` local descriptors of every training image, in memory, in
  training-id order, valid slots first (store order kept), served as padded batches.
- :func:`global_knn`: each image's ``k`` nearest other images by global inner product (faiss).
- :class:`PairSampler`: every training image is an anchor (the query side) once per epoch; its
  partner (the gallery side) is a random same-label image (target 1) with probability
  ``pos_fraction``, else a random image of the anchor's global kNN with another label (a hard
  negative, target 0). An anchor with no other image of its label gets a negative; an anchor whose
  kNN holds only its own label gets a random image of another label.
- :class:`BatchLengths`: ``(L_q, L_x)`` of a batch: fixed, or (universal) drawn from ``[lo, hi)``.
- :func:`prepare_ames_data`: all of the above for one :class:`AMESTrainConfig`, read from the
  feature cache (extracting what is missing, rank 0 only), plus the val split (:class:`ValSplit`).

Reproducibility: the partner of anchor ``i`` in epoch ``e`` comes from
``np.random.default_rng([seed, e, i])`` and the lengths of step ``s`` from
``np.random.default_rng([seed, e, s, 1])``, so neither depends on DataLoader workers, DDP ranks,
access order or a resume.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from asymfuse.cloud.data.benchmark import dataset_name, open_benchmark
from asymfuse.cloud.data.records import RetrievalDataset, TrainingSet
from asymfuse.cloud.data.revisitop import load_revisitop
from asymfuse.cloud.features.gallery_table import load_gallery_table
from asymfuse.cloud.index.flat import search
from asymfuse.cloud.train.aff_data import load_training_set
from asymfuse.cloud.train.ames_config import AMESTrainConfig
from asymfuse.cloud.features.layout import store_path
from asymfuse.cloud.train.feature_cache import (
    TRAIN_PART,
    ensure_dataset_features,
    ensure_training_features,
    training_ids,
)
from asymfuse.cloud.train.start_views import crop_views, views_part
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError
from torch.utils.data import Dataset

_LENGTH_STREAM = 1  # last entry of the seed sequence of the length draws
VIEW_CROP_SCALE_MIN = 0.35  # area fraction of the smallest crop view (train_views)


# ---------------------------------------------------------------- local descriptors

class TrainingLocals:
    """Local descriptors of ``N`` images: ``descriptors`` ``(N, K, d)`` float32 (zero at padding)
    and ``pad`` ``(N, K)`` bool (True = padding), valid slots first."""

    def __init__(self, descriptors: np.ndarray, pad: np.ndarray) -> None:
        """
        Raises:
            ShapeError: shapes disagree.
            CorruptDataError: NaN/inf in a valid slot.
        """
        if descriptors.ndim != 3 or pad.shape != descriptors.shape[:2] or pad.dtype != np.bool_:
            raise ShapeError(f"descriptors must be (N, K, d) with a bool (N, K) pad mask, got "
                              f"{descriptors.shape} and {pad.dtype} {pad.shape}")
        order = np.argsort(pad, axis=1, kind="stable")  # valid (False) first, store order kept
        desc = np.take_along_axis(np.asarray(descriptors, dtype=np.float32), order[..., None], axis=1)
        pad = np.take_along_axis(pad, order, axis=1)
        bad = ~np.isfinite(desc).all(axis=2) & ~pad
        if bad.any():
            raise CorruptDataError(f"local descriptors of training image {int(np.flatnonzero(bad.any(1))[0])} "
                                   "hold NaN/inf; delete its feature store and re-extract it")
        desc[pad] = 0.0
        self.descriptors, self.pad = desc, pad

    @classmethod
    def concatenate(cls, parts: Sequence[TrainingLocals]) -> TrainingLocals:
        """The rows of ``parts`` in order (all read with the same length).

        Raises:
            ShapeError: the parts differ in length or dimension.
        """
        if len({p.descriptors.shape[1:] for p in parts}) != 1:
            raise ShapeError(f"local sets to concatenate differ in shape: {[p.descriptors.shape for p in parts]}")
        if len(parts) == 1:
            return parts[0]
        return cls(np.concatenate([p.descriptors for p in parts]), np.concatenate([p.pad for p in parts]))

    @classmethod
    def from_store(cls, root: str | os.PathLike[str], *, ids: Sequence[str], length: int) -> TrainingLocals:
        """The first ``length`` slots of the rows ``ids`` of the local store at ``root``.

        Raises:
            ConfigError: ``root`` is no store, is a global store, or lacks some ids.
            CorruptDataError: NaN/inf in the store (names the first bad id).
        """
        table = load_gallery_table([Path(root)], ids=ids, local_tokens=length)
        slot = table.schema.slots[0]
        if slot.kind != "local":
            raise ConfigError(f"{root} holds {slot.kind} features; AMES trains on a local feature store "
                              "(e.g. local_lite2 or sift)")
        batch = table.inputs(slice(None))
        return cls(batch.locals_[0].numpy(), batch.local_pads[0].numpy())

    def __len__(self) -> int:
        return self.descriptors.shape[0]

    @property
    def dim(self) -> int:
        return self.descriptors.shape[2]

    @property
    def counts(self) -> np.ndarray:
        """``(N,)`` int64 valid descriptors per image."""
        return (~self.pad).sum(axis=1)

    def batch(self, indices: np.ndarray, *, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``indices``, first ``length`` slots (padded past ``K``): ``(n, length, d)`` float32
        and ``(n, length)`` bool (True = padding), CPU tensors."""
        idx = np.asarray(indices, dtype=np.int64)
        keep = min(length, self.descriptors.shape[1])
        desc = np.zeros((len(idx), length, self.dim), dtype=np.float32)
        pad = np.ones((len(idx), length), dtype=bool)
        desc[:, :keep] = self.descriptors[idx, :keep]
        pad[:, :keep] = self.pad[idx, :keep]
        return torch.from_numpy(desc), torch.from_numpy(pad)

    def valid_descriptors(self, *, length: int | None = None) -> np.ndarray:
        """``(n_valid, d)`` float32: every valid descriptor among the first ``length`` slots."""
        stop = self.descriptors.shape[1] if length is None else length
        return self.descriptors[:, :stop][~self.pad[:, :stop]]


# ---------------------------------------------------------------- hard-negative mining

def global_knn(xb: np.ndarray, *, k: int) -> np.ndarray:
    """Each row's ``k`` most similar *other* rows by inner product, best first.

    Args:
        xb: ``(N, D)`` float32 (unit-norm for cosine similarity), ``N >= 2``.
        k: neighbours per row; clipped to ``N - 1``.

    Returns:
        ``(N, min(k, N - 1))`` int64; ties by increasing index (:func:`asymfuse.cloud.index.flat.search`).

    Raises:
        ConfigError: fewer than 2 rows or a bad ``k``.
        ShapeError: not 2-D or non-finite values.
    """
    n = len(xb)
    if n < 2:
        raise ConfigError(f"hard-negative mining needs at least 2 training images, got {n}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ConfigError(f"k must be a positive int, got {k!r}")
    k = min(int(k), n - 1)
    _, nn = search(xb, xb, k=k + 1)
    is_self = nn == np.arange(n)[:, None]
    keep = ~is_self
    keep[~is_self.any(axis=1), -1] = False  # self not in the top k+1 (duplicates): drop the last one
    return nn[keep].reshape(n, k)


class PairSampler:
    """Partners and targets of the anchors; see the module docstring for the rule.

    Args:
        labels: ``(N,)`` int labels of the training images.
        knn: ``(N, k)`` int64 global neighbours (:func:`global_knn`), self excluded.
        seed: base seed of every draw.
        pos_fraction: probability of a positive partner.

    Raises:
        ConfigError: shapes disagree, a single label, or bad ``seed``/``pos_fraction``.
    """

    def __init__(self, *, labels: np.ndarray, knn: np.ndarray, seed: int, pos_fraction: float = 0.5) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        knn = np.asarray(knn, dtype=np.int64)
        if labels.ndim != 1 or knn.ndim != 2 or knn.shape[0] != len(labels):
            raise ConfigError(f"labels (N,) and knn (N, k) must agree, got {labels.shape} and {knn.shape}")
        if knn.size and (knn.min() < 0 or knn.max() >= len(labels)):
            raise ConfigError(f"knn indices must lie in [0, {len(labels)})")
        if len(np.unique(labels)) < 2:
            raise ConfigError("AMES training needs images of at least 2 labels (negatives have another label); "
                              "add classes to the training data")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed must be an int >= 0, got {seed!r}")
        if not 0.0 <= pos_fraction <= 1.0:
            raise ConfigError(f"pos_fraction must lie in [0, 1], got {pos_fraction!r}")
        self.labels, self.knn, self.seed, self.pos_fraction = labels, knn, seed, float(pos_fraction)
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.unique(labels))
        self._members = dict(zip(np.unique(labels).tolist(), np.split(order, bounds[1:])))

    def __len__(self) -> int:
        return len(self.labels)

    def positives(self, i: int) -> np.ndarray:
        """The other images of anchor ``i``'s label, increasing index."""
        same = self._members[int(self.labels[i])]
        return same[same != i]

    def hard_negatives(self, i: int) -> np.ndarray:
        """Anchor ``i``'s kNN entries with another label, in kNN order."""
        row = self.knn[i]
        return row[self.labels[row] != self.labels[i]]

    def partner(self, i: int, *, epoch: int) -> tuple[int, float]:
        """``(partner index, target)`` of anchor ``i`` in ``epoch``: 1.0 positive, 0.0 negative."""
        rng = np.random.default_rng([self.seed, int(epoch), int(i)])
        positives = self.positives(i)
        if rng.random() < self.pos_fraction and positives.size:
            return int(positives[rng.integers(positives.size)]), 1.0
        pool = self.hard_negatives(i)
        if pool.size == 0:
            pool = np.flatnonzero(self.labels != self.labels[i])
        return int(pool[rng.integers(pool.size)]), 0.0

    def pairs(self, indices: Sequence[int] | np.ndarray, *, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Partners ``(n,)`` int64 and targets ``(n,)`` float32 of ``indices`` in ``epoch``."""
        out = [self.partner(int(i), epoch=epoch) for i in np.asarray(indices)]
        partners = np.array([p for p, _ in out], dtype=np.int64)
        return partners, np.array([t for _, t in out], dtype=np.float32)


class PairDataset(Dataset):
    """Item ``i`` of the current epoch: ``{"query": i, "partner": j, "target": 1.0 | 0.0}`` tensors.

    ``set_epoch`` changes this object only: build the DataLoader with ``persistent_workers=False``.
    """

    def __init__(self, sampler: PairSampler) -> None:
        self.sampler = sampler
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Raises: ConfigError: ``epoch`` is not an int >= 0."""
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ConfigError(f"epoch must be an int >= 0, got {epoch!r}")
        self._epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j, target = self.sampler.partner(int(i), epoch=self._epoch)
        return {"query": torch.tensor(int(i)), "partner": torch.tensor(j),
                "target": torch.tensor(target, dtype=torch.float32)}


# ---------------------------------------------------------------- descriptor counts

class BatchLengths:
    """``(L_q, L_x)`` per training step: ``(lq, lx)``, or (``universal=(lo, hi)``) both drawn
    independently and uniformly from the integers of ``[lo, hi)`` per ``(seed, epoch, step)``.

    Raises:
        ConfigError: bad lengths or range.
    """

    def __init__(self, *, lq: int, lx: int, universal: tuple[int, ...] = (), seed: int = 0) -> None:
        for name, v in (("lq", lq), ("lx", lx)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive int, got {v!r}")
        universal = tuple(universal)
        if universal and (len(universal) != 2 or not 1 <= universal[0] < universal[1]):
            raise ConfigError(f"universal must be (lo, hi) with 1 <= lo < hi, got {universal!r}")
        self.lq, self.lx, self.universal, self.seed = lq, lx, universal, seed

    def at(self, *, epoch: int, step: int) -> tuple[int, int]:
        """The lengths of ``step`` (0-based, within the epoch) of ``epoch``."""
        if not self.universal:
            return self.lq, self.lx
        lo, hi = self.universal
        rng = np.random.default_rng([self.seed, int(epoch), int(step), _LENGTH_STREAM])
        lq, lx = rng.integers(lo, hi, size=2)
        return int(lq), int(lx)


# ---------------------------------------------------------------- the run's data

@dataclass(frozen=True)
class ValSplit:
    """The validation split: dataset, global vectors and local descriptors (valid slots first).

    ``global_q`` ``(nq, D)`` / ``global_x`` ``(nb, D)`` float32 unit-norm; ``query_locals`` /
    ``gallery_locals`` hold the first ``lq`` / ``lx`` slots of each image.
    """

    dataset: RetrievalDataset
    global_q: np.ndarray
    global_x: np.ndarray
    query_locals: TrainingLocals
    gallery_locals: TrainingLocals


@dataclass(frozen=True)
class AMESData:
    """Training images, their local descriptors, the pair sampler, and the val split (or None)."""

    training_set: TrainingSet
    locals: TrainingLocals
    sampler: PairSampler
    val: ValSplit | None


def load_val_dataset(cfg: AMESTrainConfig) -> RetrievalDataset | None:
    """The val split: ``val_root`` if set, else the benchmark's ``val`` split, else None (``val=''``
    or a non-benchmark source without ``val_root``).

    Raises:
        UnknownNameError: the benchmark has no split ``cfg.val``.
        CorruptDataError: unreadable benchmark or ground truth.
    """
    if not cfg.val:
        return None
    if cfg.val_root:
        return load_revisitop(cfg.val_root)
    if cfg.data_source != "benchmark":
        return None
    bench = open_benchmark(cfg.data_root)
    paths = bench.split(cfg.val)
    return load_revisitop(paths.root, name=dataset_name(bench.config.name, cfg.val))


def prepare_ames_data(cfg: AMESTrainConfig, *, is_main: bool, barrier: Callable[[], None]) -> AMESData:
    """Extract (rank 0 only) and load the run's features; mine the global kNN.

    Raises:
        ConfigError: too few images or labels, a store of the wrong kind, or stores that lack ids.
        UnknownNameError: a feature is neither cached nor a registered extractor.
        CorruptDataError: NaN/inf in stored features.
    """
    ts = load_training_set(cfg.data_source, cfg.data_root)
    val_ds = load_val_dataset(cfg)
    feats = Path(cfg.features_dir)
    if is_main:  # extract once; other ranks wait at the barrier and read the finished stores
        names = [cfg.local_feature] + ([] if cfg.global_store else [cfg.global_feature])
        for name in names:
            ensure_training_features(name, ts, features_dir=feats, device=cfg.device, progress=cfg.progress)
        for name in ([] if val_ds is None else dict.fromkeys([cfg.local_feature, cfg.val_global])):
            ensure_dataset_features(name, val_ds, features_dir=feats, part=cfg.val, device=cfg.device,
                                    progress=cfg.progress)
        if cfg.train_views:
            views = _views(cfg, ts)
            for name in names:
                ensure_training_features(name, views, features_dir=feats, device=cfg.device, progress=cfg.progress,
                                         part=_views_part(cfg))
    barrier()
    sets = [(ts, TRAIN_PART)] + ([(_views(cfg, ts), _views_part(cfg))] if cfg.train_views else [])
    local = TrainingLocals.concatenate([
        TrainingLocals.from_store(store_path(feats, cfg.local_feature, part), ids=training_ids(images),
                                  length=cfg.max_length) for images, part in sets])
    groots = ([Path(cfg.global_store)] if cfg.global_store
              else [store_path(feats, cfg.global_feature, part) for _, part in sets])
    glob = np.concatenate([global_rows(r, ids=training_ids(images)) for r, (images, _) in zip(groots, sets)])
    knn = global_knn(glob, k=cfg.hard_negatives_k)
    labels = np.concatenate([images.labels for images, _ in sets])
    sampler = PairSampler(labels=labels, knn=knn, seed=cfg.seed, pos_fraction=cfg.pos_fraction)
    val = None
    if val_ds is not None:
        def root(name: str, which: str) -> Path:
            return store_path(feats, name, cfg.val, which)
        q_ids, x_ids = list(val_ds.query_ids), list(val_ds.gallery_ids)
        val = ValSplit(dataset=val_ds, global_q=global_rows(root(cfg.val_global, "queries"), ids=q_ids),
                       global_x=global_rows(root(cfg.val_global, "gallery"), ids=x_ids),
                       query_locals=TrainingLocals.from_store(root(cfg.local_feature, "queries"), ids=q_ids,
                                                              length=cfg.lq),
                       gallery_locals=TrainingLocals.from_store(root(cfg.local_feature, "gallery"), ids=x_ids,
                                                                length=cfg.lx))
    return AMESData(training_set=ts, locals=local, sampler=sampler, val=val)


def _views_part(cfg: AMESTrainConfig) -> str:
    return views_part(views=cfg.train_views, seed=cfg.seed, crop_scale_min=VIEW_CROP_SCALE_MIN)


def _views(cfg: AMESTrainConfig, ts: TrainingSet) -> TrainingSet:
    """The crop views that join the training images (written once, by rank 0, before the barrier)."""
    return crop_views(ts, features_dir=cfg.features_dir, views=cfg.train_views, seed=cfg.seed,
                      crop_scale_min=VIEW_CROP_SCALE_MIN)


def global_rows(root: str | os.PathLike[str], *, ids: Sequence[str]) -> np.ndarray:
    """``(len(ids), D)`` float32 unit-norm rows ``ids`` of the global store at ``root``.

    Raises:
        ConfigError: ``root`` is no store, holds local features, or lacks some ids.
        CorruptDataError: NaN/inf in the store.
    """
    table = load_gallery_table([Path(root)], ids=ids, local_tokens=1)
    slot = table.schema.slots[0]
    if slot.kind != "global":
        raise ConfigError(f"{root} holds local features, but hard negatives and the global ranking need a global "
                          "store (e.g. gem_lite1, or an AFF-fused store from `asymfuse index fuse`)")
    x = np.array(table.global_matrix(0), dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
