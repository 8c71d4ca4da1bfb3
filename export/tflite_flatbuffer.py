"""Edits of a TFLite flatbuffer: the model input type and named metadata buffers
(``ai_edge_litert`` schema + ``flatbuffer_utils``). Reading the metadata back is the edge SDK's
torch- and TFLite-free :func:`asymfuse.edge.runtimes.tflite_file.read_metadata`."""

from __future__ import annotations

from typing import Any

import numpy as np

from asymfuse.edge.errors import ConfigError

def set_input_type(content: bytes, int8_io: str) -> bytes:
    """Give a full-int8 model (int8 input) a ``float`` or ``uint8`` input by prepending a QUANTIZE op.

    ``"int8"`` (or a model whose input is not int8) returns ``content`` unchanged.

    Raises:
        ConfigError: unknown ``int8_io``.
    """
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    if int8_io not in ("float", "uint8", "int8"):
        raise ConfigError(f"int8_io={int8_io!r} is unknown; choose float, uint8 or int8")
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    sg = model.subgraphs[0]
    old = sg.inputs[0]
    t_old = sg.tensors[old]
    if int8_io == "int8" or t_old.type != fb.TensorType.INT8:
        return content
    scale = float(t_old.quantization.scale[0])
    zero = int(t_old.quantization.zeroPoint[0])
    new = fb.TensorT()
    new.shape, new.shapeSignature, new.name = list(t_old.shape), t_old.shapeSignature, _name(t_old.name)
    t_old.name = (_name(t_old.name) or "input") + "_int8"
    if int8_io == "uint8":
        new.type = fb.TensorType.UINT8
        new.quantization = fb.QuantizationParametersT()
        new.quantization.scale, new.quantization.zeroPoint = [scale], [zero + 128]
    else:
        new.type = fb.TensorType.FLOAT32
    model.buffers.append(fb.BufferT())
    new.buffer = len(model.buffers) - 1
    sg.tensors.append(new)
    new_idx = len(sg.tensors) - 1
    op = fb.OperatorT()
    op.opcodeIndex = _opcode_index(model, fb.BuiltinOperator.QUANTIZE, version=2)
    op.inputs, op.outputs = [new_idx], [old]
    sg.operators.insert(0, op)
    sg.inputs = [new_idx] + list(sg.inputs[1:])
    for sig in model.signatureDefs or []:
        for tmap in sig.inputs or []:
            if tmap.tensorIndex == old:
                tmap.tensorIndex = new_idx
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _opcode_index(model: Any, builtin: int, *, version: int) -> int:
    from ai_edge_litert import schema_py_generated as fb

    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            code.version = max(code.version, version)
            return i
    code = fb.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def embed_metadata(content: bytes, entries: dict[str, str]) -> bytes:
    """Add (or replace) named metadata buffers holding UTF-8 text."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    model.metadata = [m for m in (model.metadata or []) if _name(m.name) not in entries]
    for key, text in entries.items():
        buf = fb.BufferT()
        buf.data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()
        model.buffers.append(buf)
        meta = fb.MetadataT()
        meta.name, meta.buffer = key, len(model.buffers) - 1
        model.metadata.append(meta)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _name(value: str | bytes | None) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else (value or "")
