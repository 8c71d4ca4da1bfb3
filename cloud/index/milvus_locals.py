"""AMES gallery descriptors in Milvus: a second collection the searcher reads per query.

Schema of ``<collection>_ames`` (one row per gallery image that has local descriptors):

=========  =================================  ====================================================
field      type                               holds
=========  =================================  ====================================================
``key``    VARCHAR(512), primary key          the image id (the ``key`` metadata of the vectors)
``codes``  BINARY_VECTOR(L x bits)            the image's first L packed 128-bit descriptor codes,
                                              concatenated (the packed store's bytes; zeros after ``count``)
``count``  INT16                              valid descriptors (``<= L``)
=========  =================================  ====================================================

For one query the searcher fetches its top-``m`` candidates' rows by primary key
(``key in [...]``: one lookup per candidate, about 770 bytes each at L = 48) and scores them as the
packed store's would be (:class:`FetchedLocals` shares its code-to-token path). The binary field
carries a ``BIN_FLAT`` index only because Milvus loads no collection with an unindexed vector
field; it is never searched. Why one row per image rather than one per descriptor, and the fetch
latency measured: ``docs/scaling.md``.

The codes depend only on the binary AMES projection ``W``: the index meta records its sha256
(``projection_sha256``), and :meth:`MilvusLocals.open` refuses a model with another ``W``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from asymfuse.cloud.index.milvus_client import connect, pymilvus, translated
from asymfuse.cloud.index.milvus_config import MilvusTarget
from asymfuse.edge.errors import ClosedError, ConfigError, CorruptDataError

KEY, CODES, COUNT = "key", "codes", "count"
MAX_KEY = 512
MAX_BITS = 32_768  # Milvus's binary vector dim limit
FETCH_BATCH = 1024


def locals_collection(collection: str) -> str:
    """The default name of a gallery's descriptor collection."""
    return f"{collection}_ames"


def key_expr(keys: Sequence[str]) -> str:
    return f"{KEY} in [{', '.join(json.dumps(k) for k in keys)}]"


class FetchedLocals:
    """``GalleryLocals`` over codes fetched for one query: uint8 ``(n, L, bits // 8)`` and counts ``(n,)``."""

    def __init__(self, codes: np.ndarray, counts: np.ndarray) -> None:
        self._codes = codes
        self._counts = counts.astype(np.int64)

    def __len__(self) -> int:
        return int(self._counts.size)

    def counts(self, indices: np.ndarray) -> np.ndarray:
        return self._counts[np.asarray(indices, dtype=np.int64)]

    def tokens(self, model: Any, indices: np.ndarray, *, length: int, device: Any) -> tuple[Any, Any]:
        from asymfuse.cloud.ames.packed_store import codes_to_tokens  # torch: only where AMES is served

        idx = np.asarray(indices, dtype=np.int64)
        return codes_to_tokens(model, self._codes[idx], self._counts[idx], length=length, device=device)


class MilvusLocals:
    """The descriptor collection, read per query (see the module docstring). Open with :meth:`open`."""

    def __init__(self, client: Any, target: MilvusTarget, *, max_local: int, bits: int) -> None:
        self._client = client
        self.target = target
        self.max_local = max_local
        self.bits = bits
        self._closed = False

    @classmethod
    def open(cls, target: MilvusTarget, *, ames: dict[str, Any], model: Any = None) -> MilvusLocals:
        """Attach to the collection described by the index meta's ``ames`` entry and load it.

        Raises:
            ConfigError: ``model``'s projection is not the one the codes were made with, or no collection.
            CorruptDataError: the entry lacks a field.
            IndexUnavailableError: the server cannot be reached.
        """
        try:
            max_local, bits, digest = int(ames["max_local"]), int(ames["bits"]), str(ames["projection_sha256"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDataError(f"the index meta's AMES entry lacks {exc}; rebuild with `asymfuse index build "
                                   "--backend milvus --ames ... --packed ...`") from exc
        if model is not None:
            from asymfuse.cloud.ames.packed_store import projection_digest

            if projection_digest(model) != digest:
                raise ConfigError(f"the AMES model's projection W is not the one the codes in {target.collection!r} "
                                  "were packed with; pass the checkpoint the index was built with")
        client = connect(target)
        try:
            with translated(target, f"load {target.collection}"):
                if not client.has_collection(target.collection, timeout=target.timeout_s):
                    raise ConfigError(f"no AMES descriptor collection {target.collection!r} on {target.uri}; rerun "
                                      "`asymfuse index build --backend milvus --ames ... --packed ...`")
                client.load_collection(target.collection, timeout=None)
        except BaseException:
            client.close()
            raise
        return cls(client, target, max_local=max_local, bits=bits)

    def for_keys(self, keys: Sequence[str]) -> tuple[FetchedLocals, np.ndarray]:
        """The descriptors of images ``keys``: ``(source, rows)``, ``rows[i]`` is key ``i``'s index in the
        source, or -1 when it has none (the key is empty or not in the collection)."""
        if self._closed:
            raise ClosedError(f"the AMES descriptor collection {self.target.collection!r} is closed; open it again")
        wanted = sorted({k for k in keys if k})
        found: dict[str, tuple[bytes, int]] = {}
        for lo in range(0, len(wanted), FETCH_BATCH):
            chunk = wanted[lo:lo + FETCH_BATCH]
            with translated(self.target, "fetch AMES descriptors"):
                rows = self._client.query(self.target.collection, filter=key_expr(chunk), output_fields=[CODES, COUNT],
                                          timeout=self.target.timeout_s, consistency_level=self.target.consistency)
            for r in rows:
                code = r[CODES]
                found[str(r[KEY])] = (bytes(code[0] if isinstance(code, list) else code), int(r[COUNT]))
        order = {k: i for i, k in enumerate(found)}
        nbytes = self.bits // 8
        codes = np.zeros((len(found), self.max_local, nbytes), dtype=np.uint8)
        counts = np.zeros(len(found), dtype=np.int64)
        for i, (code, count) in enumerate(found.values()):
            codes[i] = np.frombuffer(code, dtype=np.uint8).reshape(self.max_local, nbytes)
            counts[i] = count
        rows_of = np.array([order.get(k, -1) for k in keys], dtype=np.int64)
        return FetchedLocals(codes, counts), rows_of

    def close(self) -> None:
        """Release the connection. Idempotent."""
        if not self._closed:
            self._closed = True
            self._client.close()

    def __enter__(self) -> MilvusLocals:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_locals_collection(client: Any, target: MilvusTarget, *, max_local: int, bits: int) -> None:
    """Make the descriptor collection (no index yet: :func:`finish_locals` builds it after the load).

    Raises:
        ConfigError: ``max_local * bits`` exceeds Milvus's binary vector limit.
    """
    if max_local * bits > MAX_BITS or bits % 8:
        raise ConfigError(f"{max_local} descriptors x {bits} bits exceed Milvus's {MAX_BITS}-bit binary vectors; "
                          f"keep at most {MAX_BITS // bits} descriptors per image (--lx)")
    mod = pymilvus()
    schema = mod.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                            description="asymfuse AMES packed local descriptors, one row per image")
    schema.add_field(KEY, mod.DataType.VARCHAR, is_primary=True, max_length=MAX_KEY)
    schema.add_field(CODES, mod.DataType.BINARY_VECTOR, dim=max_local * bits)
    schema.add_field(COUNT, mod.DataType.INT16)
    with translated(target, f"create {target.collection}"):
        client.create_collection(target.collection, schema=schema, consistency_level=target.consistency,
                                 timeout=target.timeout_s)


def insert_locals(client: Any, target: MilvusTarget, keys: Sequence[str], codes: np.ndarray,
                  counts: np.ndarray) -> None:
    """Insert rows: ``codes`` uint8 ``(n, L, bits // 8)``, ``counts`` ``(n,)``; keys must be new."""
    if any(len(k.encode()) > MAX_KEY for k in keys):
        raise ConfigError(f"an image id is longer than {MAX_KEY} bytes; shorten the gallery's image ids")
    rows = [{KEY: k, CODES: np.ascontiguousarray(c).tobytes(), COUNT: int(n)} for k, c, n in zip(keys, codes, counts)]
    with translated(target, "insert AMES descriptors"):
        client.insert(target.collection, rows, timeout=None)


def finish_locals(client: Any, target: MilvusTarget) -> None:
    """Flush, index (``BIN_FLAT``: required for loading, never searched) and load the descriptor collection."""
    with translated(target, f"index {target.collection}"):
        client.flush(target.collection, timeout=None)
        params = client.prepare_index_params()
        params.add_index(CODES, index_type="BIN_FLAT", metric_type="HAMMING", params={})
        client.create_index(target.collection, params, timeout=None)
        client.load_collection(target.collection, timeout=None)
