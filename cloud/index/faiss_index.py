"""A mutable faiss index over the user's int64 ids, with metadata and a metadata filter.

The vectors live in a faiss index built from a factory string (``Flat``, ``HNSW32``,
``IVF4096,PQ64``, ``OPQ64,IVF4096,PQ64``, ...; inner product) whose ids are the user's int64 ids:

- **Flat and HNSW** are wrapped in ``IndexIDMap2`` (the id map survives serialisation). Flat
  removes natively. HNSW graphs cannot remove a node, so a deleted or replaced HNSW entry becomes
  a *tombstone*: its id in the id map is set to -1 and every search excludes -1 through a faiss
  ``IDSelector``. :meth:`FaissIndex.compact` rebuilds the graph from the live vectors (the durable
  index does it at snapshot time when tombstones pile up).
- **IVF** (optionally behind OPQ) stores the user's ids in its inverted lists itself, and removes
  them natively. It is not wrapped: ``IndexIDMap2.remove_ids`` assumes the wrapped index renumbers
  its rows after a removal, which IVF does not, so the wrapper would map ids wrongly after the first
  delete.
- **Searching.** The base index is searched with per-call ``SearchParameters`` (``efSearch`` /
  ``nprobe``; no shared knob is mutated, so concurrent searches are safe) and a selector
  translated to internal labels; labels map back to ids through a NumPy copy of the id map.
- **Filter.** Each item may carry string metadata. A filter keeps items whose ``field`` equals one
  of ``values`` (an inverted index finds them). Small allowed sets (at most :data:`EXACT_FILTER`
  items) are scored exactly from reconstructed vectors where the index can reconstruct (Flat,
  HNSW); otherwise the selector runs inside faiss (IVF then probes every list).
- Scores are inner products (cosine for unit-norm vectors). Result rows are padded with id -1 and
  score -inf when fewer than ``k`` items qualify.

Not thread-safe on its own: :class:`~asymfuse.cloud.index.durable.DurableIndex` serialises writes
against searches with a readers-writer lock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from asymfuse.cloud.index.flat import _faiss, as_index_vectors
from asymfuse.cloud.index.index_config import IndexConfig, Metadata, UnknownIdError, check_ids
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError

EXACT_FILTER = 4096  # a filter allowing at most this many items is scored exactly (where possible)


class FaissIndex:
    """See the module docstring. Build with :meth:`create` (then :meth:`train` if needed) or
    :meth:`from_bytes`.

    Args:
        config: the factory and search settings.
        index: a faiss ``IndexIDMap2`` (Flat, HNSW) or an IVF index holding the ids itself.
        metadata: ``{id: {field: value}}`` for items that have any.
    """

    def __init__(self, *, config: IndexConfig, index: Any, metadata: Mapping[int, Metadata] | None = None) -> None:
        self.config = config
        faiss = _faiss()
        self._index = index
        self._mapped = isinstance(index, faiss.IndexIDMap2)
        self._base = faiss.downcast_index(index.index) if self._mapped else index
        self._hnsw = hasattr(self._base, "hnsw")
        self._ivf = faiss.try_extract_index_ivf(self._base)
        if self._mapped:
            self._id_map = faiss.vector_to_array(index.id_map).astype(np.int64)
        else:
            self._id_map = np.zeros(0, dtype=np.int64)
        stored = self._id_map[self._id_map != -1] if self._mapped else _ivf_ids(self._ivf)
        self._live = set(stored.tolist())
        if len(self._live) != stored.size:
            raise CorruptDataError("the index holds one id twice; rebuild it with `asymfuse index build`")
        self._meta: dict[int, dict[str, str]] = {}
        self._postings: dict[str, dict[str, set[int]]] = {}
        for i, m in (metadata or {}).items():
            self._set_meta(int(i), m)

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, *, config: IndexConfig, dim: int) -> FaissIndex:
        """An empty index of dimension ``dim`` (trained already when the factory needs no training)."""
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ConfigError(f"dim={dim!r} must be a positive int")
        faiss = _faiss()
        try:
            base = faiss.index_factory(dim, config.factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ConfigError(f"faiss cannot build {config.factory!r} at dim {dim}: {exc}") from exc
        ivf = faiss.try_extract_index_ivf(base)
        if ivf is not None:
            ivf = faiss.downcast_index(ivf)
            if hasattr(ivf, "do_polysemous_training"):
                ivf.do_polysemous_training = False  # unused here, and it makes PQ training ~15x slower
            return cls(config=config, index=base)
        if hasattr(base, "hnsw"):
            base.hnsw.efConstruction = config.ef_construction
        return cls(config=config, index=faiss.IndexIDMap2(base))

    @property
    def is_trained(self) -> bool:
        return bool(self._index.is_trained)

    def train(self, x: np.ndarray) -> None:
        """Train IVF / PQ / OPQ on ``x`` ``(n, d)`` (a sample of at most ``config.train_size`` rows)."""
        x = self._check_vectors(x, "training vectors")
        if self.is_trained:
            return
        nlist = int(self._ivf.nlist) if self._ivf is not None else 1
        if x.shape[0] < nlist:
            raise ConfigError(f"{self.config.factory!r} needs at least {nlist} training vectors (one per IVF "
                              f"list), got {x.shape[0]}; use a smaller IVF count or more vectors")
        if x.shape[0] > self.config.train_size:
            rows = np.random.default_rng(self.config.seed).choice(x.shape[0], self.config.train_size, replace=False)
            x = x[np.sort(rows)]
        self._index.train(x)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def size(self) -> int:
        """Live items."""
        return len(self._live)

    @property
    def tombstones(self) -> int:
        """Dead HNSW entries still in the graph (0 for other factories)."""
        return int(self._id_map.size - len(self._live)) if self._mapped else 0

    def __contains__(self, item: object) -> bool:
        return isinstance(item, (int, np.integer)) and int(item) in self._live

    def ids(self) -> np.ndarray:
        """``(size,)`` int64 live ids, sorted."""
        return np.array(sorted(self._live), dtype=np.int64)

    def metadata(self, item: int) -> dict[str, str]:
        return dict(self._meta.get(int(item), {}))

    # ------------------------------------------------------------------ writes
    def check_upsert(self, ids: object, vectors: object, metadata: Sequence[Metadata] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Validate an upsert without applying it; returns ``(ids, vectors)`` as int64 / float32."""
        ids = check_ids(ids)
        x = self._check_vectors(vectors, "vectors")
        if x.shape[0] != ids.size:
            raise ShapeError(f"{ids.size} ids but {x.shape[0]} vectors; send one vector per id")
        if metadata is not None and len(metadata) != ids.size:
            raise ShapeError(f"{ids.size} ids but {len(metadata)} metadata entries")
        if not self.is_trained:
            raise ConfigError(f"the {self.config.factory!r} index is not trained; build it with `asymfuse index build`")
        for m in metadata or ():
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in m.items()):
                raise ShapeError("metadata keys and values must be strings")
        return ids, x

    def upsert(self, ids: object, vectors: object, metadata: Sequence[Metadata] | None = None) -> int:
        """Insert or replace items; returns how many. Validation happens before any change."""
        ids, x = self.check_upsert(ids, vectors, metadata)
        if ids.size == 0:
            return 0
        existing = ids[np.fromiter((int(i) in self._live for i in ids), dtype=bool, count=ids.size)]
        if existing.size:
            self._remove(existing)
        self._index.add_with_ids(x, ids)
        if self._mapped:
            self._id_map = np.concatenate([self._id_map, ids])
        self._live.update(int(i) for i in ids)
        for i, m in zip(ids.tolist(), metadata or [{}] * ids.size):
            self._set_meta(i, m)
        return int(ids.size)

    def check_delete(self, ids: object) -> np.ndarray:
        """Validate a delete: every id must be live.

        Raises:
            UnknownIdError: some ids are not in the index (names up to 10).
        """
        ids = check_ids(ids)
        missing = [int(i) for i in ids if int(i) not in self._live]
        if missing:
            raise UnknownIdError(f"{len(missing)} id(s) not in the index, e.g. {missing[:10]}; nothing was deleted")
        return ids

    def delete(self, ids: object) -> int:
        """Remove items (all or nothing); returns how many."""
        ids = self.check_delete(ids)
        if ids.size:
            self._remove(ids)
        return int(ids.size)

    def _remove(self, ids: np.ndarray) -> None:
        faiss = _faiss()
        if self._hnsw:
            dead = np.isin(self._id_map, ids)
            self._id_map[dead] = -1
            faiss.copy_array_to_vector(self._id_map, self._index.id_map)
        else:
            self._index.remove_ids(faiss.IDSelectorBatch(ids))
            if self._mapped:
                self._id_map = faiss.vector_to_array(self._index.id_map).astype(np.int64)
        for i in ids.tolist():
            self._live.discard(i)
            self._set_meta(i, {})

    def compact(self) -> bool:
        """Rebuild an HNSW graph without its tombstones; returns whether anything changed."""
        if not self._hnsw or self.tombstones == 0:
            return False
        labels = np.flatnonzero(self._id_map != -1)
        x = self._base.reconstruct_batch(labels) if labels.size else np.zeros((0, self.dim), np.float32)
        fresh = FaissIndex.create(config=self.config, dim=self.dim)
        if labels.size:
            fresh._index.add_with_ids(np.ascontiguousarray(x, dtype=np.float32), self._id_map[labels])
        self._index, self._base = fresh._index, fresh._base
        self._id_map = self._id_map[labels]
        return True

    def _set_meta(self, item: int, meta: Metadata) -> None:
        for field, value in self._meta.pop(item, {}).items():
            bucket = self._postings[field][value]
            bucket.discard(item)
            if not bucket:
                del self._postings[field][value]
        if meta:
            self._meta[item] = dict(meta)
            for field, value in meta.items():
                self._postings.setdefault(field, {}).setdefault(value, set()).add(item)

    # ------------------------------------------------------------------ search
    def search(self, xq: object, *, k: int, filter_field: str = "", filter_values: Sequence[str] = ()
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product.

        Args:
            xq: ``(nq, d)`` float queries.
            k: results per query (positive).
            filter_field, filter_values: keep items whose metadata ``filter_field`` is one of
                ``filter_values`` (no filter when ``filter_field`` is empty).

        Returns:
            ``(D, I)``: ``(nq, k)`` float32 scores (decreasing; -inf padding) and int64 ids (-1 padding).
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"k={k!r} must be a positive int")
        xq = self._check_vectors(xq, "queries")
        k = int(k)
        nq = xq.shape[0]
        D = np.full((nq, k), -np.inf, dtype=np.float32)
        I = np.full((nq, k), -1, dtype=np.int64)
        if not self._live or nq == 0:
            return D, I
        allowed: np.ndarray | None = None
        if filter_field:
            values = self._postings.get(filter_field, {})
            allowed = np.array(sorted(set().union(*(values.get(v, set()) for v in filter_values))), dtype=np.int64)
            if allowed.size == 0:
                return D, I
            if allowed.size <= EXACT_FILTER and self._mapped:
                return self._exact_subset(xq, k, allowed, D, I)
        d, labels = self._search_base(xq, k, allowed)
        ids = np.where(labels >= 0, self._id_map[np.clip(labels, 0, None)], -1) if self._mapped else labels
        d = np.where(ids >= 0, d, -np.inf).astype(np.float32)
        order = np.lexsort((ids, -d), axis=-1)
        D[:, : d.shape[1]] = np.take_along_axis(d, order, axis=1)[:, :k]
        I[:, : d.shape[1]] = np.take_along_axis(ids, order, axis=1)[:, :k]
        return D, I

    def _exact_subset(self, xq: np.ndarray, k: int, allowed: np.ndarray, D: np.ndarray, I: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        labels = np.flatnonzero(np.isin(self._id_map, allowed))
        xb = self._base.reconstruct_batch(labels)
        scores = xq @ xb.T
        ids = self._id_map[labels]
        order = np.lexsort((np.broadcast_to(ids, scores.shape), -scores), axis=-1)[:, :k]
        n = order.shape[1]
        D[:, :n] = np.take_along_axis(scores, order, axis=1)
        I[:, :n] = ids[order]
        return D, I

    def _search_base(self, xq: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        user_sel = faiss.IDSelectorBatch(allowed) if allowed is not None else None
        if user_sel is None and self.tombstones:
            user_sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(np.array([-1], dtype=np.int64)))
        sel = user_sel
        if user_sel is not None and self._mapped:
            sel = faiss.IDSelectorTranslated(self._index.id_map, user_sel)
        exhaustive = allowed is not None and allowed.size <= EXACT_FILTER
        keep: list[Any] = [user_sel, sel]  # SWIG objects must outlive the search
        params = self._params(self._base, k=k, sel=sel, exhaustive=exhaustive, keep=keep)
        kk = min(k, int(self._id_map.size) if self._mapped else len(self._live))
        return self._base.search(xq, kk, params=params)

    def _params(self, index: Any, *, k: int, sel: Any, exhaustive: bool, keep: list[Any]) -> Any:
        """Per-call search parameters for ``index`` and its sub-indexes (selector on every level)."""
        faiss = _faiss()
        index = faiss.downcast_index(index)
        if isinstance(index, faiss.IndexPreTransform):
            params = faiss.SearchParametersPreTransform()
            params.index_params = self._params(index.index, k=k, sel=sel, exhaustive=exhaustive, keep=keep)
        elif hasattr(index, "hnsw"):
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.config.ef_search, k)
        elif faiss.try_extract_index_ivf(index) is not None:
            nlist = int(faiss.extract_index_ivf(index).nlist)
            params = faiss.SearchParametersIVF()
            params.nprobe = nlist if exhaustive else min(self.config.nprobe, nlist)
        else:
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel
        keep.append(params)
        return params

    # ------------------------------------------------------------------ persistence
    def to_bytes(self) -> tuple[bytes, bytes]:
        """``(faiss index bytes, metadata JSON bytes)`` (ids and vectors are in the faiss bytes)."""
        blob = _faiss().serialize_index(self._index).tobytes()
        meta = json.dumps({str(i): m for i, m in sorted(self._meta.items())}, sort_keys=True).encode()
        return blob, meta

    @classmethod
    def from_bytes(cls, *, config: IndexConfig, index_bytes: bytes, metadata_bytes: bytes) -> FaissIndex:
        faiss = _faiss()
        try:
            index = faiss.deserialize_index(np.frombuffer(index_bytes, dtype=np.uint8))
            meta = {int(i): m for i, m in json.loads(metadata_bytes.decode()).items()}
        except (RuntimeError, ValueError) as exc:
            raise CorruptDataError(f"the index snapshot does not decode ({exc}); restore it or rebuild with "
                                   "`asymfuse index build`") from exc
        if not isinstance(index, faiss.IndexIDMap2) and faiss.try_extract_index_ivf(index) is None:
            raise CorruptDataError(f"the snapshot holds a {type(index).__name__}, not an IndexIDMap2 or IVF index; "
                                   "rebuild it")
        return cls(config=config, index=index, metadata=meta)

    def _check_vectors(self, x: object, name: str) -> np.ndarray:
        return as_index_vectors(x, dim=self.dim, name=name)


def _ivf_ids(ivf: Any) -> np.ndarray:
    """All ids stored in an IVF index's inverted lists."""
    faiss = _faiss()
    invlists = ivf.invlists
    parts = [faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
             for i in range(ivf.nlist) if invlists.list_size(i)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
