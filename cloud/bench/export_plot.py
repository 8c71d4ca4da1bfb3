"""The Pareto plot of ``asymfuse bench export``: batch-1 latency against test mAP, one marker per format."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from asymfuse.cloud.bench.export_row import TORCH, ExportRow
from asymfuse.cloud.bench.report_common import pyplot, save_png

MARKERS = {TORCH: "o", "onnx": "s", "tflite": "^", "coreml": "D"}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (lower ms, higher mAP), sorted by ms."""
    front: list[tuple[float, float]] = []
    for ms, m in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or m > front[-1][1]:
            front.append((ms, m))
    return front


def plot_pareto(rows: Sequence[ExportRow], path: str | os.PathLike[str], *, threads: str = "1") -> Path:
    """p50 ms (``threads``, log x) against test mAP: marker = format, colour = precision, hollow =
    failed the parity gate, black step line = the Pareto front over the pretrained rows that passed
    (and the torch baselines). Random-init rows are drawn faded."""
    fig, ax = pyplot().subplots(figsize=(8, 5))
    colors = {"fp32": "C0", "fp16": "C1", "int8": "C2", "int8_dynamic": "C3"}
    drawn: set[tuple[str, str]] = set()
    good = [r for r in rows if r.map is not None and r.p50(threads)]
    for r in good:
        key = (r.format, r.precision)
        color = colors.get(r.precision, "C7")
        gated = r.status == "failed"  # hollow: failed the parity gate
        ax.scatter([r.p50(threads)], [r.map], marker=MARKERS.get(r.format, "x"), s=46,
                   facecolors="none" if gated else color, alpha=1.0 if r.pretrained else 0.35,
                   edgecolors=color if gated else ("black" if r.status == "baseline" else "none"),
                   label=f"{r.format} {r.precision}" if key not in drawn else None)
        drawn.add(key)
        ax.annotate(f"{r.arch}@{r.res}", (r.p50(threads), r.map), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    front = pareto_front([(r.p50(threads), r.map) for r in good
                          if r.pretrained and r.status in ("passed", "baseline")])
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", lw=0.8,
                label="Pareto front (pretrained, passed)")
    ax.set(xlabel=f"p50 ms at batch 1, {threads} thread(s)", ylabel="test mAP Medium (%)",
           title="Export: latency vs retrieval quality (hollow: failed the gate)")
    if good:
        from matplotlib.ticker import ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(ScalarFormatter())
        ax.tick_params(axis="x", which="minor", labelsize=6)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    else:
        ax.text(0.5, 0.5, "no rows with both latency and mAP", ha="center", va="center", transform=ax.transAxes)
    return save_png(fig, path)
