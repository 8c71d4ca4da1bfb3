"""``index fuse``: run a trained mixer over the stored gallery features of any dataset.

The output is an ordinary global feature store (same ids, same order as the input stores) whose
metadata carries the embedding-space id, the query side's ModelSpec and the gallery schema, so
the searcher can refuse clients from another space.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from asymfuse.cloud.embed import fuse_table
from asymfuse.cloud.features.base import GlobalFeatures
from asymfuse.cloud.features.gallery_table import load_gallery_table
from asymfuse.cloud.features.layout import store_path
from asymfuse.cloud.features.store import new_store
from asymfuse.cloud.features.store_reader import FeatureStore
from asymfuse.cloud.models.mixers.checkpoint import load_mixer
from asymfuse.edge.errors import ConfigError


def store_roots_for(schema_names: Sequence[str], *, features_dir: str | os.PathLike[str], part: str,
                    side: str = "gallery") -> list[Path]:
    """``<features_dir>/<name>/<part>/<side>`` for each slot of the mixer, in schema order."""
    return [store_path(features_dir, name, part, side) for name in schema_names]


def fuse_stores(mixer_path: str | os.PathLike[str], store_roots: Sequence[str | os.PathLike[str]],
                out_root: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                batch_size: int = 256, shard_size: int = 4096) -> FeatureStore:
    """Fuse the rows of ``store_roots`` (one store per mixer slot, schema order) into ``out_root``.

    Returns:
        The opened output store: ``(N, d)`` float32 unit-norm, ids of the first input store.

    Raises:
        ConfigError: wrong number of stores, ids that differ between stores, a store whose
            extractor is not the one the mixer was trained on, or ``out_root`` already exists.
        ShapeError: a store's dimension does not match the mixer.
        CorruptDataError: NaN/inf in a store.
    """
    mixer, info = load_mixer(mixer_path, device=device)
    schema = info.schema
    if len(store_roots) != len(schema.slots):
        raise ConfigError(f"the mixer fuses {len(schema.slots)} features {list(schema.names)} but "
                          f"{len(store_roots)} stores were given; pass one store per feature, in that order")
    ids = _common_ids(store_roots)
    local_tokens = max((s.max_local or 0) for s in schema.slots) or 1
    table = load_gallery_table([Path(r) for r in store_roots], ids=ids, local_tokens=local_tokens)
    for want, got in zip(schema.slots, table.schema.slots):
        if want.extractor_id and got.extractor_id and want.extractor_id != got.extractor_id:
            raise ConfigError(f"store for {want.name!r} was extracted by {got.extractor_id[:12]}..., the mixer "
                              f"was trained on {want.extractor_id[:12]}...; re-extract with the training extractor")
    vectors = fuse_table(mixer, table, device=device, batch_size=batch_size)
    query = info.query_model_spec
    meta = {"embedding_space_id": info.embedding_space_id, "gallery_schema": schema.to_dict(),
            "query_spec": None if query is None else query.to_dict(),
            "mixer_file": os.fspath(mixer_path), "sources": [os.fspath(r) for r in store_roots]}
    with new_store(out_root, kind="global", dim=int(vectors.shape[1]), shard_size=shard_size,
                   meta={"extractor_name": "aff_fused", "extractor_id": info.embedding_space_id, **meta}) as w:
        w.append(ids, GlobalFeatures(np.ascontiguousarray(vectors, dtype=np.float32)))
    return FeatureStore.open(out_root)


def _common_ids(store_roots: Sequence[str | os.PathLike[str]]) -> list[str]:
    ids: list[str] | None = None
    for root in store_roots:
        with FeatureStore.open(root) as st:
            these = list(st.ids)
        if ids is None:
            ids = these
        elif set(these) != set(ids):
            raise ConfigError(f"store {os.fspath(root)!r} holds other items than {os.fspath(store_roots[0])!r}; "
                              "extract every feature for the same images")
    if not ids:
        raise ConfigError("the input stores are empty; extract gallery features first")
    return ids
