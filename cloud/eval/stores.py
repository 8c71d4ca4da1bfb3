"""Score a dataset from stored vectors: a query store against a gallery store of the same space.

The stores may come from one extractor (``asymfuse extract``: symmetric) or from two sides of one
embedding space (queries from the ``query_net`` extractor, gallery from ``asymfuse index fuse``:
asymmetric). Stores that say they live in different embedding spaces, or that were extracted by
different models without a shared space, are refused before any search.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from asymfuse.cloud.data.records import RetrievalDataset
from asymfuse.cloud.features.store_reader import FeatureStore
from asymfuse.edge.errors import ConfigError


def check_same_space(queries: FeatureStore, gallery: FeatureStore) -> None:
    """Refuse a query store and a gallery store that are not in one embedding space.

    Two stores are in one space when both record the same ``embedding_space_id`` (a query net
    and the mixer it was trained with), or when neither records one and both were written by the
    same extractor (symmetric search with one model).

    Raises:
        ConfigError: the spaces differ (the message names both and the fix).
    """
    q_meta, g_meta = queries.meta, gallery.meta
    q_space, g_space = q_meta.get("embedding_space_id"), g_meta.get("embedding_space_id")
    if q_space or g_space:
        if q_space != g_space:
            raise ConfigError(f"the query store {queries.root} is in embedding space {q_space!r} but the gallery "
                              f"store {gallery.root} is in {g_space!r}; embed the queries with the query net "
                              "trained with this gallery's mixer (`asymfuse extract --extractor query_net "
                              "--option checkpoint=<run>/query_net.pt`), or fuse both sides with one mixer")
        return
    q_id, g_id = q_meta.get("extractor_id"), g_meta.get("extractor_id")
    if q_id != g_id:
        raise ConfigError(f"the query store was extracted by {q_id!r} and the gallery store by {g_id!r}; "
                          "vectors of two different models cannot be compared: extract both sides with one "
                          "extractor, or use a query net and mixer trained together")


def store_vectors(store: FeatureStore, *, ids: Sequence[str], what: str) -> np.ndarray:
    """The global vectors of ``store``, checked to be exactly ``ids`` in order: ``(n, d)`` float32.

    Raises:
        ConfigError: a local store, or ids other than the dataset's (re-extract on this dataset).
    """
    if store.kind != "global":
        raise ConfigError(f"{what} store {store.root} holds local features; eval needs global feature stores "
                          "(aggregate local features first, e.g. VLAD, or use a global extractor)")
    if list(store.ids) != [str(i) for i in ids]:
        raise ConfigError(f"the {what} store {store.root} does not hold this dataset's {what} in order "
                          f"({len(store)} items, the dataset has {len(ids)}); re-extract it with `asymfuse extract` "
                          "on this dataset")
    return np.ascontiguousarray(np.asarray(store.global_features()), dtype=np.float32)


def query_and_gallery(dataset: RetrievalDataset, queries: FeatureStore,
                      gallery: FeatureStore) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(xq (nq, d), xb (nb, d), info)`` from two stores of one space; ``info`` names their space.

    Raises:
        ConfigError: see :func:`check_same_space` and :func:`store_vectors`.
    """
    check_same_space(queries, gallery)
    xq = store_vectors(queries, ids=dataset.query_ids, what="queries")
    xb = store_vectors(gallery, ids=dataset.gallery_ids, what="gallery")
    info = {"query_extractor": queries.meta.get("extractor_name"),
            "gallery_extractor": gallery.meta.get("extractor_name"),
            "embedding_space_id": gallery.meta.get("embedding_space_id")}
    return xq, xb, info
