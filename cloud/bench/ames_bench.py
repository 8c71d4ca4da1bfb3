"""``asymfuse bench ames``: AMES re-ranking in miniature, on the embedded benchmark (PAPERS.md §3).

Protocol (fixed before looking at any result): AMES models train on the benchmark's train split;
the ensemble weights lambda/gamma of each model are chosen on the val split (grid search at the
quality-row setting; the memory and asymmetry rows reuse them); test-split revisitop mAP
Medium/Hard is reported. The global search is one global feature (``gem_lite2``, the best single
one of ``bench aff``) with an exact faiss index; AMES re-scores its top ``top_m`` = 100. Blocks:

- quality: global alone; + AMES fp / binary / universal (random lengths) / distilled (binary
  student with ``lq``/``lx`` descriptors, the fp row's model as teacher with ``teacher_l``), per
  local feature (``local_lite2``: Lite2 map cells, 120-d; ``sift``: 128-d);
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from asymfuse.cloud.bench.ames_prep import AMESContext, prepare
from asymfuse.cloud.bench.ames_report import (
    BLOCKS,
    ROW_FAST,
    ROW_GLOBAL,
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
    pq_row,
    quality_row,
    with_runtime,
)
from asymfuse.cloud.data.benchmark import BenchmarkConfig
from asymfuse.cloud.train.ames_config import AMESTrainConfig
from asymfuse.edge.errors import ConfigError, unknown_name

LOG = logging.getLogger("asymfuse.bench.ames")

VARIANTS = ("fp", "binary", "universal", "distilled")
# ---- tier constants (timed on 2 shared CPU cores; see the report's timing lines) --------------
# Training recipe chosen on the TRAIN loss (fp, local_lite2, L = 32, 144 steps): with negatives drawn
# from the global top-20 (the trainer's default) the loss stayed at chance (0.693) at lr 2e-4, 5e-4
# and 1e-3; drawing them from the global top-100 (= top_m, the candidates the re-ranker really sees)
# at lr 5e-4 brought it to 0.67. A few hundred steps is all 2 CPU cores allow per model.
# (hard_negatives_k follows top_m, see AMESBenchConfig.train_config.)
TRAIN_BASE: dict[str, Any] = {"batch_size": 32, "lr": 5e-4, "warmup_steps": 10, "log_every": 5}
QUICK: dict[str, Any] = {"local_features": ("sift",), "variants": ("fp", "binary"), "lq": 48, "lx": 48,
                         "epochs": 5, "latency_runs": 3}
DEFAULT: dict[str, Any] = {"local_features": ("local_lite2", "sift"), "variants": VARIANTS, "lq": 64, "lx": 64,
                           "epochs": 16, "teacher_l": 128, "universal": (10, 128), "latency_runs": 5}
TIERS = {"default": DEFAULT, "quick": QUICK}


@dataclass(frozen=True)
class AMESBenchConfig:
    """One bench run. Build it with :meth:`preset` (``"default"`` or ``"quick"``).

    Attributes:
        tier: the preset it came from (recorded in the report).
        global_feature: the global feature of the search (and of hard-negative mining).
        local_features: AMES's local descriptors; the first one also runs the memory, asymmetry
            and latency blocks.
        variants: the AMES rows of the quality block (subset of :data:`VARIANTS`, in that order).
        blocks: which blocks run (subset of :data:`~asymfuse.cloud.bench.ames_report.BLOCKS`).
        top_m: global shortlist re-ranked by AMES.
        lq, lx: descriptors per query / gallery image of the quality rows (and of training).
        teacher_l: descriptors per image the distillation teacher sees (both sides).
        universal: ``(lo, hi)``: the universal model draws L_q, L_x per batch from ``[lo, hi)``.
        epochs: training epochs of every AMES run.
        max_local, local_max_side: local extraction (slots per image; ``local_lite2`` input side).
        memory_lx, pq_m, pq_nbits: the memory block (L_x values; PQ sub-quantisers and bits each).
        asym_lq, asym_lx: the asymmetry block's grid.
        latency_threads, latency_runs: the latency block (torch threads; timed runs per path).
        train: training overrides (:class:`AMESTrainConfig` keys) on top of the bench's base.
        benchmark: the embedded benchmark to build (or reuse) under ``out_dir/benchmark``.
        features_dir: the feature cache ('' = ``out_dir/features``).
        device, progress: training/extraction device; progress bars.
    """

    tier: str = "default"
    global_feature: str = "gem_lite2"
    local_features: tuple[str, ...] = DEFAULT["local_features"]
    variants: tuple[str, ...] = VARIANTS
    blocks: tuple[str, ...] = BLOCKS
    top_m: int = 100
    lq: int = DEFAULT["lq"]
    lx: int = DEFAULT["lx"]
    teacher_l: int = DEFAULT["teacher_l"]
    universal: tuple[int, int] = DEFAULT["universal"]
    epochs: int = DEFAULT["epochs"]
    max_local: int = 600
    local_max_side: int = 512
    memory_lx: tuple[int, ...] = (48, 112, 176)
    pq_m: int = 8
    pq_nbits: int = 8
    asym_lq: tuple[int, ...] = (50, 600)
    asym_lx: tuple[int, ...] = (50, 100)
    latency_threads: tuple[int, ...] = (1, 2)
    latency_runs: int = DEFAULT["latency_runs"]
    train: tuple[tuple[str, Any], ...] = ()
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    features_dir: str = ""
    device: str = "cpu"
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("local_features", "variants", "blocks", "memory_lx", "asym_lq", "asym_lx", "latency_threads",
                     "universal"):
            value = getattr(self, name)
            object.__setattr__(self, name, (value,) if isinstance(value, (str, int)) else tuple(value))
        object.__setattr__(self, "train", tuple((str(k), v) for k, v in dict(self.train).items()))
        if self.tier not in TIERS:
            raise unknown_name("bench tier", self.tier, list(TIERS))
        for name, allowed in (("variants", VARIANTS), ("blocks", BLOCKS)):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad:
                raise ConfigError(f"{name} {bad} are unknown; choose from {list(allowed)}")
        object.__setattr__(self, "variants", tuple(v for v in VARIANTS if v in self.variants))
        object.__setattr__(self, "blocks", tuple(b for b in BLOCKS if b in self.blocks))
        if not self.local_features:
            raise ConfigError("the bench needs at least one local feature (e.g. local_features=['sift'])")
        if "distilled" in self.variants and "fp" not in self.variants:
            raise ConfigError("the distilled row needs the fp row (its model is the teacher); add 'fp' to variants")
        ints = ("top_m", "lq", "lx", "teacher_l", "epochs", "max_local", "local_max_side", "pq_m", "pq_nbits",
                "latency_runs")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        for name in ("memory_lx", "asym_lq", "asym_lx", "latency_threads"):
            bad = [v for v in getattr(self, name) if isinstance(v, bool) or not isinstance(v, int) or v < 1]
            if bad or not getattr(self, name):
                raise ConfigError(f"{name} must be a non-empty list of positive ints, got {list(getattr(self, name))}")
        longest = max(self.lq, self.lx, self.teacher_l, self.universal[1] - 1, *self.memory_lx, *self.asym_lq,
                      *self.asym_lx)
        if longest > self.max_local:
            raise ConfigError(f"lengths up to {longest} need max_local >= {longest}, got {self.max_local}")
        self.train_config(data_root="x", features_dir="x", local_feature=self.local_features[0])  # validates

    @classmethod
    def preset(cls, tier: str, **changes: Any) -> AMESBenchConfig:
        """The ``"default"`` or ``"quick"`` tier, with optional field ``changes``.

        Raises:
            UnknownNameError: an unknown tier. ConfigError: a bad change.
        """
        if tier not in TIERS:
            raise unknown_name("bench tier", tier, list(TIERS))
        return cls(**{"tier": tier, **TIERS[tier], **changes})

    def with_overrides(self, values: Mapping[str, Any]) -> AMESBenchConfig:
        """A copy with ``key=value`` overrides: bench fields by name, anything else an AMESTrainConfig field.

        Raises:
            ConfigError: an unknown key (the message lists the valid ones) or a bad value.
        """
        bench_keys = {f.name for f in fields(self)} - {"tier", "train", "benchmark"}
        train_keys = {f.name for f in fields(AMESTrainConfig)} - set(_BENCH_OWNED)
        unknown = sorted(set(values) - bench_keys - train_keys)
        if unknown:
            raise ConfigError(f"unknown bench setting(s) {unknown}; bench keys: {sorted(bench_keys)}; "
                              f"training keys: {sorted(train_keys)}")
        train = {**dict(self.train), **{k: v for k, v in values.items() if k in train_keys and k not in bench_keys}}
        return replace(self, train=tuple(train.items()), **{k: v for k, v in values.items() if k in bench_keys})

    def train_config(self, *, data_root: str, features_dir: str, local_feature: str,
                     variant: str = "fp", teacher: str = "") -> AMESTrainConfig:
        """The :class:`AMESTrainConfig` of one quality row (``variant`` of :data:`VARIANTS`).

        The trainer runs no validation of its own (``val=''``): the bench chooses lambda/gamma on
        val itself.

        Raises:
            ConfigError: a bad override or variant.
        """
        if variant not in VARIANTS:
            raise unknown_name("AMES variant", variant, list(VARIANTS))
        values: dict[str, Any] = {
            **TRAIN_BASE, "hard_negatives_k": self.top_m, "data_source": "benchmark", "data_root": data_root,
            "features_dir": features_dir,
            "local_feature": local_feature, "global_feature": self.global_feature, "val": "", "lq": self.lq,
            "lx": self.lx, "epochs": self.epochs, "top_m": self.top_m, "device": self.device,
            "progress": self.progress, **dict(self.train)}
        values["binary"] = variant != "fp"
        if variant == "universal":
            values["universal"] = list(self.universal)
        if variant == "distilled":
            values.update(distill_teacher=teacher or "teacher.pt", teacher_lq=self.teacher_l,
                          teacher_lx=self.teacher_l)
        return AMESTrainConfig().replace(**values)


# Training keys the bench sets itself (per row or from its own fields).
_BENCH_OWNED = ("data_source", "data_root", "features_dir", "local_feature", "global_feature", "val", "lq", "lx",
                "epochs", "top_m", "device", "progress", "binary", "universal", "distill_teacher", "teacher_lq",
                "teacher_lx")


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


