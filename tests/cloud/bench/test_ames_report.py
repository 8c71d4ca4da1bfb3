"""The AMES bench report: byte accounting, the four tables, deltas, speed-ups, claims, files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from asymfuse.cloud.bench.ames_report import (
    ROW_BINARY,
    ROW_DISTILLED,
    ROW_FAST,
    ROW_FP,
    ROW_GLOBAL,
    ROW_MUTUAL_NN,
    ROW_REFERENCE,
    AMESRow,
    check_claims,
    image_bytes,
    load_report,
    mean_image_bytes,
    render_markdown,
    rows_from_json,
    speedups,
    table_cells,
    write_report,
)
from asymfuse.edge.errors import ConfigError, CorruptDataError


def hand_made_rows() -> list[AMESRow]:
    return [
        AMESRow("quality", ROW_GLOBAL, "gem_lite2, exact search", None, 70.0, 50.0, bytes_per_image=5120.0),
        AMESRow("quality", ROW_FP, "fp, L=100", "local_lite2", 74.0, 53.5, lq=100, lx=100, lam=0.3, gamma=2.0,
                runtime_s=12.34, history=({"epoch": 1, "loss": 0.7},)),
        AMESRow("quality", ROW_BINARY, "binary, L=100", "local_lite2", 72.5, 51.0, lq=100, lx=100, lam=0.4,
                gamma=1.0),
        AMESRow("quality", ROW_DISTILLED, "binary student", "local_lite2", None, None,
                status="failed: ConfigError: no teacher"),
        AMESRow("memory", "PQ8", "PQ8 only", None, 60.0, 40.0, lx=0, bytes_per_image=8.0, bytes_mean=8.0),
        AMESRow("memory", "PQ8 + 48", "binary", "local_lite2", 65.0, 44.0, lx=48, bytes_per_image=776.0,
                bytes_mean=700.5, lam=0.5, gamma=1.0),
        AMESRow("memory", "PQ8 + 112", "binary", "local_lite2", 66.0, 45.0, lx=112, bytes_per_image=1800.0),
        AMESRow("memory", "PQ8 + 176", "binary", "local_lite2", 65.5, 45.5, lx=176, bytes_per_image=2824.0),
        AMESRow("asymmetry", "L_q=50, L_x=50", "binary", "local_lite2", 63.0, 43.0, lq=50, lx=50, ms_per_query=40.0),
        AMESRow("asymmetry", "L_q=600, L_x=50", "binary", "local_lite2", 66.0, 46.0, lq=600, lx=50,
                ms_per_query=900.0),
        AMESRow("asymmetry", "L_q=50, L_x=100", "binary", "local_lite2", 64.0, 44.0, lq=50, lx=100),
        AMESRow("latency", ROW_FAST, "AMESScorer", "local_lite2", lq=100, lx=100, threads=1, ms_per_query=100.0),
        AMESRow("latency", ROW_REFERENCE, "reference_scores", "local_lite2", lq=100, lx=100, threads=1,
                ms_per_query=1500.0),
        AMESRow("latency", ROW_FAST, "AMESScorer", "local_lite2", lq=100, lx=100, threads=2, ms_per_query=60.0),
        AMESRow("latency", ROW_REFERENCE, "reference_scores", "local_lite2", lq=100, lx=100, threads=2,
                ms_per_query=1200.0),
    ]


def test_byte_accounting_by_hand():
    assert image_bytes(global_bytes=8, lx=48) == 8 + 48 * 16 == 776
    assert image_bytes(global_bytes=8, lx=176) == 2824
    assert image_bytes(global_bytes=8, lx=0) == 8
    assert image_bytes(global_bytes=0, lx=10, bytes_per_descriptor=256) == 2560
    # Images keep min(count, L_x) descriptors: (10 + 48 + 48) / 3 descriptors on average.
    assert mean_image_bytes(global_bytes=8, counts=np.array([10, 48, 300]), lx=48) == pytest.approx(8 + 16 * 106 / 3)
    assert mean_image_bytes(global_bytes=8, counts=[0, 0], lx=48) == 8.0
    for bad in ({"global_bytes": -1, "lx": 4}, {"global_bytes": 8, "lx": -4}, {"global_bytes": 8, "lx": 1.5}):
        with pytest.raises(ConfigError):
            image_bytes(**bad)
    with pytest.raises(ConfigError):
        mean_image_bytes(global_bytes=8, counts=[], lx=4)
    with pytest.raises(ConfigError):
        mean_image_bytes(global_bytes=8, counts=[1.5, 2.0], lx=4)


def test_deltas_and_speedups():
    rows = hand_made_rows()
    cells = [table_cells(r, rows) for r in rows]
    assert cells[1]["Δ_medium"] == "+4.00" and cells[1]["Δ_hard"] == "+3.50"
    assert cells[2]["Δ_medium"] == "+2.50"
    assert cells[0]["Δ_medium"] is None and cells[3]["Δ_medium"] is None  # baseline itself; failed row
    assert cells[3]["notes"] == "failed: ConfigError: no teacher"
    assert cells[5]["Δ_medium"] == "+5.00" and cells[7]["Δ_medium"] == "+5.50"  # vs the PQ8-only row
    assert cells[5]["bytes/image"] == 776 and cells[5]["bytes/image (real)"] == "700.5"
    assert speedups(rows) == {1: 15.0, 2: 20.0}
    assert cells[11]["speed-up"] == "15.0x" and cells[13]["speed-up"] == "20.0x"
    assert cells[12]["speed-up"] is None  # shown on the fast row only
    assert speedups([r for r in rows if r.row != ROW_REFERENCE]) == {}


def test_claims_are_checked_on_the_table():
    claims = {c["claim"]: c for c in check_claims(hand_made_rows())}
    one_kb = claims["AMES with ~1 KB/image beats the PQ global code alone"]
    assert one_kb["ours"] == (65.0, 60.0) and one_kb["held"] is True and one_kb["rows"] == "PQ8 + 48 vs PQ8"
    more = claims["more gallery descriptors help (largest vs smallest L_x)"]
    assert more["ours"] == (65.5, 65.0) and more["verdict"].startswith("within noise")
    asym = claims["asymmetry helps: many query descriptors against few gallery ones"]
    assert asym["ours"] == (66.0, 63.0) and asym["verdict"] == "held"
    assert claims[f"{ROW_FP} (local_lite2) beats the global search alone"]["ours"] == (74.0, 70.0)
    distill = claims["distillation helps the binary student (local_lite2)"]
    assert distill["ours"] is None and distill["verdict"] == "n/a"  # the distilled row failed
    worse = [r if r.row != ROW_BINARY else AMESRow("quality", ROW_BINARY, "b", "local_lite2", 65.0, 45.0)
             for r in hand_made_rows()]
    flipped = {c["claim"]: c for c in check_claims(worse)}[f"{ROW_BINARY} (local_lite2) beats the global search alone"]
    assert flipped["held"] is False and flipped["verdict"] == "did not hold"
    assert check_claims([r for r in hand_made_rows() if r.block == "latency"]) == []
    assert not any("mutual-NN" in c["claim"] for c in claims.values())  # no baseline row, no claim
    with_nn = hand_made_rows() + [AMESRow("quality", ROW_MUTUAL_NN, "mutual NN", "local_lite2", 76.0, 55.0)]
    vs_nn = {c["claim"]: c for c in check_claims(with_nn)}
    fp_nn = vs_nn[f"{ROW_FP} (local_lite2) beats the untrained mutual-NN re-ranking"]
    assert fp_nn["ours"] == (74.0, 76.0) and fp_nn["verdict"] == "did not hold"
    assert vs_nn[f"{ROW_BINARY} (local_lite2) beats the untrained mutual-NN re-ranking"]["held"] is False


def test_markdown_has_every_block_row_and_the_runtime():
    rows = hand_made_rows()
    md = render_markdown(rows, title="AMES bench", runtime_s=42.0,
                         info={"description": "hand-made", "timing_s": {"prepare": 1.0, "total": 42.0}})
    for heading in ("## Quality", "## Memory per image", "## Asymmetry", "## Latency", "## AMES claims"):
        assert heading in md, heading
    assert ("| + AMES fp | local_lite2 | fp, L=100 | 100 | 100 | 74.00 | 53.50 | +4.00 | +3.50 | 0.30 | 2.00 "
            "| 12.3 |  |") in md
    assert "| PQ8 + 48 | local_lite2 | binary | 48 | 776 | 700.5 | 65.00 | 44.00 | +5.00 | 0.50 | 1.00 |  |" in md
    assert "| fast path | local_lite2 | AMESScorer | 100 | 100 | 1 | 100.0 | 15.0x |  |" in md
    assert "| global | — | gem_lite2, exact search |" in md
    assert "Runtime: 42.0 s for 15 rows (1 failed)." in md and "Timing (s): prepare 1.0, total 42.0." in md
    body = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    assert len([line for line in body if "verdict" not in line]) >= len(rows)
    only_latency = render_markdown([r for r in rows if r.block == "latency"], title="t", runtime_s=1.0)
    assert "## Quality" not in only_latency and "## AMES claims" not in only_latency


def test_all_files_appear_and_json_round_trips(tmp_path):
    rows = hand_made_rows()
    paths = write_report(rows, out_dir=tmp_path / "rep", title="AMES bench (test)", runtime_s=99.96,
                         info={"tier": "quick"})
    for key in ("markdown", "json", "plot"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0, key
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in (tmp_path / "rep").iterdir() if p.name.startswith(".tmp-")]
    data = load_report(paths["json"])
    assert data["runtime_s"] == 100.0 and data["info"]["tier"] == "quick"
    assert data["speedups"] == {"1": 15.0, "2": 20.0}
    assert rows_from_json(data) == rows
    assert rows_from_json(json.loads(json.dumps(data))) == rows
    empty = write_report([], out_dir=tmp_path / "empty", title="t", runtime_s=0.0)
    assert empty["plot"].read_bytes()[:4] == b"\x89PNG"


def test_bad_rows_and_reports(tmp_path):
    with pytest.raises(ConfigError):
        AMESRow("nonsense", "x", "y")
    with pytest.raises(ConfigError):
        AMESRow("latency", "x", "y", threads=0)
    with pytest.raises(ConfigError):
        AMESRow("quality", "x", "y", status="maybe")
    with pytest.raises(CorruptDataError):
        rows_from_json({"rows": [{"block": "quality"}]})
    with pytest.raises(CorruptDataError):
        rows_from_json({})
    with pytest.raises(CorruptDataError):
        load_report(tmp_path / "missing.json")


def test_pq_search_is_exact_search_over_the_reconstruction():
    """The memory block's PQ search: inner products with decoded codes == faiss IndexPQ's own ADC search."""
    from asymfuse.cloud.bench.ames_prep import pq_code_bytes, pq_reconstruct, train_pq

    rng = np.random.default_rng(0)
    xt, xb, xq = (rng.standard_normal((n, 32)).astype(np.float32) for n in (300, 50, 5))
    index, nbits = train_pq(xt, m=8, nbits=8)
    assert nbits == 8 and pq_code_bytes(index) == 8
    xb_hat = pq_reconstruct(index, xb)
    assert xb_hat.shape == xb.shape and not np.allclose(xb_hat, xb)  # lossy
    index.add(xb)
    D, I = index.search(xq, 10)
    ours = xq @ xb_hat.T  # brute force over the reconstruction
    np.testing.assert_allclose(D, np.take_along_axis(ours, I, axis=1), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.sort(ours, axis=1)[:, ::-1][:, :10], D, rtol=1e-4, atol=1e-4)
    small, bits = train_pq(xt[:40], m=8, nbits=8)  # 40 vectors cannot train 256 centroids
    assert bits == 5 and pq_code_bytes(small) == 5
    with pytest.raises(ConfigError):
        train_pq(xt[:, :30], m=8, nbits=8)  # 30 dims do not split into 8 sub-vectors


def test_bench_config_presets_and_overrides():
    from asymfuse.cloud.bench.ames_bench import AMESBenchConfig

    quick = AMESBenchConfig.preset("quick")
    assert quick.variants == ("fp", "binary") and len(quick.local_features) == 1
    default = AMESBenchConfig.preset("default")
    assert default.variants == ("fp", "binary", "universal", "distilled") and default.top_m == 100
    cfg = default.with_overrides({"epochs": 2, "lr": 1e-3, "local_features": ["sift"]})
    assert cfg.epochs == 2 and cfg.local_features == ("sift",) and dict(cfg.train) == {"lr": 1e-3}
    tc = cfg.train_config(data_root="b", features_dir="f", local_feature="sift", variant="distilled", teacher="t.pt")
    assert tc.binary and tc.distill_teacher == "t.pt" and tc.teacher_lq == cfg.teacher_l and tc.lr == 1e-3
    universal = cfg.train_config(data_root="b", features_dir="f", local_feature="sift", variant="universal")
    assert universal.universal == cfg.universal and universal.hard_negatives_k == cfg.top_m
    assert not cfg.train_config(data_root="b", features_dir="f", local_feature="sift").binary
    for bad in ({"nonsense": 1}, {"data_root": "x"}, {"variants": ["distilled"]}, {"memory_lx": [48, 700]},
                {"blocks": ["speed"]}, {"lr": -1.0}):
        with pytest.raises(ConfigError):
            default.with_overrides(bad)


def test_gate_note_names_the_strongest_refused_check():
    from asymfuse.cloud.bench.ames_rows import _gate_note

    refused = {"val_gain_stderr": 2.21, "val_gain_z_min": 2.73, "val_gain_significant": False}
    history = [{"epoch": 0, "start": True},
               {"epoch": 4, "val_gain": 1.0, "val_gain_z": 0.5, **refused},
               {"epoch": 15, "val_gain": 4.15, "val_gain_z": 1.88, **refused},
               {"epoch": 16, "val_gain": 9.0, "val_gain_stderr": 1.0, "val_gain_z": 9.0, "val_gain_z_min": 2.73,
                "val_gain_significant": True}]  # accepted: not named
    assert _gate_note(history) == ", kept over epoch 15 (+4.15 ± 2.21 on val, z 1.88 < 2.73)"
    assert _gate_note([{"epoch": 0}, {"epoch": 1, "loss": 0.7}]) == ""  # no check was turned down
