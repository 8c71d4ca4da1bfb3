"""Decoded, preprocessed batches for the extraction drivers, in DataLoader workers or in-process.

Decoding (``load_fn``) and the extractor's :class:`ImagePreprocessor` (resize, normalise, pad) are
CPU work; with ``workers > 0`` they run in ``torch.utils.data.DataLoader`` worker processes while
the main process runs the model, with ``workers == 0`` they run in the caller. Both paths call the
same functions on the same items, so they give the same features. Batches come back in order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from asymfuse.cloud.features.base import FeatureExtractor, ImagePreprocessor
from asymfuse.edge.errors import ConfigError


def default_workers() -> int:
    """``min(4, CPU count)``: the ``--workers`` default of ``asymfuse extract``."""
    return min(4, os.cpu_count() or 1)


def check_workers(workers: int) -> int:
    """``workers`` if it is an int >= 0.

    Raises:
        ConfigError: otherwise.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"workers must be an int >= 0 (0 = decode in the main process), got {workers!r}")
    return workers


class _PreparedItems(Dataset):
    """``dataset[i]`` = ``preprocessor.prepare(load_fn(sources[i]))``."""

    def __init__(self, sources: Sequence[Any], load_fn: Callable[[Any], Any], preprocessor: ImagePreprocessor) -> None:
        self.sources, self.load_fn, self.preprocessor = sources, load_fn, preprocessor

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> Any:
        return self.preprocessor.prepare(self.load_fn(self.sources[i]))


def wants_pinned_memory(extractor: FeatureExtractor) -> bool:
    """True when the extractor's model runs on CUDA (batches then go through pinned memory)."""
    device = getattr(extractor, "device", None)
    return isinstance(device, torch.device) and device.type == "cuda"


def iter_collated(extractor: FeatureExtractor, sources: Sequence[Any], batches: Sequence[Sequence[int]], *,
                  load_fn: Callable[[Any], Any], workers: int = 0, prefetch: int = 4) -> Iterator[Any]:
    """For each batch of positions in ``sources``, ``extractor.preprocessor.collate`` of its prepared
    images, in the order of ``batches`` (each batch non-empty).

    With ``workers > 0`` a DataLoader's workers do the loading and preprocessing, ``prefetch``
    batches ahead per worker, into pinned memory when the extractor runs on CUDA.

    Raises:
        ConfigError: ``workers < 0``; whatever ``load_fn`` raises (e.g. CorruptDataError for an
            unreadable image) comes out of the iteration at that batch.
    """
    check_workers(workers)
    items = _PreparedItems(sources, load_fn, extractor.preprocessor)
    if workers == 0:
        for batch in batches:
            yield items.preprocessor.collate([items[i] for i in batch])
        return
    loader = DataLoader(items, batch_sampler=[list(b) for b in batches], collate_fn=items.preprocessor.collate,
                        num_workers=workers, pin_memory=wants_pinned_memory(extractor), prefetch_factor=prefetch)
    yield from loader
