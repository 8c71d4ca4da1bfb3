"""The one export -> gate -> record loop: its crash policy, its manifest, and the gate's error boundary."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from asymfuse.export.artifact import make_artifact
from asymfuse.export.pipeline import GateInputs, export_all, export_and_gate
from asymfuse.export.spec import ExportSpec
from asymfuse.export.verify import verify_artifact


class HostRoundTrip(nn.Module):
    """A real query net whose forward leaves the graph (``.numpy()``): no exporter can trace it."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.spec = net, net.spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.net(x).detach().numpy().copy())


def test_a_passing_target_is_gated_and_listed(tiny_net, images, tmp_path):
    gate = GateInputs(images=images)
    done, manifest = export_all(tiny_net, model_spec=tiny_net.spec, export_specs=[ExportSpec(format="onnx",
                                input_size=tiny_net.spec.input_size[0])], out=tmp_path, gate=gate)
    assert [d.artifact.status for d in done] == ["passed"] and done[0].artifact.path.is_file()
    assert done[0].export_s > 0 and done[0].verify_s > 0
    listed = json.loads(manifest.read_text())["artifacts"]
    assert [a["status"] for a in listed] == ["passed"]


def test_a_converter_crash_is_recorded_and_the_other_targets_still_run(tiny_net, images, tmp_path):
    bad = HostRoundTrip(tiny_net).eval()
    size = tiny_net.spec.input_size[0]
    specs = [ExportSpec(format="onnx", input_size=size), ExportSpec(format="tflite", input_size=size)]
    done, manifest = export_all(bad, model_spec=tiny_net.spec, export_specs=specs, out=tmp_path,
                                gate=GateInputs(images=images))
    # litert-torch cannot convert it: recorded, nothing half-written under its name; the ONNX target
    # (tried independently; the TorchScript fallback of torch.onnx traces through) has its own verdict.
    tfl = done[1].artifact
    assert tfl.status == "export_failed" and tfl.reason and tfl.size_bytes == 0 and not tfl.path.exists()
    assert done[0].artifact.status in ("passed", "failed", "export_failed")
    listed = json.loads(manifest.read_text())["artifacts"]
    assert [(a["format"], a["status"]) for a in listed] == [("onnx", done[0].artifact.status),
                                                             ("tflite", "export_failed")]


def test_the_gate_records_runtime_errors_but_lets_programming_errors_through(tiny_net, images, tmp_path,
                                                                              monkeypatch):
    from asymfuse.export import verify

    done = export_and_gate(tiny_net, model_spec=tiny_net.spec, export_spec=ExportSpec(format="onnx", input_size=64),
                           out=tmp_path, gate=GateInputs(images=images))
    art = done.artifact
    fresh = make_artifact(art.path, format="onnx", precision="fp32", input_size=64, spec=art.spec)
    (tmp_path / "junk.onnx").write_bytes(b"not an onnx model")
    junk = make_artifact(tmp_path / "junk.onnx", format="onnx", precision="fp32", input_size=64, spec=art.spec)
    broken = verify_artifact(junk, model=tiny_net, images=images)
    assert broken.status == "failed" and "runtime cannot run it" in broken.reason  # onnxruntime's own error type

    def buggy_runner(path, threads):  # a bug in our code, not a verdict on the file
        raise TypeError("runner() got an unexpected keyword argument")

    monkeypatch.setitem(verify.RUNNERS, "onnx", buggy_runner)
    with pytest.raises(TypeError, match="unexpected keyword"):
        verify_artifact(fresh, model=tiny_net, images=images)
