"""``ModelSpec``: the one record that travels from training to checkpoint to exported file to the
edge SDK to the searcher.

It is the single source of preprocessing (see :mod:`asymfuse.edge.preprocess`) and carries the
``embedding_space_id``: two models may be searched against each other only when their ids match.
Torch-free on purpose: every side imports it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from asymfuse.edge.errors import ConfigError

SPEC_FORMAT_VERSION = 1

RESIZE_POLICIES = ("squash", "center_crop", "letterbox")
"""How an image of any size becomes ``input_size``:

- ``squash``: resize to exactly (H, W), ignoring aspect ratio;
- ``center_crop``: resize the shorter side to fit, then crop the centre;
- ``letterbox``: resize the longer side to fit, then pad with the mean colour.
"""

SPEC_KEY = "asymfuse.model_spec"
"""The metadata key under which every exported file (ONNX, TFLite, Core ML) stores its ModelSpec JSON."""
POOLINGS = ("gem", "gem_l2", "gem_sqrt_l2", "avg", "max", "cls", "fusion_token", "none")
"""How a model pools its trunk map; ``gem_l2`` is GeM followed by L2 normalisation (before the head),
``gem_sqrt_l2`` GeM, element-wise square root, then L2 normalisation."""
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)
"""EfficientNet-Lite (TF reference: (x - 127) / 128) uses mean = std = 0.5 on [0, 1] pixels."""


def compute_embedding_space_id(components: Mapping[str, Any]) -> str:
    """Stable id of an embedding space: a hash of what makes two models compatible.

    Args:
        components: JSON-serialisable facts that define the space, e.g. the gallery extractor
            ids and a digest of the mixer weights. Key order does not matter.

    Returns:
        ``"es-"`` followed by 16 hex digits of a SHA-256 over the canonical JSON.

    Raises:
        ConfigError: ``components`` is empty or not JSON-serialisable.
    """
    if not components:
        raise ConfigError("embedding space components are empty; pass at least one defining fact")
    try:
        canon = json.dumps(dict(components), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"embedding space components must be plain JSON values: {exc}") from exc
    return "es-" + hashlib.sha256(canon.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class ModelSpec:
    """What a consumer must know to feed a model and to know which vectors it may be compared with.

    Pixels are read as RGB, scaled to [0, 1], resized by ``resize`` to ``input_size`` = (H, W)
    with ``interpolation``, then normalised as ``(x - mean) / std`` per channel, NCHW float32.
    The model outputs ``(B, embed_dim)`` float32 vectors, unit-norm when ``l2_normalized``.
    """

    arch: str
    embed_dim: int
    input_size: tuple[int, int]
    embedding_space_id: str
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    resize: str = "squash"
    interpolation: str = "bilinear"
    pooling: str = "gem"
    l2_normalized: bool = True
    extra: Mapping[str, Any] = field(default_factory=dict)
    format_version: int = SPEC_FORMAT_VERSION

    def __post_init__(self) -> None:
        if not self.arch or not isinstance(self.arch, str):
            raise ConfigError("ModelSpec.arch must be a non-empty string such as 'mobilenet_v2'")
        if not isinstance(self.embed_dim, int) or self.embed_dim <= 0:
            raise ConfigError(f"ModelSpec.embed_dim must be a positive int, got {self.embed_dim!r}")
        size = tuple(self.input_size)
        if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
            raise ConfigError(f"ModelSpec.input_size must be (H, W) positive ints, got {self.input_size!r}")
        object.__setattr__(self, "input_size", size)
        for name in ("mean", "std"):
            vals = tuple(float(v) for v in getattr(self, name))
            if len(vals) != 3 or not all(math.isfinite(v) for v in vals):
                raise ConfigError(f"ModelSpec.{name} needs 3 finite per-channel values, got {vals!r}")
            object.__setattr__(self, name, vals)
        if any(v <= 0 for v in self.std):
            raise ConfigError(f"ModelSpec.std must be positive, got {self.std!r}")
        _check_choice("resize", self.resize, RESIZE_POLICIES)
        _check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        _check_choice("pooling", self.pooling, POOLINGS)
        if not isinstance(self.embedding_space_id, str) or not self.embedding_space_id:
            raise ConfigError("ModelSpec.embedding_space_id must be a non-empty string; "
                              "build one with compute_embedding_space_id(...)")
        if self.format_version > SPEC_FORMAT_VERSION:
            raise ConfigError(f"ModelSpec format_version {self.format_version} is newer than this "
                              f"asymfuse ({SPEC_FORMAT_VERSION}); upgrade asymfuse")
        object.__setattr__(self, "extra", dict(self.extra))

    # ---- compatibility ---------------------------------------------------------------------
    def is_compatible_with(self, other: ModelSpec) -> bool:
        """True when vectors of the two models live in the same space (same id and dimension)."""
        return self.embedding_space_id == other.embedding_space_id and self.embed_dim == other.embed_dim

    def with_embedding_space(self, embedding_space_id: str) -> ModelSpec:
        """Return a copy that claims another embedding space (e.g. after compatible training)."""
        return replace(self, embedding_space_id=embedding_space_id)

    # ---- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; tuples become lists."""
        out = asdict(self)
        out["input_size"] = list(self.input_size)
        out["mean"] = list(self.mean)
        out["std"] = list(self.std)
        out["extra"] = dict(self.extra)
        return out

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), the form stored in checkpoints and exported files."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: unknown or missing keys, or invalid values.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a ModelSpec must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown ModelSpec keys {unknown}; known keys are {sorted(known)}")
        required = {"arch", "embed_dim", "input_size", "embedding_space_id"}
        missing = sorted(required - set(data))
        if missing:
            raise ConfigError(f"ModelSpec is missing keys {missing}")
        kwargs = dict(data)
        kwargs["input_size"] = tuple(kwargs["input_size"])
        for key in ("mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelSpec:
        """Parse the JSON written by :meth:`to_json`.

        Raises:
            ConfigError: the text is not JSON or not a valid spec.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"ModelSpec JSON is malformed: {exc}") from exc
        return cls.from_dict(data)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"ModelSpec.{name}={value!r} is not supported; choose one of {list(choices)}")
