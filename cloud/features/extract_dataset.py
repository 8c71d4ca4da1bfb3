"""Extract a retrieval dataset's gallery and (bbx-cropped) queries into two feature stores."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from asymfuse.cloud.data.records import RetrievalDataset
from asymfuse.cloud.distributed import DistEnv
from asymfuse.cloud.features.base import FeatureExtractor
from asymfuse.cloud.features.extract import ExtractOptions, extract_to_store
from asymfuse.cloud.features.extract_sharded import extract_sharded
from asymfuse.cloud.features.layout import SIDES
from asymfuse.cloud.features.shard_plan import plan_shards
from asymfuse.cloud.features.store import FeatureStore
from asymfuse.edge.errors import ConfigError


def extract_dataset(extractor: FeatureExtractor, dataset: RetrievalDataset,
                    out_dir: str | os.PathLike[str], *, sides: tuple[str, ...] = SIDES,
                    batch_size: int = 16, resume: bool = True, progress: bool = True,
                    meta: dict[str, Any] | None = None, options: ExtractOptions | None = None,
                    env: DistEnv | None = None) -> dict[str, FeatureStore]:
    """Extract ``dataset`` with ``extractor`` into ``out_dir/<side>`` (``gallery``, ``queries``).

    Queries are cropped to their bbx (revisitop protocol) before extraction.

    Args:
        batch_size, resume, progress: the common options; ``options`` (an :class:`ExtractOptions`),
            when given, replaces all three and adds workers, shard size and the rest.
        env: this process's rank in a torchrun job: the sides are then extracted by
            :func:`~asymfuse.cloud.features.extract_sharded.extract_sharded`, every rank calling
            this function; None extracts in this process alone (:func:`extract_to_store`).

    Returns:
        ``{side: opened FeatureStore}`` with rows in dataset order.

    Raises:
        ConfigError: an unknown side, or (``env``) more ranks than the items of a side, checked
            before anything is extracted; see :func:`extract_to_store` for the rest.
    """
    bad = sorted(set(sides) - set(SIDES))
    if bad:
        raise ConfigError(f"unknown sides {bad}; choose from {list(SIDES)}")
    opts = options or ExtractOptions(batch_size=batch_size, resume=resume, progress=progress)
    jobs = {}
    if "gallery" in sides:
        jobs["gallery"] = (list(dataset.gallery_paths), list(dataset.gallery_ids), None)
    if "queries" in sides:
        jobs["queries"] = (range(dataset.nq), list(dataset.query_ids), dataset.load_query_image)
    if env is not None:
        for side, (_, ids, _) in jobs.items():
            try:
                plan_shards(len(ids), opts.shard_size, env.world_size)
            except ConfigError as exc:
                raise ConfigError(f"{side} of {dataset.name}: {exc}") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = dict(meta or {}, dataset=dataset.name)
    stores: dict[str, FeatureStore] = {}
    for side, (sources, ids, load_fn) in jobs.items():
        kwargs: dict[str, Any] = {"ids": ids, "meta": dict(info, part=side)}
        if load_fn is not None:
            kwargs["load_fn"] = load_fn
        if env is None:
            stores[side] = extract_to_store(
                extractor, sources, out / side, batch_size=opts.batch_size, shard_size=opts.shard_size,
                resume=opts.resume, progress=opts.progress, desc_dtype=opts.desc_dtype, workers=opts.workers,
                **kwargs)
        else:
            stores[side] = extract_sharded(extractor, sources, out / side, options=opts, env=env, **kwargs)
    return stores
