"""The struct-only TFLite metadata reader against ai-edge-litert's own flatbuffer schema, on real
exported files, plus damaged files and the sidecar fallback."""

from __future__ import annotations

import json
import shutil

import pytest

from asymfuse.edge.errors import CorruptDataError
from asymfuse.edge.runtimes import tflite_file


def _schema_metadata(content: bytes) -> dict[str, str]:
    """The reference: ai-edge-litert's generated flatbuffer classes."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAs(bytearray(content), 0)
    out = {}
    for i in range(model.MetadataLength()):
        meta = model.Metadata(i)
        data = model.Buffers(meta.Buffer())
        if data is not None and data.DataLength():
            try:
                out[meta.Name().decode()] = data.DataAsNumpy().tobytes().decode("utf-8")
            except UnicodeDecodeError:
                continue
    return out


@pytest.mark.parametrize("name", ["tflite-fp32", "tflite-int8"])
def test_reader_agrees_with_the_flatbuffer_schema(edge_models, query_net, name):
    content = edge_models[name].read_bytes()
    meta = tflite_file.read_metadata(content)
    assert meta == _schema_metadata(content)
    assert {"asymfuse.model_spec", "asymfuse.export"} <= set(meta)
    assert ("asymfuse.quantization" in meta) == (name == "tflite-int8")
    assert tflite_file.read_spec(edge_models[name]) == query_net.spec


def test_damaged_files_are_corrupt_data(edge_models, tmp_path):
    content = edge_models["tflite-fp32"].read_bytes()
    with pytest.raises(CorruptDataError, match="not a TFLite flatbuffer"):
        tflite_file.read_metadata(b"not a model at all")
    for cut in (12, 200, len(content) // 2):
        with pytest.raises(CorruptDataError, match="damaged"):
            tflite_file.read_metadata(content[:cut])
    junk = bytearray(b"\xff" * 64)
    junk[4:8] = b"TFL3"
    with pytest.raises(CorruptDataError, match="damaged"):
        tflite_file.read_metadata(bytes(junk))


def test_sidecar_is_the_fallback_and_must_be_valid(edge_models, query_net, tmp_path):
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(edge_models["tflite-fp32"].read_bytes()))
    model.metadata = [m for m in model.metadata if m.name not in (b"asymfuse.model_spec", "asymfuse.model_spec")]
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    with pytest.raises(CorruptDataError, match="carries no ModelSpec"):
        tflite_file.read_spec(bare)
    shutil.copy(tflite_file.sidecar_path(edge_models["tflite-fp32"]), tflite_file.sidecar_path(bare))
    assert tflite_file.sidecar_path(bare).name == "bare.tflite.json"
    assert tflite_file.read_spec(bare) == query_net.spec
    tflite_file.sidecar_path(bare).write_text(json.dumps({"export": {}}))
    with pytest.raises(CorruptDataError, match="not a valid asymfuse sidecar"):
        tflite_file.read_spec(bare)
