"""Reading an asymfuse ``.tflite`` without any TFLite package: its named metadata and its ModelSpec.

The ModelSpec is stored twice (see :mod:`asymfuse.export.tflite`): as a flatbuffer **metadata**
entry ``"asymfuse.model_spec"`` whose buffer holds the UTF-8 JSON, and in a sidecar
``<file>.json`` (``{"model_spec": {...}, "export": {...}, "layout": ...}``). :func:`read_spec`
prefers the embedded entry.

The flatbuffer is walked with ``struct`` only (the TFLite schema's ``Model`` table: field 4
``buffers: [Buffer]``, field 6 ``metadata: [Metadata]``; ``Metadata`` = ``name: string,
buffer: uint``; ``Buffer`` = ``data: [ubyte], offset: ulong, size: ulong``), so the same code
serves ai-edge-litert, the ``tflite_runtime`` fallback and the exporters.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from asymfuse.edge.errors import CorruptDataError
from asymfuse.edge.runtimes.base import spec_from_text
from asymfuse.edge.spec import SPEC_KEY, ModelSpec

FILE_IDENTIFIER = b"TFL3"
SIDECAR_SUFFIX = ".json"
_MODEL_BUFFERS, _MODEL_METADATA = 4, 6
_META_NAME, _META_BUFFER = 0, 1
_BUF_DATA, _BUF_OFFSET, _BUF_SIZE = 0, 1, 2


class _Table:
    """One flatbuffer table: field lookups through its vtable, every read bounds-checked."""

    def __init__(self, buf: bytes, pos: int) -> None:
        self.buf, self.pos = buf, pos
        self.vtable = pos - _i32(buf, pos)
        self.vt_size = _u16(buf, self.vtable)

    def _field(self, index: int) -> int | None:
        slot = 4 + 2 * index
        if slot >= self.vt_size:
            return None
        off = _u16(self.buf, self.vtable + slot)
        return self.pos + off if off else None

    def scalar(self, index: int, fmt: str) -> int:
        at = self._field(index)
        return 0 if at is None else _unpack(fmt, self.buf, at)

    def vector(self, index: int) -> tuple[int, int]:
        """``(start of the elements, length)``; ``(0, 0)`` when absent."""
        at = self._field(index)
        if at is None:
            return 0, 0
        vec = at + _u32(self.buf, at)
        return vec + 4, _u32(self.buf, vec)

    def tables(self, index: int) -> list[_Table]:
        start, n = self.vector(index)
        return [_Table(self.buf, start + 4 * i + _u32(self.buf, start + 4 * i)) for i in range(n)]

    def bytes_(self, index: int) -> bytes:
        start, n = self.vector(index)
        if start + n > len(self.buf):
            raise struct.error("vector runs past the end of the file")
        return self.buf[start:start + n]


def _unpack(fmt: str, buf: bytes, at: int) -> int:
    if at < 0:
        raise struct.error("negative offset")
    return int(struct.unpack_from("<" + fmt, buf, at)[0])


def _u16(buf: bytes, at: int) -> int:
    return _unpack("H", buf, at)


def _u32(buf: bytes, at: int) -> int:
    return _unpack("I", buf, at)


def _i32(buf: bytes, at: int) -> int:
    return _unpack("i", buf, at)


def read_metadata(content: bytes) -> dict[str, str]:
    """All metadata entries of a TFLite flatbuffer as text (entries that are not UTF-8 are skipped).

    Args:
        content: the whole ``.tflite`` file.

    Raises:
        CorruptDataError: the bytes are not a TFLite model, or its tables point outside the file.
    """
    buf = bytes(content)
    if len(buf) < 8 or buf[4:8] != FILE_IDENTIFIER:
        raise CorruptDataError("not a TFLite flatbuffer (no TFL3 identifier); re-export the model")
    out: dict[str, str] = {}
    try:
        model = _Table(buf, _u32(buf, 0))
        buffers = model.tables(_MODEL_BUFFERS)
        for meta in model.tables(_MODEL_METADATA):
            name = meta.bytes_(_META_NAME).decode("utf-8")
            index = meta.scalar(_META_BUFFER, "I")
            if index >= len(buffers):
                raise struct.error(f"metadata {name!r} names buffer {index} of {len(buffers)}")
            data = _buffer_data(buffers[index], buf)
            if data:
                try:
                    out[name] = data.decode("utf-8")
                except UnicodeDecodeError:
                    continue
    except (struct.error, UnicodeDecodeError) as exc:
        raise CorruptDataError(f"the TFLite flatbuffer is damaged ({exc}); re-export the model") from exc
    return out


def _buffer_data(table: _Table, buf: bytes) -> bytes:
    data = table.bytes_(_BUF_DATA)
    offset = table.scalar(_BUF_OFFSET, "Q")
    if data or offset <= 1:  # offset 0/1: no data, or data inside the flatbuffer
        return data
    size = table.scalar(_BUF_SIZE, "Q")
    if offset + size > len(buf):
        raise struct.error("buffer runs past the end of the file")
    return buf[offset:offset + size]


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``x.tflite`` -> ``x.tflite.json``."""
    p = Path(path)
    return p.with_name(p.name + SIDECAR_SUFFIX)


def read_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """The ModelSpec of a ``.tflite``: the embedded metadata entry, else the ``.json`` sidecar.

    Raises:
        CorruptDataError: the file is missing or damaged, or carries no valid ModelSpec (and has no sidecar).
    """
    p = Path(path)
    if not p.is_file():
        raise CorruptDataError(f"TFLite file {p} does not exist; check the path")
    text = read_metadata(p.read_bytes()).get(SPEC_KEY)
    if text is not None:
        return spec_from_text(text, p, where="metadata entry")
    side = sidecar_path(p)
    if side.is_file():
        try:
            text = json.dumps(json.loads(side.read_text("utf-8"))["model_spec"])
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise CorruptDataError(f"sidecar {side} is not a valid asymfuse sidecar ({exc}); re-export") from exc
        return spec_from_text(text, side, where="sidecar key")
    raise CorruptDataError(f"{p} carries no ModelSpec (no {SPEC_KEY!r} metadata and no {side.name}); "
                           "re-export it with `asymfuse export`")
