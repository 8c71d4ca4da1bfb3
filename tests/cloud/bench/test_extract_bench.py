"""bench extract on a tiny set: every row filled, 1 and 2 torchrun processes, files written; presets."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from asymfuse.cloud.bench.extract_bench import ExtractBenchConfig, run_extract_bench, write_photos
from asymfuse.edge.errors import ConfigError


def test_tiny_run_fills_every_row(tmp_path):
    cfg = ExtractBenchConfig.preset("quick").with_overrides({"images": 6, "photo_side": 80, "max_side": 64,
                                                             "shard_size": 2, "batch_size": 2})
    result = run_extract_bench(cfg, out_dir=tmp_path, log=lambda *_: None)
    rows = result["rows"]
    assert [r.run for r in rows] == ["decode + preprocess", "model", "1 process", "2 processes"]
    assert all(r.images == 6 and r.img_per_s > 0 and r.seconds > 0 for r in rows)
    assert rows[2].efficiency == pytest.approx(1.0) and rows[3].efficiency > 0
    assert rows[3].efficiency == pytest.approx(rows[3].img_per_s / (2 * rows[2].img_per_s))
    assert rows[3].wall_s > rows[3].seconds
    saved = json.loads((tmp_path / "report.json").read_text())
    assert len(saved["rows"]) == 4 and "| 2 processes | 2 |" in (tmp_path / "report.md").read_text()


def test_photos_are_real_jpegs_of_the_asked_size(tmp_path):
    cfg = ExtractBenchConfig(images=20, photo_side=120)
    paths = write_photos(tmp_path, cfg)
    assert len(paths) == 20 and len({p.read_bytes() for p in paths}) == 20
    with Image.open(paths[3]) as im:
        assert im.format == "JPEG" and max(im.size) == 120


def test_presets_and_bad_settings():
    quick = ExtractBenchConfig.preset("quick")
    assert (quick.device, quick.procs, quick.extractor, quick.precision) == ("cpu", (1, 2), "gem_lite1", "fp32")
    cuda = ExtractBenchConfig.preset("default", device="cuda")
    assert (cuda.extractor, cuda.precision, cuda.batch_size, cuda.images) == ("gem_lite2", "bf16", 64, 8 * 384)
    assert ExtractBenchConfig.preset("quick").with_overrides({"procs": 1}).procs == (1,)
    with pytest.raises(ConfigError, match="unknown bench extract setting"):
        quick.with_overrides({"nope": 1})
    with pytest.raises(ConfigError, match="tier"):
        ExtractBenchConfig.preset("huge")
    with pytest.raises(ConfigError, match="procs"):
        quick.with_overrides({"procs": [0]})
    with pytest.raises(ConfigError, match="raise images"):
        quick.with_overrides({"images": 1})
