"""A disk cache of a query trunk's pooled outputs (the whitening layer's inputs) over training images.

The closed-form query start (:mod:`asymfuse.cloud.train.query_start`) and head-only training
(``TrainConfig.query_inputs = "cached"``) both need ``QueryNet.pooled(trunk(x))`` for every training
image and crop view. At 224 px that is the slow part of a run (Lite0 on 2 CPU cores: about 17
images/s, 160 s for 300 images with 8 crops each), and every run of a bench computes the same rows.
Each image set is cached once as ``<cache_dir>/<key>.npy``, ``(n, C)`` float32 (the trunk computes
in float32, so the cache is lossless). The key hashes everything the rows depend on: the trunk's
weights and BatchNorm statistics, GeM ``p`` and the pooling, the spec's input size and mean/std,
``preload_side`` and the image paths. A run with other weights or images gets other files; a file is
written atomically and rewritten only when it is unreadable or does not match its image set.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from asymfuse.cloud.data.records import TrainingSet
from asymfuse.cloud.models.query_net import QueryNet
from asymfuse.cloud.train.aff_data import AFFImageDataset
from asymfuse.edge.fileio import atomic_write

POOLED_FOLDER = "_pooled"


def trunk_fingerprint(query_net: QueryNet, *, preload_side: int) -> str:
    """sha256 of what the pooled rows of any image depend on (weights, buffers, pooling, preprocessing)."""
    h = hashlib.sha256()
    state = {**dict(query_net.trunk.state_dict()), **{f"pool.{k}": v for k, v in query_net.pool.state_dict().items()}}
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(np.ascontiguousarray(t.float().numpy() if t.is_floating_point() else t.numpy()).tobytes())
    spec = query_net.spec
    h.update(json.dumps({"pooling": spec.pooling, "size": spec.input_size, "mean": list(spec.mean),
                         "std": list(spec.std), "preload_side": int(preload_side)}, sort_keys=True).encode())
    return h.hexdigest()


@torch.no_grad()
def pooled_trunk_features(query_net: QueryNet, dataset: AFFImageDataset, *, epochs: list[int],
                          device: torch.device, batch_size: int = 32) -> np.ndarray:
    """The whitening layer's inputs (:meth:`QueryNet.pooled`) for every item of ``dataset`` at each
    epoch (eval-mode BN).

    Returns:
        ``(len(epochs) * n, C)`` float64, epoch-major (rows ``e * n + i``).
    """
    was_training = query_net.training
    query_net.eval()
    chunks = []
    try:
        for epoch in epochs:
            dataset.set_epoch(epoch)
            for start in range(0, len(dataset), batch_size):
                x = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))])
                pooled = query_net.pooled(query_net.forward_features(x.to(device)))
                chunks.append(pooled.float().cpu().numpy().astype(np.float64))
    finally:
        query_net.train(was_training)
    return np.concatenate(chunks, axis=0)


def cached_pooled(query_net: QueryNet, images: TrainingSet, *, cache_dir: str | os.PathLike[str] | None,
                  preload_side: int, device: torch.device) -> np.ndarray:
    """``QueryNet.pooled`` of every image of ``images`` (eval-mode BN, the spec's reference
    preprocessing, no augmentation), read from or written to ``cache_dir``.

    Args:
        query_net: the net whose trunk and pooling embed the images.
        images: ``n`` images.
        cache_dir: the cache folder (created); None computes without caching.
        preload_side: as :class:`asymfuse.cloud.train.aff_data.AFFImageDataset`.
        device: where the trunk runs (the net must live there).

    Returns:
        ``(n, C)`` float32.

    Raises:
        CorruptDataError: an unreadable image.
    """
    def compute() -> np.ndarray:
        ds = AFFImageDataset(training_set=images, spec=query_net.spec, augment=None, seed=0, preload_side=preload_side)
        return pooled_trunk_features(query_net, ds, epochs=[0], device=device).astype(np.float32)

    if cache_dir is None:
        return compute()
    key = hashlib.sha256((trunk_fingerprint(query_net, preload_side=preload_side) + "\n"
                          + "\n".join(str(p) for p in images.paths)).encode()).hexdigest()[:32]
    path = Path(cache_dir) / f"{key}.npy"
    if path.is_file():
        try:
            rows = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            rows = None  # a damaged file is recomputed and replaced
        if rows is not None and rows.shape[0] == len(images) and rows.dtype == np.float32 and np.isfinite(rows).all():
            return rows
    rows = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: np.save(fh, rows, allow_pickle=False))
    return rows
