"""The ``asymfuse bench export`` report: one table (Markdown, CSV, JSON) and a Pareto plot.

Rows are :class:`ExportRow` records made by :mod:`asymfuse.cloud.bench.export_bench`, grouped by
``(arch, res)``; each group starts with its torch eager fp32 baseline row, which the speed-up
columns divide by (``baseline p50 / row p50`` at the same thread count).

Status cells: ``✅ passed`` (the parity gate), ``❎ failed: <why>`` (exported, but the gate
refused it: it lies under ``failed/``), ``❌ export failed: <why>``, ``⏭️ skipped: <why>`` (Core ML
on Linux: converted and its MIL program checked, prediction needs macOS; no parity number is
shown because none was measured) and ``torch baseline``.

Files written by :func:`write_report` into ``out_dir`` (atomically): ``report.md``,
``report.csv``, ``report.json`` (:func:`rows_from_json` reads the rows back) and ``pareto.png``
(:mod:`asymfuse.cloud.bench.export_plot`).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from asymfuse.cloud.bench.export_row import ExportRow
from asymfuse.cloud.bench.report_common import load_report as load_report
from asymfuse.cloud.bench.report_common import markdown_head, parse_rows, report_head, report_paths, timing_lines
from asymfuse.cloud.eval.report import markdown_table, write_json
from asymfuse.edge.fileio import atomic_write_text

FILES = {"markdown": "report.md", "csv": "report.csv", "json": "report.json", "plot": "pareto.png"}
ICONS = {"baseline": "torch baseline", "passed": "✅ passed", "failed": "❎ failed",
         "export_failed": "❌ export failed", "skipped": "⏭️ skipped"}


def rows_from_json(data: Mapping[str, Any]) -> list[ExportRow]:
    """The rows of a ``report.json`` dict.

    Raises:
        CorruptDataError: the dict is not an export bench report.
    """
    return parse_rows(data, ExportRow, report="export bench report", bench="export")


# ---- derived values ---------------------------------------------------------------------------

def baseline_of(rows: Sequence[ExportRow], r: ExportRow) -> ExportRow | None:
    """The torch eager fp32 row of ``r``'s ``(arch, res)`` group, or None."""
    return next((b for b in rows if b.status == "baseline" and b.arch == r.arch and b.res == r.res), None)


def speedup(rows: Sequence[ExportRow], r: ExportRow, threads: int | str) -> float | None:
    """``baseline p50 / r p50`` at ``threads`` (None when either is missing)."""
    base = baseline_of(rows, r)
    mine, ref = r.p50(threads), None if base is None else base.p50(threads)
    return None if not mine or not ref else ref / mine


def thread_counts(rows: Sequence[ExportRow]) -> list[str]:
    """Thread counts present in any row's latency, numerically sorted (as strings)."""
    return sorted({t for r in rows for t in r.latency}, key=int)


def status_cell(r: ExportRow) -> str:
    """``✅ passed``, ``❎ failed: why``, ``❌ export failed: why``, ``⏭️ skipped: why`` or ``torch baseline``."""
    icon = ICONS[r.status]
    return f"{icon}: {r.reason}" if r.reason and r.status not in ("passed", "baseline") else icon


def columns(threads: Sequence[str]) -> tuple[str, ...]:
    """The table's columns for the given thread counts."""
    lat = tuple(c for t in threads for c in (f"p50 ms {t}t", f"p90 ms {t}t"))
    return ("arch", "format", "precision", "res", "params (M)", "GFLOPs", "file MB", *lat,
            *(f"speed-up {t}t" for t in threads), "cosine min", "mAP", "Δ mAP", "status")


def table_cells(r: ExportRow, rows: Sequence[ExportRow], threads: Sequence[str]) -> dict[str, Any]:
    """The cells of one row (formatted strings; blank where nothing was measured)."""
    def num(v: float | None, fmt: str) -> str | None:
        return None if v is None else format(v, fmt)

    cells: dict[str, Any] = {
        "arch": r.arch if r.pretrained else f"{r.arch} (random init)", "format": r.format,
        "precision": r.precision, "res": r.res, "params (M)": num(r.params_m, ".2f"), "GFLOPs": num(r.gflops, ".2f"),
        "file MB": num(r.file_mb, ".1f"), "cosine min": num(r.cosine_min, ".4f"), "mAP": num(r.map, ".2f"),
        "Δ mAP": None if r.map_drop is None else f"{0.0 - r.map_drop:+.2f}", "status": status_cell(r).replace("|", "/")}
    for t in threads:
        entry = r.latency.get(t) or {}
        cells[f"p50 ms {t}t"] = num(entry.get("p50_ms"), ".2f")
        cells[f"p90 ms {t}t"] = num(entry.get("p90_ms"), ".2f")
        s = speedup(rows, r, t)
        cells[f"speed-up {t}t"] = None if s is None else f"{s:.2f}x"
    return cells


def summary(rows: Sequence[ExportRow], threads: Sequence[str]) -> list[str]:
    """Plain sentences answering the issue's questions (exported fp32 vs eager, int8 vs fp32), per group."""
    out = []
    for base in (b for b in rows if b.status == "baseline"):
        group = [r for r in rows if r.arch == base.arch and r.res == base.res and r.status != "baseline"]
        for t in threads:
            parts = []
            for fmt in dict.fromkeys(r.format for r in group):
                fp32 = next((r for r in group if r.format == fmt and r.precision == "fp32" and r.p50(t)), None)
                int8 = next((r for r in group if r.format == fmt and r.precision == "int8" and r.p50(t)), None)
                if fp32 is not None:
                    s = speedup(rows, fp32, t)
                    parts.append(f"{fmt} fp32 is {s:.2f}x torch eager" if s else f"{fmt} fp32: no baseline")
                if fp32 is not None and int8 is not None:
                    ms32, ms8 = fp32.p50(t), int8.p50(t)
                    note = "" if int8.status == "passed" else f" ({ICONS[int8.status]} the gate)"
                    if ms32 and ms8:
                        parts.append(f"{fmt} int8 is {ms32 / ms8:.2f}x its fp32{note}")
            if parts:
                out.append(f"{base.arch}@{base.res}, {t} thread(s): " + "; ".join(parts) + ".")
    return out


# ---- report files -----------------------------------------------------------------------------

def report_dict(rows: Sequence[ExportRow], *, title: str, runtime_s: float,
                info: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON form: ``title``, ``runtime_s``, ``info``, ``rows``, ``summary``."""
    return {**report_head(rows, title=title, runtime_s=runtime_s, info=info),
            "summary": summary(rows, thread_counts(rows))}


def render_markdown(rows: Sequence[ExportRow], *, title: str, runtime_s: float,
                    info: Mapping[str, Any] | None = None) -> str:
    """The Markdown report: description, the table, the speed summary, failures, runtimes."""
    info = dict(info or {})
    threads = thread_counts(rows)
    lines = markdown_head(title, info)
    lines += [markdown_table([table_cells(r, rows, threads) for r in rows], columns(threads)), ""]
    said = summary(rows, threads)
    if said:
        lines += ["## Speed", ""] + [f"- {s}" for s in said] + [""]
    bad = [r for r in rows if r.status in ("failed", "export_failed")]
    if bad:
        lines += ["## Failures", ""] + [f"- {r.arch}@{r.res} {r.format} {r.precision}: {status_cell(r)}"
                                        for r in bad] + [""]
    lines += [f"Runtime: {float(runtime_s):.1f} s for {len(rows)} rows "
              f"({sum(r.status == 'export_failed' for r in rows)} export failures, "
              f"{sum(r.status == 'failed' for r in rows)} gate failures)."]
    lines += timing_lines(info)
    lines += ["", f"Figure: `{FILES['plot']}` (p50 ms at 1 thread vs test mAP, one marker per format).", ""]
    return "\n".join(lines)


def render_csv(rows: Sequence[ExportRow]) -> str:
    """One line per row, machine-friendly columns (numbers unformatted, latency flattened)."""
    threads = thread_counts(rows)
    names = ["arch", "format", "precision", "res", "pretrained", "params_m", "gflops", "file_mb",
             *(f"{q}_ms_{t}t" for t in threads for q in ("p50", "p90")), *(f"speedup_{t}t" for t in threads),
             "cosine_min", "cosine_mean", "map", "map_drop", "status", "reason", "path"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        d = {k: getattr(r, k, None) for k in names}
        for t in threads:
            entry = r.latency.get(t) or {}
            d[f"p50_ms_{t}t"], d[f"p90_ms_{t}t"] = entry.get("p50_ms"), entry.get("p90_ms")
            d[f"speedup_{t}t"] = speedup(rows, r, t)
        writer.writerow({k: "" if d.get(k) is None else d[k] for k in names})
    return buf.getvalue()


def write_report(rows: Sequence[ExportRow], *, out_dir: str | os.PathLike[str], title: str, runtime_s: float,
                 info: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.csv``, ``report.json`` and ``pareto.png`` to ``out_dir``.

    Returns:
        ``{"markdown", "csv", "json", "plot"}`` mapped to the written paths.

    Raises:
        MissingDependencyError: matplotlib is not installed.
    """
    paths = report_paths(out_dir, FILES)
    atomic_write_text(paths["markdown"], render_markdown(rows, title=title, runtime_s=runtime_s, info=info))
    atomic_write_text(paths["csv"], render_csv(rows))
    write_json(paths["json"], report_dict(rows, title=title, runtime_s=runtime_s, info=info))
    from asymfuse.cloud.bench.export_plot import plot_pareto

    plot_pareto(rows, paths["plot"])
    return paths
