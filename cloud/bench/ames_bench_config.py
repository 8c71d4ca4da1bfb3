"""The configuration of ``asymfuse bench ames``: tiers, training recipe and :class:`AMESBenchConfig`.

Kept apart from :mod:`asymfuse.cloud.bench.ames_bench` so that the data preparation
(:mod:`asymfuse.cloud.bench.ames_prep`) reads it without importing the bench that calls it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from asymfuse.cloud.bench.ames_report import (
    BLOCKS,
)
from asymfuse.cloud.data.benchmark import BenchmarkConfig
from asymfuse.cloud.train.ames_config import AMESTrainConfig
from asymfuse.edge.errors import ConfigError, unknown_name

VARIANTS = ("fp", "binary", "universal", "distilled")
# ---- tier constants (timed on 2 shared CPU cores; see the report's timing lines) --------------
# Training recipe chosen on the TRAIN loss (fp, local_lite2, L = 32, 144 steps): with negatives drawn
# from the global top-20 (the trainer's default) the loss stayed at chance (0.693) at lr 2e-4, 5e-4
# and 1e-3; drawing them from the global top-100 (= top_m, the candidates the re-ranker really sees)
# at lr 5e-4 brought it to 0.67. A few hundred steps is all 2 CPU cores allow per model.
# (hard_negatives_k follows top_m, see AMESBenchConfig.train_config.)
# start "match": the matching start (cloud/ames/match_init.py); with val "val" it is validated as epoch 0
# and the best val epoch (the start included) is the row's model
TRAIN_BASE: dict[str, Any] = {"batch_size": 32, "lr": 5e-4, "warmup_steps": 10, "log_every": 5, "start": "match",
                              "val": "val"}
# quick: 2 epochs (was 5): on these 2 CPU cores no epoch of 5 beat the matching start on val (fp 46.9 ->
# 44.1, binary 52.95 -> 50.8), so the rows were the start's; 2 epochs still train and validate each model
QUICK: dict[str, Any] = {"local_features": ("sift",), "variants": ("fp", "binary"), "lq": 48, "lx": 48,
                         "epochs": 2, "latency_runs": 3}
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

        The trainer validates each epoch and the matching start (``val='val'``) and keeps the best
        val epoch; the bench then chooses lambda/gamma on val itself at each row's setting.

        Raises:
            ConfigError: a bad override or variant.
        """
        if variant not in VARIANTS:
            raise unknown_name("AMES variant", variant, list(VARIANTS))
        values: dict[str, Any] = {
            **TRAIN_BASE, "hard_negatives_k": self.top_m, "data_source": "benchmark", "data_root": data_root,
            "features_dir": features_dir,
            "local_feature": local_feature, "global_feature": self.global_feature, "lq": self.lq,
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
