"""``TrainConfig``: everything one AFF training run needs, as one frozen, validated record.

Defaults follow the AFF paper where it applies at our scale (SGD, weight decay 0.01, linear
decay, ArcFace s = 32, m = 0.3, momentum classifier alpha = 0.99, post-LN mixer with d_e = 2d).
YAML/CLI overrides are parsed in ``cloud/cli`` only; :func:`config_from_dict` rejects unknown keys.

Schemes:

- ``joint``: mixer + query net, loss = ArcFace(g_mix; psi_mix) + ArcFace(q; psi_q), psi_q = EMA(psi_mix).
- ``two_stage``: ``stage1_epochs`` of mixer-only training, then the query net against the frozen
  mixer and its frozen classifier.
- ``mixer_only``: the symmetric fused gallery model alone.
- ``bct`` / ``reg`` / ``lce`` / ``csd``: the query net against ONE frozen gallery feature
  (``gallery_features`` must name exactly one global feature; ``embed_dim`` is its dimension).
- ``symmetric``: the query net alone with its own ArcFace head (no gallery).

Closed-form starts (asymfuse's small-data recipe; the paper trains from random heads on 1.58M
images): ``mixer_start="pca"`` makes the transformer mixer start as the PCA-whitened
concatenation of its inputs and learn a correction on top (see
:mod:`asymfuse.cloud.models.mixers.transformer`); ``query_start="ridge"`` fits the query net's
whitening layer in closed form onto the gallery vectors of the training images and their crops
(:mod:`asymfuse.cloud.train.query_start`). Every scheme with a gallery target gets the same start,
so the baselines stay comparable. With a val split the start itself is validated as "epoch 0"
and kept when no trained epoch beats it on val.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from asymfuse.cloud.train.config_checks import build_config, check_choice, check_positive_int, checked_keys
from asymfuse.edge.errors import ConfigError

SCHEMES = ("joint", "two_stage", "mixer_only", "bct", "reg", "lce", "csd", "symmetric")
MIXER_SCHEMES = ("joint", "two_stage", "mixer_only")
SINGLE_GALLERY_SCHEMES = ("bct", "reg", "lce", "csd")
QUERY_SCHEMES = ("joint", "two_stage", "bct", "reg", "lce", "csd", "symmetric")
DATA_SOURCES = ("benchmark", "gldv2", "folder")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("linear", "cosine", "constant")
MIXER_STARTS = ("random", "pca")
QUERY_STARTS = ("random", "ridge")
FUSION_WEIGHTINGS = ("fixed", "margin")
QUERY_INPUTS = ("images", "cached")
BN_MODES = ("train", "frozen")


@dataclass(frozen=True)
class TrainConfig:
    """One AFF training run. See the module docstring for the schemes."""

    # what to train
    scheme: str = "joint"
    mixer: str = "transformer"          # transformer | mlp | concat
    embed_dim: int = 512                # d, the fused/query embedding size
    mixer_layers: int = 4               # C
    mixer_heads: int = 8
    mixer_mlp_ratio: float = 2.0        # d_e = ratio * d
    gallery_features: tuple[str, ...] = ("gem_lite1", "gem_lite2", "local_lite2")
    local_tokens: int = 64              # top-weighted local descriptors per image the mixer sees
    mixer_start: str = "pca"            # random (paper) | pca: start as the PCA-whitened concat
    start_views: int = 2                # crops per training image with gallery features, for the starts
    fusion_weights: tuple[tuple[str, float], ...] = ()  # (feature, weight) pairs: its share of the PCA start
                                        # (an unlisted feature weighs 1; a listed one not in gallery_features is unused)
    fusion_weighting: str = "fixed"     # fixed: fusion_weights as given | margin: each input's weight also
                                        # scaled by its class margin on the training images (train/fusion_weighting.py)
    start_shrink: float = 0.0           # shrinkage of the start's whitening (0 = full whitening)
                                        # (both shape the PCA start: unused by mlp or a random start, like the
                                        # other start options, so one tier config serves every mixer row)
    query_arch: str = "efficientnet_lite0"
    query_pooling: str = "gem_l2"       # gem (paper) | gem_l2: GeM, L2 | gem_sqrt_l2: GeM, sqrt, L2 (before the head)
    query_start: str = "ridge"          # random (paper) | ridge: whitening fitted onto the gallery targets
    query_start_ridge: float = 10.0     # ridge: regulariser relative to the mean feature energy
    query_pretrained: bool = True
    query_trunk_lr_mult: float = 1.0    # lr multiplier of the query trunk; 0 freezes it (with its BatchNorm
                                        # statistics): only GeM p and the whitening head train
    query_inputs: str = "images"        # images: augmented crops through the trunk every step | cached: (frozen
                                        # trunk only) the pooled trunk rows of the training images and their crop
                                        # views, computed once and cached: only the whitening head trains
    input_size: int = 224
    gem_p: float = 3.0
    # losses
    alpha: float = 0.99                 # momentum of psi_q; 0 = copy psi_mix every step
    arcface_scale: float = 32.0
    arcface_margin: float = 0.3
    csd_k: int = 16
    csd_t_teacher: float = 0.01
    csd_t_student: float = 1.0
    lce_boundary_weight: float = 1.0
    # optimisation
    optimizer: str = "sgd"
    lr: float = 1e-3
    mixer_lr_mult: float = 1.0
    momentum: float = 0.9
    weight_decay: float = 0.01
    schedule: str = "linear"
    warmup_steps: int = 0
    epochs: int = 20
    stage1_epochs: int = 10             # two_stage only: mixer epochs before the query net
    classifier_epochs: int = 30         # bct/lce/csd: epochs fitting the frozen gallery classifier
    batch_size: int = 32                # global batch (split across DDP ranks)
    grad_clip: float = 0.0              # 0 = off
    bn_mode: str = "train"              # train | frozen (BN in eval mode: batch-independent)
    # data
    data_source: str = "benchmark"      # benchmark | gldv2 | folder
    data_root: str = "runs/benchmark"   # benchmark folder, GLDv2 root, or image-folder root
    val_root: str = ""                  # revisitop split for validation ('' = benchmark val split, or none)
    features_dir: str = "runs/features" # feature-store cache: <features_dir>/<feature>/<part>/<gallery|queries>
    crop_scale_min: float = 0.35
    color_jitter: float = 0.3
    preload_side: int = 0               # >0: decode images once, shorter side resized to this
    # runtime
    device: str = "cpu"
    precision: str = "fp32"             # fp32 | bf16 | fp16 (fp16 uses a GradScaler, CUDA only)
    channels_last: bool = False
    workers: int = 0
    pin_memory: bool = False
    seed: int = 0
    val_every: int = 1
    patience: int = 0                   # stop after this many val checks without improvement (0 = never)
    select_metric: str = "mAP_medium"   # the val metric that picks the best checkpoint
    select_min_delta: float = 0.5       # a val check must beat the best by more than this (points) to replace it
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        check_choice("scheme", self.scheme, SCHEMES)
        check_choice("mixer", self.mixer, ("transformer", "mlp", "concat"))
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("bn_mode", self.bn_mode, BN_MODES)
        check_choice("mixer_start", self.mixer_start, MIXER_STARTS)
        check_choice("query_start", self.query_start, QUERY_STARTS)
        check_choice("fusion_weighting", self.fusion_weighting, FUSION_WEIGHTINGS)
        check_choice("query_pooling", self.query_pooling, ("gem", "gem_l2", "gem_sqrt_l2"))
        check_choice("query_inputs", self.query_inputs, QUERY_INPUTS)
        check_choice("data_source", self.data_source, DATA_SOURCES)
        check_choice("precision", self.precision, ("fp32", "bf16", "fp16"))
        check_choice("select_metric", self.select_metric, ("mAP_medium", "mAP_hard", "mAP_easy"))
        object.__setattr__(self, "gallery_features", tuple(self.gallery_features))
        object.__setattr__(self, "fusion_weights", check_fusion_weights(self.fusion_weights))
        for name in ("embed_dim", "mixer_layers", "mixer_heads", "local_tokens", "input_size", "epochs",
                     "batch_size", "csd_k", "val_every", "log_every", "classifier_epochs"):
            check_positive_int(name, getattr(self, name))
        for name in ("stage1_epochs", "warmup_steps", "workers", "preload_side", "seed", "patience", "start_views"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ConfigError(f"{name} must be an int >= 0, got {getattr(self, name)!r}")
        if self.embed_dim % self.mixer_heads:
            raise ConfigError(f"embed_dim={self.embed_dim} must be divisible by mixer_heads={self.mixer_heads}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"alpha must lie in [0, 1], got {self.alpha}")
        if not 0.0 < self.crop_scale_min <= 1.0 or not 0.0 <= self.color_jitter < 1.0:
            raise ConfigError("crop_scale_min must lie in (0, 1] and color_jitter in [0, 1)")
        for name in ("lr", "query_start_ridge", "arcface_scale", "csd_t_teacher", "csd_t_student", "mixer_lr_mult",
                     "mixer_mlp_ratio"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("weight_decay", "momentum", "grad_clip", "arcface_margin", "lce_boundary_weight",
                     "select_min_delta", "start_shrink", "query_trunk_lr_mult"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.query_inputs == "cached" and self.query_trunk_lr_mult != 0:
            raise ConfigError("query_inputs=cached trains the whitening head on cached trunk outputs, so the trunk "
                              f"must stay frozen: set query_trunk_lr_mult=0 (got {self.query_trunk_lr_mult}) or "
                              "query_inputs=images")
        if self.scheme != "symmetric" and not self.gallery_features:
            raise ConfigError(f"scheme {self.scheme!r} needs gallery_features (feature names)")
        if self.scheme in SINGLE_GALLERY_SCHEMES and len(self.gallery_features) != 1:
            raise ConfigError(f"scheme {self.scheme!r} trains against ONE frozen gallery feature; set "
                              f"gallery_features to a single global feature, got {list(self.gallery_features)}")
        if self.scheme == "two_stage" and not 0 < self.stage1_epochs < self.epochs:
            raise ConfigError(f"two_stage needs 0 < stage1_epochs < epochs, got {self.stage1_epochs}, {self.epochs}")
        if self.precision == "fp16" and not self.device.startswith("cuda"):
            raise ConfigError("precision fp16 needs a CUDA device; use precision=bf16 on CPU")

    @property
    def trains_mixer(self) -> bool:
        return self.scheme in MIXER_SCHEMES

    @property
    def trains_query(self) -> bool:
        return self.scheme in QUERY_SCHEMES

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["gallery_features"] = list(self.gallery_features)
        return d

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (validated; unknown keys raise ConfigError)."""
        return config_from_dict({**self.to_dict(), **changes})

    def differences(self, other: TrainConfig, *, ignore: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
        """``{key: (self value, other value)}`` for the fields that differ."""
        a, b = self.to_dict(), other.to_dict()
        return {k: (a[k], b[k]) for k in a if k not in ignore and a[k] != b[k]}


# Fields that may change between an interrupted run and its resume without changing the result.
RESUME_SAFE_FIELDS = ("epochs", "progress", "log_every", "workers", "pin_memory", "device")


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig from plain data (YAML/JSON), rejecting unknown keys.

    Raises:
        ConfigError: an unknown key (the message lists the valid ones) or an invalid value.
    """
    values = checked_keys(data, TrainConfig, what="training config")
    if "gallery_features" in values:
        gf = values["gallery_features"]
        values["gallery_features"] = (gf,) if isinstance(gf, str) else tuple(gf)
    return build_config(TrainConfig, values, what="training config")


def check_fusion_weights(value: object) -> tuple[tuple[str, float], ...]:
    """``fusion_weights`` as sorted ``(feature, weight)`` pairs; a dict or a list of pairs is accepted.

    Raises:
        ConfigError: not pairs of a feature name and a finite number > 0, or a name given twice.
    """
    items = list(value.items()) if isinstance(value, dict) else list(value)  # type: ignore[call-overload]
    pairs = []
    for item in items:
        if (isinstance(item, (str, bytes)) or not hasattr(item, "__len__") or len(item) != 2
                or not isinstance(item[0], str)):
            raise ConfigError(f"fusion_weights must be (feature name, weight) pairs such as (('sift', 0.5),), "
                              f"got {value!r}")
        name, weight = item
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < float("inf"):
            raise ConfigError(f"fusion_weights: the weight of {name!r} must be a finite number > 0, got {weight!r}")
        pairs.append((name, float(weight)))
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise ConfigError(f"fusion_weights names a feature twice: {names}")
    return tuple(sorted(pairs))
