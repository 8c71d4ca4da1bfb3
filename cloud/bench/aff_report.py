"""The ``asymfuse bench aff`` report: one table (Markdown + JSON), training curves and mAP vs GFLOPs.

Rows are :class:`BenchRow` records made by :mod:`asymfuse.cloud.bench.aff_bench`. Files written by
:func:`write_report` into ``out_dir`` (all atomically):

- ``report.md``: the table (block, row, setting, mAP Medium/Hard, query GFLOPs, runtime, notes),
  the AFF claims checked against the table, and the runtime of the whole bench;
- ``report.json``: the same, machine-readable (:func:`rows_from_json` reads the rows back);
- ``curves.png``: training loss and val mAP Medium per epoch of every trained row (asymmetric
  val mAP when the run has a query net, else symmetric);
- ``map_vs_gflops.png``: test mAP Medium against query-side GFLOPs, one point per query net
  (asymmetric: query net vs fused gallery; symmetric: the same net on both sides), plus the
  gallery models' symmetric points when their GFLOPs are known.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asymfuse.cloud.bench.report_common import HistoryRow, check_status, claim_verdict, claims_table, freeze_history
from asymfuse.cloud.bench.report_common import markdown_head, parse_rows, pyplot, report_head, report_paths, save_png
from asymfuse.cloud.bench.report_common import load_report as load_report
from asymfuse.cloud.eval.report import markdown_table, write_json
from asymfuse.edge.errors import ConfigError
from asymfuse.edge.fileio import atomic_write_text

BLOCKS = ("symmetric", "robustness", "asymmetric", "query archs")
MODES = ("asymmetric", "symmetric", "gallery")
COLUMNS = ("block", "row", "setting", "mAP_medium", "mAP_hard", "gflops", "params_m", "runtime_s", "notes")
FILES = {"markdown": "report.md", "json": "report.json", "curves": "curves.png", "gflops": "map_vs_gflops.png"}

# Row names shared with aff_bench (the claims below refer to them).
ROW_CONCAT, ROW_MLP, ROW_TRANSFORMER = "concat", "mlp", "transformer"
ROW_JOINT, ROW_JOINT_ALPHA0, ROW_TWO_STAGE = "joint α=0.99", "joint α=0", "two-stage α=0.99"
SINGLE_BASELINES = ("bct", "reg", "lce", "csd")
START_SUFFIX = " (start)"  # the row of a run's closed-form start, next to the trained row
ROW_SINGLE_START = "single-gallery" + START_SUFFIX  # the ridge start shared by the single-gallery baselines


@dataclass(frozen=True)
class BenchRow(HistoryRow):
    """One line of the bench table.

    Attributes:
        block: one of :data:`BLOCKS`. row: short name, unique within its block. setting: what ran.
        mAP_medium, mAP_hard: test-split revisitop mAP in percent (None when the row failed).
        status: ``"ok"`` or ``"failed: <reason>"``. notes: free text for the table.
        runtime_s: wall time of the row (training + evaluation).
        gflops, params_m: query-side cost (query-arch rows) or gallery-model cost (``mode="gallery"``).
        query_arch: the query net of an asymmetric/symmetric query row.
        mode: where the row goes on the mAP-vs-GFLOPs plot (one of :data:`MODES`), None = not plotted.
        history: per-epoch dicts of the training run (``epoch``, ``loss``, ``val_mAP_medium``, ...).
        metrics: every test metric of the row (mAP_easy, mP@k, ...).
    """

    block: str
    row: str
    setting: str
    mAP_medium: float | None = None
    mAP_hard: float | None = None
    status: str = "ok"
    notes: str = ""
    runtime_s: float | None = None
    gflops: float | None = None
    params_m: float | None = None
    query_arch: str | None = None
    mode: str | None = None
    history: tuple[dict[str, Any], ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise ConfigError(f"BenchRow block {self.block!r} is unknown; choose one of {list(BLOCKS)}")
        if self.mode is not None and self.mode not in MODES:
            raise ConfigError(f"BenchRow mode {self.mode!r} is unknown; choose one of {list(MODES)} or None")
        check_status("BenchRow", self.status)
        freeze_history(self)

    def table_cells(self) -> dict[str, Any]:
        """The values of :data:`COLUMNS`; a failed row shows its status in the notes."""
        notes = self.notes if self.ok else "; ".join(x for x in (self.status, self.notes) if x)
        return {**{c: getattr(self, c, None) for c in COLUMNS}, "notes": notes,
                "runtime_s": None if self.runtime_s is None else round(float(self.runtime_s), 1)}


def rows_from_json(data: Mapping[str, Any]) -> list[BenchRow]:
    """The rows of a ``report.json`` dict.

    Raises:
        CorruptDataError: the dict is not a bench report.
    """
    return parse_rows(data, BenchRow, report="bench report", bench="aff")


def _find(rows: Sequence[BenchRow], block: str, row: str) -> BenchRow | None:
    hits = [r for r in rows if r.block == block and r.row == row and r.ok and r.mAP_medium is not None]
    return hits[0] if hits else None


NOISE_MARGIN = 1.0  # mAP points: a smaller gap between two rows is reported as "within noise"


def check_claims(rows: Sequence[BenchRow]) -> list[dict[str, Any]]:
    """The AFF paper's claims (PAPERS.md §2) checked on the table's test mAP Medium.

    Returns:
        One dict per claim: ``claim``, ``paper`` (the paper's pair), ``ours`` (our pair or None),
        ``held`` (True/False, None when a row is missing or failed), and ``verdict``: "held",
        "did not hold", or "within noise" when the two differ by less than :data:`NOISE_MARGIN`
        points (22 test queries cannot separate smaller gaps), or "n/a".
    """
    singles = [r for r in (_find(rows, "asymmetric", n) for n in SINGLE_BASELINES) if r is not None]
    best_single = max(singles, key=lambda r: r.mAP_medium or 0.0) if singles else None
    pairs = [
        ("joint training beats two-stage training", "70.47 vs 66.76",
         _find(rows, "asymmetric", ROW_JOINT), _find(rows, "asymmetric", ROW_TWO_STAGE)),
        ("momentum α=0.99 beats α=0", "70.47 vs 62.75",
         _find(rows, "asymmetric", ROW_JOINT), _find(rows, "asymmetric", ROW_JOINT_ALPHA0)),
        ("transformer mixer beats MLP mixer (symmetric)", "77.84 vs 74.89",
         _find(rows, "symmetric", ROW_TRANSFORMER), _find(rows, "symmetric", ROW_MLP)),
        ("with noisy features the mixer beats concatenation", "77.65 vs 57.78",
         _find(rows, "robustness", ROW_TRANSFORMER), _find(rows, "robustness", ROW_CONCAT)),
        ("asymmetric fusion beats the best single-gallery compatible baseline", "70.47 vs 64.42",
         _find(rows, "asymmetric", ROW_JOINT), best_single),
    ]
    out = []
    for claim, paper, a, b in pairs:
        ours = None if a is None or b is None else (round(float(a.mAP_medium), 2), round(float(b.mAP_medium), 2))
        label = None if b is None else f"{a.row if a else '?'} vs {b.row}"
        held, verdict = claim_verdict(ours, margin=NOISE_MARGIN, noise=f"within noise (|Δ| < {NOISE_MARGIN:g})")
        out.append({"claim": claim, "paper": paper, "ours": ours, "rows": label, "held": held, "verdict": verdict})
    return out


def report_dict(rows: Sequence[BenchRow], *, title: str, runtime_s: float,
                info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON form of the report: ``title``, ``runtime_s``, ``info``, ``rows``, ``claims``."""
    return {**report_head(rows, title=title, runtime_s=runtime_s, info=info), "claims": check_claims(rows)}


def render_markdown(rows: Sequence[BenchRow], *, title: str, runtime_s: float,
                    info: Mapping[str, Any] | None = None) -> str:
    """The Markdown report: the table, the claims and the runtime."""
    lines = markdown_head(title, dict(info or {}))
    lines += [markdown_table([r.table_cells() for r in rows], COLUMNS), ""]
    lines += ["## AFF claims in miniature", "", claims_table(check_claims(rows)), ""]
    failed = sum(not r.ok for r in rows)
    lines += [f"Runtime: {float(runtime_s):.1f} s for {len(rows)} rows ({failed} failed).", ""]
    lines += [f"Figures: `{FILES['curves']}` (training curves), `{FILES['gflops']}` (mAP vs query GFLOPs).", ""]
    return "\n".join(lines)


def write_report(rows: Sequence[BenchRow], *, out_dir: str | os.PathLike[str], title: str, runtime_s: float,
                 info: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.json``, ``curves.png`` and ``map_vs_gflops.png`` to ``out_dir``.

    Returns:
        ``{"markdown", "json", "curves", "gflops"}`` mapped to the written paths.

    Raises:
        MissingDependencyError: matplotlib is not installed.
        ConfigError: ``out_dir`` cannot be written.
    """
    paths = report_paths(out_dir, FILES)
    atomic_write_text(paths["markdown"], render_markdown(rows, title=title, runtime_s=runtime_s, info=info))
    write_json(paths["json"], report_dict(rows, title=title, runtime_s=runtime_s, info=info))
    plot_curves(rows, paths["curves"])
    plot_map_vs_gflops(rows, paths["gflops"])
    return paths


# ---- figures --------------------------------------------------------------------------------

def _val_key(history: Sequence[Mapping[str, Any]]) -> str | None:
    """The val metric to plot: asymmetric mAP Medium if the run has a query net, else symmetric."""
    keys = {k for h in history for k in h if k.startswith("val_") and "mAP" in k}
    for key in ("val_asym_mAP_medium", "val_sym_mAP_medium", "val_mAP_medium"):
        if key in keys:
            return key
    return min(keys) if keys else None


def plot_curves(rows: Sequence[BenchRow], path: str | os.PathLike[str]) -> Path:
    """Training loss and val mAP per epoch of every row with a history (a note when there is none)."""
    fig, (ax_loss, ax_map) = pyplot().subplots(1, 2, figsize=(12, 4.5))
    trained = [r for r in rows if r.history]
    for r in trained:
        label = f"{r.block}: {r.row}"
        epochs = [h.get("epoch") for h in r.history]
        ax_loss.plot(epochs, [h.get("loss") for h in r.history], marker=".", label=label)
        key = _val_key(r.history)
        if key is not None:
            pts = [(h.get("epoch"), h[key]) for h in r.history if h.get(key) is not None]
            ax_map.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=label)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    ax_map.set(xlabel="epoch", ylabel="val mAP Medium (%)", title="validation mAP")
    if trained:
        ax_map.legend(fontsize=6, loc="best")
    else:
        ax_loss.text(0.5, 0.5, "no trained rows", ha="center", va="center", transform=ax_loss.transAxes)
    return save_png(fig, path)


def plot_map_vs_gflops(rows: Sequence[BenchRow], path: str | os.PathLike[str]) -> Path:
    """Test mAP Medium vs GFLOPs per query net (asymmetric and symmetric) and gallery model."""
    fig, ax = pyplot().subplots(figsize=(7, 5))
    style = {"asymmetric": ("o", "query net → fused gallery (asymmetric)"),
             "symmetric": ("s", "query net on both sides (symmetric)"),
             "gallery": ("^", "gallery model on both sides (symmetric)")}
    points = [r for r in rows if r.mode and r.ok and r.gflops is not None and r.mAP_medium is not None]
    for mode, (marker, label) in style.items():
        sel = [r for r in points if r.mode == mode]
        if sel:
            ax.scatter([r.gflops for r in sel], [r.mAP_medium for r in sel], marker=marker, s=50, label=label)
            for r in sel:
                ax.annotate(r.query_arch or r.row, (r.gflops, r.mAP_medium), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
    for arch in sorted({r.query_arch for r in points if r.query_arch}):
        pair = sorted((r for r in points if r.query_arch == arch and r.mode in ("asymmetric", "symmetric")),
                      key=lambda r: r.mode)
        if len(pair) == 2:
            ax.plot([p.gflops for p in pair], [p.mAP_medium for p in pair], color="0.7", lw=0.8, zorder=0)
    ax.set(xlabel="GFLOPs per image (2 x multiply-adds)", ylabel="test mAP Medium (%)",
           title="mAP vs query-side GFLOPs")
    if points:
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "no rows with GFLOPs", ha="center", va="center", transform=ax.transAxes)
    return save_png(fig, path)
