"""``asymfuse extract`` options: workers default, extractor options, precision recorded and checked."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from asymfuse.cloud.cli.extract_cmd import default_workers, extractor_kwargs
from asymfuse.cloud.cli.main import main
from asymfuse.cloud.features.store import FeatureStore
from asymfuse.edge.errors import ConfigError


def args(**kw) -> argparse.Namespace:
    base = {"option": None, "batch_size": None, "precision": "fp32", "channels_last": None, "extractor": "gem_lite1"}
    return argparse.Namespace(**{**base, **kw})


def test_workers_default_to_the_cpus_of_each_process(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_workers({}) == 4 and default_workers({"LOCAL_WORLD_SIZE": "8"}) == 2
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert default_workers({"LOCAL_WORLD_SIZE": "2"}) == 1


def test_extractor_options_from_the_flags():
    cnn = {"max_side", "batch_size", "device", "precision", "channels_last"}
    assert extractor_kwargs(args(), cnn) == {"precision": "fp32", "channels_last": True}  # on by default
    assert extractor_kwargs(args(channels_last=False), cnn) == {"precision": "fp32", "channels_last": False}
    assert extractor_kwargs(args(batch_size=64, precision="bf16"), cnn) == {
        "batch_size": 64, "precision": "bf16", "channels_last": True}
    assert extractor_kwargs(args(batch_size=64, option=["batch_size=8"]), cnn)["batch_size"] == 8
    assert extractor_kwargs(args(extractor="sift"), {"max_local", "device"}) == {}
    with pytest.raises(ConfigError, match="'sift' has no precision option; drop --precision"):
        extractor_kwargs(args(extractor="sift", precision="bf16"), {"max_local", "device"})


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(0)
    for c in range(2):
        (tmp_path / "photos" / f"c{c}").mkdir(parents=True)
        for k in range(3):
            pixels = rng.integers(0, 256, size=(60 + 10 * k, 80, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "photos" / f"c{c}" / f"{k}.jpg")
    return tmp_path / "photos"


def test_bf16_is_recorded_and_a_resume_at_another_precision_is_refused(photos, tmp_path, capsys):
    base = ["extract", "--dataset", "folder-retrieval", "--root", str(photos), "--extractor", "gem_lite1",
            "--option", "max_side=64", "--out", str(tmp_path / "f"), "--sides", "gallery", "--workers", "0"]
    assert main([*base, "--precision", "bf16"]) == 0
    store = FeatureStore.open(tmp_path / "f" / "gallery")
    assert store.meta["precision"] == "bf16" and len(store) == 6
    assert main(base) == 2
    assert "extracted at precision bf16, not fp32" in capsys.readouterr().err
    assert main([*base, "--no-resume"]) == 0
    assert "precision" not in FeatureStore.open(tmp_path / "f" / "gallery").meta  # fp32 stores look as before
    assert main([*base, "--precision", "fp16"]) == 2
    assert "fp16 autocast needs CUDA" in capsys.readouterr().err
