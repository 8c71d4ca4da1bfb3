"""Embedding with torch models: query-net vectors of images and queries, fused gallery vectors of a table.

The one place a query net or a mixer is run over many inputs (training validation, ``index fuse``,
the ``query_net`` extractor, the demo and the benchmarks). Both networks run under
``torch.inference_mode`` in eval mode; their previous train/eval mode is
restored afterwards, so these helpers can be called in the middle of a training loop.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from asymfuse.cloud.data.records import RetrievalDataset
from asymfuse.cloud.features.gallery_table import GalleryTable
from asymfuse.edge.errors import ConfigError, ShapeError
from asymfuse.edge.preprocess import load_image, preprocess
from asymfuse.edge.spec import ModelSpec


def embed_queries(query_net: nn.Module, dataset: RetrievalDataset, *, device: str | torch.device = "cpu",
                  batch_size: int = 16) -> np.ndarray:
    """Embed the dataset's queries, each cropped to its bbx, with the spec's reference preprocessing.

    Args:
        query_net: a module with a ``spec`` (:class:`ModelSpec`) mapping ``(B, 3, H, W)`` normalised
            images to ``(B, d)`` embeddings; it must already live on ``device``.
        dataset: the queries (``dataset.load_query_image`` gives the crops).

    Returns:
        ``(nq, d)`` float32, in query order (unit-norm when the net normalises).

    Raises:
        ConfigError: bad ``batch_size``, no ``spec`` on the net, or the net is not on ``device``.
        ShapeError: the net returns a wrong shape or NaN/inf.
        CorruptDataError: a query image is unreadable.
    """
    return _embed(query_net, dataset.nq, dataset.load_query_image, device=device, batch_size=batch_size)


def embed_images(query_net: nn.Module, images: Sequence[np.ndarray | str | os.PathLike[str]], *,
                 device: str | torch.device = "cpu", batch_size: int = 16) -> np.ndarray:
    """Embed whole images (``(H, W, 3)`` uint8 RGB arrays or image files) like :func:`embed_queries`.

    Returns:
        ``(n, d)`` float32, in input order.

    Raises:
        ConfigError, ShapeError, CorruptDataError: as :func:`embed_queries`.
    """
    def load(i: int) -> np.ndarray:
        item = images[i]
        return item if isinstance(item, np.ndarray) else load_image(item)

    return _embed(query_net, len(images), load, device=device, batch_size=batch_size)


def embed_pixels(query_net: nn.Module, pixels: np.ndarray, *, device: str | torch.device = "cpu",
                 batch_size: int = 16) -> np.ndarray:
    """Embed already preprocessed images (``(n, 3, H, W)`` float32, normalised by the net's spec).

    Returns:
        ``(n, d)`` float32, in input order.

    Raises:
        ConfigError, ShapeError: as :func:`embed_queries`, or ``pixels`` is not ``(n, 3, H, W)``.
    """
    arr = np.asarray(pixels)
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise ShapeError(f"pixels must be (n, 3, H, W) preprocessed images, got shape {arr.shape}; "
                         "use embed_images for raw images")
    return _embed(query_net, len(arr), lambda i: arr[i], device=device, batch_size=batch_size, preprocessed=True)


def fuse_table(mixer: nn.Module, table: GalleryTable, *, device: str | torch.device = "cpu",
               batch_size: int = 64) -> np.ndarray:
    """Fused gallery vectors of every table row: ``mixer(table.inputs(rows))`` batch by batch.

    Args:
        mixer: maps a :class:`FusionInputs` batch to ``(B, d)``; it must already live on ``device``.

    Returns:
        ``(N, d)`` float32 in table row order (unit-norm for the AFF mixers).

    Raises:
        ConfigError: bad ``batch_size``, an empty table, or the mixer is not on ``device``.
        ShapeError: the mixer returns a wrong shape or NaN/inf, or the table does not fit the
            mixer's schema.
    """
    _check_batch_size(batch_size)
    if len(table) == 0:
        raise ConfigError("the gallery table is empty; load it with at least one id")
    _check_device(mixer, device, what="mixer")
    chunks = []
    with _eval_mode(mixer):
        for start in range(0, len(table), batch_size):
            rows = np.arange(start, min(start + batch_size, len(table)))
            out = mixer(table.inputs(rows).to(device))
            chunks.append(_to_numpy(out, rows=len(rows), what=f"mixer rows {start}..{rows[-1]}"))
    return _stack(chunks)


# ---------------------------------------------------------------- internals

def _embed(net: nn.Module, n: int, load: Callable[[int], np.ndarray], *, device: str | torch.device,
           batch_size: int, preprocessed: bool = False) -> np.ndarray:
    _check_batch_size(batch_size)
    spec = getattr(net, "spec", None)
    if not isinstance(spec, ModelSpec):
        raise ConfigError("the query net has no ModelSpec `spec`; build it with create_query_net")
    if n == 0:
        return np.zeros((0, spec.embed_dim), dtype=np.float32)
    _check_device(net, device, what="query net")
    chunks = []
    with _eval_mode(net):
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            items = [load(i) for i in range(start, stop)]
            batch = np.stack(items).astype(np.float32) if preprocessed else preprocess(items, spec)
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(device)
            chunks.append(_to_numpy(net(x), rows=stop - start, what=f"query net images {start}..{stop - 1}"))
    return _stack(chunks)


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        module.train(was_training)


def _check_device(module: nn.Module, device: str | torch.device, *, what: str) -> None:
    want = torch.device(device)
    for p in module.parameters():
        if p.device.type != want.type or (want.index is not None and p.device.index != want.index):
            raise ConfigError(f"the {what} lives on {p.device} but device={str(want)!r}; move it with "
                              f".to({str(want)!r}) or pass device={str(p.device)!r}")
        return


def _to_numpy(out: torch.Tensor, *, rows: int, what: str) -> np.ndarray:
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != rows:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ShapeError(f"{what}: expected a ({rows}, d) tensor, got {shape}")
    arr = out.detach().float().cpu().numpy()
    if not np.isfinite(arr).all():
        raise ShapeError(f"{what}: the network produced NaN or inf; its weights have probably diverged "
                         "(lower the learning rate or use an earlier checkpoint)")
    return arr


def _stack(chunks: list[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(np.concatenate(chunks, axis=0), dtype=np.float32)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
