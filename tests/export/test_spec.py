"""ExportSpec, the format x precision table, and calibration-set checks (no toolchain needed)."""

from __future__ import annotations

import numpy as np
import pytest

from asymfuse.edge.errors import ConfigError, ShapeError, UnknownNameError
from asymfuse.edge.spec import ModelSpec
from asymfuse.export.quantize import batches, check_calibration
from asymfuse.export.spec import FORMATS, PRECISIONS, SUPPORTED, ExportSpec, artifact_name, check_combination


def test_table_covers_every_format_and_only_known_precisions():
    assert set(SUPPORTED) == set(FORMATS)
    for precs in SUPPORTED.values():
        assert set(precs) <= set(PRECISIONS)
    assert "int8_dynamic" not in SUPPORTED["coreml"]


def test_refused_combination_names_what_would_work():
    with pytest.raises(ConfigError) as err:
        check_combination("coreml", "int8_dynamic")
    msg = str(err.value)
    assert "coreml cannot export precision 'int8_dynamic'" in msg
    assert "coreml supports fp32, fp16, int8" in msg and "onnx supports fp32, fp16, int8, int8_dynamic" in msg
    with pytest.raises(ConfigError, match="coreml cannot export"):
        ExportSpec(format="coreml", precision="int8_dynamic")


def test_unknown_format_and_precision_list_the_known_names():
    with pytest.raises(UnknownNameError, match="unknown export format 'tensorrt'; choose one of: coreml, onnx, tflite"):
        check_combination("tensorrt", "fp32")
    with pytest.raises(UnknownNameError, match="unknown export precision 'int4'"):
        ExportSpec(format="onnx", precision="int4")


def test_batch_policy_defaults_and_refusal():
    assert ExportSpec(format="onnx").batch == "dynamic"
    assert ExportSpec(format="tflite").batch == "fixed"
    assert ExportSpec(format="coreml").batch == "fixed"
    assert ExportSpec(format="onnx", batch="fixed").batch == "fixed"
    with pytest.raises(ConfigError, match="tflite files have a fixed batch of 1; pass batch='fixed'"):
        ExportSpec(format="tflite", batch="dynamic")


@pytest.mark.parametrize("kwargs, match", [
    ({"input_size": 8}, "input_size must be an int >= 16"),
    ({"input_size": 224.0}, "input_size must be an int"),
    ({"calibration_images": 4}, "below min_calibration=8"),
    ({"int8_io": "int16"}, "int8_io='int16' is unknown"),
])
def test_bad_export_spec_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ExportSpec(format="onnx", **kwargs)


def test_names_and_roundtrip():
    spec = ModelSpec(arch="mobilenet_v2", embed_dim=8, input_size=(224, 224), embedding_space_id="es-x")
    exp = ExportSpec(format="onnx", precision="int8", input_size=224)
    assert artifact_name(spec, exp) == "mobilenet_v2-onnx-int8-224.onnx"
    coreml = ExportSpec(format="coreml", precision="fp16")
    assert artifact_name(spec, coreml) == "mobilenet_v2-coreml-fp16-224.mlpackage"
    assert ExportSpec.from_dict(exp.to_dict()) == exp
    assert exp.needs_calibration and not ExportSpec(format="coreml", precision="int8").needs_calibration
    # ONNX dynamic int8 does not need images but uses them for its float-prefix self-check
    uses = {(f, p) for f in FORMATS for p in SUPPORTED[f] if ExportSpec(format=f, precision=p).uses_calibration}
    assert uses == {("onnx", "int8"), ("tflite", "int8"), ("onnx", "int8_dynamic")}
    assert not ExportSpec(format="onnx", precision="int8_dynamic").needs_calibration
    with pytest.raises(ConfigError, match="unknown ExportSpec keys"):
        ExportSpec.from_dict({"format": "onnx", "bits": 4})


def test_check_calibration_too_few_images_names_the_fix():
    x = np.zeros((3, 3, 32, 32), np.float32)
    with pytest.raises(ConfigError, match=r"too few calibration images: got 3, need >= 8; pass more images "
                                          r"\(e.g. --calibration DIR\)"):
        check_calibration(x, minimum=8)
    with pytest.raises(ConfigError, match="got none"):
        check_calibration(None, minimum=8)


def test_check_calibration_shapes_and_values():
    ok = check_calibration(np.zeros((8, 3, 32, 32), np.float64), minimum=8, input_size=32)
    assert ok.dtype == np.float32 and ok.flags.c_contiguous
    with pytest.raises(ShapeError, match=r"\(N, 3, H, W\)"):
        check_calibration(np.zeros((8, 32, 32, 3), np.float32), minimum=1)
    with pytest.raises(ShapeError, match="are 32x32 but the export is 64x64"):
        check_calibration(np.zeros((8, 3, 32, 32), np.float32), minimum=1, input_size=64)
    bad = np.zeros((8, 3, 32, 32), np.float32)
    bad[2, 0, 0, 0] = np.nan
    with pytest.raises(ShapeError, match="NaN"):
        check_calibration(bad, minimum=1)
    assert [len(b) for b in batches(ok, batch_size=3)] == [3, 3, 2]
