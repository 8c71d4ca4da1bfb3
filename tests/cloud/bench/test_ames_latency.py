"""``bench ames-latency`` in miniature: every kind gets a row per source, exact kinds match fp32."""

from __future__ import annotations

import math

import pytest

from asymfuse.cloud.bench.ames_latency import LatencyConfig, render_table, run_latency
from asymfuse.edge.errors import ConfigError, UnknownNameError


def test_rows_and_table():
    cfg = LatencyConfig(kinds=("fp32", "batched", "int8"), skip=("int8",), top_m=6, lq=5, lx=4, local_dim=16,
                        gallery_size=12, runs=2, warmup=1)
    rows = run_latency(cfg)
    assert [(r.kind, r.source) for r in rows] == [(k, s) for k in cfg.kinds for s in cfg.sources]
    for r in rows:
        if r.kind == "int8":
            assert r.status == "skipped" and math.isnan(r.p50_ms)
        else:
            assert r.status == "ok" and 0 < r.p50_ms <= r.p99_ms and r.order_violations == 0
            assert r.max_abs_diff < 1e-4
    table = render_table(rows, cfg)
    assert "| batched | resident |" in table and "top-6" in table


def test_bad_config():
    with pytest.raises(UnknownNameError, match="fp64"):
        LatencyConfig(kinds=("fp64",))
    with pytest.raises(ConfigError, match="top_m"):
        LatencyConfig(top_m=0)
    with pytest.raises(ConfigError, match="gallery_size"):
        LatencyConfig(top_m=20, gallery_size=10)
    with pytest.raises(ConfigError, match="sources"):
        LatencyConfig(sources=("disk",))
