"""The export tables: format -> exporter, format -> runtime runner, and reading a ModelSpec back.

Runners and ModelSpec readers are the edge SDK's (:mod:`asymfuse.edge.runtimes`): the file the
gate passes is run by the same code the phone runs. This module maps export formats onto edge
runtime names (:data:`FORMAT_RUNTIMES`).

Format modules are imported only when used, so ``import asymfuse.export.registry`` stays light
and a missing toolchain fails with the pip extra to install, not a bare ImportError.

An exporter is called as::

    fn(model, *, model_spec, export, out, calibration) -> Artifact

with ``model`` an eval-mode torch module mapping ``(B, 3, H, W)`` NCHW normalised float32 to
``(B, D)``, ``export`` an :class:`~asymfuse.export.spec.ExportSpec`, ``out`` the output folder and
``calibration`` ``(N, 3, H, W)`` float32 preprocessed real images (or None when not needed).

A runner (``RUNNERS[fmt](path, num_threads)``) is an :class:`asymfuse.edge.runtimes.Runner`:
``.run(x: (B, 3, H, W) float32 NCHW) -> (B, D) float32``, ``.model_spec``, ``.close()``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from asymfuse.edge import runtimes
from asymfuse.edge.errors import ConfigError, missing_dependency, unknown_name
from asymfuse.edge.runtimes import Runner
from asymfuse.edge.spec import ModelSpec
from asymfuse.export.artifact import Artifact
from asymfuse.export.spec import EXTENSIONS, FORMATS

ExportFn = Callable[..., Artifact]
"""``fn(model, *, model_spec: ModelSpec, export: ExportSpec, out: Path, calibration: np.ndarray | None)``."""

TOOLCHAIN: dict[str, str] = {"onnx": "onnxruntime", "tflite": "litert-torch", "coreml": "coremltools"}
"""Format -> the pip package named when its toolchain is missing (all in the ``export`` extra)."""

# Top-level modules whose absence means "toolchain missing" (anything else is a real bug).
_TOOLCHAIN_MODULES = {
    "onnx": ("onnx", "onnxruntime", "onnxscript", "onnx_ir", "torch"),
    "tflite": ("litert_torch", "ai_edge_litert", "ai_edge_quantizer", "tensorflow", "flatbuffers", "torch", "torchao"),
    "coreml": ("coremltools", "torch"),
}


def _format_module(fmt: str) -> ModuleType:
    """Import ``asymfuse.export.<fmt>``, mapping a missing toolchain to MissingDependencyError."""
    if fmt not in FORMATS:
        raise unknown_name("export format", fmt, FORMATS)
    try:
        return importlib.import_module(f"asymfuse.export.{fmt}")
    except ModuleNotFoundError as exc:
        root = (exc.name or "").split(".")[0]
        if root in _TOOLCHAIN_MODULES[fmt]:
            raise missing_dependency(TOOLCHAIN[fmt] if root != "torch" else "torch", extra="export") from exc
        raise


def _call(fmt: str, attr: str, *args: Any, **kwargs: Any) -> Any:
    mod = _format_module(fmt)
    try:
        fn = getattr(mod, attr)
    except AttributeError as exc:
        raise ConfigError(f"asymfuse.export.{fmt} has no {attr}(); this format does not support it") from exc
    try:
        return fn(*args, **kwargs)
    except ModuleNotFoundError as exc:  # toolchain imported lazily inside the format module
        root = (exc.name or "").split(".")[0]
        if root in _TOOLCHAIN_MODULES[fmt]:
            raise missing_dependency(TOOLCHAIN[fmt] if root != "torch" else "torch", extra="export") from exc
        raise


def _exporter(fmt: str) -> ExportFn:
    attr = f"export_{fmt}"

    def export(model: Any, *, model_spec: ModelSpec, export: Any, out: Path,
               calibration: np.ndarray | None = None) -> Artifact:
        return _call(fmt, attr, model, model_spec=model_spec, export=export, out=Path(out), calibration=calibration)

    export.__name__ = attr
    export.__qualname__ = attr
    export.__doc__ = f"Lazy wrapper around asymfuse.export.{fmt}.{attr}."
    return export


FORMAT_RUNTIMES: dict[str, str] = {"onnx": "onnxruntime", "tflite": "litert", "coreml": "coreml"}
"""Export format -> the edge runtime that runs (and reads the ModelSpec of) its files."""


def _runner(fmt: str) -> Callable[..., Runner]:
    def load(path: Path, num_threads: int | None = None) -> Runner:
        return runtimes.create_runner(FORMAT_RUNTIMES[fmt], Path(path), num_threads=num_threads)

    load.__name__ = f"load_{fmt}_runner"
    return load


EXPORTERS: dict[str, ExportFn] = {fmt: _exporter(fmt) for fmt in FORMATS}
RUNNERS: dict[str, Callable[..., Runner]] = {fmt: _runner(fmt) for fmt in ("onnx", "tflite")}
"""Formats whose artifacts can be run on every OS (Core ML predicts on macOS only)."""


def create_exporter(format: str) -> ExportFn:  # noqa: A002
    """Exporter for ``format``.

    Raises:
        UnknownNameError: unknown format.
    """
    if format not in EXPORTERS:
        raise unknown_name("export format", format, tuple(EXPORTERS))
    return EXPORTERS[format]


def load_runner(path: str | Path, *, num_threads: int | None = None) -> Runner:
    """Runner for an artifact, picked by its extension.

    Raises:
        UnknownNameError: the extension is not a runnable format.
        MissingDependencyError: the runtime is not installed.
    """
    fmt = format_of(path)
    if fmt not in RUNNERS:
        raise unknown_name("runnable artifact format", fmt, tuple(RUNNERS))
    return RUNNERS[fmt](Path(path), num_threads)


def format_of(path: str | Path) -> str:
    """Format of an artifact from its extension.

    Raises:
        UnknownNameError: unknown extension.
    """
    suffix = Path(path).suffix.lower()
    for fmt, ext in EXTENSIONS.items():
        if suffix == ext:
            return fmt
    raise unknown_name("artifact extension", suffix or str(path), tuple(EXTENSIONS.values()))


def read_model_spec(path: str | Path) -> ModelSpec:
    """Read the :class:`ModelSpec` embedded in (or beside) an artifact.

    Raises:
        UnknownNameError: unknown extension.
        CorruptDataError: the artifact carries no ModelSpec.
    """
    fmt = format_of(path)
    return runtimes.read_model_spec(Path(path), runtime=FORMAT_RUNTIMES[fmt])
