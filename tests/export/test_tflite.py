"""TFLite export run by the real ai-edge-litert interpreter: parity with torch per precision on real
photos, NHWC input, int8 input types, ModelSpec metadata + sidecar, and temp-then-rename."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError
from asymfuse.export import tflite
from asymfuse.export.artifact import sha256_of
from asymfuse.export.registry import create_exporter, load_runner, read_model_spec
from asymfuse.export.spec import ExportSpec
from asymfuse.export.verify import THRESHOLDS, verify_artifact
from tests.export.conftest import TINY_SIZE, cosine_rows, photos, torch_embed

PRECISIONS = ("fp32", "fp16", "int8", "int8_dynamic")


@pytest.fixture(scope="module")
def tflite_artifacts(tmp_path_factory, tiny_net, images):
    """The tiny net at every precision (one conversion each per module; ~35 s in all).

    int8 keeps the PT2E int8 input (``int8_io="int8"``) so the float/uint8 variants can be derived
    from it below without converting again. Calibration: even-indexed images; parity: odd ones.
    """
    out = tmp_path_factory.mktemp("tflite")
    export = create_exporter("tflite")
    return {prec: export(tiny_net, model_spec=tiny_net.spec, out=out, calibration=images[::2],
                         export=ExportSpec(format="tflite", precision=prec, input_size=TINY_SIZE,
                                           calibration_images=24, int8_io="int8"))
            for prec in PRECISIONS}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_parity_with_torch_on_real_images(tflite_artifacts, tiny_net, images, precision):
    art = tflite_artifacts[precision]
    held_out = images[1::2]
    ref = torch_embed(tiny_net, held_out)
    with load_runner(art.path, num_threads=1) as runner:
        out = runner.run(held_out)
    assert out.shape == ref.shape and out.dtype == np.float32
    cos = cosine_rows(out, ref)
    assert cos.min() >= THRESHOLDS[precision], (precision, cos.min())
    assert cosine_rows(ref, np.roll(ref, 1, axis=0)).mean() < 0.9  # different photos are far apart
    assert art.sha256 == sha256_of(art.path) and art.status == "unverified" and art.parity["convert_s"] > 0


def test_gate_passes_every_precision(tflite_artifacts, tiny_net, images):
    for prec, art in tflite_artifacts.items():
        judged = verify_artifact(art, model=tiny_net, images=images[1::2], move_failed=False)
        assert judged.status == "passed", (prec, judged.reason, judged.parity)


def test_smaller_files_for_lower_precisions(tflite_artifacts):
    size = {p: a.size_bytes for p, a in tflite_artifacts.items()}
    assert size["fp16"] < 0.75 * size["fp32"]
    assert size["int8"] < 0.5 * size["fp32"] and size["int8_dynamic"] < 0.75 * size["fp32"]


def test_input_is_nhwc_so_camera_frames_feed_directly(tflite_artifacts, images):
    art = tflite_artifacts["fp32"]
    with load_runner(art.path) as runner:
        assert runner.layout == "NHWC" and runner.input_dtype == np.float32
        x = images[:3]
        np.testing.assert_allclose(runner.run_nhwc(x.transpose(0, 2, 3, 1)), runner.run(x), atol=1e-6)
        with pytest.raises(ShapeError, match=r"\(B, 3, 64, 64\) NCHW"):
            runner.run(x.transpose(0, 2, 3, 1))
    with pytest.raises(ConfigError, match="closed"):
        runner.run(x)
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(art.path))
    assert list(interp.get_input_details()[0]["shape"]) == [1, TINY_SIZE, TINY_SIZE, 3]


@pytest.mark.parametrize("int8_io", ["float", "uint8"])
def test_full_int8_input_types(tflite_artifacts, tiny_net, images, tmp_path, int8_io):
    art = tflite_artifacts["int8"]
    with load_runner(art.path) as runner:
        assert runner.input_dtype == np.int8
        base = runner.run(images[1::2])
    content = tflite.set_input_type(art.path.read_bytes(), int8_io)
    path = tmp_path / f"io-{int8_io}.tflite"
    path.write_bytes(content)
    with load_runner(path) as runner:
        assert runner.input_dtype == {"float": np.float32, "uint8": np.uint8}[int8_io]
        out = runner.run(images[1::2])
        assert runner.spec == tiny_net.spec  # metadata survives the surgery
    assert cosine_rows(out, base).min() > 0.9999  # same int8 graph, only the input type changed
    assert cosine_rows(out, torch_embed(tiny_net, images[1::2])).min() >= THRESHOLDS["int8"]


def test_model_spec_roundtrip_embedded_and_sidecar(tflite_artifacts, tiny_net, tmp_path):
    art = tflite_artifacts["fp16"]
    assert read_model_spec(art.path) == tiny_net.spec
    meta = tflite.read_metadata(art.path.read_bytes())
    assert json.loads(meta[tflite.EXPORT_KEY])["precision"] == "fp16"
    sidecar = json.loads(tflite.sidecar_path(art.path).read_text())
    assert sidecar["layout"] == "NHWC" and sidecar["export"]["format"] == "tflite"
    # A file without the metadata entry (e.g. stripped by a tool) falls back to the sidecar.
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(art.path.read_bytes()))
    model.metadata = [m for m in model.metadata if tflite._name(m.name) != tflite.SPEC_KEY]
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    with pytest.raises(CorruptDataError, match="carries no ModelSpec"):
        tflite.read_spec(bare)
    shutil.copy(tflite.sidecar_path(art.path), tflite.sidecar_path(bare))
    assert tflite.read_spec(bare) == tiny_net.spec
    with pytest.raises(CorruptDataError, match="not a TFLite flatbuffer"):
        tflite.read_metadata(b"not a model at all")


def test_bad_requests_fail_before_converting(tiny_net, images, tmp_path):
    export = create_exporter("tflite")
    with pytest.raises(ConfigError, match="too few calibration images: got 3, need >= 8"):
        export(tiny_net, model_spec=tiny_net.spec, out=tmp_path, calibration=images[:3],
               export=ExportSpec(format="tflite", precision="int8", input_size=TINY_SIZE))
    with pytest.raises(ConfigError, match="static int8 needs real calibration images"):
        export(tiny_net, model_spec=tiny_net.spec, out=tmp_path, calibration=None,
               export=ExportSpec(format="tflite", precision="int8", input_size=TINY_SIZE))
    with pytest.raises(ConfigError, match="export at the size the model was built for"):
        export(tiny_net, model_spec=tiny_net.spec, out=tmp_path, calibration=None,
               export=ExportSpec(format="tflite", precision="fp32", input_size=96))
    assert list(tmp_path.iterdir()) == []


class _Unconvertible(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom: this model cannot be traced")


def test_failed_conversion_leaves_nothing_under_the_final_name(tiny_net, tmp_path):
    export = create_exporter("tflite")
    with pytest.raises(Exception, match="boom"):
        export(_Unconvertible(), model_spec=tiny_net.spec, out=tmp_path, calibration=None,
               export=ExportSpec(format="tflite", precision="fp32", input_size=TINY_SIZE))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_pretrained_lite0_parity(tmp_path):
    """EfficientNet-Lite0 with its ImageNet weights at 96 px (random nets flatter int8)."""
    from asymfuse.cloud.models import create_query_net
    from asymfuse.edge.preprocess import preprocess

    torch.set_num_threads(2)
    net = create_query_net("efficientnet_lite0", embed_dim=128, pretrained=True, input_size=96).eval()
    x = preprocess(photos(), net.spec)
    ref = torch_embed(net, x[1::2])
    export = create_exporter("tflite")
    cos = {}
    for prec in PRECISIONS:
        art = export(net, model_spec=net.spec, out=tmp_path, calibration=x[::2],
                     export=ExportSpec(format="tflite", precision=prec, input_size=96, calibration_images=64))
        with load_runner(art.path, num_threads=2) as runner:
            cos[prec] = cosine_rows(runner.run(x[1::2]), ref)
    assert cos["fp32"].min() >= 0.999 and cos["fp16"].min() >= 0.999
    # Measured: int8 min 0.958 / mean 0.988, int8_dynamic min 0.982 / mean 0.996: below the 0.99
    # gate on the worst photo (the gate marks them failed); guard against regressions here.
    assert cos["int8"].mean() >= 0.98 and cos["int8"].min() >= 0.94, cos["int8"]
    assert cos["int8_dynamic"].mean() >= 0.99 and cos["int8_dynamic"].min() >= 0.97, cos["int8_dynamic"]
