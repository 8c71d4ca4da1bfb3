"""The parity gate with real onnxruntime: pass, fail (moved under failed/, never shippable), mAP drop."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from asymfuse.edge.errors import ShapeError
from asymfuse.export.artifact import make_artifact, read_manifest, write_manifest
from asymfuse.export.verify import MAX_MAP_DROP, THRESHOLDS, verify_artifact
from tests.export.conftest import PHOTOS, tiny_query_net


def _copy(art, folder):
    """A private copy of a session artifact (verify may move it)."""
    folder.mkdir(parents=True, exist_ok=True)
    dst = folder / art.path.name
    shutil.copyfile(art.path, dst)
    return make_artifact(dst, format=art.format, precision=art.precision, input_size=art.input_size, spec=art.spec)


def _map_fn(gallery: np.ndarray, labels: np.ndarray):
    """mAP (percent) of query vectors searched against the torch gallery, each query's own image left out."""
    def map_fn(queries: np.ndarray) -> float:
        aps = []
        for i, q in enumerate(queries):
            order = [j for j in np.argsort(-(gallery @ q)) if j != i]
            hits = labels[order] == labels[i]
            precision_at = np.cumsum(hits) / np.arange(1, len(hits) + 1)
            aps.append((precision_at * hits).sum() / max(hits.sum(), 1))
        return 100.0 * float(np.mean(aps))
    return map_fn


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_gate_passes_real_artifacts_with_map(onnx_artifacts, tiny_net, images, tmp_path, precision):
    from tests.export.conftest import torch_embed

    art = _copy(onnx_artifacts[precision], tmp_path)
    labels = np.arange(len(images)) % len(PHOTOS)  # photo i and its two crops share a label
    map_fn = _map_fn(torch_embed(tiny_net, images), labels)
    out = verify_artifact(art, model=tiny_net, images=images, map_fn=map_fn, num_threads=1)
    from tests.export.conftest import xfail_int8_without_vnni

    xfail_int8_without_vnni(precision, out.status, out.reason)
    assert out.status == "passed" and out.shippable and out.reason == ""
    assert out.parity["cosine_min"] >= THRESHOLDS[precision] and out.parity["n_images"] == len(images)
    assert out.parity["map_drop"] <= MAX_MAP_DROP and 0 < out.parity["torch_map"] <= 100
    assert out.path == art.path and art.path.exists()


def test_gate_failure_moves_artifact_under_failed_and_manifest_says_not_shippable(onnx_artifacts, images, tmp_path):
    art = _copy(onnx_artifacts["fp32"], tmp_path)
    other = tiny_query_net(seed=1)  # a different net: the artifact cannot match it
    out = verify_artifact(art, model=other, images=images)
    assert out.status == "failed" and not out.shippable
    assert "cosine vs torch" in out.reason and out.parity["cosine_min"] < THRESHOLDS["fp32"]
    assert out.path == tmp_path / "failed" / art.path.name and out.path.exists() and not art.path.exists()
    write_manifest(tmp_path, [out])
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert doc["shippable"] == [] and doc["artifacts"][0]["file"] == f"failed/{art.path.name}"
    assert doc["artifacts"][0]["status"] == "failed" and doc["artifacts"][0]["shippable"] is False
    assert read_manifest(tmp_path)[0].reason.startswith("failed the parity gate")


def test_gate_fails_on_map_drop(onnx_artifacts, tiny_net, images, tmp_path):
    art = _copy(onnx_artifacts["fp32"], tmp_path)
    out = verify_artifact(art, model=tiny_net, images=images, map_fn=lambda q: 50.0, torch_map=60.0,
                          move_failed=False)
    assert out.status == "failed" and "mAP drop 10.00 points > 1.0" in out.reason
    assert out.parity["map_drop"] == pytest.approx(10.0) and out.path == art.path


def test_gate_fails_unrunnable_files_and_checks_images(onnx_artifacts, tiny_net, images, tmp_path):
    art = _copy(onnx_artifacts["fp32"], tmp_path)
    art.path.write_bytes(b"truncated")
    out = verify_artifact(art, model=tiny_net, images=images)
    assert out.status == "failed" and "the runtime cannot run it" in out.reason
    assert (tmp_path / "failed" / art.path.name).exists()
    with pytest.raises(ShapeError, match=r"\(N, 3, 64, 64\)"):
        verify_artifact(onnx_artifacts["fp32"], model=tiny_net, images=images[:, :, :32])
