"""Binary encoding of index writes (upsert, delete) for the write-ahead log.

``U | n (u32) | d (u32) | ids (n int64) | vectors (n*d float32) | metadata JSON`` and
``D | n (u32) | ids (n int64)``, little-endian. Decoding checks every length, so a record that
passed its checksum but does not decode is reported as corruption.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from asymfuse.edge.errors import CorruptDataError

_COUNTS = struct.Struct("<II")


@dataclass(frozen=True)
class Upsert:
    """Insert or replace: ``ids`` ``(n,)`` int64, ``vectors`` ``(n, d)`` float32, one metadata dict per id."""

    ids: np.ndarray
    vectors: np.ndarray
    metadata: list[dict[str, str]]


@dataclass(frozen=True)
class Delete:
    """Remove ``ids`` ``(n,)`` int64."""

    ids: np.ndarray


Op = Upsert | Delete


def encode_upsert(ids: np.ndarray, vectors: np.ndarray, metadata: Sequence[Mapping[str, str]] | None) -> bytes:
    n, d = vectors.shape
    meta = json.dumps([dict(m) for m in metadata] if metadata is not None else []).encode()
    return (b"U" + _COUNTS.pack(n, d) + np.ascontiguousarray(ids, dtype="<i8").tobytes()
            + np.ascontiguousarray(vectors, dtype="<f4").tobytes() + meta)


def encode_delete(ids: np.ndarray) -> bytes:
    return b"D" + _COUNTS.pack(ids.size, 0) + np.ascontiguousarray(ids, dtype="<i8").tobytes()


def decode(payload: bytes) -> Op:
    """Inverse of the encoders.

    Raises:
        CorruptDataError: unknown op or inconsistent lengths.
    """
    if len(payload) < 1 + _COUNTS.size:
        raise CorruptDataError(f"a log record of {len(payload)} bytes is too short to be an index write")
    kind = payload[:1]
    n, d = _COUNTS.unpack_from(payload, 1)
    pos = 1 + _COUNTS.size
    ids = np.frombuffer(payload, dtype="<i8", count=n, offset=pos).astype(np.int64) \
        if len(payload) >= pos + 8 * n else None
    if ids is None:
        raise CorruptDataError("a log record is shorter than its id list")
    pos += 8 * n
    if kind == b"D":
        if pos != len(payload):
            raise CorruptDataError("a delete record has trailing bytes")
        return Delete(ids)
    if kind != b"U":
        raise CorruptDataError(f"unknown log record kind {kind!r}")
    end = pos + 4 * n * d
    if end > len(payload):
        raise CorruptDataError("an upsert record is shorter than its vectors")
    vectors = np.frombuffer(payload, dtype="<f4", count=n * d, offset=pos).astype(np.float32).reshape(n, d)
    try:
        metadata = json.loads(payload[end:].decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptDataError(f"an upsert record's metadata does not decode: {exc}") from exc
    if metadata and len(metadata) != n:
        raise CorruptDataError("an upsert record's metadata count differs from its ids")
    return Upsert(ids, vectors, metadata or [{} for _ in range(n)])
