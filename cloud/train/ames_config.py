"""``AMESTrainConfig``: everything one AMES training run needs, as one frozen, validated record.

Defaults follow the AMES paper where it applies at our scale: BCE on pairs with hard negatives
from the global kNN, AdamW at lr 2e-4 with weight decay 5e-4, a cosine schedule (after a short
linear warm-up), distillation weight beta = 10, and the published architecture (model dim 128,
2 heads, 5 layers, FFN 1024). YAML/CLI overrides are parsed in ``cloud/cli`` only;
:func:`config_from_dict` rejects unknown keys.

Variants:

- fixed lengths: every pair uses the top ``lq`` query and top ``lx`` gallery descriptors;
- ``universal = (lo, hi)``: ``L_q`` and ``L_x`` are drawn per batch from ``[lo, hi)`` (paper:
  ``(10, 400)``); ``lq``/``lx`` are then the lengths of the per-epoch validation;
- ``binary``: the gallery side is 1 bit per projected dimension, ``W`` initialised by ITQ;
- ``distill_teacher``: a frozen full-precision AMES checkpoint seeing ``teacher_lq`` /
  ``teacher_lx`` descriptors teaches the student (normally binary, with few descriptors).

Data: the labelled training images of ``data_source`` (as in the AFF trainer; the default is the
embedded benchmark's train split), their ``local_feature`` store from the feature cache, and a
global store to mine hard negatives from: ``global_store`` (a path to any global store keyed by
the training ids, e.g. an AFF-fused one written by ``asymfuse index fuse``) or else the
``global_feature`` cache entry. Validation (best epoch, then the lambda/gamma grid search) runs on
the ``val`` split with the ``local_feature`` and ``val_global_feature`` cache entries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from asymfuse.cloud.ames.model import ACTIVATIONS, AMESConfig
from asymfuse.cloud.train.schedule import SCHEDULES
from asymfuse.cloud.train.config_checks import build_config, check_choice, check_positive_int, checked_keys
from asymfuse.edge.errors import ConfigError

DATA_SOURCES = ("benchmark", "gldv2", "folder")
PRECISIONS = ("fp32", "bf16", "fp16")
SELECT_METRICS = ("mAP_medium", "mAP_hard", "mAP_easy")
STARTS = ("random", "match")


@dataclass(frozen=True)
class AMESTrainConfig:
    """One AMES training run. See the module docstring for the variants and data."""

    # data
    data_source: str = "benchmark"      # benchmark | gldv2 | folder (see aff_data.TRAINING_SOURCES)
    data_root: str = "runs/benchmark"
    features_dir: str = "runs/features" # <features_dir>/<feature>/<part>/<gallery|queries>
    local_feature: str = "local_lite2"
    global_feature: str = "gem_lite1"   # feature-cache entry mined for hard negatives
    global_store: str = ""              # path to a global store of the training ids (wins over global_feature)
    val: str = "val"                    # benchmark split / cache part for validation ('' = no validation)
    val_root: str = ""                  # a revisitop folder to validate on instead of the benchmark split
    val_global_feature: str = ""        # global feature of the val split ('' = global_feature)
    # model: the architecture defaults are AMESConfig's own, so the two cannot drift
    binary: bool = AMESConfig.binary
    model_dim: int = AMESConfig.model_dim
    heads: int = AMESConfig.heads
    layers: int = AMESConfig.layers
    ffn_dim: int = AMESConfig.ffn_dim
    activation: str = AMESConfig.activation
    # start: "random" (the published init) or "match" (cloud/ames/match_init.py: the untrained model
    # already scores a soft count of matched descriptors; training refines it)
    start: str = "random"
    match_sharpness: float = 50.0
    match_contrast: float = 0.05
    # Platt-scale the start's logit on training pairs before step 1 (BCE starts near its floor instead of ~2.4).
    # Off by default: on bench ames quick (SIFT, val-chosen λ/γ) the calibrated start re-ranked test to 73.99
    # mAP-M, the raw count to 77.26 (global 73.04); training kept val flat either way.
    match_calibrate: bool = False
    # descriptor counts
    lq: int = 64                        # query descriptors per pair (fixed training; validation)
    lx: int = 64                        # gallery descriptors per pair
    universal: tuple[int, ...] = ()     # (lo, hi): draw L_q, L_x per batch from [lo, hi); () = fixed
    # distillation
    distill_teacher: str = ""           # path to a full-precision AMES checkpoint ('' = off)
    teacher_lq: int = 256
    teacher_lx: int = 256
    beta: float = 10.0                  # weight of the token MSE
    # pairs
    # Size of the global kNN the negatives are drawn from. 100 = top_m: AMES learns to separate
    # exactly the shortlist it will re-rank (at 20 the embedded benchmark's runs stayed near chance).
    hard_negatives_k: int = 100
    train_views: int = 0                # random crops per training image added as training images (0 = none)
    pos_fraction: float = 0.5           # probability that an anchor's partner is a positive
    # optimisation
    epochs: int = 20
    batch_size: int = 32                # global batch of pairs (split across DDP ranks)
    lr: float = 2e-4
    weight_decay: float = 5e-4          # weight matrices only
    schedule: str = "cosine"
    warmup_steps: int = 20
    grad_clip: float = 0.0              # 0 = off
    # validation
    top_m: int = 100                    # global shortlist re-ranked by AMES
    val_every: int = 1
    select_metric: str = "mAP_medium"   # val metric (after re-ranking) that picks the best epoch
    # A val check replaces the best epoch (the matching start included) only if its per-query gain is
    # significant: a one-sided paired z-test on the val queries' APs, Bonferroni over the run's val
    # checks, so that noise alone replaces the best with probability <= select_alpha per run
    # (cloud/eval/significance.py). 0 = off: the highest val score wins. On bench ames's 15 val
    # queries one query's AP moves the mean by up to 1.5 points, and the best of 16 epochs beat the
    # start by 4.15 points (z = 1.88) on val while scoring 2.35 below it on test.
    select_alpha: float = 0.05
    # runtime
    device: str = "cpu"
    precision: str = "fp32"             # fp32 | bf16 | fp16 (fp16 uses a GradScaler, CUDA only)
    workers: int = 0
    seed: int = 0
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        check_choice("data_source", self.data_source, DATA_SOURCES)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("select_metric", self.select_metric, SELECT_METRICS)
        check_choice("start", self.start, STARTS)
        object.__setattr__(self, "universal", tuple(self.universal))
        for name in ("model_dim", "heads", "layers", "ffn_dim", "lq", "lx", "teacher_lq", "teacher_lx",
                     "hard_negatives_k", "epochs", "batch_size", "top_m", "val_every", "log_every"):
            check_positive_int(name, getattr(self, name))
        for name in ("warmup_steps", "workers", "seed", "train_views"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
        for name in ("binary", "progress", "match_calibrate"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not self.local_feature:
            raise ConfigError("local_feature must name a local feature store (e.g. 'local_lite2')")
        if not self.global_feature and not self.global_store:
            raise ConfigError("hard negatives need a global feature: set global_feature or global_store")
        if self.train_views and self.global_store:
            raise ConfigError("train_views needs the crops' global features, which a fixed global_store lacks; "
                              "set global_feature instead of global_store, or train_views=0")
        AMESConfig(local_dim=1, **self.model_kwargs())  # the architecture checks (heads, binary bits)
        self._check_universal()
        if not 0.0 <= self.pos_fraction <= 1.0:
            raise ConfigError(f"pos_fraction must lie in [0, 1], got {self.pos_fraction!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        if self.start == "match":
            self.match_start()  # its own checks (sharpness > 0, finite numbers)
        if (isinstance(self.select_alpha, bool) or not isinstance(self.select_alpha, (int, float))
                or not 0.0 <= self.select_alpha < 1.0):
            raise ConfigError(f"select_alpha must lie in [0, 1) (0 = keep the highest val score), "
                              f"got {self.select_alpha!r}")
        for name in ("weight_decay", "grad_clip", "beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise ConfigError("precision fp16 needs a CUDA device; use precision=bf16 on CPU")

    def _check_universal(self) -> None:
        u = self.universal
        if not u:
            return
        if (len(u) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in u)
                or not 1 <= u[0] < u[1]):
            raise ConfigError(f"universal must be () or two ints (lo, hi) with 1 <= lo < hi (lengths are drawn "
                              f"from [lo, hi); the paper uses [10, 400]), got {list(u)!r}")

    @property
    def distill(self) -> bool:
        """True when a teacher checkpoint is set."""
        return bool(self.distill_teacher)

    @property
    def max_length(self) -> int:
        """The most descriptors per image any pair of the run uses (student, teacher, validation)."""
        lengths = [self.lq, self.lx]
        if self.universal:
            lengths.append(self.universal[1] - 1)
        if self.distill:
            lengths += [self.teacher_lq, self.teacher_lx]
        return max(lengths)

    @property
    def val_global(self) -> str:
        """The global feature of the val split."""
        return self.val_global_feature or self.global_feature

    def match_start(self) -> Any:
        """The :class:`~asymfuse.cloud.ames.match_init.MatchStart` of ``start="match"``."""
        from asymfuse.cloud.ames.match_init import MatchStart

        return MatchStart(sharpness=self.match_sharpness, contrast=self.match_contrast)

    def model_kwargs(self) -> dict[str, Any]:
        """The architecture keywords of :func:`asymfuse.cloud.ames.model.create_ames`."""
        return {"binary": self.binary, "model_dim": self.model_dim, "heads": self.heads, "layers": self.layers,
                "ffn_dim": self.ffn_dim, "activation": self.activation}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["universal"] = list(self.universal)
        return d

    def replace(self, **changes: Any) -> AMESTrainConfig:
        """A copy with ``changes`` applied (validated; unknown keys raise ConfigError)."""
        return config_from_dict({**self.to_dict(), **changes})


# Fields that may change between an interrupted run and its resume without changing the batches.
RESUME_SAFE_FIELDS = ("epochs", "progress", "log_every", "workers", "device")


def config_from_dict(data: dict[str, Any]) -> AMESTrainConfig:
    """Build an AMESTrainConfig from plain data (YAML/JSON), rejecting unknown keys.

    ``universal`` may be a list ``[lo, hi]`` (as YAML gives it) or empty/None for fixed lengths.

    Raises:
        ConfigError: an unknown key (the message lists the valid ones) or an invalid value.
    """
    values = checked_keys(data, AMESTrainConfig, what="AMES training config", article="an")
    if "universal" in values:
        u = values["universal"]
        if u is None or u is False:
            values["universal"] = ()
        elif isinstance(u, (list, tuple)):
            values["universal"] = tuple(u)
        else:
            raise ConfigError(f"universal must be a list [lo, hi] or empty, got {u!r}")
    return build_config(AMESTrainConfig, values, what="AMES training config")
