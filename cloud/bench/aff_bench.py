"""``asymfuse bench aff``: the AFF paper's ablations in miniature, on the embedded benchmark.

Protocol (fixed before looking at any result): train on the benchmark's train split, select on
its val split (best epoch of every run; the "best single gallery" feature by val mAP Medium),
report test-split revisitop mAP Medium/Hard. Every trained row uses one base :class:`TrainConfig`
per tier (the constants below) and overrides only what the row is about. Blocks (PAPERS.md §2):

- symmetric: each single gallery feature on both sides (local ones mean-pooled), concatenation
  (PCA-whitened to d, fitted on train), MLP mixer, transformer mixer;
- robustness: the same gallery plus two synthetic noisy features
  (:mod:`asymfuse.cloud.bench.noise_features`): concatenation vs transformer mixer, whose start
  weighs each input by its class margin on the training images (``fusion_weighting = "margin"``);
- asymmetric: query net -> best single gallery with BCT / REG / LCE / CSD; query net -> mixer
  trained jointly with alpha = 0 and alpha = 0.99, and two-stage;
- query archs: the joint setting for each query net, with its GFLOPs at the training resolution,
  asymmetric and symmetric (the same query net on both sides).

Rows run one after the other; a failing row is reported as ``failed: <reason>`` and the bench goes
on. Output in ``out_dir``: ``benchmark/``, ``features/`` (reused by later runs; or the cache named
by ``features_dir``), ``runs/<row>/``
(one training run each), and the report files of :mod:`asymfuse.cloud.bench.aff_report`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from asymfuse.cloud.bench.aff_report import (
    ROW_CONCAT,
    ROW_JOINT,
    ROW_JOINT_ALPHA0,
    ROW_MLP,
    ROW_SINGLE_START,
    ROW_TRANSFORMER,
    ROW_TWO_STAGE,
    START_SUFFIX,
    BenchRow,
    render_markdown,
    write_report,
)
from asymfuse.cloud.bench.aff_rows import (
    BenchContext,
    RowOutcome,
    concat_symmetric,
    fused_asymmetric,
    fused_asymmetric_start,
    mixer_symmetric,
    mixer_symmetric_start,
    query_symmetric,
    single_feature,
    single_gallery_asymmetric,
    single_gallery_start,
)
from asymfuse.cloud.bench.aff_bench_config import BUNDLED_WEIGHTS, AFFBenchConfig
from asymfuse.cloud.bench.noise_features import NOISE_FEATURES, write_noise_features
from asymfuse.cloud.train.aff_config import TrainConfig
from asymfuse.edge.errors import ConfigError

LOG = logging.getLogger("asymfuse.bench.aff")

GALLERY_TRUNKS = {"gem_lite1": "efficientnet_lite1", "gem_lite2": "efficientnet_lite2"}  # for gallery GFLOPs


def run_aff_bench(cfg: AFFBenchConfig, *, out_dir: str | Path) -> dict[str, Any]:
    """Run the bench; write the report into ``out_dir``.

    Returns:
        ``{"rows": [BenchRow], "runtime_s", "timing_s": {...}, "paths": {report files},
        "markdown": the report text, "best_single": the feature chosen on val}``.

    Raises:
        ConfigError, CorruptDataError, UnknownNameError: the preparation failed (benchmark, data
            or gallery features); failures of single rows are reported in the table instead.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = _prepare(cfg, out)
    t_prep = time.perf_counter() - t0
    best = _best_single(ctx) if "asymmetric" in cfg.blocks else None
    rows = [_run_row(*item) for item in _plan(cfg, ctx, best)]
    runtime = time.perf_counter() - t0
    info = _info(cfg, ctx, best=best, t_prep=t_prep, runtime=runtime)
    title = f"asymfuse bench aff ({cfg.tier} tier): AFF ablations in miniature"
    paths = write_report(rows, out_dir=out, title=title, runtime_s=runtime, info=info)
    return {"rows": rows, "runtime_s": runtime, "timing_s": {"prepare": t_prep, "total": runtime},
            "paths": paths, "best_single": best,
            "markdown": render_markdown(rows, title=title, runtime_s=runtime, info=info)}


def _prepare(cfg: AFFBenchConfig, out: Path) -> BenchContext:
    """Benchmark, datasets, gallery features of train/val/test, noise stores; the shared context."""
    from asymfuse.cloud.data.benchmark import build_benchmark, dataset_name
    from asymfuse.cloud.data.revisitop import load_revisitop
    from asymfuse.cloud.train.aff_data import load_training_set
    from asymfuse.cloud.train.feature_cache import ensure_dataset_features, ensure_training_features

    bench = build_benchmark(out / "benchmark", config=cfg.benchmark)
    splits = {p: load_revisitop(bench.split(p).root, name=dataset_name(bench.config.name, p)) for p in ("val", "test")}
    training_set = load_training_set("benchmark", bench.root)
    feats = Path(cfg.features_dir) if cfg.features_dir else out / "features"
    base = cfg.train.replace(data_source="benchmark", data_root=str(bench.root), val_root="",
                             features_dir=str(feats), device=cfg.device, progress=cfg.progress)
    for name in base.gallery_features:
        LOG.info("gallery feature %s: train, val and test stores", name)
        ensure_training_features(name, training_set, features_dir=feats, device=cfg.device, progress=cfg.progress)
        for part, ds in splits.items():
            ensure_dataset_features(name, ds, features_dir=feats, part=part, device=cfg.device,
                                    progress=cfg.progress)
    if "robustness" in cfg.blocks:  # the synthetic features of every image, the start's crop views included
        write_noise_features(features_dir=feats, training_set=training_set, datasets=splits, cfg=cfg.noise,
                             image_sets=_start_views(base, training_set))
    return BenchContext(base=base, out=out, training_set=training_set, val=splits["val"], test=splits["test"],
                        device=cfg.device)


def _start_views(base: TrainConfig, training_set: Any) -> dict[str, Any]:
    """``{cache part: crop views}`` the trainer's closed-form starts read (none without start views)."""
    from asymfuse.cloud.train.start_views import crop_views, views_part

    if base.start_views < 1:
        return {}
    part = views_part(views=base.start_views, seed=base.seed, crop_scale_min=base.crop_scale_min)
    return {part: crop_views(training_set, features_dir=base.features_dir, views=base.start_views, seed=base.seed,
                             crop_scale_min=base.crop_scale_min)}


def _kind(ctx: BenchContext, name: str) -> str:
    from asymfuse.cloud.features.store import FeatureStore
    from asymfuse.cloud.features.layout import store_path

    with FeatureStore.open(store_path(ctx.features_dir, name, "train"), verify="none") as store:
        return store.kind


def _best_single(ctx: BenchContext) -> str:
    """The global gallery feature with the best VAL ``select_metric`` (symmetric); never test.

    Raises:
        ConfigError: no global feature among ``gallery_features``.
    """
    metric = ctx.base.select_metric
    scores = {name: single_feature(ctx, name, part="val").metrics[metric]
              for name in ctx.base.gallery_features if _kind(ctx, name) == "global"}
    if not scores:
        raise ConfigError(f"the asymmetric block needs a global feature among {list(ctx.base.gallery_features)}")
    LOG.info("val %s of the single global features: %s", metric, scores)
    return max(scores, key=lambda k: scores[k])


PlanItem = tuple[str, str, str, Callable[[], RowOutcome], dict[str, Any]]


def _plan(cfg: AFFBenchConfig, ctx: BenchContext, best: str | None) -> list[PlanItem]:
    """Every row as (block, row, setting, thunk, extra BenchRow fields), in table order."""
    feats = tuple(ctx.base.gallery_features)
    kinds = {name: _kind(ctx, name) for name in feats}
    noisy = (tuple(n for n in feats if kinds[n] == "global") + NOISE_FEATURES  # schema order: globals first
             + tuple(n for n in feats if kinds[n] != "global"))
    plan: list[PlanItem] = []
    if "symmetric" in cfg.blocks:
        side = cfg.benchmark.image_max_side
        for name in feats:
            gflops = _gallery_gflops(name, side)
            plan.append(("symmetric", name, "single gallery feature, both sides",
                         lambda n=name, f=gflops: _with_note(single_feature(ctx, n), None if f is None else
                                                             f"gallery GFLOPs at {side}x{side}"),
                         {"gflops": gflops, "mode": "gallery" if gflops is not None else None}))
        plan += [("symmetric", ROW_CONCAT, "concatenation + PCA-whitening", lambda: concat_symmetric(ctx, feats), {}),
                 ("symmetric", ROW_MLP, "MLP mixer, mixer only",
                  lambda: mixer_symmetric(ctx, "sym-mlp", mixer="mlp", features=feats), {}),
                 ("symmetric", ROW_TRANSFORMER + START_SUFFIX, "transformer mixer, its closed-form start",
                  lambda: mixer_symmetric_start(ctx, "sym-transformer", mixer="transformer", features=feats), {}),
                 ("symmetric", ROW_TRANSFORMER, "transformer mixer, mixer only",
                  lambda: mixer_symmetric(ctx, "sym-transformer", mixer="transformer", features=feats), {})]
    if "robustness" in cfg.blocks:
        # the mixer's start weighs each input by its class margin on the training images, so it can
        # learn to ignore an input that says nothing about the class (the claim of this block)
        robust = {"mixer": "transformer", "features": noisy, "fusion_weighting": "margin"}
        plan += [("robustness", ROW_CONCAT, "+ Gaussian noise + weak projection, concatenation",
                  lambda: concat_symmetric(ctx, noisy), {}),
                 ("robustness", ROW_TRANSFORMER + START_SUFFIX, "+ Gaussian noise + weak projection, transformer "
                  "mixer, its closed-form start (class-margin input weights)",
                  lambda: mixer_symmetric_start(ctx, "rob-transformer", **robust), {}),
                 ("robustness", ROW_TRANSFORMER, "+ Gaussian noise + weak projection, transformer mixer "
                  "(class-margin input weights at the start)",
                  lambda: mixer_symmetric(ctx, "rob-transformer", **robust), {})]
    arch = ctx.base.query_arch
    if "asymmetric" in cfg.blocks and best is not None:
        if cfg.baselines:
            first = cfg.baselines[0]
            plan.append(("asymmetric", ROW_SINGLE_START, f"{arch} → {best}, the closed-form start of every baseline",
                         lambda: single_gallery_start(ctx, scheme=first, feature=best), {}))
        for scheme in cfg.baselines:
            plan.append(("asymmetric", scheme, f"{arch} → {best} (best single on val), {scheme.upper()}",
                         lambda s=scheme: single_gallery_asymmetric(ctx, scheme=s, feature=best), {}))
        for row, run, changes in _fused_rows():
            if row == ROW_JOINT:
                plan.append(("asymmetric", row + START_SUFFIX, f"{arch} → transformer mixer, their closed-form start",
                             lambda r=run, c=changes: fused_asymmetric_start(ctx, r, **c), {}))
            plan.append(("asymmetric", row, f"{arch} → transformer mixer, {row}",
                         lambda r=run, c=changes: fused_asymmetric(ctx, r, **c), {}))
    if "query archs" in cfg.blocks:
        for name in cfg.query_archs:
            plan += _arch_items(ctx, name)
    return plan


def _fused_rows() -> list[tuple[str, str, dict[str, Any]]]:
    return [(ROW_JOINT_ALPHA0, "asym-joint-alpha0", {"scheme": "joint", "alpha": 0.0}),
            (ROW_JOINT, "asym-joint", {"scheme": "joint"}),
            (ROW_TWO_STAGE, "asym-two-stage", {"scheme": "two_stage"})]


def _arch_items(ctx: BenchContext, arch: str) -> list[PlanItem]:
    base = ctx.base
    pretrained = base.query_pretrained and arch in BUNDLED_WEIGHTS
    changes = {"scheme": "joint", "query_arch": arch, "query_pretrained": pretrained}
    if not pretrained:  # a random trunk must train: no frozen trunk, no cached trunk rows
        changes.update(query_trunk_lr_mult=1.0, query_inputs="images")
    run = "asym-joint" if arch == base.query_arch else f"arch-{arch}"
    note = "" if pretrained or not base.query_pretrained else "random init (no bundled ImageNet weights)"
    try:
        from asymfuse.cloud.models.flops import query_net_cost

        cost: dict[str, Any] = query_net_cost(arch, size=base.input_size, embed_dim=base.embed_dim)
    except Exception as exc:  # the cost is informative only; the rows still run
        LOG.warning("GFLOPs of %s unavailable: %s", arch, exc)
        cost = {"gflops": None, "params_m": None}
    extra = {"gflops": cost["gflops"], "params_m": cost["params_m"], "query_arch": arch}

    return [("query archs", arch, f"joint, asymmetric (query net → mixer), {base.input_size}px",
             lambda: _with_note(fused_asymmetric(ctx, run, **changes), note), {**extra, "mode": "asymmetric"}),
            ("query archs", arch, f"joint, symmetric (query net on both sides), {base.input_size}px",
             lambda: _with_note(query_symmetric(ctx, run, **changes), note), {**extra, "mode": "symmetric"})]


def _with_note(outcome: RowOutcome, note: str | None) -> RowOutcome:
    return replace(outcome, notes="; ".join(x for x in (outcome.notes, note) if x))


def _gallery_gflops(name: str, side: int) -> float | None:
    """GFLOPs of a gallery model's trunk on a ``side x side`` image, when it is known."""
    trunk_name = GALLERY_TRUNKS.get(name)
    if trunk_name is None:
        return None
    from asymfuse.cloud.models.backbones import create_trunk
    from asymfuse.cloud.models.flops import count_flops

    return count_flops(create_trunk(trunk_name, pretrained=False, image_size=side), input_size=side) / 1e9


def _run_row(block: str, row: str, setting: str, thunk: Callable[[], RowOutcome], extra: dict[str, Any]) -> BenchRow:
    """Run one row, timing it; any exception becomes a ``failed: <reason>`` row."""
    LOG.info("bench row %s / %s: %s", block, row, setting)
    t0 = time.perf_counter()
    try:
        outcome = thunk()
    except Exception as exc:  # a failed row is reported, the bench goes on
        LOG.exception("bench row %s / %s failed", block, row)
        reason = " ".join(f"{type(exc).__name__}: {exc}".replace("|", "/").split())[:300]
        return BenchRow(block, row, setting, status=f"failed: {reason}",
                        runtime_s=time.perf_counter() - t0, **extra)
    m = outcome.metrics
    return BenchRow(block, row, setting, mAP_medium=m.get("mAP_medium"), mAP_hard=m.get("mAP_hard"),
                    notes=outcome.notes, runtime_s=time.perf_counter() - t0, history=outcome.history,
                    metrics=dict(m), **extra)


def _info(cfg: AFFBenchConfig, ctx: BenchContext, *, best: str | None, t_prep: float, runtime: float) -> dict[str, Any]:
    test, val = ctx.test, ctx.val
    description = (
        f"Embedded benchmark `{test.name}`: train {len(ctx.training_set)} images "
        f"({ctx.training_set.num_classes} classes), val {val.nq} queries / {val.nb} gallery, test {test.nq} "
        f"queries / {test.nb} gallery. Trained on train, selected on val (best epoch; best single gallery "
        f"feature = {best or 'n/a'}), reported on test (revisitop mAP %, bbx-cropped queries). Base config: "
        f"{ctx.base.epochs} epochs, {ctx.base.input_size}px, d={ctx.base.embed_dim}, batch {ctx.base.batch_size}, "
        f"query net {ctx.base.query_arch}. GFLOPs = 2 x multiply-adds per image. Preparation "
        f"(benchmark + features) {t_prep:.1f} s; total {runtime:.1f} s.")
    return {"tier": cfg.tier, "description": description, "best_single": best,
            "dataset": {"name": test.name, "test_queries": test.nq, "test_gallery": test.nb,
                        "val_queries": val.nq, "val_gallery": val.nb, "train_images": len(ctx.training_set)},
            "base_config": ctx.base.to_dict(), "query_archs": list(cfg.query_archs), "blocks": list(cfg.blocks),
            "device": cfg.device, "timing_s": {"prepare": round(t_prep, 1), "total": round(runtime, 1)}}
