"""Artifacts: hashing, temp-then-rename, failed/ names, manifest.json, and the registry tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from asymfuse.edge.errors import ConfigError, CorruptDataError, UnknownNameError
from asymfuse.edge.spec import ModelSpec
from asymfuse.export.artifact import (
    Artifact,
    atomic_artifact,
    failed_name,
    make_artifact,
    move_to_failed,
    read_manifest,
    sha256_of,
    toolchain_versions,
    write_manifest,
)
from asymfuse.export.registry import EXPORTERS, RUNNERS, create_exporter, format_of, load_runner

SPEC = ModelSpec(arch="tinynet", embed_dim=8, input_size=(64, 64), embedding_space_id="es-test")


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_sha256_of_files_and_folders(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    assert sha256_of(f) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    pkg = tmp_path / "m.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Manifest.json").write_text("{}")
    (pkg / "Data" / "w.bin").write_bytes(b"\x00\x01")
    first = sha256_of(pkg)
    assert first == sha256_of(pkg) and len(first) == 64
    (pkg / "Data" / "w.bin").write_bytes(b"\x00\x02")
    assert sha256_of(pkg) != first
    with pytest.raises(CorruptDataError, match="does not exist"):
        sha256_of(tmp_path / "missing.onnx")


def test_atomic_artifact_renames_only_on_success(tmp_path):
    target = tmp_path / "net.onnx"
    with atomic_artifact(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith("net.onnx") and tmp != target
        tmp.write_bytes(b"model")
        assert not target.exists()
    assert target.read_bytes() == b"model"
    with pytest.raises(RuntimeError, match="converter crashed"), atomic_artifact(target) as tmp:
        tmp.write_bytes(b"half-writ")
        raise RuntimeError("converter crashed")
    assert target.read_bytes() == b"model"  # the old artifact is untouched
    assert _leftovers(tmp_path) == ["net.onnx"]


def test_a_new_export_supersedes_a_stale_failed_copy(tmp_path):
    target = tmp_path / "net.tflite"
    target.write_bytes(b"bad")
    target.with_name("net.tflite.json").write_text("{}")
    moved = move_to_failed(target)
    assert moved == failed_name(target) and moved.with_name("net.tflite.json").exists()
    with pytest.raises(RuntimeError), atomic_artifact(target) as tmp:  # a crash keeps the old failed copy
        tmp.write_bytes(b"half")
        raise RuntimeError("crash")
    assert moved.read_bytes() == b"bad"
    with atomic_artifact(target) as tmp:
        tmp.write_bytes(b"good")
    assert target.read_bytes() == b"good"
    assert not moved.exists() and not moved.with_name("net.tflite.json").exists()


def test_atomic_artifact_handles_folders_and_empty_output(tmp_path):
    target = tmp_path / "net.mlpackage"
    with pytest.raises(ValueError), atomic_artifact(target) as tmp:
        (tmp / "Data").mkdir(parents=True)
        (tmp / "Data" / "weights.bin").write_bytes(b"half")
        raise ValueError("conversion failed")
    assert _leftovers(tmp_path) == []
    for payload in (b"one", b"two"):  # a second export replaces the folder
        with atomic_artifact(target) as tmp:
            tmp.mkdir()
            (tmp / "weights.bin").write_bytes(payload)
        assert (target / "weights.bin").read_bytes() == payload
    with pytest.raises(CorruptDataError, match="wrote nothing"), atomic_artifact(tmp_path / "x.onnx"):
        pass
    assert _leftovers(tmp_path) == ["net.mlpackage"]


def test_non_writable_output_folder_errors_clearly(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="is not writable.*pass --out to a folder you can write"), \
            atomic_artifact(blocker / "sub" / "net.onnx"):
        pass
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(ConfigError, match="not writable"), atomic_artifact(ro / "net.onnx"):
            pass


def _artifact(path, status="unverified", **kw):
    path.write_bytes(b"weights-" + path.name.encode())
    art = make_artifact(path, format="onnx", precision="fp32", input_size=64, spec=SPEC)
    return art.with_status(status, **kw)


def test_manifest_roundtrip_and_only_passed_ships(tmp_path):
    good = _artifact(tmp_path / "good.onnx", "passed", parity={"cosine_min": 0.9999})
    bad = _artifact(tmp_path / "bad.onnx")
    bad = bad.with_status("failed", reason="cosine 0.5 < 0.999", path=move_to_failed(bad.path),
                          parity={"cosine_min": 0.5})
    assert bad.path == failed_name(tmp_path / "bad.onnx") == tmp_path / "failed" / "bad.onnx"
    assert bad.path.exists() and not (tmp_path / "bad.onnx").exists()
    path = write_manifest(tmp_path, [good, bad])
    doc = json.loads(path.read_text())
    assert doc["shippable"] == ["good.onnx"]
    entries = {e["file"]: e for e in doc["artifacts"]}
    assert entries["failed/bad.onnx"]["status"] == "failed" and entries["failed/bad.onnx"]["shippable"] is False
    assert entries["good.onnx"]["sha256"] == sha256_of(tmp_path / "good.onnx")
    assert entries["good.onnx"]["spec"]["embedding_space_id"] == "es-test"
    assert "onnxruntime" in doc["toolchain"]
    back = read_manifest(tmp_path)
    assert [a.path for a in back] == [good.path, bad.path]
    assert back[0] == good and back[1].reason == "cosine 0.5 < 0.999" and not back[1].shippable
    with pytest.raises(CorruptDataError, match="does not exist"):
        read_manifest(tmp_path / "nowhere")


def test_artifact_rejects_unknown_status(tmp_path):
    with pytest.raises(ConfigError, match="status='great' is unknown"):
        Artifact(path=tmp_path, format="onnx", precision="fp32", input_size=64, sha256="", size_bytes=0,
                 spec=SPEC, status="great")


def test_registry_tables_and_lookups(tmp_path):
    assert set(EXPORTERS) == {"onnx", "tflite", "coreml"} and set(RUNNERS) == {"onnx", "tflite"}
    assert create_exporter("onnx").__name__ == "export_onnx"
    with pytest.raises(UnknownNameError, match="unknown export format 'tensorrt'"):
        create_exporter("tensorrt")
    assert format_of("a/b.tflite") == "tflite" and format_of("x.mlpackage") == "coreml"
    with pytest.raises(UnknownNameError, match="unknown artifact extension '.pt'"):
        format_of("net.pt")
    with pytest.raises(UnknownNameError, match="runnable artifact format 'coreml'"):
        load_runner(tmp_path / "net.mlpackage")


def test_light_modules_do_not_import_torch_or_toolchains(tmp_path):
    code = ("import sys, asymfuse.export.spec, asymfuse.export.artifact, asymfuse.export.registry, "
            "asymfuse.export.quantize, asymfuse.export.verify; "
            "bad = [m for m in ('torch', 'onnx', 'onnxruntime', 'coremltools', 'litert_torch') if m in sys.modules];"
            "print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    versions = toolchain_versions()
    assert versions["onnxruntime"] and versions["torch"]
