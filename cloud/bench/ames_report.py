"""The ``asymfuse bench ames`` report: four tables (Markdown + JSON) and a plot of mAP vs bytes per image.

Rows are :class:`AMESRow` records made by :mod:`asymfuse.cloud.bench.ames_bench`, one block each
(PAPERS.md §3, issue 5 §4):

- ``quality``: the global search alone, then + AMES (fp, binary, universal, distilled) re-ranking
  its top-m, per local feature;
- ``memory``: a PQ global code plus ``L_x`` packed binary descriptors (16 bytes each): bytes per
  image and mAP;
- ``asymmetry``: ``L_q`` query descriptors against ``L_x`` gallery ones: mAP and ms per query;
- ``latency``: CPU ms to re-rank the top-100 of one query, fast path vs reference path, per
  thread count (the speed-up is computed here, :func:`speedups`).

Files written by :func:`write_report` into ``out_dir`` (atomically): ``report.md``, ``report.json``
(:func:`rows_from_json` reads the rows back) and ``map_vs_bytes.png``.
Byte accounting (:func:`image_bytes`, :func:`mean_image_bytes`) lives here so the table and its
tests share one definition.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.cloud.bench.report_common import HistoryRow, check_status, claim_verdict, claims_table, freeze_history
from asymfuse.cloud.bench.report_common import markdown_head, parse_rows, pyplot, report_head, report_paths, save_png
from asymfuse.cloud.bench.report_common import timing_lines
from asymfuse.cloud.bench.report_common import load_report as load_report
from asymfuse.cloud.eval.report import markdown_table, write_json
from asymfuse.edge.errors import ConfigError
from asymfuse.edge.fileio import atomic_write_text

BLOCKS = ("quality", "memory", "asymmetry", "latency")
FILES = {"markdown": "report.md", "json": "report.json", "plot": "map_vs_bytes.png"}
BINARY_DESCRIPTOR_BYTES = 16  # 128 sign bits, np.packbits
FP16_TOKEN_BYTES = 256  # 128-d projected token in float16 (the published fp model's storage)
NOISE_MARGIN = 1.0  # mAP points: a smaller gap is reported as "within noise" (tens of test queries)

# Row names shared with ames_bench (the claims and the deltas refer to them).
ROW_GLOBAL = "global"
ROW_FP, ROW_BINARY, ROW_UNIVERSAL, ROW_DISTILLED = ("+ AMES fp", "+ AMES binary", "+ AMES universal",
                                                   "+ AMES distilled")
VARIANT_ROWS = {"fp": ROW_FP, "binary": ROW_BINARY, "universal": ROW_UNIVERSAL, "distilled": ROW_DISTILLED}
ROW_FAST, ROW_REFERENCE = "fast path", "reference path"
ROW_MUTUAL_NN = "+ mutual NN (untrained)"  # the cheap local baseline (asymfuse.cloud.ames.mutual_nn)

COLUMNS = {
    "quality": ("row", "local", "setting", "L_q", "L_x", "mAP_medium", "mAP_hard", "Δ_medium", "Δ_hard",
                "λ", "γ", "runtime_s", "notes"),
    "memory": ("row", "local", "setting", "L_x", "bytes/image", "bytes/image (real)", "mAP_medium", "mAP_hard",
               "Δ_medium", "λ", "γ", "notes"),
    "asymmetry": ("row", "local", "setting", "L_q", "L_x", "mAP_medium", "mAP_hard", "ms/query", "notes"),
    "latency": ("row", "local", "setting", "L_q", "L_x", "threads", "ms/query", "speed-up", "notes"),
}
TITLES = {
    "quality": "Quality: global search, then AMES re-ranking of its top-m",
    "memory": "Memory per image: PQ global code + L_x binary descriptors",
    "asymmetry": "Asymmetry: L_q query descriptors vs L_x gallery descriptors",
    "latency": "Latency: CPU ms to re-rank the top-100 of one query",
}


def image_bytes(*, global_bytes: int, lx: int, bytes_per_descriptor: int = BINARY_DESCRIPTOR_BYTES) -> int:
    """Nominal bytes per gallery image: its global code plus ``lx`` local descriptors.

    Example: an 8-byte PQ8 code and 48 binary descriptors take ``8 + 48 * 16 = 776`` bytes.

    Raises:
        ConfigError: a negative size or count.
    """
    for name, value in (("global_bytes", global_bytes), ("lx", lx), ("bytes_per_descriptor", bytes_per_descriptor)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
    return int(global_bytes) + int(lx) * int(bytes_per_descriptor)


def mean_image_bytes(*, global_bytes: int, counts: Sequence[int] | np.ndarray, lx: int,
                     bytes_per_descriptor: int = BINARY_DESCRIPTOR_BYTES) -> float:
    """Mean bytes per image when image ``i`` stores ``min(counts[i], lx)`` descriptors (what it really has).

    Raises:
        ConfigError: a negative size, count or an empty ``counts``.
    """
    c = np.asarray(counts)
    if c.ndim != 1 or c.size == 0 or not np.issubdtype(c.dtype, np.integer) or (c < 0).any():
        raise ConfigError(f"counts must be a non-empty 1-D array of ints >= 0, got {c.dtype} {c.shape}")
    image_bytes(global_bytes=global_bytes, lx=lx, bytes_per_descriptor=bytes_per_descriptor)  # validates
    return float(global_bytes + np.minimum(c, lx).mean() * bytes_per_descriptor)


@dataclass(frozen=True)
class AMESRow(HistoryRow):
    """One line of a bench table.

    Attributes:
        block: one of :data:`BLOCKS`. row: short name. setting: what ran.
        local_feature: the local descriptors AMES used (None for the global-only rows).
        mAP_medium, mAP_hard: test-split revisitop mAP in percent (None for latency rows and failures).
        lq, lx: query / gallery descriptors per image (the cap; an image may have fewer).
        bytes_per_image: nominal storage per gallery image (:func:`image_bytes`).
        bytes_mean: mean storage when each image keeps only the descriptors it has.
        ms_per_query: wall ms per query (asymmetry: re-ranking the top-m; latency: the median run).
        threads: torch CPU threads of a latency row.
        lam, gamma: the ensemble weights (chosen on val).
        status: ``"ok"`` or ``"failed: <reason>"``. runtime_s: wall time of the row.
        metrics: every test metric of the row; history: per-epoch records of its training run.
    """

    block: str
    row: str
    setting: str
    local_feature: str | None = None
    mAP_medium: float | None = None
    mAP_hard: float | None = None
    lq: int | None = None
    lx: int | None = None
    bytes_per_image: float | None = None
    bytes_mean: float | None = None
    ms_per_query: float | None = None
    threads: int | None = None
    lam: float | None = None
    gamma: float | None = None
    status: str = "ok"
    notes: str = ""
    runtime_s: float | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    history: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.block not in BLOCKS:
            raise ConfigError(f"AMESRow block {self.block!r} is unknown; choose one of {list(BLOCKS)}")
        check_status("AMESRow", self.status)
        if self.threads is not None and (isinstance(self.threads, bool) or self.threads < 1):
            raise ConfigError(f"AMESRow threads must be a positive int or None, got {self.threads!r}")
        freeze_history(self)


def rows_from_json(data: Mapping[str, Any]) -> list[AMESRow]:
    """The rows of a ``report.json`` dict.

    Raises:
        CorruptDataError: the dict is not an AMES bench report.
    """
    return parse_rows(data, AMESRow, report="AMES bench report", bench="ames")


# ---- derived values ---------------------------------------------------------------------------

def _good(r: AMESRow | None) -> bool:
    return r is not None and r.ok and r.mAP_medium is not None


def find_row(rows: Sequence[AMESRow], block: str, row: str, local: str | None = None) -> AMESRow | None:
    """The first successful row ``(block, row)`` (of ``local`` when given) with an mAP, else None."""
    hits = [r for r in rows if r.block == block and r.row == row and _good(r)
            and (local is None or r.local_feature == local)]
    return hits[0] if hits else None


def baseline_of(rows: Sequence[AMESRow], r: AMESRow) -> AMESRow | None:
    """The row ``r``'s Δ columns are relative to: the quality "global" row, or the memory row with L_x = 0."""
    if r.block == "quality" and r.row != ROW_GLOBAL:
        return find_row(rows, "quality", ROW_GLOBAL)
    if r.block == "memory" and r.lx:
        hits = [b for b in rows if b.block == "memory" and not b.lx and _good(b)]
        return hits[0] if hits else None
    return None


def speedups(rows: Sequence[AMESRow]) -> dict[int, float]:
    """``{threads: reference ms / fast ms}`` over the latency rows that have both paths."""
    ms: dict[tuple[str, int], float] = {}
    for r in rows:
        if r.block == "latency" and r.ok and r.ms_per_query and r.threads is not None:
            ms.setdefault((r.row, r.threads), r.ms_per_query)
    return {t: ms[(ROW_REFERENCE, t)] / ms[(ROW_FAST, t)] for (name, t) in sorted(ms)
            if name == ROW_FAST and (ROW_REFERENCE, t) in ms}


def table_cells(r: AMESRow, rows: Sequence[AMESRow]) -> dict[str, Any]:
    """The cells of ``r``'s block columns (:data:`COLUMNS`); a failed row shows its status in the notes."""
    base = baseline_of(rows, r)
    delta = {k: None if base is None or not _good(r) or getattr(r, k) is None or getattr(base, k) is None
             else float(getattr(r, k)) - float(getattr(base, k)) for k in ("mAP_medium", "mAP_hard")}
    speed = speedups(rows).get(r.threads) if r.block == "latency" and r.row == ROW_FAST else None
    notes = r.notes if r.ok else "; ".join(x for x in (r.status, r.notes) if x)
    return {"row": r.row, "local": r.local_feature or "—", "setting": r.setting, "L_q": r.lq, "L_x": r.lx,
            "mAP_medium": r.mAP_medium, "mAP_hard": r.mAP_hard,
            "Δ_medium": None if delta["mAP_medium"] is None else f"{delta['mAP_medium']:+.2f}",
            "Δ_hard": None if delta["mAP_hard"] is None else f"{delta['mAP_hard']:+.2f}",
            "λ": r.lam, "γ": r.gamma, "bytes/image": None if r.bytes_per_image is None else int(r.bytes_per_image),
            "bytes/image (real)": None if r.bytes_mean is None else f"{r.bytes_mean:.1f}",
            "ms/query": None if r.ms_per_query is None else f"{r.ms_per_query:.1f}",
            "threads": r.threads, "speed-up": None if speed is None else f"{speed:.1f}x",
            "runtime_s": None if r.runtime_s is None else f"{float(r.runtime_s):.1f}", "notes": notes}


def _claim(claim: str, paper: str, a: AMESRow | None, b: AMESRow | None, names: tuple[str, str]) -> dict[str, Any]:
    ours = None if not (_good(a) and _good(b)) else (round(float(a.mAP_medium), 2), round(float(b.mAP_medium), 2))
    held, verdict = claim_verdict(ours, margin=NOISE_MARGIN, noise=f"within noise (gap < {NOISE_MARGIN:g} point)")
    return {"claim": claim, "paper": paper, "ours": ours, "rows": f"{names[0]} vs {names[1]}", "held": held,
            "verdict": verdict}


def check_claims(rows: Sequence[AMESRow]) -> list[dict[str, Any]]:
    """The AMES paper's claims (PAPERS.md §3) checked on the table's test mAP Medium.

    A claim is listed when the table has its block; its pair is compared when both rows succeeded.

    Returns:
        One dict per claim: ``claim``, ``paper``, ``ours`` (our pair or None), ``rows``, ``held``
        (None when a row is missing or failed) and ``verdict`` ("held", "did not hold", "within
        noise" when the gap is below :data:`NOISE_MARGIN` points, or "n/a").
    """
    out = []
    mem = sorted((r for r in rows if r.block == "memory" and r.lx), key=lambda r: r.lx or 0)
    if mem:
        pq = next((r for r in rows if r.block == "memory" and not r.lx), None)
        out.append(_claim("AMES with ~1 KB/image beats the PQ global code alone", "76.4 vs 72.8 (ROP+1M)",
                          mem[0], pq, (mem[0].row, pq.row if pq else "?")))
        if len(mem) > 1:
            out.append(_claim("more gallery descriptors help (largest vs smallest L_x)", "78.0 vs 76.4 (L_x 176 vs 48)",
                              mem[-1], mem[0], (mem[-1].row, mem[0].row)))
    asym = {(r.lq, r.lx): r for r in rows if r.block == "asymmetry"}
    min_lx = min((lx for _, lx in asym if lx is not None), default=None)
    lqs = sorted(lq for lq, lx in asym if lx == min_lx and lq is not None)
    if len(lqs) > 1:
        many, few = asym[(lqs[-1], min_lx)], asym[(lqs[0], min_lx)]
        out.append(_claim("asymmetry helps: many query descriptors against few gallery ones",
                          "75.5 vs 74.8 (L_q 600 vs 50, L_x 50)", many, few, (many.row, few.row)))
    glob = find_row(rows, "quality", ROW_GLOBAL)
    quality = [r for r in rows if r.block == "quality" and r.local_feature]
    for local in dict.fromkeys(r.local_feature for r in quality):
        have = {r.row: r for r in quality if r.local_feature == local}
        for row in (ROW_FP, ROW_BINARY):
            if row in have:
                out.append(_claim(f"{row} ({local}) beats the global search alone", "—", have[row], glob,
                                  (row, ROW_GLOBAL)))
            if row in have and ROW_MUTUAL_NN in have:
                out.append(_claim(f"{row} ({local}) beats the untrained mutual-NN re-ranking", "—", have[row],
                                  have[ROW_MUTUAL_NN], (row, ROW_MUTUAL_NN)))
        if ROW_DISTILLED in have and ROW_BINARY in have:
            out.append(_claim(f"distillation helps the binary student ({local})", "—", have[ROW_DISTILLED],
                              have[ROW_BINARY], (ROW_DISTILLED, ROW_BINARY)))
    return out


# ---- report files -----------------------------------------------------------------------------

def report_dict(rows: Sequence[AMESRow], *, title: str, runtime_s: float,
                info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON form: ``title``, ``runtime_s``, ``info``, ``rows``, ``speedups``, ``claims``."""
    return {**report_head(rows, title=title, runtime_s=runtime_s, info=info),
            "speedups": {str(k): round(v, 2) for k, v in speedups(rows).items()}, "claims": check_claims(rows)}


def render_markdown(rows: Sequence[AMESRow], *, title: str, runtime_s: float,
                    info: Mapping[str, Any] | None = None) -> str:
    """The Markdown report: one table per block that has rows, the claims, the runtimes."""
    info = dict(info or {})
    lines = markdown_head(title, info)
    for block in BLOCKS:
        sel = [r for r in rows if r.block == block]
        if sel:
            lines += [f"## {TITLES[block]}", "", markdown_table([table_cells(r, rows) for r in sel], COLUMNS[block]),
                      ""]
    claims = check_claims(rows)
    if claims:
        lines += ["## AMES claims in miniature", "", claims_table(claims), ""]
    failed = sum(not r.ok for r in rows)
    lines += [f"Runtime: {float(runtime_s):.1f} s for {len(rows)} rows ({failed} failed)."]
    lines += timing_lines(info)
    lines += ["", f"Figure: `{FILES['plot']}` (test mAP vs bytes per gallery image).", ""]
    return "\n".join(lines)


def write_report(rows: Sequence[AMESRow], *, out_dir: str | os.PathLike[str], title: str, runtime_s: float,
                 info: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and ``map_vs_bytes.png`` to ``out_dir``.

    Returns:
        ``{"markdown", "json", "plot"}`` mapped to the written paths.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    paths = report_paths(out_dir, FILES)
    atomic_write_text(paths["markdown"], render_markdown(rows, title=title, runtime_s=runtime_s, info=info))
    write_json(paths["json"], report_dict(rows, title=title, runtime_s=runtime_s, info=info))
    plot_map_vs_bytes(rows, paths["plot"])
    return paths


# ---- figure -----------------------------------------------------------------------------------

def plot_map_vs_bytes(rows: Sequence[AMESRow], path: str | os.PathLike[str]) -> Path:
    """Test mAP (Medium solid, Hard dashed) against bytes per gallery image, log x axis.

    The memory block is drawn as a line (PQ code, then + L_x binary descriptors); quality rows
    that know their storage are drawn as separate markers. A note replaces an empty plot.
    """
    fig, ax = pyplot().subplots(figsize=(7.5, 5))
    mem = sorted((r for r in rows if r.block == "memory" and _good(r) and r.bytes_per_image),
                 key=lambda r: r.bytes_per_image or 0.0)
    if mem:
        xs = [r.bytes_per_image for r in mem]
        ax.plot(xs, [r.mAP_medium for r in mem], "o-", color="C0", label="PQ code + L_x binary (Medium)")
        if all(r.mAP_hard is not None for r in mem):
            ax.plot(xs, [r.mAP_hard for r in mem], "o--", color="C0", alpha=0.6, label="PQ code + L_x binary (Hard)")
        for i, r in enumerate(mem):  # alternate above/below: neighbours sit close on a log axis
            ax.annotate(f"L_x={r.lx}" if r.lx else r.row, (r.bytes_per_image, r.mAP_medium), fontsize=7,
                        xytext=(4, 5 if i % 2 == 0 else -10), textcoords="offset points")
    others = [r for r in rows if r.block == "quality" and _good(r) and r.bytes_per_image]
    for i, r in enumerate(others):
        label = r.row if r.local_feature is None else f"{r.row} ({r.local_feature})"
        ax.scatter([r.bytes_per_image], [r.mAP_medium], marker="s^vD*P"[i % 6], s=40, color=f"C{1 + i % 9}",
                   label=f"{label}, L_x={r.lx}" if r.lx else label)
    ax.set(xlabel="bytes per gallery image", ylabel="test mAP (%)", title="AMES: mAP vs memory per image")
    if mem or others:
        ax.set_xscale("log")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: points fill the axes
    else:
        ax.text(0.5, 0.5, "no rows with a byte count", ha="center", va="center", transform=ax.transAxes)
    return save_png(fig, path)
