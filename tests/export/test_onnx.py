"""ONNX export with real onnxruntime: parity with torch per precision, dynamic batch, metadata,
and nothing half-written under a final name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from asymfuse.edge.errors import ConfigError, CorruptDataError
from asymfuse.export.artifact import sha256_of
from asymfuse.edge.runtimes.ort import read_spec
from asymfuse.export.onnx import QUANT_KEY, read_export_spec, read_metadata
from asymfuse.export.registry import create_exporter, load_runner, read_model_spec
from asymfuse.export.spec import ExportSpec
from asymfuse.export.verify import THRESHOLDS
from tests.export.conftest import TINY_SIZE, cosine_rows, torch_embed

PRECISIONS = ("fp32", "fp16", "int8", "int8_dynamic")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_parity_with_torch_on_real_images(onnx_artifacts, tiny_net, images, precision):
    art = onnx_artifacts[precision]
    held_out = images[1::2]  # not used for calibration
    ref = torch_embed(tiny_net, held_out)
    out = load_runner(art.path, num_threads=1).run(held_out)
    assert out.shape == ref.shape and out.dtype == np.float32
    cos = cosine_rows(out, ref)
    from tests.export.conftest import xfail_int8_without_vnni

    xfail_int8_without_vnni(precision, "passed" if cos.min() >= THRESHOLDS[precision] else "failed", str(cos.min()))
    assert cos.min() >= THRESHOLDS[precision], (precision, cos.min())
    # The test can fail: the embeddings of different photos are far apart.
    assert cosine_rows(ref, np.roll(ref, 1, axis=0)).mean() < 0.9
    assert art.sha256 == sha256_of(art.path) and art.status == "unverified"


def test_smaller_files_for_lower_precisions(onnx_artifacts):
    size = {p: a.size_bytes for p, a in onnx_artifacts.items()}
    assert size["fp16"] < 0.7 * size["fp32"]
    assert size["int8"] < 0.5 * size["fp32"] and size["int8_dynamic"] < 0.5 * size["fp32"]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_dynamic_batch_runs_batch_1_and_3(onnx_artifacts, tiny_net, images, precision):
    runner = load_runner(onnx_artifacts[precision].path)
    assert runner.dynamic_batch
    one = runner.run(images[:1])
    three = runner.run(images[:3])
    assert one.shape == (1, 32) and three.shape == (3, 32)
    np.testing.assert_allclose(three[:1], one, atol=1e-5)
    ref = torch_embed(tiny_net, images[:3])
    from tests.export.conftest import xfail_int8_without_vnni

    worst = cosine_rows(three, ref).min()
    xfail_int8_without_vnni(precision, "passed" if worst >= THRESHOLDS[precision] else "failed", str(worst))
    assert worst >= THRESHOLDS[precision]


def test_model_spec_roundtrips_through_metadata_props(onnx_artifacts, tiny_net):
    for precision, art in onnx_artifacts.items():
        assert read_spec(art.path) == tiny_net.spec
        assert read_model_spec(art.path) == tiny_net.spec
        assert load_runner(art.path).model_spec == tiny_net.spec
        exp = read_export_spec(art.path)
        assert (exp.format, exp.precision, exp.input_size, exp.batch) == ("onnx", precision, TINY_SIZE, "dynamic")
    meta = read_metadata(onnx_artifacts["int8"].path)
    assert '"float_convs"' in meta[QUANT_KEY]
    assert onnx_artifacts["int8"].parity["quantization"]["calibration_images"] == 24


def test_runner_rejects_wrong_input_and_files_without_spec(onnx_artifacts, tmp_path):
    import onnx

    runner = load_runner(onnx_artifacts["fp32"].path)
    with pytest.raises(Exception, match=r"expects \(B, 3, 64, 64\)"):
        runner.run(np.zeros((1, 64, 64, 3), np.float32))
    proto = onnx.load(str(onnx_artifacts["fp32"].path))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(CorruptDataError, match="carries no ModelSpec"):
        read_spec(bare)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(CorruptDataError):
        load_runner(junk)


class _Broken(nn.Module):
    """Fails inside the exporter, after the output folder was checked."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("unsupported op in forward")


def test_failed_export_leaves_nothing_under_the_final_name(tiny_net, tmp_path):
    export = create_exporter("onnx")
    with pytest.raises(Exception, match="unsupported op in forward"):
        export(_Broken(), model_spec=tiny_net.spec, export=ExportSpec(format="onnx", input_size=TINY_SIZE),
               out=tmp_path, calibration=None)
    assert list(tmp_path.iterdir()) == []


def test_static_int8_needs_enough_calibration_images(tiny_net, images, tmp_path):
    export = create_exporter("onnx")
    spec = ExportSpec(format="onnx", precision="int8", input_size=TINY_SIZE)
    with pytest.raises(ConfigError, match="too few calibration images: got 3, need >= 8"):
        export(tiny_net, model_spec=tiny_net.spec, export=spec, out=tmp_path, calibration=images[:3])
    with pytest.raises(ConfigError, match="got none"):
        export(tiny_net, model_spec=tiny_net.spec, export=spec, out=tmp_path, calibration=None)
    with pytest.raises(ConfigError, match="asks for 96x96"):
        export(tiny_net, model_spec=tiny_net.spec, export=ExportSpec(format="onnx", input_size=96), out=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_non_writable_output_folder(tiny_net, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not writable.*pass --out"):
        create_exporter("onnx")(tiny_net, model_spec=tiny_net.spec, out=tmp_path / "file" / "out",
                                export=ExportSpec(format="onnx", input_size=TINY_SIZE), calibration=None)


def test_real_mobilenet_v2_fp32(mobilenet_net, real_photos, tmp_path):
    from asymfuse.edge.preprocess import preprocess

    x = preprocess(real_photos[:8], mobilenet_net.spec)
    art = create_exporter("onnx")(mobilenet_net, model_spec=mobilenet_net.spec, out=tmp_path, calibration=None,
                                  export=ExportSpec(format="onnx", input_size=TINY_SIZE))
    runner = load_runner(art.path, num_threads=2)
    out = np.concatenate([runner.run(x[:1]), runner.run(x[1:])])
    ref = torch_embed(mobilenet_net, x)
    assert cosine_rows(out, ref).min() >= 0.9999
    assert np.abs(out - ref).max() < 1e-4
    assert runner.model_spec == mobilenet_net.spec and art.path.name == "mobilenet_v2-onnx-fp32-64.onnx"


@pytest.mark.slow
def test_pretrained_lite0_224_passes_the_gate_except_int8_dynamic_which_stays_within_0_985(real_photos, tmp_path):
    """A real pretrained net at 224 px (random nets can hide int8 damage): fp32, fp16 and static int8
    pass the gate; dynamic int8 sits at its edge, so its cosines are guarded, not its verdict."""
    from asymfuse.cloud.models import create_query_net
    from asymfuse.edge.preprocess import preprocess
    from asymfuse.export.verify import verify_artifact

    net = create_query_net("efficientnet_lite0", embed_dim=512, pretrained=True, input_size=224).eval()
    x = preprocess(real_photos, net.spec)
    calib, held_out = x[::2], x[1::2]
    for precision in PRECISIONS:
        art = create_exporter("onnx")(net, model_spec=net.spec, out=tmp_path, calibration=calib,
                                      export=ExportSpec(format="onnx", precision=precision, calibration_images=24))
        out = verify_artifact(art, model=net, images=held_out, num_threads=2)
        if precision == "int8_dynamic":
            # At the gate's edge on these 24 photos: the self-check keeps 28 of 49 convs float
            # (calibration min 0.9943) and the held-out min is 0.9893 (0.9905 with 16 float convs in
            # an earlier recipe; 0.991 on the benchmark's bbx queries). Guard against regressions.
            assert out.parity["cosine_min"] >= 0.985 and out.parity["cosine_mean"] >= 0.994, out.parity
            assert out.status == "passed" or "cosine vs torch" in out.reason, out.reason
            continue
        from tests.export.conftest import xfail_int8_without_vnni

        xfail_int8_without_vnni(precision, out.status, out.reason)
        assert out.status == "passed", (precision, out.reason, out.parity)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_square_root_pooling_exports_with_parity(tmp_path, images, precision):
    from tests.export.conftest import tiny_query_net

    net = tiny_query_net(pooling="gem_sqrt_l2")
    art = create_exporter("onnx")(net, model_spec=net.spec, out=tmp_path, calibration=images[::2],
                                  export=ExportSpec(format="onnx", precision=precision, input_size=TINY_SIZE,
                                                    calibration_images=24))
    ref = torch_embed(net, images[1::2])
    cos = cosine_rows(load_runner(art.path, num_threads=1).run(images[1::2]), ref)
    from tests.export.conftest import xfail_int8_without_vnni

    xfail_int8_without_vnni(precision, "passed" if cos.min() >= THRESHOLDS[precision] else "failed", str(cos.min()))
    assert cos.min() >= THRESHOLDS[precision], (precision, cos.min())
    assert read_model_spec(art.path).pooling == "gem_sqrt_l2"
