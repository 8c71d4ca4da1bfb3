"""A crash-safe mutable index: snapshot + write-ahead log around a :class:`FaissIndex`.

An index folder holds ``meta.json`` (:class:`~asymfuse.cloud.index.index_meta.IndexMeta`),
``snapshot.afs`` and ``wal.log``.

- **Writes** (:meth:`DurableIndex.upsert`, :meth:`DurableIndex.delete`) are validated in full,
  appended to the log and fsynced, and only then applied in memory; the call returns the record's
  sequence number. A write that returned is on disk; one that raised changed nothing.
- **Snapshots** (:meth:`DurableIndex.snapshot`) serialise the index to a temp file, fsync it and
  rename it over ``snapshot.afs`` (one checksummed file: sequence, metadata, faiss bytes), then
  empty the log. A crash between the rename and the truncation is harmless: replay skips records
  the snapshot already holds (by sequence number).
- **Opening** loads the snapshot and replays the log after it; a torn last record (a crash during a
  write, which was therefore never acknowledged) is dropped and cut off.
- **Concurrency**: searches share a readers-writer lock; a write holds it exclusively only while it
  changes the in-memory index (not while it fsyncs), and writes are ordered by a separate mutex so
  the log order is the apply order. Snapshots block writes, not searches.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from asymfuse.cloud.index.faiss_index import FaissIndex, IndexConfig
from asymfuse.cloud.index.index_meta import IndexMeta
from asymfuse.cloud.index.ops import Delete, Upsert, decode, encode_delete, encode_upsert
from asymfuse.cloud.index.rwlock import ReadWriteLock
from asymfuse.cloud.index.wal import WriteAheadLog
from asymfuse.edge.errors import ConfigError, CorruptDataError
from asymfuse.edge.fileio import atomic_write

SNAPSHOT_FILE = "snapshot.afs"
WAL_FILE = "wal.log"
_SNAP_MAGIC = b"AFSNAP01"
_SNAP_HEAD = struct.Struct("<8sQQQ")  # magic, next sequence, metadata bytes, index bytes
COMPACT_FRACTION = 0.1  # rebuild an HNSW graph at snapshot time when this share of it is tombstones


def write_snapshot(path: Path, index: FaissIndex, next_sequence: int) -> None:
    """Atomically write ``index`` as holding every log record before ``next_sequence``."""
    blob, meta = index.to_bytes()
    head = _SNAP_HEAD.pack(_SNAP_MAGIC, next_sequence, len(meta), len(blob))
    crc = zlib.crc32(blob, zlib.crc32(meta, zlib.crc32(head))) & 0xFFFFFFFF

    def write(fh) -> None:  # noqa: ANN001 - a binary file object
        fh.write(head)
        fh.write(meta)
        fh.write(blob)
        fh.write(struct.pack("<I", crc))

    atomic_write(path, write)


def read_snapshot(path: Path, config: IndexConfig) -> tuple[FaissIndex, int]:
    """``(index, next sequence)`` from a snapshot file.

    Raises:
        CorruptDataError: missing, truncated or failing its checksum.
    """
    if not path.is_file():
        raise CorruptDataError(f"no snapshot at {path}; rebuild the index folder with `asymfuse index build`")
    data = path.read_bytes()
    if len(data) < _SNAP_HEAD.size + 4:
        raise CorruptDataError(f"{path} is truncated; restore the index folder or rebuild it")
    magic, next_seq, meta_len, blob_len = _SNAP_HEAD.unpack_from(data, 0)
    end = _SNAP_HEAD.size + meta_len + blob_len
    if magic != _SNAP_MAGIC or end + 4 != len(data):
        raise CorruptDataError(f"{path} is not a complete snapshot; restore the index folder or rebuild it")
    (crc,) = struct.unpack_from("<I", data, end)
    if zlib.crc32(data[:end]) & 0xFFFFFFFF != crc:
        raise CorruptDataError(f"{path} fails its checksum; restore the index folder or rebuild it")
    meta = data[_SNAP_HEAD.size:_SNAP_HEAD.size + meta_len]
    blob = data[_SNAP_HEAD.size + meta_len:end]
    return FaissIndex.from_bytes(config=config, index_bytes=blob, metadata_bytes=meta), next_seq


class DurableIndex:
    """See the module docstring. Create a folder with :meth:`create`, reopen it with :meth:`open`."""

    def __init__(self, folder: Path, meta: IndexMeta, index: FaissIndex, wal: WriteAheadLog) -> None:
        self.folder = folder
        self.meta = meta
        self._index = index
        self._wal = wal
        self._lock = ReadWriteLock()
        self._write_mutex = threading.Lock()
        self._closed = False
        self.replayed = 0
        self.torn_bytes = 0

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, folder: str | os.PathLike[str], *, meta: IndexMeta, index: FaissIndex) -> DurableIndex:
        """Write ``meta.json`` and a first snapshot of ``index`` into ``folder`` (which must hold no
        index yet) and open it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if (folder / SNAPSHOT_FILE).exists() or (folder / WAL_FILE).exists():
            raise ConfigError(f"{folder} already holds an index; choose an empty folder or delete it first")
        write_snapshot(folder / SNAPSHOT_FILE, index, 0)
        meta.save(folder)
        return cls.open(folder)

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> DurableIndex:
        """Load the snapshot and replay the log (see the module docstring).

        Raises:
            CorruptDataError: meta, snapshot or log is damaged beyond a torn last write.
        """
        folder = Path(folder)
        meta = IndexMeta.load(folder)
        config = IndexConfig.from_dict(meta.config)
        index, next_seq = read_snapshot(folder / SNAPSHOT_FILE, config)
        wal, scan = WriteAheadLog.open(folder / WAL_FILE, next_sequence=next_seq)
        replayed = 0
        try:
            for record in scan.records:
                if record.sequence < next_seq:
                    continue
                _apply(index, decode(record.payload), record.sequence)
                replayed += 1
        except BaseException:
            wal.close()
            raise
        obj = cls(folder, meta, index, wal)
        obj.replayed = replayed
        obj.torn_bytes = scan.torn_bytes
        return obj

    def close(self, *, snapshot: bool = True) -> None:
        """Snapshot (unless told not to) and release the log. Safe to call twice."""
        if self._closed:
            return
        if snapshot:
            self.snapshot()
        with self._write_mutex:
            self._wal.close()
            self._closed = True

    def __enter__(self) -> DurableIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return self._index.dim

    @property
    def size(self) -> int:
        return self._index.size

    @property
    def config(self) -> IndexConfig:
        return self._index.config

    @property
    def next_sequence(self) -> int:
        return self._wal.next_sequence

    def wal_bytes(self) -> int:
        return self._wal.size_bytes()

    # ------------------------------------------------------------------ writes
    def upsert(self, ids: object, vectors: object, metadata: Sequence[Mapping[str, str]] | None = None) -> int:
        """Insert or replace items durably; returns the log sequence number of the write."""
        with self._write_mutex:
            self._check_open()
            ids, x = self._index.check_upsert(ids, vectors, metadata)
            meta = [dict(m) for m in metadata] if metadata is not None else None
            seq = self._wal.append(encode_upsert(ids, x, meta))
            with self._lock.write():
                self._index.upsert(ids, x, meta)
            return seq

    def delete(self, ids: object) -> int:
        """Remove items durably (all or nothing); returns the log sequence number.

        Raises:
            UnknownIdError: an id is not in the index (nothing is logged or removed).
        """
        with self._write_mutex:
            self._check_open()
            ids = self._index.check_delete(ids)
            seq = self._wal.append(encode_delete(ids))
            with self._lock.write():
                self._index.delete(ids)
            return seq

    def snapshot(self) -> None:
        """Write a snapshot and empty the log (writes wait; searches go on)."""
        with self._write_mutex:
            self._check_open()
            index = self._index
            if index.tombstones > COMPACT_FRACTION * max(index.size, 1):
                with self._lock.write():
                    index.compact()
            with self._lock.read():
                write_snapshot(self.folder / SNAPSHOT_FILE, index, self._wal.next_sequence)
            self._wal.reset()

    # ------------------------------------------------------------------ reads
    def search(self, xq: object, *, k: int, filter_field: str = "", filter_values: Sequence[str] = ()
               ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`FaissIndex.search` under the shared lock."""
        with self._lock.read():
            self._check_open()
            return self._index.search(xq, k=k, filter_field=filter_field, filter_values=filter_values)

    def metadata(self, ids: Sequence[int]) -> list[dict[str, str]]:
        with self._lock.read():
            return [self._index.metadata(int(i)) for i in ids]

    def ids(self) -> np.ndarray:
        with self._lock.read():
            return self._index.ids()

    def __contains__(self, item: object) -> bool:
        with self._lock.read():
            return item in self._index

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError(f"the index at {self.folder} is closed; DurableIndex.open() it again")


def _apply(index: FaissIndex, op: Upsert | Delete, sequence: int) -> None:
    try:
        if isinstance(op, Upsert):
            index.upsert(op.ids, op.vectors, op.metadata)
        else:
            index.delete(op.ids)
    except (ValueError, KeyError) as exc:
        raise CorruptDataError(f"log record {sequence} does not apply to the snapshot ({exc}); the folder mixes "
                               "files of two indexes. Restore it from a backup or rebuild it") from exc
