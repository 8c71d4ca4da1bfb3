"""NumPy <-> wire messages of ``asymfuse.v1`` (torch-free; used by the searcher and its clients).

Vectors travel as packed little-endian float32 or float16 bytes plus their shape
(``searcher.proto``). Decoding validates everything a client can get wrong (byte count, dtype,
NaN/inf) and raises :class:`~asymfuse.edge.errors.ShapeError` with the fix, which the searcher
answers as INVALID_ARGUMENT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asymfuse.edge.errors import ShapeError

_DTYPES: dict[int, np.dtype] = {0: np.dtype("<f4"), 1: np.dtype("<f4"), 2: np.dtype("<f2")}
MAX_LOCALS = 4096  # local descriptors per query


@dataclass(frozen=True)
class Hit:
    """One search result: the gallery id, the ranking score (AMES ensemble when ``reranked``, else
    the global similarity), the global similarity and the item's metadata."""

    id: int
    score: float
    global_score: float
    reranked: bool
    metadata: dict[str, str] = field(default_factory=dict)


def _pb() -> Any:
    from asymfuse.proto import searcher_pb2

    return searcher_pb2


def _dtype(code: int, what: str) -> np.dtype:
    if code not in _DTYPES:
        raise ShapeError(f"{what}: unknown dtype {code}; use FLOAT32 or FLOAT16")
    return _DTYPES[code]


def pack_vector(x: np.ndarray, *, half: bool = False) -> Any:
    """``(d,)`` float array -> ``Vector`` (float16 when ``half``)."""
    arr = np.asarray(x, dtype=np.float32).reshape(-1)
    pb = _pb()
    dtype = pb.FLOAT16 if half else pb.FLOAT32
    data = arr.astype("<f2" if half else "<f4").tobytes()
    return pb.Vector(data=data, dim=arr.size, dtype=dtype)


def unpack_vector(msg: Any, *, dim: int, what: str = "query") -> np.ndarray:
    """``Vector`` -> ``(dim,)`` float32.

    Raises:
        ShapeError: missing, another dimension, a byte count that does not match, or NaN/inf.
    """
    dtype = _dtype(int(msg.dtype), what)
    if msg.dim == 0 and not msg.data:
        raise ShapeError(f"{what} vector is missing; send the embedding as Vector(data, dim={dim})")
    if msg.dim != dim:
        raise ShapeError(f"{what} vector has dim {msg.dim} but the index has dim {dim}; embed with the query "
                         "model this searcher serves (GetInfo tells which)")
    if len(msg.data) != dim * dtype.itemsize:
        raise ShapeError(f"{what} vector: {len(msg.data)} bytes do not hold {dim} {dtype.name} values "
                         f"({dim * dtype.itemsize} bytes)")
    arr = np.frombuffer(msg.data, dtype=dtype).astype(np.float32)
    if not np.isfinite(arr).all():
        raise ShapeError(f"{what} vector contains NaN or inf; check the embedding (e.g. a zero vector normalised)")
    return arr


def pack_locals(x: np.ndarray, pad: np.ndarray | None = None, *, half: bool = False) -> Any:
    """``(L, dim)`` local descriptors and ``(L,)`` bool ``pad`` (True = padding, as in AMES; None: all
    valid) -> ``LocalDescriptors`` (whose wire ``mask`` is the inverse: nonzero = valid).

    Raises:
        ShapeError: descriptors not 2-D, or a ``pad`` that is not ``(L,)``.
    """
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ShapeError(f"local descriptors must be (L, dim), got shape {arr.shape}")
    pb = _pb()
    m = b""
    if pad is not None:
        p = np.asarray(pad, dtype=bool)
        if p.shape != (arr.shape[0],):
            raise ShapeError(f"pad has shape {p.shape} for {arr.shape[0]} descriptors; give one bool per row "
                             "(True = padding)")
        m = (~p).astype(np.uint8).tobytes()
    return pb.LocalDescriptors(data=arr.astype("<f2" if half else "<f4").tobytes(), count=arr.shape[0],
                               dim=arr.shape[1], dtype=pb.FLOAT16 if half else pb.FLOAT32, mask=m)


def unpack_locals(msg: Any, *, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``LocalDescriptors`` -> ``(descriptors (L, dim) float32, pad (L,) bool, True = padding)``.

    Raises:
        ShapeError: another descriptor dimension, too many rows, byte counts that do not match, a mask
            of the wrong length, or NaN/inf in a valid row.
    """
    dtype = _dtype(int(msg.dtype), "locals")
    if msg.count > MAX_LOCALS:
        raise ShapeError(f"{msg.count} local descriptors exceed the limit of {MAX_LOCALS}; send the strongest ones")
    if msg.dim != dim:
        raise ShapeError(f"local descriptors have dim {msg.dim} but the searcher's AMES expects {dim}; extract them "
                         "with the local feature the AMES checkpoint was trained on")
    if len(msg.data) != msg.count * dim * dtype.itemsize:
        raise ShapeError(f"locals: {len(msg.data)} bytes do not hold ({msg.count}, {dim}) {dtype.name} values")
    desc = np.frombuffer(msg.data, dtype=dtype).astype(np.float32).reshape(msg.count, dim)
    if msg.mask:
        if len(msg.mask) != msg.count:
            raise ShapeError(f"locals mask has {len(msg.mask)} bytes for {msg.count} descriptors; send one per row")
        pad = np.frombuffer(msg.mask, dtype=np.uint8) == 0
    else:
        pad = np.zeros(msg.count, dtype=bool)
    if not np.isfinite(desc[~pad]).all():
        raise ShapeError("local descriptors contain NaN or inf in valid rows")
    return desc, pad
