"""Extract a retrieval dataset's gallery and (bbx-cropped) queries into two feature stores."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from asymfuse.cloud.data.records import RetrievalDataset
from asymfuse.cloud.features.base import FeatureExtractor
from asymfuse.cloud.features.extract import extract_to_store
from asymfuse.cloud.features.layout import SIDES
from asymfuse.cloud.features.store import FeatureStore
from asymfuse.edge.errors import ConfigError


def extract_dataset(extractor: FeatureExtractor, dataset: RetrievalDataset,
                    out_dir: str | os.PathLike[str], *, sides: tuple[str, ...] = SIDES,
                    batch_size: int = 16, resume: bool = True, progress: bool = True,
                    meta: dict[str, Any] | None = None) -> dict[str, FeatureStore]:
    """Extract ``dataset`` with ``extractor`` into ``out_dir/<side>`` (``gallery``, ``queries``).

    Queries are cropped to their bbx (revisitop protocol) before extraction.

    Returns:
        ``{side: opened FeatureStore}`` with rows in dataset order.

    Raises:
        ConfigError: an unknown side; see :func:`extract_to_store` for the rest.
    """
    bad = sorted(set(sides) - set(SIDES))
    if bad:
        raise ConfigError(f"unknown sides {bad}; choose from {list(SIDES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = dict(meta or {}, dataset=dataset.name)
    stores: dict[str, FeatureStore] = {}
    if "gallery" in sides:
        stores["gallery"] = extract_to_store(
            extractor, list(dataset.gallery_paths), out / "gallery", ids=list(dataset.gallery_ids),
            batch_size=batch_size, resume=resume, progress=progress, meta=dict(info, part="gallery"))
    if "queries" in sides:
        stores["queries"] = extract_to_store(
            extractor, range(dataset.nq), out / "queries", ids=list(dataset.query_ids),
            batch_size=batch_size, resume=resume, progress=progress,
            meta=dict(info, part="queries"), load_fn=dataset.load_query_image)
    return stores
