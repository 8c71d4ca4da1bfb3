"""``asymfuse export``: a real checkpoint exported and gated end to end, and every bad input refused."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from asymfuse.cloud.cli.export_cmd import load_net, split_list
from asymfuse.cloud.cli.main import main
from asymfuse.cloud.data.benchmark import BenchmarkConfig, build_benchmark
from asymfuse.cloud.models.checkpoint import save_query_net
from asymfuse.cloud.models.query_net import create_query_net


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random-init query net checkpoint (64 px) and a small real-photo benchmark."""
    root = tmp_path_factory.mktemp("export-cmd")
    net = create_query_net("mobilenet_v2", embed_dim=64, pretrained=False, input_size=64)
    ckpt = save_query_net(net, root / "query_net.pt")
    config = BenchmarkConfig(seed=3, photos=("astronaut", "camera", "chelsea", "coffee", "coins", "rocket"),
                             n_views=3, image_max_side=128, distractors_per_split=2, multiview_distractors=2)
    bench = build_benchmark(root / "bench", config=config)
    return {"root": root, "ckpt": str(ckpt), "bench": str(bench.root), "net": net}


def run_cli(setup, *extra: str) -> int:
    return main(["export", "--checkpoint", setup["ckpt"], "--bench-root", setup["bench"], *extra])


def test_split_list():
    assert split_list(["onnx,tflite", " coreml ,onnx"], ()) == ["onnx", "tflite", "coreml"]
    assert split_list(None, ("fp32",)) == ["fp32"]


def test_size_rebuilds_the_net_with_the_same_weights_and_space(setup):
    net = load_net(setup["ckpt"], size=96)
    assert net.spec.input_size == (96, 96) and not net.training
    assert net.spec.embedding_space_id == setup["net"].spec.embedding_space_id
    for (k, a), (_, b) in zip(net.state_dict().items(), setup["net"].state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert load_net(setup["ckpt"], size=None).spec == setup["net"].spec


def test_onnx_fp32_export_is_gated_and_listed_in_the_manifest(setup, capsys):
    out = setup["root"] / "out"
    assert run_cli(setup, "--format", "onnx", "--precision", "fp32", "--out", str(out)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    [entry] = manifest["artifacts"]
    assert entry["file"] == "mobilenet_v2-onnx-fp32-64.onnx" and entry["status"] == "passed" and entry["shippable"]
    assert manifest["shippable"] == [entry["file"]]
    assert entry["sha256"] == hashlib.sha256((out / entry["file"]).read_bytes()).hexdigest()
    assert entry["spec"]["embedding_space_id"] == setup["net"].spec.embedding_space_id
    assert entry["parity"]["cosine_min"] >= 0.999 and abs(entry["parity"]["map_drop"]) <= 1.0
    # The file really computes the torch net: run it on a real photo.
    from skimage import data

    from asymfuse.edge.preprocess import preprocess
    from asymfuse.export.registry import load_runner

    runner = load_runner(out / entry["file"])
    x = preprocess([data.chelsea()], runner.model_spec)
    with torch.inference_mode():
        want = setup["net"].eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(runner.run(x), want, atol=1e-4)
    printed = capsys.readouterr().out
    assert "| mobilenet_v2-onnx-fp32-64.onnx | onnx | fp32 |" in printed and "manifest:" in printed


def test_unsupported_combination_is_refused_with_what_would_work(setup, tmp_path, capsys):
    assert run_cli(setup, "--format", "onnx,coreml", "--precision", "int8_dynamic", "--out", str(tmp_path)) == 2
    err = capsys.readouterr().err
    assert "coreml cannot export precision 'int8_dynamic'" in err and "coreml supports fp32, fp16, int8" in err
    assert run_cli(setup, "--format", "tfjs", "--out", str(tmp_path)) == 2
    assert "unknown export format 'tfjs'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_checkpoint_without_model_spec_is_refused(setup, tmp_path, capsys):
    bare = tmp_path / "bare.pt"
    torch.save({"state_dict": setup["net"].state_dict()}, bare)
    assert main(["export", "--checkpoint", str(bare), "--format", "onnx", "--out", str(tmp_path / "o")]) == 2
    assert "carries no ModelSpec" in capsys.readouterr().err


def test_too_few_calibration_images_are_refused(setup, tmp_path, capsys):
    from skimage import data, io

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "rocket"):
        io.imsave(photos / f"{name}.png", getattr(data, name)())
    code = run_cli(setup, "--format", "onnx", "--precision", "int8", "--calibration", str(photos),
                   "--out", str(tmp_path / "o"))
    assert code == 2
    assert "too few calibration images: got 3, need >= 8" in capsys.readouterr().err
    assert not (tmp_path / "o" / "mobilenet_v2-onnx-int8-64.onnx").exists()


def test_unwritable_output_folder_is_refused(setup, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert run_cli(setup, "--format", "onnx", "--out", str(blocker / "out")) == 2
    assert "pass --out to a folder you can write" in capsys.readouterr().err


def run_verify(setup, *extra: str) -> int:
    return main(["verify", "--checkpoint", setup["ckpt"], "--bench-root", setup["bench"], *extra])


def test_verify_rechecks_an_export_folder_and_catches_a_changed_file(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli(setup, "--format", "onnx,coreml", "--precision", "fp32", "--out", str(out)) == 0
    capsys.readouterr()
    assert run_verify(setup, str(out)) == 0
    printed = capsys.readouterr().out
    assert "| onnx | fp32 | 64 | 1.0000 |" in printed and "| passed |" in printed
    assert "skipped: needs macOS" in printed  # Core ML: MIL checked here, no parity number invented
    # --coreml keeps the Core ML artifact only; a file inside the folder is found in its manifest
    assert run_verify(setup, "--coreml", str(out)) == 0
    printed = capsys.readouterr().out
    assert "coreml" in printed and ".onnx" not in printed
    onnx_file = out / "mobilenet_v2-onnx-fp32-64.onnx"
    assert run_verify(setup, str(onnx_file)) == 0 and "| passed |" in capsys.readouterr().out
    # a changed file fails the sha256 check and is left where it is; the manifest is not rewritten
    manifest = (out / "manifest.json").read_text()
    with open(onnx_file, "ab") as fh:
        fh.write(b"\0")
    assert run_verify(setup, str(onnx_file)) == 1
    printed = capsys.readouterr().out
    assert "differs from the manifest" in printed and "the file changed; re-export it" in printed
    assert onnx_file.exists() and (out / "manifest.json").read_text() == manifest


def test_verify_refuses_what_it_cannot_check(setup, tmp_path, capsys):
    assert run_verify(setup, str(tmp_path / "nowhere")) == 2
    assert "does not exist" in capsys.readouterr().err
    stray = tmp_path / "stray.onnx"
    stray.write_bytes(b"not a model")
    assert run_verify(setup, str(stray)) == 2
    assert "manifest.json does not exist" in capsys.readouterr().err
    out = tmp_path / "out"
    assert run_cli(setup, "--format", "onnx", "--out", str(out)) == 0
    capsys.readouterr()
    assert run_verify(setup, "--coreml", str(out)) == 2
    assert "no Core ML artifacts; drop --coreml" in capsys.readouterr().err
    (out / "other.onnx").write_bytes(b"x")
    assert run_verify(setup, str(out / "other.onnx")) == 2
    assert "does not list other.onnx" in capsys.readouterr().err
