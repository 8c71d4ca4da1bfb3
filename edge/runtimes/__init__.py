"""Runtime runners of exported query nets: one module per runtime behind a ``{runtime: loader}`` table.

The phone-side SDK (:class:`~asymfuse.edge.embedder.ImageEmbedder`) and the exporters' parity gate
(:mod:`asymfuse.export.verify`) run files through these same runners. Each module imports its
runtime package only when a runner is created, so importing this package is cheap.

=============== ================================ ============================== =========================
runtime         module                           files                          batch
=============== ================================ ============================== =========================
``onnxruntime`` :mod:`~.ort`                     ``.onnx``                      dynamic: one call
``litert``      :mod:`~.litert`                  ``.tflite``                    fixed 1: a loop over rows
``coreml``      :mod:`~.coreml` (macOS only)     ``.mlpackage``, ``.mlmodel``   fixed 1: a loop over rows
=============== ================================ ============================== =========================
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from asymfuse.edge.errors import unknown_name
from asymfuse.edge.runtimes import coreml, litert, ort, tflite_file
from asymfuse.edge.runtimes.base import Runner
from asymfuse.edge.spec import ModelSpec

__all__ = ["LOADERS", "RUNTIMES", "SPEC_READERS", "SUFFIXES", "Runner", "create_runner", "load_runner",
           "read_model_spec", "runtime_for_path"]

LOADERS: dict[str, Callable[..., Runner]] = {
    ort.RUNTIME: ort.load_runner,
    litert.RUNTIME: litert.load_runner,
    coreml.RUNTIME: coreml.load_runner,
}
"""Runtime name -> ``loader(path, *, num_threads=None) -> Runner``."""

SPEC_READERS: dict[str, Callable[[str | os.PathLike[str]], ModelSpec]] = {
    ort.RUNTIME: ort.read_spec,
    litert.RUNTIME: tflite_file.read_spec,
    coreml.RUNTIME: coreml.read_spec,
}
"""Runtime name -> ``read_spec(path) -> ModelSpec`` (the spec embedded in the file)."""

RUNTIMES: tuple[str, ...] = tuple(LOADERS)
SUFFIXES: dict[str, str] = {".onnx": ort.RUNTIME, ".tflite": litert.RUNTIME, ".mlpackage": coreml.RUNTIME,
                            ".mlmodel": coreml.RUNTIME}
"""File suffix -> the runtime ``"auto"`` picks for it."""


def runtime_for_path(path: str | os.PathLike[str]) -> str:
    """The runtime of a model file, from its suffix (case-insensitive).

    Raises:
        UnknownNameError: a suffix no runtime reads; the message lists the known ones.
    """
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise unknown_name("model file suffix", suffix or Path(path).name, tuple(SUFFIXES))
    return SUFFIXES[suffix]


def create_runner(runtime: str, path: str | os.PathLike[str], *, num_threads: int | None = None) -> Runner:
    """A runner of ``runtime`` over ``path``.

    Args:
        runtime: one of :data:`RUNTIMES`.
        path: the model file (``.mlpackage``: a folder).
        num_threads: intra-op threads; None keeps the runtime's default.

    Raises:
        UnknownNameError: unknown ``runtime``.
        ConfigError: bad ``num_threads``; Core ML off macOS.
        CorruptDataError: a missing or damaged file, or one without a valid ModelSpec.
        MissingDependencyError: the runtime package is not installed.
    """
    if runtime not in LOADERS:
        raise unknown_name("runtime", runtime, RUNTIMES)
    return LOADERS[runtime](path, num_threads=num_threads)


def load_runner(path: str | os.PathLike[str], *, runtime: str = "auto", num_threads: int | None = None) -> Runner:
    """:func:`create_runner` with ``runtime="auto"`` picking by the file's suffix.

    Raises:
        UnknownNameError: unknown runtime or suffix. Otherwise as :func:`create_runner`.
    """
    return create_runner(runtime_for_path(path) if runtime == "auto" else runtime, path, num_threads=num_threads)


def read_model_spec(path: str | os.PathLike[str], *, runtime: str = "auto") -> ModelSpec:
    """The ModelSpec embedded in (or, for TFLite, beside) a model file, without creating a runner.

    Raises:
        UnknownNameError: unknown runtime or suffix.
        CorruptDataError: the file is missing or damaged, or carries no valid ModelSpec.
        MissingDependencyError: the package that reads the format is not installed.
    """
    name = runtime_for_path(path) if runtime == "auto" else runtime
    if name not in SPEC_READERS:
        raise unknown_name("runtime", name, RUNTIMES)
    return SPEC_READERS[name](path)
