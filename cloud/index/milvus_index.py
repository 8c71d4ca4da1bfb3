"""The searcher's :class:`~asymfuse.cloud.index.base.Index` on a Milvus collection (pymilvus ``MilvusClient``).

**Collection schema** (one collection per gallery, made by ``asymfuse index build --backend milvus``
or :meth:`MilvusIndex.create`):

=========  ===============================  =========================================================
field      type                             holds
=========  ===============================  =========================================================
``id``     INT64, primary key (no auto id)  the user's int64 id (``index build``: store row 0..N-1)
``vector`` FLOAT_VECTOR(d)                  the fused gallery vector; indexed per
                                            :class:`~asymfuse.cloud.index.milvus_config.MilvusIndexConfig`
                                            (FLAT, HNSW, IVF_FLAT, IVF_PQ, IVF_SQ8; metric IP or COSINE)
``meta``   JSON                             the item's string metadata ``{field: value}`` (``key`` = its
                                            image id); the search filter is ``meta["field"] in [values]``
=========  ===============================  =========================================================

Collection properties ``asymfuse.meta`` (the :class:`~asymfuse.cloud.index.index_meta.IndexMeta`
JSON: dim, index config, embedding space id, query ModelSpec, AMES entry) and ``asymfuse.state``
(``loading`` while ``index build`` runs, ``ready`` after) make the collection self-describing, so a
searcher needs nothing but its URL and is stateless. AMES descriptors live in a second collection
(:mod:`asymfuse.cloud.index.milvus_locals`).

- **Writes.** ``upsert`` is Milvus's upsert; ``delete`` first queries which ids exist and raises
  :class:`~asymfuse.cloud.index.faiss_index.UnknownIdError` (deleting nothing) unless all do. Writes
  of one process hold a lock, so all-or-nothing holds per searcher; two replicas deleting the same
  id at once can both succeed. Durability is Milvus's own log (message queue + object storage); the
  faiss write-ahead log is not used, and :meth:`snapshot` has nothing to do. Sequence numbers are
  microseconds since the epoch, strictly increasing per process (ordered across replicas only as
  far as their clocks agree).
- **Reads** use ``Session`` consistency by default: a search sees every write this process
  acknowledged without waiting for the server's time tick (``Strong`` waits ~0.2 s per read). A
  Milvus 2.3 server returns no timestamp for a delete, so :meth:`delete` ends with one ``Strong``
  read, after which the server serves the delete to every reader.
- **Bulk builds** insert, **flush**, then create the vector index and load: data inserted but not
  flushed when the index is built is not in it. :meth:`create` with ``ready=True`` indexes the empty
  collection at once (writes then go to growing segments, searched exhaustively until sealed).
- **Metadata.** A search returns each hit's ``meta``; :meth:`metadata` answers from what the last
  search on the calling thread returned (same snapshot, no second round trip) and queries the rest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from asymfuse.cloud.index.index_config import UnknownIdError, check_ids
from asymfuse.cloud.index.flat import as_index_vectors
from asymfuse.cloud.index.index_meta import IndexMeta
from asymfuse.cloud.index.milvus_client import (
    LOADING,
    READY,
    connect,
    flushed_rows,
    pymilvus,
    read_meta,
    translated,
    write_meta,
)
from asymfuse.cloud.index.milvus_config import MAX_TOP_K, MilvusIndexConfig, MilvusTarget
from asymfuse.edge.errors import ClosedError, ConfigError, ShapeError

ID, VECTOR, META = "id", "vector", "meta"
WRITE_BATCH = 8192  # rows per insert / upsert call (Milvus refuses messages above 64 MiB)


def filter_expr(field: str, values: Sequence[str]) -> str:
    """The Milvus boolean expression keeping items whose metadata ``field`` is one of ``values``."""
    import json

    return f"{META}[{json.dumps(field)}] in [{', '.join(json.dumps(str(v)) for v in values)}]"


def id_expr(ids: Sequence[int]) -> str:
    return f"{ID} in [{', '.join(str(int(i)) for i in ids)}]"


def check_metadata(metadata: Sequence[Mapping[str, str]] | None, n: int) -> list[dict[str, str]]:
    """One ``{str: str}`` dict per item (empty dicts when ``metadata`` is None).

    Raises:
        ShapeError: a count other than ``n``, or keys / values that are not strings.
    """
    if metadata is None:
        return [{} for _ in range(n)]
    if len(metadata) != n:
        raise ShapeError(f"{n} ids but {len(metadata)} metadata entries")
    out = [dict(m) for m in metadata]
    if not all(isinstance(k, str) and isinstance(v, str) for m in out for k, v in m.items()):
        raise ShapeError("metadata keys and values must be strings")
    return out


class MilvusIndex:
    """See the module docstring. Make a collection with :meth:`create`, attach to one with :meth:`open`."""

    def __init__(self, client: Any, target: MilvusTarget, meta: IndexMeta) -> None:
        self._client = client
        self.target = target
        self.meta = meta
        self.config = MilvusIndexConfig.from_dict(meta.config)
        self._write_lock = threading.Lock()
        self._seq = 0
        self._last = threading.local()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, target: MilvusTarget, *, meta: IndexMeta, ready: bool = True) -> MilvusIndex:
        """Make the collection ``target.collection`` for ``meta`` (dim and ``meta.config``).

        With ``ready`` the empty collection is indexed and loaded at once (for writes through
        :meth:`upsert`); without, it is left ``loading`` for a bulk load that ends with :meth:`finish_build`.

        Raises:
            ConfigError: the collection exists already, or a bad dim / config.
            IndexUnavailableError: the server cannot be reached.
        """
        config = MilvusIndexConfig.from_dict(meta.config)
        config.check_dim(meta.dim)
        client = connect(target)
        try:
            if read_meta(client, target, target.collection) is not None:
                raise ConfigError(f"collection {target.collection!r} already exists on {target.uri}; choose another "
                                  "name, or open it with MilvusIndex.open")
            _create_collection(client, target, meta.dim)
            write_meta(client, target, target.collection, meta, state=LOADING)
            index = cls(client, target, meta)
            if ready:
                index.finish_build(flush=False)
            return index
        except BaseException:
            client.close()
            raise

    @classmethod
    def open(cls, target: MilvusTarget) -> MilvusIndex:
        """Attach to a finished collection and load it for search.

        Raises:
            ConfigError: no such collection, one not made by asymfuse, or a build that did not finish.
            CorruptDataError: its recorded meta does not decode or disagrees with the schema.
            IndexUnavailableError: the server cannot be reached.
        """
        client = connect(target)
        try:
            found = read_meta(client, target, target.collection)
            if found is None:
                raise ConfigError(f"no collection {target.collection!r} on {target.uri}; build it with `asymfuse index "
                                  f"build --backend milvus --uri {target.uri} --collection {target.collection} ...`")
            meta, state = found
            if state != READY:
                raise ConfigError(f"collection {target.collection!r} is still being built (state {state!r}); rerun the "
                                  "same `asymfuse index build --backend milvus` command to resume and finish it")
            _check_schema(client, target, meta.dim)
            with translated(target, f"load {target.collection}"):
                client.load_collection(target.collection, timeout=None)
            return cls(client, target, meta)
        except BaseException:
            client.close()
            raise

    def finish_build(self, *, flush: bool = True) -> None:
        """Flush (a bulk load), build the vector index, load the collection, and mark it ``ready``."""
        client, name = self._live_client(), self.target.collection
        with translated(self.target, f"index {name}"):
            if flush:
                client.flush(name, timeout=None)
            params = client.prepare_index_params()
            params.add_index(VECTOR, index_type=self.config.index_type, metric_type=self.config.metric,
                             params=self.config.build_params())
            client.create_index(name, params, timeout=None)
            client.load_collection(name, timeout=None)
        write_meta(client, self.target, name, self.meta, state=READY)

    def close(self, *, snapshot: bool = True) -> None:
        """Release the connection (``snapshot`` is ignored: Milvus persists every write). Idempotent."""
        if not self._closed:
            self._closed = True
            self._client.close()

    def __enter__(self) -> MilvusIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def snapshot(self) -> None:
        """Nothing to do: Milvus persists writes in its own log."""

    def wal_bytes(self) -> int:
        """0: there is no local log to snapshot (the server's snapshot loop skips this index)."""
        return 0

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return int(self.meta.dim)

    @property
    def size(self) -> int:
        """Live items (a ``count(*)`` query)."""
        with translated(self.target, "count"):
            rows = self._live_client().query(self.target.collection, filter="", output_fields=["count(*)"],
                                             timeout=self.target.timeout_s,
                                             consistency_level=self.target.consistency)
        return int(rows[0]["count(*)"]) if rows else 0

    def __contains__(self, item: object) -> bool:
        return isinstance(item, (int, np.integer)) and bool(self.existing([int(item)]))

    def existing(self, ids: Sequence[int]) -> set[int]:
        """Which of ``ids`` are in the collection."""
        found: set[int] = set()
        for lo in range(0, len(ids), WRITE_BATCH):
            chunk = list(ids[lo:lo + WRITE_BATCH])
            with translated(self.target, "query ids"):
                rows = self._live_client().query(self.target.collection, filter=id_expr(chunk), output_fields=[ID],
                                                 timeout=self.target.timeout_s,
                                                 consistency_level=self.target.consistency)
            found.update(int(r[ID]) for r in rows)
        return found

    def flushed_rows(self) -> int:
        """Rows after a flush (a bulk build in progress: the loaded prefix ``0 .. m-1``)."""
        return flushed_rows(self._live_client(), self.target)

    # ------------------------------------------------------------------ writes
    def upsert(self, ids: object, vectors: object, metadata: Sequence[Mapping[str, str]] | None = None) -> int:
        """Insert or replace items (validated in full before anything is sent); returns a sequence number.

        Raises:
            ShapeError: bad ids (not 1-D ints, duplicates, -1), wrong dim, NaN/inf, metadata count or types.
            IndexUnavailableError: the server cannot be reached (batches sent before stay written).
        """
        ids = check_ids(ids)
        x = self._check_vectors(vectors, "vectors")
        if x.shape[0] != ids.size:
            raise ShapeError(f"{ids.size} ids but {x.shape[0]} vectors; send one vector per id")
        meta = check_metadata(metadata, ids.size)
        with self._write_lock:
            self._forget_last()
            for lo in range(0, ids.size, WRITE_BATCH):
                rows = [{ID: int(i), VECTOR: v, META: m}
                        for i, v, m in zip(ids[lo:lo + WRITE_BATCH].tolist(), x[lo:lo + WRITE_BATCH],
                                           meta[lo:lo + WRITE_BATCH])]
                with translated(self.target, "upsert"):
                    self._live_client().upsert(self.target.collection, rows, timeout=self.target.timeout_s)
            return self._next_sequence()

    def insert_new(self, ids: np.ndarray, vectors: np.ndarray, metadata: Sequence[Mapping[str, str]]) -> None:
        """Bulk-load rows known to be absent (``index build``): Milvus ``insert``, no existence check."""
        rows = [{ID: int(i), VECTOR: v, META: dict(m)} for i, v, m in zip(ids.tolist(), vectors, metadata)]
        for lo in range(0, len(rows), WRITE_BATCH):
            with translated(self.target, "insert"):
                self._live_client().insert(self.target.collection, rows[lo:lo + WRITE_BATCH], timeout=None)

    def delete(self, ids: object) -> int:
        """Remove items, all or nothing; returns a sequence number.

        Raises:
            UnknownIdError: some ids are not in the collection (nothing is deleted).
            IndexUnavailableError: the server cannot be reached.
        """
        ids = check_ids(ids)
        with self._write_lock:
            self._forget_last()
            present = self.existing(ids.tolist())
            missing = [int(i) for i in ids if int(i) not in present]
            if missing:
                raise UnknownIdError(f"{len(missing)} id(s) not in the index, e.g. {missing[:10]}; nothing was deleted")
            if ids.size:
                with translated(self.target, "delete"):
                    client = self._live_client()
                    client.delete(self.target.collection, filter=id_expr(ids.tolist()), timeout=self.target.timeout_s)
                    # A 2.3 server returns no timestamp for deletes, so Session reads would not wait for this
                    # one: a Strong read does (~0.2 s), and later reads on this server see the delete.
                    client.query(self.target.collection, filter=id_expr(ids[:1].tolist()), output_fields=[ID],
                                 timeout=self.target.timeout_s, consistency_level="Strong")
            return self._next_sequence()

    # ------------------------------------------------------------------ reads
    def search(self, xq: object, *, k: int, filter_field: str = "", filter_values: Sequence[str] = ()
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by the collection's metric (see :meth:`FaissIndex.search` for the contract).

        Returns:
            ``(D, I)``: ``(nq, k)`` float32 scores (decreasing; -inf padding) and int64 ids (-1 padding).

        Raises:
            ConfigError: ``k`` not in ``[1, 16384]``.
            ShapeError: queries of another dim, or NaN/inf.
            IndexUnavailableError: the server cannot be reached.
        """
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= MAX_TOP_K:
            raise ConfigError(f"k={k!r} must be an int in [1, {MAX_TOP_K}] (Milvus's limit)")
        xq = self._check_vectors(xq, "queries")
        k, nq = int(k), xq.shape[0]
        D = np.full((nq, k), -np.inf, dtype=np.float32)
        I = np.full((nq, k), -1, dtype=np.int64)
        self._forget_last()
        if nq == 0 or (filter_field and not filter_values):
            return D, I
        with translated(self.target, "search"):
            hits = self._live_client().search(
                self.target.collection, data=list(xq), limit=k, anns_field=VECTOR, output_fields=[META],
                filter=filter_expr(filter_field, filter_values) if filter_field else "",
                search_params={"metric_type": self.config.metric, "params": self.config.search_params(k)},
                timeout=self.target.timeout_s, consistency_level=self.target.consistency)
        seen: dict[int, dict[str, str]] = {}
        for row, found in enumerate(hits):
            ids = np.array([int(h[ID]) for h in found], dtype=np.int64)
            scores = np.array([float(h["distance"]) for h in found], dtype=np.float32)
            order = np.lexsort((ids, -scores))[:k]
            D[row, :order.size], I[row, :order.size] = scores[order], ids[order]
            seen.update((int(h[ID]), dict((h.get("entity") or {}).get(META) or {})) for h in found)
        self._last.meta = seen
        return D, I

    def metadata(self, ids: Sequence[int]) -> list[dict[str, str]]:
        """Each id's metadata (``{}`` for unknown ids): the last search's on this thread, else a query."""
        known: dict[int, dict[str, str]] = dict(getattr(self._last, "meta", {}) or {})
        wanted = [int(i) for i in ids if int(i) not in known]
        for lo in range(0, len(wanted), WRITE_BATCH):
            chunk = wanted[lo:lo + WRITE_BATCH]
            with translated(self.target, "query metadata"):
                rows = self._live_client().query(self.target.collection, filter=id_expr(chunk),
                                                 output_fields=[ID, META], timeout=self.target.timeout_s,
                                                 consistency_level=self.target.consistency)
            known.update((int(r[ID]), dict(r.get(META) or {})) for r in rows)
        return [dict(known.get(int(i), {})) for i in ids]

    # ------------------------------------------------------------------ internals
    def _live_client(self) -> Any:
        if self._closed:
            raise ClosedError(f"the Milvus index {self.target.url} is closed; MilvusIndex.open() it again")
        return self._client

    def _forget_last(self) -> None:
        self._last.meta = {}

    def _next_sequence(self) -> int:
        self._seq = max(self._seq + 1, time.time_ns() // 1000)
        return self._seq

    def _check_vectors(self, x: object, name: str) -> np.ndarray:
        return as_index_vectors(x, dim=self.dim, name=name)


def _create_collection(client: Any, target: MilvusTarget, dim: int) -> None:
    mod = pymilvus()
    schema = mod.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                            description="asymfuse fused gallery vectors (see asymfuse.meta)")
    schema.add_field(ID, mod.DataType.INT64, is_primary=True)
    schema.add_field(VECTOR, mod.DataType.FLOAT_VECTOR, dim=dim)
    schema.add_field(META, mod.DataType.JSON)
    with translated(target, f"create {target.collection}"):
        client.create_collection(target.collection, schema=schema, consistency_level=target.consistency,
                                 timeout=target.timeout_s)


def _check_schema(client: Any, target: MilvusTarget, dim: int) -> None:
    """Raises: CorruptDataError: the collection lacks the asymfuse fields or holds another dim."""
    from asymfuse.edge.errors import CorruptDataError

    with translated(target, f"describe {target.collection}"):
        info = client.describe_collection(target.collection, timeout=target.timeout_s)
    fields = {f["name"]: f for f in info.get("fields", [])}
    vec = fields.get(VECTOR, {})
    if ID not in fields or META not in fields or int((vec.get("params") or {}).get("dim", -1)) != dim:
        raise CorruptDataError(f"collection {target.collection!r} does not have the asymfuse schema (id, vector of "
                               f"dim {dim}, meta); rebuild it with `asymfuse index build --backend milvus`")
