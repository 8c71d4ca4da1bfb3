"""The rows of ``asymfuse bench ames``: train (cached per local feature and variant), choose λ/γ on val, test.

Every function takes the shared :class:`~asymfuse.cloud.bench.ames_prep.AMESContext` and returns
:class:`~asymfuse.cloud.bench.ames_report.AMESRow` records. Conventions:

- binary models re-rank from a packed gallery store (:func:`build_packed_store`, 16 bytes per
  descriptor, under ``runs/<local>-<variant>/packed-<part>``); fp models from float descriptors;
- λ/γ of a quality row come from a grid search on the val split at the row's setting (model,
  lengths, exact global search); the memory and asymmetry rows reuse their model's quality-row
  λ/γ (a val pass per row would double those blocks' cost);
- ``ms/query`` is the wall time of re-ranking the test split divided by its queries.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from asymfuse.cloud.bench.ames_prep import AMESContext, pq_code_bytes
from asymfuse.cloud.bench.ames_report import (
    BINARY_DESCRIPTOR_BYTES,
    FP16_TOKEN_BYTES,
    ROW_FAST,
    ROW_GLOBAL,
    ROW_MUTUAL_NN,
    ROW_REFERENCE,
    VARIANT_ROWS,
    AMESRow,
    image_bytes,
    mean_image_bytes,
)
from asymfuse.cloud.eval.evaluate import evaluate_ranking, rank_features
from asymfuse.edge.errors import ConfigError

HISTORY_KEYS = ("epoch", "loss", "loss_bce", "loss_distill", "lr")
BINARY_PREFERENCE = ("universal", "binary", "distilled")  # the model of the memory/asymmetry/latency blocks


def _settings(ctx: AMESContext) -> dict[str, str]:
    c = ctx.cfg
    return {"fp": f"fp AMES (fp16 tokens), L_q = L_x = {c.lq}",
            "binary": f"binary AMES (ITQ init), L_q = L_x = {c.lq}",
            "universal": f"binary, L_q, L_x drawn per batch from [{c.universal[0]}, {c.universal[1]})",
            "distilled": f"binary student (L = {c.lq}) ← fp teacher (L = {c.teacher_l}), β = 10"}


# ---- training -------------------------------------------------------------------------------

def train_variant(ctx: AMESContext, *, local: str, variant: str) -> Any:
    """``train_ames`` of one variant into ``out/runs/<local>-<variant>`` (cached; a failure is raised again)."""
    from asymfuse.cloud.train.ames_trainer import train_ames

    key = f"{local}-{variant}"
    if key not in ctx.models:
        try:
            teacher = str(train_variant(ctx, local=local, variant="fp").checkpoint) if variant == "distilled" else ""
            tc = ctx.cfg.train_config(data_root=str(ctx.bench_root), features_dir=str(ctx.features_dir),
                                      local_feature=local, variant=variant, teacher=teacher)
            res = train_ames(tc, out_dir=ctx.out / "runs" / key)
            last = res.history[-1] if res.history else {}
            ctx.run_info[key] = {"runtime_s": round(res.runtime_s, 1), "epochs": tc.epochs,
                                 "final_loss": last.get("loss"), "best_epoch": res.best_epoch,
                                 "checkpoint": str(res.checkpoint)}
            ctx.models[key] = res
        except Exception as exc:
            ctx.models[key] = exc
            raise
    res = ctx.models[key]
    if isinstance(res, Exception):
        raise res
    return res


def binary_model(ctx: AMESContext, local: str) -> tuple[str, Any]:
    """``(variant, result)`` of the binary model the memory/asymmetry/latency blocks use."""
    for variant in BINARY_PREFERENCE:
        if variant in ctx.cfg.variants:
            return variant, train_variant(ctx, local=local, variant=variant)
    return "binary", train_variant(ctx, local=local, variant="binary")


def gallery_of(ctx: AMESContext, model: Any, *, key: str, local: str, part: str) -> Any:
    """The GalleryLocals of ``part``'s gallery for ``model``: packed (binary) or float descriptors (fp)."""
    if not model.cfg.binary:
        return ctx.locals(local, part, "gallery")

    def build() -> Any:
        from asymfuse.cloud.ames.packed_build import build_packed_store
        from asymfuse.cloud.features.store import FeatureStore

        c = ctx.cfg
        longest = max(c.lx, *c.memory_lx, *c.asym_lx)
        with FeatureStore.open(ctx.store(local, part, "gallery"), verify="none") as store:
            return build_packed_store(model, store, ctx.out / "runs" / key / f"packed-{part}", max_local=longest,
                                      device=c.device, overwrite=True)

    return ctx.cached(("packed", key, part), build)


# ---- evaluation -----------------------------------------------------------------------------

GlobalsFn = Callable[[str], tuple[np.ndarray, np.ndarray]]


def rerank_split(ctx: AMESContext, model: Any, *, key: str, local: str, part: str, lq: int, lx: int, lam: float,
                 gamma: float, globals_fn: GlobalsFn | None = None) -> tuple[Any, float]:
    """``evaluate_ames`` of ``part`` and the wall ms per query it took."""
    from asymfuse.cloud.ames.evaluate import evaluate_ames
    from asymfuse.cloud.ames.options import RerankOptions
    from asymfuse.cloud.ames.scorer import AMESScorer

    xq, xb = (globals_fn or ctx.globals)(part)
    gallery = gallery_of(ctx, model, key=key, local=local, part=part)
    queries = ctx.locals(local, part, "queries")
    scorer = AMESScorer(model, device=ctx.cfg.device)
    t0 = time.perf_counter()
    options = RerankOptions(top_m=ctx.cfg.top_m, lam=lam, gamma=gamma, lq=lq, lx=lx)
    res = evaluate_ames(dataset=ctx.dataset(part), xq=xq, xb=xb, query_locals=queries, gallery=gallery,
                        scorer=scorer, options=options)
    return res, 1000.0 * (time.perf_counter() - t0) / max(1, ctx.dataset(part).nq)


def select_on_val(ctx: AMESContext, model: Any, *, key: str, local: str, lq: int, lx: int,
                  globals_fn: GlobalsFn | None = None) -> tuple[float, float]:
    """λ/γ by grid search on the val split at this setting."""
    from asymfuse.cloud.ames.evaluate import select_ensemble

    res, _ = rerank_split(ctx, model, key=key, local=local, part="val", lq=lq, lx=lx, lam=0.5, gamma=1.0,
                          globals_fn=globals_fn)
    lam, gamma, _ = select_ensemble(dataset=ctx.val, global_scores=res.global_scores, topm=res.topm,
                                    logits=res.logits, full_ranks=res.ranks)
    return float(lam), float(gamma)


def quality_weights(ctx: AMESContext, model: Any, *, key: str, local: str) -> tuple[float, float]:
    """λ/γ of the model's quality row (chosen on val at ``lq``/``lx`` with the exact search); chosen now if
    that row did not run."""
    if key not in ctx.selected:
        ctx.selected[key] = select_on_val(ctx, model, key=key, local=local, lq=ctx.cfg.lq, lx=ctx.cfg.lx)
    return ctx.selected[key]


def _real_lengths(ctx: AMESContext, local: str, *, lq: int, lx: int) -> str:
    q = ctx.locals(local, "test", "queries")
    g = ctx.locals(local, "test", "gallery")
    mq = float(np.minimum(q.counts(np.arange(len(q))), lq).mean())
    mx = float(np.minimum(g.counts(np.arange(len(g))), lx).mean())
    return f"real mean L_q {mq:.0f}, L_x {mx:.0f}"


def _row(block: str, row: str, setting: str, local: str | None, metrics: dict[str, Any], **kw: Any) -> AMESRow:
    return AMESRow(block, row, setting, local, mAP_medium=metrics.get("mAP_medium"), mAP_hard=metrics.get("mAP_hard"),
                   metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))}, **kw)


# ---- rows -----------------------------------------------------------------------------------

def global_row(ctx: AMESContext) -> AMESRow:
    """The global search alone (exact inner product over float32 vectors)."""
    xq, xb = ctx.globals("test")
    metrics = evaluate_ranking(rank_features(xq, xb), ctx.test)
    return _row("quality", ROW_GLOBAL, f"{ctx.cfg.global_feature}, exact faiss search", None, metrics,
                bytes_per_image=float(4 * xb.shape[1]), notes=f"float32, d = {xb.shape[1]}")


def quality_row(ctx: AMESContext, *, local: str, variant: str) -> AMESRow:
    """+ AMES ``variant`` re-ranking the exact global top-m, λ/γ chosen on val."""
    c = ctx.cfg
    key = f"{local}-{variant}"
    res = train_variant(ctx, local=local, variant=variant)
    model = res.model
    lam, gamma = select_on_val(ctx, model, key=key, local=local, lq=c.lq, lx=c.lx)
    ctx.selected[key] = (lam, gamma)
    test, ms = rerank_split(ctx, model, key=key, local=local, part="test", lq=c.lq, lx=c.lx, lam=lam, gamma=gamma)
    xb_bytes = 4 * ctx.globals("test")[1].shape[1]
    per_desc = BINARY_DESCRIPTOR_BYTES if model.cfg.binary else FP16_TOKEN_BYTES
    history = tuple({k: h[k] for k in HISTORY_KEYS if k in h} for h in res.history)
    epochs = sum(1 for h in res.history if not h.get("start"))
    chosen = ("the matching start" if res.best_epoch == 0 else f"epoch {res.best_epoch}") + _gate_note(res.history)
    notes = (f"trained {res.runtime_s:.0f} s ({epochs} epochs; best val: {chosen}); {ms:.0f} ms/query; "
             f"{_real_lengths(ctx, local, lq=c.lq, lx=c.lx)}")
    return _row("quality", VARIANT_ROWS[variant], _settings(ctx)[variant], local, test.ames_metrics, lq=c.lq, lx=c.lx,
                bytes_per_image=float(image_bytes(global_bytes=xb_bytes, lx=c.lx, bytes_per_descriptor=per_desc)),
                ms_per_query=ms, lam=lam, gamma=gamma, notes=notes, history=history)


def _gate_note(history: list[dict[str, Any]]) -> str:
    """``", kept over epoch 15 (+4.15 +- 2.21 on val, z 1.88 < 2.73)"``: the highest-scoring val check the
    significance gate turned down, if any (see ``AMESTrainConfig.select_alpha``)."""
    refused = [h for h in history if h.get("val_gain_significant") is False]
    if not refused:
        return ""
    h = max(refused, key=lambda r: r["val_gain"])
    return (f", kept over epoch {h['epoch']} (+{h['val_gain']:.2f} ± {h['val_gain_stderr']:.2f} on val, "
            f"z {h['val_gain_z']:.2f} < {h['val_gain_z_min']:.2f})")


def mutual_nn_row(ctx: AMESContext, *, local: str) -> AMESRow:
    """The untrained baseline: mutual-nearest-neighbour counts of the float descriptors
    (:mod:`asymfuse.cloud.ames.mutual_nn`) re-rank the same global top-m, λ/γ chosen on val."""
    from asymfuse.cloud.ames.evaluate import evaluate_ames, select_ensemble
    from asymfuse.cloud.ames.mutual_nn import MutualNNScorer
    from asymfuse.cloud.ames.options import RerankOptions

    c = ctx.cfg

    def run(part: str, lam: float, gamma: float) -> Any:
        xq, xb = ctx.globals(part)
        return evaluate_ames(dataset=ctx.dataset(part), xq=xq, xb=xb, query_locals=ctx.locals(local, part, "queries"),
                             gallery=ctx.locals(local, part, "gallery"), scorer=MutualNNScorer(),
                             options=RerankOptions(top_m=c.top_m, lam=lam, gamma=gamma, lq=c.lq, lx=c.lx))

    val = run("val", 0.5, 1.0)
    lam, gamma, _ = select_ensemble(dataset=ctx.val, global_scores=val.global_scores, topm=val.topm,
                                    logits=val.logits, full_ranks=val.ranks)
    t0 = time.perf_counter()
    test = run("test", lam, gamma)
    ms = 1000.0 * (time.perf_counter() - t0) / max(1, ctx.test.nq)
    dim = ctx.locals(local, "test", "gallery").dim
    xb_bytes = 4 * ctx.globals("test")[1].shape[1]
    return _row("quality", ROW_MUTUAL_NN, f"mutual nearest neighbours, float descriptors, L_q = L_x = {c.lq}", local,
                test.ames_metrics, lq=c.lq, lx=c.lx, lam=float(lam), gamma=float(gamma), ms_per_query=ms,
                bytes_per_image=float(image_bytes(global_bytes=xb_bytes, lx=c.lx, bytes_per_descriptor=4 * dim)),
                notes="no training: logit = mutual-NN count / 4; the baseline a learned re-ranker must beat")


def pq_row(ctx: AMESContext) -> AMESRow:
    """The PQ global code alone (asymmetric distances, no re-ranking)."""
    xq, xb_hat = ctx.pq_globals("test")
    nbytes = pq_code_bytes(ctx.pq)
    metrics = evaluate_ranking(rank_features(xq, xb_hat), ctx.test)
    return _row("memory", f"PQ{ctx.cfg.pq_m}", f"{ctx.cfg.global_feature} PQ code only", None, metrics, lx=0,
                bytes_per_image=float(nbytes), bytes_mean=float(nbytes),
                notes=f"{ctx.cfg.pq_m} x {ctx.pq_nbits} bits, trained on {len(ctx.training_set)} train globals")


def memory_row(ctx: AMESContext, *, local: str, lx: int) -> AMESRow:
    """PQ global code + ``lx`` packed binary descriptors: bytes per image and mAP (λ/γ of the quality row)."""
    c = ctx.cfg
    variant, res = binary_model(ctx, local)
    key = f"{local}-{variant}"
    lam, gamma = quality_weights(ctx, res.model, key=key, local=local)
    test, ms = rerank_split(ctx, res.model, key=key, local=local, part="test", lq=c.lq, lx=lx, lam=lam, gamma=gamma,
                            globals_fn=ctx.pq_globals)
    nbytes = pq_code_bytes(ctx.pq)
    packed = gallery_of(ctx, res.model, key=key, local=local, part="test")
    counts = packed.counts(np.arange(len(packed)))
    return _row("memory", f"PQ{c.pq_m} + {lx}", f"PQ code + {lx} binary descriptors ({VARIANT_ROWS[variant]})",
                local, test.ames_metrics, lq=c.lq, lx=lx,
                bytes_per_image=float(image_bytes(global_bytes=nbytes, lx=lx)),
                bytes_mean=mean_image_bytes(global_bytes=nbytes, counts=counts, lx=lx), ms_per_query=ms, lam=lam,
                gamma=gamma, notes=f"L_q = {c.lq}; λ/γ of its quality row; {ms:.0f} ms/query")


def asymmetry_row(ctx: AMESContext, *, local: str, lq: int, lx: int) -> AMESRow:
    """``lq`` query against ``lx`` gallery descriptors, exact global search, the model's quality-row λ/γ."""
    variant, res = binary_model(ctx, local)
    key = f"{local}-{variant}"
    lam, gamma = quality_weights(ctx, res.model, key=key, local=local)
    test, ms = rerank_split(ctx, res.model, key=key, local=local, part="test", lq=lq, lx=lx, lam=lam, gamma=gamma)
    return _row("asymmetry", f"L_q={lq}, L_x={lx}", f"{VARIANT_ROWS[variant]}, λ/γ of its quality row", local,
                test.ames_metrics, lq=lq, lx=lx, ms_per_query=ms, lam=lam, gamma=gamma,
                notes=_real_lengths(ctx, local, lq=lq, lx=lx))


def latency_rows(ctx: AMESContext, *, local: str) -> list[AMESRow]:
    """Fast vs reference path re-ranking the global top-100 of one test query, per thread count.

    The query is the first test query with at least ``lq`` descriptors (else the one with the
    most); the fast path scores the packed gallery, the reference path the float descriptors
    (which the binary model signs on the fly, so both see the same bits). Median of runs.
    """
    from asymfuse.cloud.ames.reference import reference_scores
    from asymfuse.cloud.ames.scorer import AMESScorer

    c = ctx.cfg
    variant, res = binary_model(ctx, local)
    model = res.model
    queries, gallery = ctx.locals(local, "test", "queries"), ctx.locals(local, "test", "gallery")
    qc = queries.counts(np.arange(len(queries)))
    qi = int(np.flatnonzero(qc >= c.lq)[0]) if (qc >= c.lq).any() else int(np.argmax(qc))
    xq, xb = ctx.globals("test")
    cand = rank_features(xq[qi:qi + 1], xb, k=min(100, xb.shape[0]))[:, 0]
    q_desc, q_pad = (torch.from_numpy(a[0]) for a in queries.descriptors([qi], length=c.lq))
    x_desc, x_pad = (torch.from_numpy(a) for a in gallery.descriptors(cand, length=c.lx))
    packed = gallery_of(ctx, model, key=f"{local}-{variant}", local=local, part="test")
    scorer = AMESScorer(model, device="cpu")

    def fast() -> np.ndarray:
        return scorer.score(q_desc.numpy(), q_pad.numpy(), packed, cand, lq=c.lq, lx=c.lx)

    def reference() -> np.ndarray:
        return reference_scores(model, q_desc, q_pad, x_desc, x_pad).numpy()

    rows = []
    real = f"query {qi} ({min(int(qc[qi]), c.lq)} descriptors), {len(cand)} candidates"
    for threads in c.latency_threads:
        (ms_fast, out_fast), (ms_ref, out_ref) = (_timed(fn, threads=threads, runs=c.latency_runs)
                                                  for fn in (fast, reference))
        diff = float(np.abs(np.asarray(out_fast) - np.asarray(out_ref)).max())
        common = dict(local_feature=local, lq=c.lq, lx=c.lx, threads=threads)
        rows += [AMESRow("latency", ROW_FAST, f"AMESScorer, packed gallery ({VARIANT_ROWS[variant]})",
                         ms_per_query=ms_fast, notes=f"{real}; max abs logit difference to the reference "
                         f"{diff:.1e}; median of {c.latency_runs}", **common),
                 AMESRow("latency", ROW_REFERENCE, "reference_scores, one pair at a time", ms_per_query=ms_ref,
                         notes=f"median of {c.latency_runs}", **common)]
    return rows


def _timed(fn: Callable[[], Any], *, threads: int, runs: int) -> tuple[float, Any]:
    """Median wall ms of ``runs`` calls after one warm-up, at ``threads`` torch threads (restored after)."""
    if runs < 1:
        raise ConfigError(f"runs must be >= 1, got {runs}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = fn()
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            times.append(1000.0 * (time.perf_counter() - t0))
    finally:
        torch.set_num_threads(before)
    return statistics.median(times), out


def with_runtime(row: AMESRow, seconds: float) -> AMESRow:
    """``row`` with ``runtime_s`` set (kept when already set)."""
    return row if row.runtime_s is not None else replace(row, runtime_s=seconds)
