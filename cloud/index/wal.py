"""Write-ahead log: checksummed, fsynced records of index writes, replayed after a crash.

A record is ``header | payload``: the header is ``magic (4 bytes) | payload length (u32) |
sequence (u64) | crc32 of sequence+payload (u32)``, little-endian. :meth:`WriteAheadLog.append`
writes one record and fsyncs before it returns, so a write acknowledged after ``append`` survives
a crash. :func:`read_records` returns the intact records in order:

- a **torn last record** (a crash in the middle of ``append``: short header, short payload or a
  checksum mismatch at the end of the file) is dropped, and the file is cut back to the last intact
  record when opened for appending;
- a bad record **followed by** intact ones cannot come from a crash (appends are sequential), so it
  is reported as corruption (:class:`~asymfuse.edge.errors.CorruptDataError`) instead of silently
  losing acknowledged writes after it.

Payloads are opaque bytes; :mod:`asymfuse.cloud.index.ops` encodes the upsert / delete operations.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from asymfuse.edge.errors import ConfigError, CorruptDataError
from asymfuse.edge.fileio import fsync_dir

MAGIC = b"AFW1"
_HEADER = struct.Struct("<4sIQI")
MAX_RECORD = 1 << 30  # a longer length field means the header itself is damaged


@dataclass(frozen=True)
class Record:
    """One intact log record: its sequence number and payload."""

    sequence: int
    payload: bytes


@dataclass(frozen=True)
class LogScan:
    """What :func:`read_records` found: the intact records and where they end.

    Attributes:
        records: intact records in file order.
        valid_bytes: length of the intact prefix of the file.
        torn_bytes: bytes after it (a torn last record; 0 when the file ended cleanly).
    """

    records: list[Record]
    valid_bytes: int
    torn_bytes: int


def _crc(sequence: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<Q", sequence))) & 0xFFFFFFFF


def encode_record(sequence: int, payload: bytes) -> bytes:
    """``header | payload`` for one record."""
    if len(payload) > MAX_RECORD:
        raise ConfigError(f"a log record of {len(payload)} bytes exceeds {MAX_RECORD}; write in smaller batches")
    return _HEADER.pack(MAGIC, len(payload), sequence, _crc(sequence, payload)) + payload


def _next_intact(data: bytes, start: int) -> int | None:
    """Offset of the first intact record at or after ``start`` (None when there is none)."""
    pos = data.find(MAGIC, start)
    while pos != -1:
        if _record_at(data, pos) is not None:
            return pos
        pos = data.find(MAGIC, pos + 1)
    return None


def _record_at(data: bytes, pos: int) -> tuple[Record, int] | None:
    """The intact record at ``pos`` and the offset after it, or None."""
    if pos + _HEADER.size > len(data):
        return None
    magic, length, sequence, crc = _HEADER.unpack_from(data, pos)
    end = pos + _HEADER.size + length
    if magic != MAGIC or length > MAX_RECORD or end > len(data):
        return None
    payload = bytes(data[pos + _HEADER.size:end])
    if _crc(sequence, payload) != crc:
        return None
    return Record(sequence, payload), end


def read_records(path: str | os.PathLike[str]) -> LogScan:
    """Read a log (a missing file is an empty log); see the module docstring.

    Raises:
        CorruptDataError: a damaged record is followed by intact ones, or sequences go backwards.
    """
    path = Path(path)
    if not path.exists():
        return LogScan([], 0, 0)
    data = path.read_bytes()
    records: list[Record] = []
    pos = 0
    while pos < len(data):
        found = _record_at(data, pos)
        if found is None:
            later = _next_intact(data, pos + 1)
            if later is not None:
                raise CorruptDataError(
                    f"{path}: a damaged record at byte {pos} is followed by intact ones (at byte {later}); this "
                    "is disk corruption, not a crash. Restore the index folder from a backup, or move the log "
                    "aside to start from the last snapshot (losing the writes after it)")
            break
        record, pos = found
        if records and record.sequence <= records[-1].sequence:
            raise CorruptDataError(f"{path}: sequence {record.sequence} after {records[-1].sequence}; the log is "
                                   "damaged. Restore the index folder from a backup")
        records.append(record)
    return LogScan(records, pos, len(data) - pos)


class WriteAheadLog:
    """An append-only log file; open with :meth:`open` (which cuts a torn tail off).

    Args:
        path: the log file.
        next_sequence: the sequence number the next :meth:`append` gets.
    """

    def __init__(self, path: Path, handle: int, next_sequence: int) -> None:
        self._path = path
        self._fd: int | None = handle
        self._next = next_sequence

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, next_sequence: int) -> tuple[WriteAheadLog, LogScan]:
        """Open (or create) the log for appending; returns it and the scan of what it held.

        A torn last record is cut off (ftruncate + fsync) so new records follow the intact prefix.
        """
        path = Path(path)
        scan = read_records(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if scan.torn_bytes:
                os.ftruncate(fd, scan.valid_bytes)
                os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_END)
        except BaseException:
            os.close(fd)
            raise
        fsync_dir(path.parent)
        last = scan.records[-1].sequence + 1 if scan.records else 0
        return cls(path, fd, max(next_sequence, last)), scan

    @property
    def path(self) -> Path:
        return self._path

    @property
    def next_sequence(self) -> int:
        return self._next

    def append(self, payload: bytes) -> int:
        """Write one record and fsync it; returns its sequence number.

        Raises:
            ConfigError: the log is closed.
            OSError: the disk refused the write (the record may be torn; replay drops it).
        """
        if self._fd is None:
            raise ConfigError(f"the write-ahead log {self._path} is closed")
        sequence = self._next
        data = encode_record(sequence, payload)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)
        self._next = sequence + 1
        return sequence

    def reset(self) -> None:
        """Empty the log (after a snapshot made its records redundant): truncate and fsync."""
        if self._fd is None:
            raise ConfigError(f"the write-ahead log {self._path} is closed")
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.fsync(self._fd)

    def size_bytes(self) -> int:
        return os.fstat(self._fd).st_size if self._fd is not None else 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
