"""``asymfuse bench ames``: AMES re-ranking in miniature, on the embedded benchmark (PAPERS.md §3).

Protocol (fixed before looking at any result): AMES models train on the benchmark's train split;
the ensemble weights lambda/gamma of each model are chosen on the val split (grid search at the
quality-row setting; the memory and asymmetry rows reuse them); test-split revisitop mAP
Medium/Hard is reported. The global search is one global feature (``gem_lite2``, the best single
one of ``bench aff``) with an exact faiss index; AMES re-scores its top ``top_m`` = 100. Blocks:

- quality: global alone; + mutual NN (the untrained baseline: mutual-nearest-neighbour counts of
  the float descriptors, :mod:`asymfuse.cloud.ames.mutual_nn`); + AMES fp / binary / universal
  (random lengths) / distilled (binary student with ``lq``/``lx`` descriptors, the fp row's model
  as teacher with ``teacher_l``), per local feature (``local_lite2``: Lite2 map cells, 120-d;
  ``sift``: 128-d);
- memory: a PQ global code (faiss ``IndexPQ``, ``pq_m`` x ``pq_nbits`` bits, trained on the train
  split's globals) with and without ``L_x`` packed binary descriptors (16 bytes each);
- asymmetry: ``L_q`` x ``L_x`` with the binary model (universal if trained);
- latency: CPU ms to re-rank the top-100 of one query, fast path (:class:`AMESScorer` on the
  packed store) vs reference path (:func:`reference_scores`, one pair at a time), per thread count.

Local features are extracted into the bench's own feature cache with ``max_local`` = 600 slots
(``local_max_side`` = 512 for ``local_lite2``, so its stride-16 map has enough cells), as complete
stores at the feature-cache paths, which the AMES trainer then uses as they are. Images with fewer
descriptors keep what they have; the report gives the real counts. Rows run one after the other; a
failing row reads ``failed: <reason>`` and the bench goes on. Output in ``out_dir``:
``benchmark/``, ``features/`` (reused by later runs), ``runs/<local>-<variant>/`` (training runs and
packed stores) and the report files of :mod:`asymfuse.cloud.bench.ames_report`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from asymfuse.cloud.bench.ames_bench_config import TRAIN_BASE, AMESBenchConfig
from asymfuse.cloud.bench.ames_prep import AMESContext, prepare
from asymfuse.cloud.bench.ames_report import (
    ROW_FAST,
    ROW_GLOBAL,
    ROW_MUTUAL_NN,
    ROW_REFERENCE,
    VARIANT_ROWS,
    AMESRow,
    render_markdown,
    write_report,
)
from asymfuse.cloud.bench.ames_rows import (
    asymmetry_row,
    global_row,
    latency_rows,
    memory_row,
    mutual_nn_row,
    pq_row,
    quality_row,
    with_runtime,
)

LOG = logging.getLogger("asymfuse.bench.ames")

def run_ames_bench(cfg: AMESBenchConfig, *, out_dir: str | Path) -> dict[str, Any]:
    """Run the bench; write the report into ``out_dir``.

    Returns:
        ``{"rows": [AMESRow], "runtime_s", "timing_s": {...}, "paths": {report files},
        "markdown": the report text}``.

    Raises:
        ConfigError, CorruptDataError, UnknownNameError: the preparation failed (benchmark or
            features); failures of single rows are reported in the table instead.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = prepare(cfg, out)
    timing = {"prepare": time.perf_counter() - t0, **ctx.timing}
    rows: list[AMESRow] = []
    for block, row, setting, thunk in _plan(cfg, ctx):
        t1 = time.perf_counter()
        rows += _run_rows(block, row, setting, thunk)
        timing[block] = timing.get(block, 0.0) + time.perf_counter() - t1
    runtime = time.perf_counter() - t0
    timing["total"] = runtime
    info = _info(cfg, ctx, timing=timing)
    title = f"asymfuse bench ames ({cfg.tier} tier): AMES re-ranking in miniature"
    paths = write_report(rows, out_dir=out, title=title, runtime_s=runtime, info=info)
    return {"rows": rows, "runtime_s": runtime, "timing_s": timing, "paths": paths,
            "markdown": render_markdown(rows, title=title, runtime_s=runtime, info=info)}


Thunk = Callable[[], "AMESRow | list[AMESRow]"]
PlanItem = tuple[str, str, str, Thunk]


def _plan(cfg: AMESBenchConfig, ctx: AMESContext) -> list[PlanItem]:
    """Every row (or group of rows) as (block, row name, setting, thunk), in table order."""
    plan: list[PlanItem] = []
    first = cfg.local_features[0]
    if "quality" in cfg.blocks:
        plan.append(("quality", ROW_GLOBAL, cfg.global_feature, lambda: global_row(ctx)))
        for local in cfg.local_features:
            plan.append(("quality", ROW_MUTUAL_NN, local, lambda lo=local: mutual_nn_row(ctx, local=lo)))
            for variant in cfg.variants:
                plan.append(("quality", VARIANT_ROWS[variant], local,
                             lambda lo=local, v=variant: quality_row(ctx, local=lo, variant=v)))
    if "memory" in cfg.blocks:
        plan.append(("memory", f"PQ{cfg.pq_m}", "PQ code only", lambda: pq_row(ctx)))
        for lx in cfg.memory_lx:
            plan.append(("memory", f"PQ{cfg.pq_m} + {lx}", first, lambda n=lx: memory_row(ctx, local=first, lx=n)))
    if "asymmetry" in cfg.blocks:
        for lq in cfg.asym_lq:
            for lx in cfg.asym_lx:
                plan.append(("asymmetry", f"L_q={lq}, L_x={lx}", first,
                             lambda q=lq, x=lx: asymmetry_row(ctx, local=first, lq=q, lx=x)))
    if "latency" in cfg.blocks:
        plan.append(("latency", f"{ROW_FAST} / {ROW_REFERENCE}", first, lambda: latency_rows(ctx, local=first)))
    return plan


def _run_rows(block: str, row: str, setting: str, thunk: Thunk) -> list[AMESRow]:
    """Run one plan item, timing it; any exception becomes one ``failed: <reason>`` row."""
    LOG.info("bench row %s / %s (%s)", block, row, setting)
    t0 = time.perf_counter()
    try:
        result = thunk()
    except Exception as exc:  # a failed row is reported, the bench goes on
        LOG.exception("bench row %s / %s failed", block, row)
        reason = " ".join(f"{type(exc).__name__}: {exc}".replace("|", "/").split())[:300]
        return [AMESRow(block, row, setting, status=f"failed: {reason}", runtime_s=time.perf_counter() - t0)]
    rows = result if isinstance(result, list) else [result]
    dt = (time.perf_counter() - t0) / max(1, len(rows))
    return [with_runtime(r, dt) for r in rows]


def _info(cfg: AMESBenchConfig, ctx: AMESContext, *, timing: dict[str, float]) -> dict[str, Any]:
    test, val = ctx.test, ctx.val
    description = (
        f"Embedded benchmark `{test.name}`: train {len(ctx.training_set)} images "
        f"({ctx.training_set.num_classes} classes), val {val.nq} queries / {val.nb} gallery, test {test.nq} "
        f"queries / {test.nb} gallery. Global search: `{cfg.global_feature}`, exact inner product (memory block: "
        f"PQ{cfg.pq_m} code, {cfg.pq_m}x{ctx.pq_nbits} bits, asymmetric distances). AMES (model dim 128, 2 heads, "
        f"5 layers) re-ranks the top {cfg.top_m}; trained {cfg.epochs} epochs on train (AdamW lr "
        f"{dict(cfg.train).get('lr', TRAIN_BASE['lr']):g}, negatives from the global top-{cfg.top_m}), λ/γ "
        f"chosen on val, reported on test (revisitop mAP %, bbx-cropped queries). Local features extracted with up to "
        f"{cfg.max_local} descriptors per image; real counts: {ctx.counts_note}. "
        f"Features {'extracted in this run' if ctx.extracted else 'read from the cache'} "
        f"({timing.get('features', 0.0):.1f} s).")
    return {"tier": cfg.tier, "description": description,
            "dataset": {"name": test.name, "test_queries": test.nq, "test_gallery": test.nb, "val_queries": val.nq,
                        "val_gallery": val.nb, "train_images": len(ctx.training_set)},
            "config": {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name != "benchmark"},
            "benchmark": cfg.benchmark.to_dict(), "local_counts": ctx.counts, "features_extracted": ctx.extracted,
            "runs": ctx.run_info, "device": cfg.device, "torch_threads": ctx.threads,
            "timing_s": {k: round(float(v), 1) for k, v in timing.items()}}


