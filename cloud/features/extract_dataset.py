"""Extract a retrieval dataset's gallery and (bbx-cropped) queries into two feature stores."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from asymfuse.cloud.data.records import RetrievalDataset
from asymfuse.cloud.features.base import FeatureExtractor
from asymfuse.cloud.features.extract import extract_to_store
from asymfuse.cloud.features.store import FeatureStore
from asymfuse.edge.errors import ConfigError

PARTS = ("gallery", "queries")


def extract_dataset(extractor: FeatureExtractor, dataset: RetrievalDataset,
                    out_dir: str | os.PathLike[str], *, parts: tuple[str, ...] = PARTS,
                    batch_size: int = 16, resume: bool = True, progress: bool = True,
                    meta: dict[str, Any] | None = None) -> dict[str, FeatureStore]:
    """Extract ``dataset`` with ``extractor`` into ``out_dir/<part>``.

    Queries are cropped to their bbx (revisitop protocol) before extraction.

    Returns:
        ``{part: opened FeatureStore}`` with rows in dataset order.

    Raises:
        ConfigError: an unknown part; see :func:`extract_to_store` for the rest.
    """
    bad = sorted(set(parts) - set(PARTS))
    if bad:
        raise ConfigError(f"unknown parts {bad}; choose from {list(PARTS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = dict(meta or {}, dataset=dataset.name)
    stores: dict[str, FeatureStore] = {}
    if "gallery" in parts:
        stores["gallery"] = extract_to_store(
            extractor, list(dataset.gallery_paths), out / "gallery", ids=list(dataset.gallery_ids),
            batch_size=batch_size, resume=resume, progress=progress, meta=dict(info, part="gallery"))
    if "queries" in parts:
        stores["queries"] = extract_to_store(
            extractor, range(dataset.nq), out / "queries", ids=list(dataset.query_ids),
            batch_size=batch_size, resume=resume, progress=progress,
            meta=dict(info, part="queries"), load_fn=dataset.load_query_image)
    return stores
