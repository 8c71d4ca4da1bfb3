"""bench edge on a tiny exported model and a tiny gallery: every column filled, files written."""

from __future__ import annotations

import json

import pytest

from asymfuse.cloud.bench.edge_bench import EdgeBenchConfig, existing_models, install_sizes, run_edge_bench
from asymfuse.edge.errors import ConfigError
from tests.export.conftest import TINY_SIZE, tiny_query_net


def test_tiny_run_fills_every_column(tmp_path):
    from asymfuse.export.registry import create_exporter
    from asymfuse.export.spec import ExportSpec

    net = tiny_query_net()
    create_exporter("onnx")(net, model_spec=net.spec, export=ExportSpec(format="onnx", input_size=TINY_SIZE),
                            out=tmp_path / "models")
    cfg = EdgeBenchConfig.preset("quick", models=str(tmp_path / "models")).with_overrides({
        "gallery": 2000, "factory": "Flat", "runs": 3, "warmup": 1, "e2e_queries": 3, "cold_runs": 1, "lq": 8,
        "lx": 6, "local_dim": 16, "top_m": 20})
    result = run_edge_bench(cfg, out_dir=tmp_path / "out", log=lambda *_: None)
    (row,) = result["rows"]
    assert row.artifact.endswith(".onnx") and row.size_mb > 0 and row.cold_ms > 0
    assert set(row.embed_ms) == {"1", "2"} and all(0 < p50 <= p90 for p50, p90 in row.embed_ms.values())
    assert 0 < row.e2e_p50_ms <= row.e2e_p99_ms and 0 < row.e2e_ames_p50_ms <= row.e2e_ames_p99_ms
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["info"]["install"]["edge_mb"] < saved["info"]["install"]["full_mb"]
    assert "| tinynet-onnx-fp32-64.onnx |" in (tmp_path / "out" / "report.md").read_text()


def test_config_errors_and_install_sizes(tmp_path):
    with pytest.raises(ConfigError, match="unknown bench edge setting"):
        EdgeBenchConfig().with_overrides({"nope": 1})
    with pytest.raises(ConfigError, match="tier"):
        EdgeBenchConfig.preset("huge")
    assert EdgeBenchConfig().with_overrides({"targets": "tflite:int8"}).targets == (("tflite", "int8"),)
    with pytest.raises(ConfigError, match="no .onnx or .tflite"):
        existing_models(str(tmp_path))
    with pytest.raises(ConfigError, match="not a folder"):
        existing_models(str(tmp_path / "missing"))
    sizes = install_sizes()
    assert 0 < sizes["edge_mb"] < sizes["full_mb"] and sizes["edge_packages"] >= 5
