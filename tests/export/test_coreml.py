"""Core ML export: the saved .mlpackage loads back and its MIL program is checked (op types, I/O
shapes, int8 weights), ModelSpec metadata round-trips, the ImageType scale/bias reproduce the
ModelSpec normalisation, and prediction parity runs on macOS only ("skipped: needs macOS" elsewhere)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from asymfuse.edge.errors import ConfigError, CorruptDataError
from asymfuse.edge.preprocess import preprocess, resize_to_spec
from asymfuse.edge.runtimes import coreml as edge_coreml
from asymfuse.export import coreml
from asymfuse.export.artifact import sha256_of
from asymfuse.export.registry import create_exporter, read_model_spec
from asymfuse.export.spec import ExportSpec
from asymfuse.export.verify import MACOS_REASON, THRESHOLDS, verify_artifact
from tests.export.conftest import TINY_SIZE, cosine_rows, torch_embed

PRECISIONS = ("fp32", "fp16", "int8")


@pytest.fixture(scope="module")
def coreml_artifacts(tmp_path_factory, tiny_net):
    out = tmp_path_factory.mktemp("coreml")
    export = create_exporter("coreml")
    return {prec: export(tiny_net, model_spec=tiny_net.spec, out=out, calibration=None,
                         export=ExportSpec(format="coreml", precision=prec, input_size=TINY_SIZE))
            for prec in PRECISIONS}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_mil_program_loads_back_with_expected_ops_and_io(coreml_artifacts, tiny_net, precision):
    art = coreml_artifacts[precision]
    assert art.path.is_dir() and art.path.suffix == ".mlpackage" and art.sha256 == sha256_of(art.path)
    mil = coreml.check_mil(art.path)
    ops = mil["ops"]
    assert ops["conv"] == 4 and ops["linear"] == 1 and "pow" in ops and "reduce_l2_norm" in ops
    assert mil["inputs"] == [{"name": "image", "type": "image", "shape": [1, 3, TINY_SIZE, TINY_SIZE],
                              "color": "RGB"}]
    assert mil["outputs"] == [{"name": "embedding", "type": "multiarray", "shape": [1, tiny_net.embed_dim],
                               "dtype": "float32"}]
    assert mil["precision"] == precision
    assert (mil["quantized_weight_ops"] > 0) == (precision == "int8")
    assert ("cast" in ops) == (precision != "fp32")  # fp16 compute casts the float32 I/O


def test_int8_weights_shrink_the_package(coreml_artifacts):
    size = {p: a.size_bytes for p, a in coreml_artifacts.items()}
    assert size["fp16"] < 0.75 * size["fp32"] and size["int8"] < 0.75 * size["fp16"]


def test_model_spec_roundtrip(coreml_artifacts, tiny_net):
    for prec, art in coreml_artifacts.items():
        assert read_model_spec(art.path) == tiny_net.spec
        import coremltools as ct

        meta = ct.models.MLModel(str(art.path), skip_model_load=True).user_defined_metadata
        assert json.loads(meta[coreml.EXPORT_KEY])["precision"] == prec


def test_image_scale_bias_reproduce_the_model_spec(tiny_net, real_photos):
    """Simulate Core ML's ``scale * pixel + bias`` then the wrapper's gain; compare with torch on
    the ModelSpec's preprocessing (ImageNet std differ per channel, so the gain is exercised)."""
    spec = tiny_net.spec
    scale, bias, gain = coreml.image_scale_bias(spec)
    assert len(set(spec.std)) > 1 and not np.allclose(gain, 1.0)
    pixels = np.stack([resize_to_spec(im, spec) for im in real_photos[:6]]).astype(np.float32)  # (B,H,W,3)
    coreml_in = (scale * pixels + np.asarray(bias, np.float32)).transpose(0, 3, 1, 2)
    wrapped = coreml._wrap(tiny_net, gain)
    with torch.no_grad():
        got = wrapped(torch.from_numpy(np.ascontiguousarray(coreml_in))).numpy()
    ref = torch_embed(tiny_net, preprocess(real_photos[:6], spec))
    assert cosine_rows(got, ref).min() > 0.99999


def test_bad_package_is_reported(tmp_path, coreml_artifacts):
    with pytest.raises(CorruptDataError, match="not an .mlpackage"):
        coreml.check_mil(tmp_path / "missing.mlpackage")
    (tmp_path / "empty.mlpackage").mkdir()
    with pytest.raises(CorruptDataError, match="does not load"):
        edge_coreml.read_spec(tmp_path / "empty.mlpackage")


@pytest.mark.skipif(sys.platform == "darwin", reason="Linux/Windows behaviour")
def test_off_macos_prediction_is_skipped_never_invented(coreml_artifacts, tiny_net, images):
    art = coreml_artifacts["fp16"]
    with pytest.raises(ConfigError, match="needs macOS"):
        edge_coreml.load_runner(art.path)
    judged = verify_artifact(art, model=tiny_net, images=images[:4], move_failed=False)
    assert judged.status == "skipped" and MACOS_REASON in judged.reason
    assert "cosine_min" not in judged.parity and judged.parity["mil"]["ops"]["conv"] == 4


@pytest.mark.skipif(sys.platform != "darwin", reason=MACOS_REASON)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_prediction_parity_on_macos(coreml_artifacts, tiny_net, images, precision):
    art = coreml_artifacts[precision]
    with edge_coreml.load_runner(art.path) as runner:
        out = runner.run(images[1::2])
    cos = cosine_rows(out, torch_embed(tiny_net, images[1::2]))
    assert cos.min() >= THRESHOLDS[precision], cos.min()
