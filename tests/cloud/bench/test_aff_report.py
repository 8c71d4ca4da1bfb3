"""The bench report: every file appears, the table has every row, JSON round-trips, claims are checked."""

from __future__ import annotations

import json

import pytest

from asymfuse.cloud.bench.aff_report import (
    ROW_CONCAT,
    ROW_JOINT,
    ROW_JOINT_ALPHA0,
    ROW_MLP,
    ROW_TRANSFORMER,
    ROW_TWO_STAGE,
    BenchRow,
    check_claims,
    load_report,
    render_markdown,
    rows_from_json,
    write_report,
)
from asymfuse.edge.errors import ConfigError, CorruptDataError


def history(n: int, start: float) -> list[dict]:
    return [{"epoch": e, "loss": 5.0 - e, "lr": 0.1, "val_asym_mAP_medium": start + 2 * e,
             "val_sym_mAP_hard": start}
            for e in range(1, n + 1)]


def fabricated_rows() -> list[BenchRow]:
    return [
        BenchRow("symmetric", "gem_lite1", "single feature, both sides", 71.25, 49.5, runtime_s=1.0,
                 gflops=1.6, mode="gallery", metrics={"mAP_easy": 80.0}),
        BenchRow("symmetric", ROW_CONCAT, "concat + PCA-whitening", 73.0, 51.0),
        BenchRow("symmetric", ROW_MLP, "MLP mixer", 72.0, 50.0, history=history(3, 60.0)),
        BenchRow("symmetric", ROW_TRANSFORMER, "transformer mixer", 74.0, 52.0, history=history(3, 62.0)),
        BenchRow("robustness", ROW_CONCAT, "+ 2 noise features", 60.0, 40.0),
        BenchRow("robustness", ROW_TRANSFORMER, "+ 2 noise features", None, None,
                 status="failed: ShapeError: bad dim"),
        BenchRow("asymmetric", "bct", "query → gem_lite2", 55.0, 30.0),
        BenchRow("asymmetric", "csd", "query → gem_lite2", 58.0, 33.0),
        BenchRow("asymmetric", ROW_JOINT_ALPHA0, "joint, α=0", 50.0, 28.0),
        BenchRow("asymmetric", ROW_TWO_STAGE, "two-stage", 57.0, 31.0),
        BenchRow("asymmetric", ROW_JOINT, "joint", 61.0, 35.0, history=history(4, 40.0)),
        BenchRow("query archs", "efficientnet_lite0", "asymmetric (joint)", 61.0, 35.0, gflops=0.4, params_m=4.0,
                 query_arch="efficientnet_lite0", mode="asymmetric"),
        BenchRow("query archs", "efficientnet_lite0", "symmetric (same net both sides)", 45.0, 20.0, gflops=0.4,
                 params_m=4.0, query_arch="efficientnet_lite0", mode="symmetric"),
        BenchRow("query archs", "mobilenet_v2", "asymmetric (joint)", 59.5, 33.0, gflops=0.3, params_m=2.9,
                 query_arch="mobilenet_v2", mode="asymmetric"),
    ]


def test_all_files_appear_and_json_round_trips(tmp_path):
    rows = fabricated_rows()
    paths = write_report(rows, out_dir=tmp_path / "rep", title="AFF bench (test)", runtime_s=123.45,
                         info={"tier": "quick", "description": "tiny fabricated table"})
    for key in ("markdown", "json", "curves", "gflops"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0, key
    for key in ("curves", "gflops"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "rep").iterdir() if p.name.startswith(".tmp-")]
    data = load_report(paths["json"])
    assert data["runtime_s"] == 123.5 and data["info"]["tier"] == "quick"
    assert rows_from_json(data) == rows
    assert rows_from_json(json.loads(json.dumps(data))) == rows


def test_markdown_contains_every_row_and_the_runtime():
    rows = fabricated_rows()
    md = render_markdown(rows, title="AFF bench", runtime_s=61.0)
    table = [line for line in md.splitlines() if line.startswith("| ") and "block" not in line]
    body = table[: len(rows)]
    for row, line in zip(rows, body):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:3] == [row.block, row.row, row.setting]
        assert cells[3] == ("" if row.mAP_medium is None else f"{row.mAP_medium:.2f}")
    assert "failed: ShapeError: bad dim" in md
    assert "| query archs | mobilenet_v2 | asymmetric (joint) | 59.50 | 33.00 | 0.30 | 2.90 |" in md
    assert "Runtime: 61.0 s for 14 rows (1 failed)" in md


def test_claims_are_checked_on_the_table():
    claims = {c["claim"]: c for c in check_claims(fabricated_rows())}
    assert claims["joint training beats two-stage training"]["ours"] == (61.0, 57.0)
    assert claims["joint training beats two-stage training"]["held"] is True
    assert claims["momentum α=0.99 beats α=0"]["held"] is True
    assert claims["transformer mixer beats MLP mixer (symmetric)"]["held"] is True
    robust = claims["with noisy features the mixer beats concatenation"]
    assert robust["held"] is None and robust["ours"] is None  # the transformer row failed
    best = claims["asymmetric fusion beats the best single-gallery compatible baseline"]
    assert best["ours"] == (61.0, 58.0) and best["rows"] == f"{ROW_JOINT} vs csd"  # csd is the best single
    rows = [r for r in fabricated_rows() if r.row != ROW_TWO_STAGE]
    rows.append(BenchRow("asymmetric", ROW_TWO_STAGE, "two-stage", 65.0, 31.0))
    flipped = {c["claim"]: c for c in check_claims(rows)}
    assert flipped["joint training beats two-stage training"]["held"] is False
    assert flipped["joint training beats two-stage training"]["verdict"] == "did not hold"
    rows = [r for r in fabricated_rows() if r.row != ROW_TWO_STAGE]
    rows.append(BenchRow("asymmetric", ROW_TWO_STAGE, "two-stage", 60.5, 31.0))  # 61.0 vs 60.5
    tie = {c["claim"]: c for c in check_claims(rows)}["joint training beats two-stage training"]
    assert tie["held"] is True and tie["verdict"].startswith("within noise")


def test_bad_rows_and_reports(tmp_path):
    with pytest.raises(ConfigError):
        BenchRow("nonsense", "x", "y")
    with pytest.raises(ConfigError):
        BenchRow("symmetric", "x", "y", mode="sideways")
    with pytest.raises(ConfigError):
        BenchRow("symmetric", "x", "y", status="maybe")
    with pytest.raises(CorruptDataError):
        rows_from_json({"rows": [{"block": "symmetric"}]})
    with pytest.raises(CorruptDataError):
        load_report(tmp_path / "missing.json")


def test_figures_without_data_still_appear(tmp_path):
    rows = [BenchRow("symmetric", "gem_lite1", "single", 70.0, 50.0)]
    paths = write_report(rows, out_dir=tmp_path, title="t", runtime_s=1.0)
    assert paths["curves"].is_file() and paths["gflops"].is_file()
