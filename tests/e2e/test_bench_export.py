"""`asymfuse bench export --quick` as a user runs it: every format x precision row, gated, timed, reported."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_bench_export_quick_tier(tmp_path):
    exe = Path(sys.executable).with_name("asymfuse")
    out = tmp_path / "b"
    res = subprocess.run([str(exe), "bench", "export", "--quick", "--out", str(out)],
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    rows = report["rows"]
    got = {(r["format"], r["precision"]): r for r in rows}
    want = {("torch", "fp32")} | {(f, p) for f in ("onnx", "tflite", "coreml") for p in ("fp32", "fp16", "int8")}
    assert set(got) == want and len(rows) == len(want)
    assert all(r["arch"] == "efficientnet_lite0" and r["res"] == 224 and r["pretrained"] for r in rows)
    base = got[("torch", "fp32")]
    assert base["status"] == "baseline" and 10.0 < base["map"] <= 100.0  # ImageNet weights: real retrieval
    assert set(base["latency"]) == {"1", "2"}
    for fmt in ("onnx", "tflite"):
        fp32 = got[(fmt, "fp32")]
        assert fp32["status"] == "passed", fp32
        assert fp32["cosine_min"] >= 0.999 and abs(fp32["map_drop"]) <= 1.0
        assert Path(fp32["path"]).is_file() and fp32["file_mb"] > 1.0
        for p in ("fp32", "fp16", "int8"):
            r = got[(fmt, p)]
            assert r["status"] in ("passed", "failed", "export_failed"), r
            if r["status"] != "export_failed":  # measured: parity, mAP and latency at 1 and 2 threads
                assert r["cosine_min"] is not None and r["map"] is not None and set(r["latency"]) == {"1", "2"}
            if r["status"] == "failed":
                assert "/failed/" in r["path"] and r["reason"]
    for p in ("fp32", "fp16", "int8"):
        r = got[("coreml", p)]
        assert r["status"] in ("skipped", "export_failed"), r
        if r["status"] == "skipped":  # never a parity number that was not measured
            assert "needs macOS" in r["reason"] and r["cosine_min"] is None and r["map"] is None
    table = list(csv.DictReader((out / "report.csv").open()))
    assert len(table) == len(rows) and float(table[0]["speedup_1t"]) == pytest.approx(1.0)
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text()
    assert "| efficientnet_lite0 | onnx | fp32 | 224 |" in md and "## Speed" in md
    assert "runtime:" in res.stdout and "report.md" in res.stdout
