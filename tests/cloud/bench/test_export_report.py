"""The export bench report: speed-ups vs the torch baseline, status cells, Pareto front, files, config."""

from __future__ import annotations

import csv
import io
import json

import pytest

from asymfuse.cloud.bench.export_bench import ExportBenchConfig
from asymfuse.cloud.bench.export_plot import pareto_front
from asymfuse.cloud.bench.export_report import (
    load_report,
    render_csv,
    render_markdown,
    rows_from_json,
    speedup,
    status_cell,
    summary,
    table_cells,
    write_report,
)
from asymfuse.cloud.bench.export_row import ExportRow
from asymfuse.edge.errors import ConfigError, CorruptDataError, UnknownNameError


def lat(p50: float, p90: float) -> dict[str, float]:
    return {"p50_ms": p50, "p90_ms": p90}


def hand_made_rows() -> list[ExportRow]:
    common = {"arch": "efficientnet_lite0", "res": 224, "params_m": 3.9, "gflops": 0.8}
    return [
        ExportRow(format="torch", precision="fp32", latency={"1": lat(40.0, 44.0), "2": lat(24.0, 30.0)},
                  cosine_min=1.0, map=60.0, map_drop=0.0, status="baseline", **common),
        ExportRow(format="onnx", precision="fp32", file_mb=16.2, latency={"1": lat(10.0, 12.0), "2": lat(8.0, 9.0)},
                  cosine_min=0.99999, map=60.0, map_drop=0.0, status="passed", **common),
        ExportRow(format="onnx", precision="int8", file_mb=4.4, latency={"1": lat(5.0, 6.0), "2": lat(4.0, 5.0)},
                  cosine_min=0.95, map=57.5, map_drop=2.5, status="failed",
                  reason="cosine_min 0.9500 < 0.99; mAP drop 2.50 > 1.0", **common),
        ExportRow(format="tflite", precision="fp16", status="export_failed",
                  reason="RuntimeError: conversion | crashed", **common),
        ExportRow(format="coreml", precision="fp32", file_mb=16.0, status="skipped",
                  reason="prediction needs macOS", **common),
        ExportRow(arch="mobilenet_v2", res=512, format="torch", precision="fp32", latency={"1": lat(100.0, 110.0)},
                  map=5.0, map_drop=0.0, status="baseline", pretrained=False),
        ExportRow(arch="mobilenet_v2", res=512, format="onnx", precision="fp32", latency={"1": lat(50.0, 55.0)},
                  map=4.0, map_drop=1.0, status="passed", pretrained=False),
    ]


def test_speedup_divides_by_the_baseline_of_the_same_group_and_thread_count():
    rows = hand_made_rows()
    assert speedup(rows, rows[1], 1) == pytest.approx(4.0)
    assert speedup(rows, rows[1], "2") == pytest.approx(3.0)
    assert speedup(rows, rows[2], 1) == pytest.approx(8.0)
    assert speedup(rows, rows[6], 1) == pytest.approx(2.0)  # mobilenet's own baseline, not lite0's
    assert speedup(rows, rows[6], 2) is None  # no 2-thread figure
    assert speedup(rows, rows[3], 1) is None  # export failed: nothing measured
    assert speedup(rows, rows[0], 1) == pytest.approx(1.0)


def test_cells_and_status():
    rows = hand_made_rows()
    threads = ["1", "2"]
    cells = [table_cells(r, rows, threads) for r in rows]
    assert cells[1]["speed-up 1t"] == "4.00x" and cells[1]["p50 ms 2t"] == "8.00"
    assert cells[2]["Δ mAP"] == "-2.50" and cells[2]["status"].startswith("❎ failed: cosine_min 0.9500")
    assert cells[3]["status"] == "❌ export failed: RuntimeError: conversion / crashed"  # no '|' in a table cell
    assert cells[3]["p50 ms 1t"] is None and cells[3]["mAP"] is None
    assert cells[4]["status"] == "⏭️ skipped: prediction needs macOS" and cells[4]["cosine min"] is None
    assert cells[1]["status"] == status_cell(rows[1]) == "✅ passed"
    assert cells[0]["status"] == "torch baseline"
    assert cells[5]["arch"] == "mobilenet_v2 (random init)"
    with pytest.raises(ConfigError):
        ExportRow(arch="a", format="onnx", precision="fp32", res=224, status="ok")


def test_summary_answers_the_speed_questions():
    said = summary(hand_made_rows(), ["1", "2"])
    assert ("efficientnet_lite0@224, 1 thread(s): onnx fp32 is 4.00x torch eager; onnx int8 is 2.00x its fp32 "
            "(❎ failed the gate).") in said
    assert any(s.startswith("mobilenet_v2@512, 1 thread(s): onnx fp32 is 2.00x") for s in said)


def test_pareto_front():
    pts = [(10.0, 60.0), (5.0, 57.5), (40.0, 60.0), (8.0, 50.0), (12.0, 61.0)]
    assert pareto_front(pts) == [(5.0, 57.5), (10.0, 60.0), (12.0, 61.0)]
    assert pareto_front([]) == []


def test_files_round_trip(tmp_path):
    rows = hand_made_rows()
    paths = write_report(rows, out_dir=tmp_path, title="t", runtime_s=12.0, info={"description": "d",
                                                                                  "timing_s": {"total": 12.0}})
    md = paths["markdown"].read_text()
    assert "| efficientnet_lite0 | onnx | fp32 | 224 |" in md and "## Failures" in md and "## Speed" in md
    assert "tflite fp16: ❌ export failed" in md
    data = load_report(paths["json"])
    assert rows_from_json(data) == rows
    table = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert len(table) == len(rows) and float(table[1]["speedup_1t"]) == pytest.approx(4.0)
    assert table[3]["p50_ms_1t"] == "" and table[3]["status"] == "export_failed"
    assert render_csv(rows) == paths["csv"].read_text()
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert render_markdown(rows, title="t", runtime_s=12.0).startswith("# t")
    with pytest.raises(CorruptDataError):
        rows_from_json({"rows": [{"arch": "x"}]})
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(CorruptDataError):
        load_report(bad)
    json.loads(paths["json"].read_text())  # plain JSON


def test_bench_config_tiers_and_overrides():
    quick = ExportBenchConfig.preset("quick")
    assert quick.archs == ("efficientnet_lite0",) and quick.sizes == (224,)
    assert ("coreml", "int8") in quick.combos() and ("coreml", "int8_dynamic") not in quick.combos()
    default = ExportBenchConfig.preset("default")
    assert len(default.archs) == 4 and default.sizes == (224, 512) and len(default.combos()) == 11
    cfg = quick.with_overrides({"sizes": [64], "formats": "onnx", "runs": 3})
    assert cfg.sizes == (64,) and cfg.formats == ("onnx",) and cfg.combos()[0] == ("onnx", "fp32")
    # "--set formats=onnx,tflite --set sizes=224,512" arrive as plain strings
    cfg = quick.with_overrides({"formats": "onnx, tflite", "sizes": "224,512", "precisions": "int8"})
    assert cfg.formats == ("onnx", "tflite") and cfg.sizes == (224, 512) and cfg.precisions == ("int8",)
    with pytest.raises(ConfigError, match="positive ints"):
        quick.with_overrides({"sizes": "224,big"})
    with pytest.raises(ConfigError, match="unknown bench setting"):
        quick.with_overrides({"epochs": 3})
    with pytest.raises(ConfigError):
        quick.with_overrides({"formats": ["onnx", "tfjs"]})
    with pytest.raises(UnknownNameError):
        quick.with_overrides({"archs": ["resnet9000"]})
    with pytest.raises(UnknownNameError):
        ExportBenchConfig.preset("huge")
    with pytest.raises(ConfigError):
        quick.with_overrides({"threads": [0]})


def test_batchnorm_recalibration_makes_a_random_init_net_tell_real_photos_apart():
    import numpy as np
    import skimage.data
    import torch

    from asymfuse.cloud.bench.export_bench import recalibrate_batchnorm
    from asymfuse.cloud.models.query_net import create_query_net
    from asymfuse.edge.preprocess import preprocess

    net = create_query_net("mobilenet_v2", embed_dim=64, pretrained=False, input_size=64).eval()
    names = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "page", "text", "clock")
    x = preprocess([getattr(skimage.data, n)() for n in names], net.spec)

    def min_pairwise_cosine() -> float:
        with torch.inference_mode():
            v = net(torch.from_numpy(x)).numpy()
        return float((v @ v.T)[~np.eye(len(v), dtype=bool)].min())

    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    space = net.spec.embedding_space_id
    assert min_pairwise_cosine() > 0.9999  # BN's initial statistics: every photo gets the same vector
    recalibrate_batchnorm(net, x, batch_size=4)
    assert min_pairwise_cosine() < 0.99
    assert not net.training and net.spec.embedding_space_id != space
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in weights.items())
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
