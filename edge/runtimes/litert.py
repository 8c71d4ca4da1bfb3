"""TFLite runner of asymfuse ``.tflite`` files: ai-edge-litert's Interpreter, else ``tflite_runtime``'s.

File layout (written by :mod:`asymfuse.export.tflite`): one input ``(1, H, W, 3)`` NHWC (the
default, camera layout) or ``(1, 3, H, W)`` NCHW holding pixels normalised per the ModelSpec;
batch fixed to 1, so :meth:`TFLiteRunner.run` loops over rows. One output ``(1, embed_dim)``.
Full-int8 files take ``float32`` (the exporter's default ``int8_io="float"``: a QUANTIZE op
comes first), ``int8`` or ``uint8`` input; for the integer ones the runner quantizes with the
input tensor's ``(scale, zero_point)``, ``q = round(x / scale) + zero_point``, and dequantizes an
integer output the same way. Nothing to configure: the file says which it is.

Interpreter packages (``package=``): ``"auto"`` tries ``ai_edge_litert.interpreter`` (the
``edge`` extra), then ``tflite_runtime.interpreter``. Measured here (numpy 2.4.6, Python 3.11,
Linux x86-64): the newest ``tflite-runtime`` on PyPI, 2.14.0 (2023), imports but was built against
NumPy 1.x, so creating an Interpreter fails ("_ARRAY_API not found"); the runner reports that as
:class:`~asymfuse.edge.errors.MissingDependencyError` naming the fix. The fallback works only
with ``numpy<2``; with NumPy 2 install ``ai-edge-litert``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.edge.errors import ConfigError, CorruptDataError, MissingDependencyError, ShapeError
from asymfuse.edge.runtimes.base import Handle, check_io, check_nchw, check_num_threads
from asymfuse.edge.runtimes.tflite_file import read_spec
from asymfuse.edge.spec import ModelSpec

RUNTIME = "litert"
PACKAGES: dict[str, str] = {"ai_edge_litert": "ai_edge_litert.interpreter",
                            "tflite_runtime": "tflite_runtime.interpreter"}
"""Interpreter package -> the module holding its ``Interpreter``, in the order ``"auto"`` tries them."""


def interpreter_class(package: str = "auto") -> tuple[str, Any]:
    """``(package name, Interpreter class)`` of the first importable package (``"auto"``) or of ``package``.

    Raises:
        ConfigError: unknown ``package``.
        MissingDependencyError: none of the packages is installed.
    """
    if package != "auto" and package not in PACKAGES:
        raise ConfigError(f"TFLite interpreter package {package!r} is unknown; choose 'auto' or one of "
                          f"{sorted(PACKAGES)}")
    names = list(PACKAGES) if package == "auto" else [package]
    for name in names:
        try:
            return name, importlib.import_module(PACKAGES[name]).Interpreter
        except ImportError:
            continue
    wanted = " or ".join(f"{n.replace('_', '-')}" for n in names)
    raise MissingDependencyError(f"{wanted} is not installed; install it with: pip install 'asymfuse[edge]' "
                                 "(brings ai-edge-litert)")


def _interpreter(path: Path, num_threads: int | None, package: str) -> tuple[str, Any]:
    name, cls = interpreter_class(package)
    try:
        interp = cls(model_path=str(path), num_threads=num_threads)
        interp.allocate_tensors()
    except (SystemError, ImportError) as exc:  # a binary built for another NumPy fails here, not at import
        root: BaseException = exc
        while root.__cause__ is not None or root.__context__ is not None:
            root = root.__cause__ or root.__context__  # type: ignore[assignment]
        raise MissingDependencyError(
            f"{name} cannot run with numpy {np.__version__} ({type(root).__name__}: {root}); it was built for "
            "another NumPy. Install ai-edge-litert (pip install 'asymfuse[edge]') or, for tflite_runtime, "
            "numpy<2") from exc
    except (ValueError, RuntimeError) as exc:
        raise CorruptDataError(f"{name} cannot load {path} ({exc}); the file is damaged, re-export it") from exc
    return name, interp


class TFLiteRunner(Handle):
    """A TFLite interpreter over one asymfuse ``.tflite``; see :class:`~asymfuse.edge.runtimes.base.Runner`.

    Attributes:
        package: the interpreter package in use (``"ai_edge_litert"`` or ``"tflite_runtime"``).
        layout: ``"NHWC"`` or ``"NCHW"``, the file's input layout.
        input_dtype: ``float32``, ``int8`` or ``uint8``.
    """

    runtime = RUNTIME
    dynamic_batch = False

    def __init__(self, path: str | os.PathLike[str], *, num_threads: int | None = None,
                 package: str = "auto") -> None:
        """Load ``path`` (``num_threads`` None: the interpreter's default; ``package``: see the module doc).

        Raises:
            CorruptDataError: missing or damaged file, no ModelSpec, or tensors that disagree with it.
            ConfigError: bad ``num_threads`` or ``package``.
            MissingDependencyError: no usable interpreter package.
        """
        self.path = Path(path)
        self.num_threads = check_num_threads(num_threads)
        self.model_spec: ModelSpec = read_spec(self.path)
        self.package, interp = _interpreter(self.path, self.num_threads, package)
        self._in, self._out = interp.get_input_details()[0], interp.get_output_details()[0]
        shape = tuple(int(v) for v in self._in["shape"])
        out_shape = tuple(int(v) for v in self._out["shape"])
        if len(shape) != 4 or 3 not in (shape[1], shape[3]) or len(out_shape) != 2:
            raise CorruptDataError(f"{self.path.name}: input {shape} / output {out_shape} are not (1, H, W, 3) / "
                                   "(1, D); not an asymfuse query net, re-export it")
        self.layout = "NHWC" if shape[-1] == 3 and shape[1] != 3 else "NCHW"
        hw = shape[1:3] if self.layout == "NHWC" else shape[2:4]
        check_io(self.path, self.model_spec, input_hw=(hw[0], hw[1]), output_dim=out_shape[1])
        self.input_dtype = np.dtype(self._in["dtype"])
        self._native = interp

    def run(self, x: np.ndarray) -> np.ndarray:
        """``(B, 3, H, W)`` float32 NCHW preprocessed -> ``(B, embed_dim)`` float32 (one invoke per row).

        Raises:
            ShapeError: wrong shape. ClosedError: the runner is closed.
        """
        arr = check_nchw(x, self.model_spec, name=self.path.name)
        return self._run_rows(arr.transpose(0, 2, 3, 1) if self.layout == "NHWC" else arr)

    def run_nhwc(self, x: np.ndarray) -> np.ndarray:
        """``(B, H, W, 3)`` float32 normalised (camera layout) -> ``(B, embed_dim)`` float32.

        Raises:
            ShapeError: wrong shape. ClosedError: the runner is closed.
        """
        arr = np.asarray(x, dtype=np.float32)
        h, w = self.model_spec.input_size
        if arr.ndim != 4 or arr.shape[1:] != (h, w, 3) or arr.shape[0] == 0:
            raise ShapeError(f"{self.path.name} run_nhwc needs (B, {h}, {w}, 3) float32, got {arr.shape}")
        return self._run_rows(arr if self.layout == "NHWC" else arr.transpose(0, 3, 1, 2))

    def _run_rows(self, arr: np.ndarray) -> np.ndarray:
        interp = self._open()
        outs = []
        for row in arr:
            interp.set_tensor(self._in["index"], quantize_input(row[None], self._in))
            interp.invoke()
            outs.append(dequantize_output(interp.get_tensor(self._out["index"]), self._out))
        return np.concatenate(outs).astype(np.float32, copy=False)



def quantize_input(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """A float32 input row for the tensor described by ``detail`` (an interpreter's input details):
    unchanged for a float32 tensor, else ``clip(round(x / scale) + zero_point)`` in its integer dtype."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return np.ascontiguousarray(x, dtype=np.float32)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """A float32 copy of an output tensor: ``(y - zero_point) * scale`` when it is an integer one."""
    if y.dtype == np.float32:
        return y.copy()
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def load_runner(path: str | os.PathLike[str], *, num_threads: int | None = None,
                package: str = "auto") -> TFLiteRunner:
    """A :class:`TFLiteRunner` for ``path``.

    Raises:
        CorruptDataError, ConfigError, MissingDependencyError: as :class:`TFLiteRunner`.
    """
    return TFLiteRunner(path, num_threads=num_threads, package=package)
