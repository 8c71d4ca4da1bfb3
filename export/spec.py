"""``ExportSpec``: what to export (format, precision, size, batch policy, calibration) and which
format x precision combinations exist.

Torch-free and toolchain-free, so the CLI can check a request before anything heavy is imported.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from asymfuse.edge.errors import ConfigError, unknown_name
from asymfuse.edge.spec import ModelSpec

FORMATS: tuple[str, ...] = ("onnx", "tflite", "coreml")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8", "int8_dynamic")
SUPPORTED: dict[str, tuple[str, ...]] = {
    "onnx": ("fp32", "fp16", "int8", "int8_dynamic"),
    "tflite": ("fp32", "fp16", "int8", "int8_dynamic"),
    "coreml": ("fp32", "fp16", "int8"),  # coreml int8 = int8 weights (linear_quantize_weights)
}
"""Format -> precisions it can export."""

BATCH_POLICIES: tuple[str, ...] = ("dynamic", "fixed")
DYNAMIC_BATCH_FORMATS: tuple[str, ...] = ("onnx",)
"""Formats whose files accept any batch size; the others are exported with a fixed batch of 1."""

INT8_IO: tuple[str, ...] = ("float", "uint8", "int8")
EXTENSIONS: dict[str, str] = {"onnx": ".onnx", "tflite": ".tflite", "coreml": ".mlpackage"}


def _supported_text() -> str:
    return "; ".join(f"{fmt} supports {', '.join(SUPPORTED[fmt])}" for fmt in FORMATS)


def check_combination(format: str, precision: str, *, batch: str = "dynamic") -> None:  # noqa: A002
    """Refuse a format x precision x batch combination that cannot be exported.

    Raises:
        UnknownNameError: unknown format or precision.
        ConfigError: the format does not support the precision or the batch policy; the message
            names what would work.
    """
    if format not in FORMATS:
        raise unknown_name("export format", format, FORMATS)
    if precision not in PRECISIONS:
        raise unknown_name("export precision", precision, PRECISIONS)
    if batch not in BATCH_POLICIES:
        raise ConfigError(f"batch policy {batch!r} is unknown; choose one of {list(BATCH_POLICIES)}")
    if precision not in SUPPORTED[format]:
        raise ConfigError(f"{format} cannot export precision {precision!r}; {_supported_text()}")
    if batch == "dynamic" and format not in DYNAMIC_BATCH_FORMATS:
        raise ConfigError(f"{format} files have a fixed batch of 1; pass batch='fixed' "
                          f"(dynamic batch works for: {', '.join(DYNAMIC_BATCH_FORMATS)})")


def uses_calibration(format: str, precision: str) -> bool:  # noqa: A002
    """Whether exporting ``format`` x ``precision`` takes real calibration images (see
    :attr:`ExportSpec.uses_calibration`)."""
    return (precision == "int8" and format != "coreml") or (precision == "int8_dynamic" and format == "onnx")


@dataclass(frozen=True)
class ExportSpec:
    """One export request.

    Attributes:
        format: one of :data:`FORMATS`.
        precision: one of :data:`PRECISIONS`, as allowed by :data:`SUPPORTED`.
        input_size: square image side in pixels (the file's H = W).
        batch: ``"dynamic"`` (any batch, ONNX only) or ``"fixed"`` (batch 1). ``None`` picks
            ``"dynamic"`` for ONNX and ``"fixed"`` for the others.
        calibration_images: how many real images calibrate static int8.
        min_calibration: refuse static int8 with fewer calibration images than this.
        int8_io: TFLite full-int8 input type: ``"float"``, ``"uint8"`` or ``"int8"``.
        channel_last: TFLite only: NHWC input so camera frames are fed directly.
    """

    format: str
    precision: str = "fp32"
    input_size: int = 224
    batch: str | None = None
    calibration_images: int = 64
    min_calibration: int = 8
    int8_io: str = "float"
    channel_last: bool = True

    def __post_init__(self) -> None:
        if self.batch is None:
            object.__setattr__(self, "batch", "dynamic" if self.format in DYNAMIC_BATCH_FORMATS else "fixed")
        check_combination(self.format, self.precision, batch=self.batch)
        if not isinstance(self.input_size, int) or isinstance(self.input_size, bool) or self.input_size < 16:
            raise ConfigError(f"ExportSpec.input_size must be an int >= 16 (pixels), got {self.input_size!r}")
        if not isinstance(self.min_calibration, int) or self.min_calibration < 1:
            raise ConfigError(f"ExportSpec.min_calibration must be an int >= 1, got {self.min_calibration!r}")
        if not isinstance(self.calibration_images, int) or self.calibration_images < self.min_calibration:
            raise ConfigError(f"ExportSpec.calibration_images={self.calibration_images!r} is below "
                              f"min_calibration={self.min_calibration}; raise calibration_images")
        if self.int8_io not in INT8_IO:
            raise ConfigError(f"ExportSpec.int8_io={self.int8_io!r} is unknown; choose one of {list(INT8_IO)}")

    @property
    def extension(self) -> str:
        """File extension of the artifact (``.onnx``, ``.tflite``, ``.mlpackage``)."""
        return EXTENSIONS[self.format]

    @property
    def needs_calibration(self) -> bool:
        """True when the export needs real calibration images (static int8)."""
        return self.precision == "int8" and self.format != "coreml"

    @property
    def uses_calibration(self) -> bool:
        """True when the exporter takes real images: :attr:`needs_calibration`, or ONNX dynamic int8,
        which checks its float-prefix choice on them (without images it quantises every layer it
        can, unchecked: EfficientNet-Lite0's worst cosine is then 0.74)."""
        return uses_calibration(self.format, self.precision)

    def name(self, arch: str) -> str:
        """``f"{arch}-{format}-{precision}-{size}"`` (no extension)."""
        return f"{arch}-{self.format}-{self.precision}-{self.input_size}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExportSpec:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: unknown keys or invalid values.
        """
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown ExportSpec keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)


def artifact_name(spec: ModelSpec, export: ExportSpec) -> str:
    """File name of an artifact: ``f"{arch}-{format}-{precision}-{size}{ext}"``."""
    return export.name(spec.arch) + export.extension
