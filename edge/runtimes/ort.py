"""onnxruntime runner of asymfuse ``.onnx`` files (CPU).

File layout (written by :mod:`asymfuse.export.onnx`): input ``"image"`` ``(B, 3, H, W)`` float32
NCHW normalised per the ModelSpec, batch dynamic unless exported with ``batch="fixed"``; output
``"embedding"`` ``(B, embed_dim)`` float32; the ModelSpec JSON in
``metadata_props["asymfuse.model_spec"]``. Needs only ``onnxruntime`` (the ``edge`` extra).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.edge.errors import CorruptDataError, ShapeError, missing_dependency
from asymfuse.edge.runtimes.base import Handle, check_io, check_nchw, check_num_threads, spec_from_text
from asymfuse.edge.spec import SPEC_KEY, ModelSpec

RUNTIME = "onnxruntime"


def import_ort() -> Any:
    """``onnxruntime``, or MissingDependencyError naming the ``edge`` extra."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise missing_dependency("onnxruntime", extra="edge") from exc
    return onnxruntime


def _session(path: Path, num_threads: int | None, *, optimize: bool = True) -> Any:
    ort = import_ort()
    if not path.is_file():
        raise CorruptDataError(f"ONNX file {path} does not exist; check the path")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if num_threads is not None:
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidProtobuf / InvalidGraph types
        raise CorruptDataError(f"onnxruntime cannot load {path} ({type(exc).__name__}: {exc}); "
                               "the file is damaged or not an ONNX model, re-export it") from exc


def read_spec(path: str | os.PathLike[str]) -> ModelSpec:
    """The ModelSpec in an ONNX file's ``metadata_props``.

    Raises:
        CorruptDataError: the file is missing, not loadable by onnxruntime, or carries no valid ModelSpec.
        MissingDependencyError: onnxruntime is not installed.
    """
    p = Path(path)
    meta = dict(_session(p, 1, optimize=False).get_modelmeta().custom_metadata_map)
    return spec_from_text(meta.get(SPEC_KEY), p, where="metadata_props")


class OnnxRunner(Handle):
    """An onnxruntime session over one asymfuse ONNX file; see :class:`~asymfuse.edge.runtimes.base.Runner`.

    Attributes:
        session: the ``onnxruntime.InferenceSession`` (None once closed).
        input_shape: the file's input shape; a str entry is a symbolic (dynamic) size.
    """

    runtime = RUNTIME

    def __init__(self, path: str | os.PathLike[str], *, num_threads: int | None = None) -> None:
        """Load ``path`` with ``num_threads`` intra-op threads (None: onnxruntime's default).

        Raises:
            CorruptDataError: missing or damaged file, no ModelSpec, or tensors that disagree with it.
            ConfigError: bad ``num_threads``.
            MissingDependencyError: onnxruntime is not installed.
        """
        self.path = Path(path)
        self.num_threads = check_num_threads(num_threads)
        session = _session(self.path, self.num_threads)
        meta = dict(session.get_modelmeta().custom_metadata_map)
        self.model_spec: ModelSpec = spec_from_text(meta.get(SPEC_KEY), self.path, where="metadata_props")
        inp, out = session.get_inputs()[0], session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_shape = tuple(inp.shape)
        if len(self.input_shape) != 4 or len(out.shape) != 2:
            raise CorruptDataError(f"{self.path.name}: input {inp.shape} / output {out.shape} are not "
                                   "(B, 3, H, W) / (B, D); not an asymfuse query net, re-export it")
        check_io(self.path, self.model_spec, input_hw=(self.input_shape[2], self.input_shape[3]),
                 output_dim=out.shape[1])
        self._native = session

    @property
    def session(self) -> Any:
        return self._native

    @property
    def dynamic_batch(self) -> bool:
        """True when the file takes any batch size in one call."""
        return not isinstance(self.input_shape[0], int)

    def run(self, x: np.ndarray) -> np.ndarray:
        """``(B, 3, H, W)`` float32 NCHW preprocessed -> ``(B, embed_dim)`` float32.

        Raises:
            ShapeError: wrong shape, or a batch other than the file's fixed batch.
            ClosedError: the runner is closed.
        """
        arr = check_nchw(x, self.model_spec, name=self.path.name)
        session = self._open()
        if not self.dynamic_batch and arr.shape[0] != self.input_shape[0]:
            raise ShapeError(f"{self.path.name} has a fixed batch of {self.input_shape[0]}, got {arr.shape[0]}; "
                             "run the rows one by one")
        return np.asarray(session.run([self.output_name], {self.input_name: arr})[0], dtype=np.float32)

    __call__ = run


def load_runner(path: str | os.PathLike[str], *, num_threads: int | None = None) -> OnnxRunner:
    """An :class:`OnnxRunner` for ``path``.

    Raises:
        CorruptDataError, ConfigError, MissingDependencyError: as :class:`OnnxRunner`.
    """
    return OnnxRunner(path, num_threads=num_threads)
