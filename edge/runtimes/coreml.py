"""Core ML runner of asymfuse ``.mlpackage`` files: coremltools prediction, on macOS only.

File layout (written by :mod:`asymfuse.export.coreml`): input ``"image"``, an RGB ``ImageType``
of the ModelSpec's ``input_size`` whose scale/bias (plus a folded per-channel gain) apply the
ModelSpec's normalisation; output ``"embedding"`` ``(1, embed_dim)`` float32; the ModelSpec JSON
in ``user_defined_metadata["asymfuse.model_spec"]``.

Prediction needs the Core ML framework, so on any other system :class:`CoreMLRunner` refuses with
a :class:`~asymfuse.edge.errors.ConfigError` that says so (before importing coremltools). Reading
the ModelSpec (:func:`read_spec`) works wherever coremltools is installed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.edge.errors import ConfigError, CorruptDataError, missing_dependency
from asymfuse.edge.runtimes.base import Handle, check_nchw, check_num_threads, spec_from_text
from asymfuse.edge.spec import SPEC_KEY, ModelSpec

RUNTIME = "coreml"
INPUT_NAME = "image"
OUTPUT_NAME = "embedding"


def _coremltools() -> Any:
    try:
        import coremltools
    except ImportError as exc:
        raise missing_dependency("coremltools", extra="coreml") from exc
    return coremltools


def load_package(path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """``coremltools.models.MLModel`` of ``path`` (kwargs such as ``skip_model_load=True`` pass through).

    Raises:
        CorruptDataError: not a Core ML package or model, or it does not load.
        MissingDependencyError: coremltools is not installed.
    """
    ct = _coremltools()
    p = Path(path)
    if not (p.is_dir() or p.suffix == ".mlmodel" and p.is_file()):
        raise CorruptDataError(f"{p} is not an .mlpackage folder; export it first")
    try:
        return ct.models.MLModel(str(p), **kwargs)
    except Exception as exc:  # coremltools raises plain Exceptions for broken packages
        raise CorruptDataError(f"{p} does not load as a Core ML package: {exc}; re-export it") from exc


def read_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """The ModelSpec in ``user_defined_metadata["asymfuse.model_spec"]`` (works off macOS too).

    Raises:
        CorruptDataError: not a package, or no valid embedded ModelSpec.
        MissingDependencyError: coremltools is not installed.
    """
    meta = dict(load_package(path, skip_model_load=True).user_defined_metadata)
    return spec_from_text(meta.get(SPEC_KEY), Path(path), where="user_defined_metadata")


class CoreMLRunner(Handle):
    """Core ML prediction (macOS only); see :class:`~asymfuse.edge.runtimes.base.Runner`.

    The package's input is an image, so each preprocessed row is mapped back to 0..255 RGB pixels
    with the ModelSpec (``p = round(255 * (x * std + mean))``) and passed as a PIL image; Core ML
    re-applies the normalisation. ``num_threads`` is accepted for the common signature and ignored
    (Core ML schedules its own threads; the runner asks for CPU only).
    """

    runtime = RUNTIME
    dynamic_batch = False

    def __init__(self, path: str | os.PathLike[str], *, num_threads: int | None = None) -> None:
        """Load ``path`` for prediction.

        Raises:
            ConfigError: not on macOS (prediction needs the Core ML framework), or bad ``num_threads``.
            CorruptDataError: not a package, or no valid ModelSpec.
            MissingDependencyError: coremltools is not installed.
        """
        self.path = Path(path)
        check_num_threads(num_threads)
        if sys.platform != "darwin":
            raise ConfigError(f"Core ML prediction needs macOS (the Core ML framework); this is {sys.platform}. "
                              "Run the .onnx or .tflite export of the same model here, or use macOS")
        ct = _coremltools()
        self.model_spec: ModelSpec = read_spec(self.path)
        self._native = load_package(self.path, compute_units=ct.ComputeUnit.CPU_ONLY)

    def run(self, x: np.ndarray) -> np.ndarray:
        """``(B, 3, H, W)`` float32 NCHW preprocessed -> ``(B, embed_dim)`` float32 (one predict per row).

        Raises:
            ShapeError: wrong shape. ClosedError: the runner is closed.
        """
        from PIL import Image

        arr = check_nchw(x, self.model_spec, name=self.path.name)
        model = self._open()
        mean = np.asarray(self.model_spec.mean, np.float32).reshape(3, 1, 1)
        std = np.asarray(self.model_spec.std, np.float32).reshape(3, 1, 1)
        outs = []
        for row in arr:
            pixels = np.clip(np.round(255.0 * (row * std + mean)), 0, 255).astype(np.uint8).transpose(1, 2, 0)
            pred = model.predict({INPUT_NAME: Image.fromarray(pixels, mode="RGB")})
            outs.append(np.asarray(pred[OUTPUT_NAME], dtype=np.float32).reshape(1, -1))
        return np.concatenate(outs)


def load_runner(path: str | os.PathLike[str], *, num_threads: int | None = None) -> CoreMLRunner:
    """A :class:`CoreMLRunner` (macOS only).

    Raises:
        ConfigError: not on macOS. CorruptDataError, MissingDependencyError: as :class:`CoreMLRunner`.
    """
    return CoreMLRunner(path, num_threads=num_threads)
