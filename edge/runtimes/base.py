"""What every runtime runner shares: the :class:`Runner` protocol, the open/closed handle, and the
checks that tie a model file's tensors to its embedded :class:`ModelSpec`.

A runner maps ``(B, 3, H, W)`` float32 NCHW images, preprocessed with the file's ModelSpec
(:func:`asymfuse.edge.preprocess.preprocess`), to ``(B, embed_dim)`` float32 vectors.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from asymfuse.edge.errors import ClosedError, ConfigError, CorruptDataError, ShapeError
from asymfuse.edge.spec import SPEC_KEY, ModelSpec


@runtime_checkable
class Runner(Protocol):
    """Runs one exported model file with its real runtime.

    Attributes:
        path: the model file (or ``.mlpackage`` folder).
        runtime: the registry name, ``"onnxruntime"`` | ``"litert"`` | ``"coreml"``.
        model_spec: the ModelSpec embedded in the file.
        dynamic_batch: True when one :meth:`run` call takes any batch size (ONNX); False when the
            file has a fixed batch of 1 and :meth:`run` loops over the rows (TFLite, Core ML).
    """

    path: Path
    runtime: str
    model_spec: ModelSpec
    dynamic_batch: bool

    def run(self, x: np.ndarray) -> np.ndarray:
        """``(B, 3, H, W)`` float32 NCHW preprocessed -> ``(B, embed_dim)`` float32."""
        ...

    def close(self) -> None:
        """Release the native handle; later calls raise :class:`ClosedError`."""
        ...


class Handle:
    """``close()`` plus a context manager for a native handle held in ``self._native``."""

    path: Path
    _native: Any = None

    def _open(self) -> Any:
        if self._native is None:
            raise ClosedError(f"{type(self).__name__} for {self.path.name} is closed; create a new one")
        return self._native

    def close(self) -> None:
        """Release the native handle; later calls raise :class:`ClosedError`. Closing twice is fine."""
        self._native = None

    @property
    def closed(self) -> bool:
        return self._native is None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_num_threads(num_threads: int | None) -> int | None:
    """``None`` (the runtime's default) or a positive int.

    Raises:
        ConfigError: anything else.
    """
    if num_threads is None:
        return None
    if isinstance(num_threads, bool) or not isinstance(num_threads, numbers.Integral) or num_threads < 1:
        raise ConfigError(f"num_threads must be a positive int or None (the runtime's default), got {num_threads!r}")
    return int(num_threads)


def spec_from_text(text: str | None, path: Path, *, where: str) -> ModelSpec:
    """Parse the ModelSpec JSON found in ``path`` (``where`` names the metadata for the message).

    Raises:
        CorruptDataError: no text (the file carries no ModelSpec) or invalid JSON / values.
    """
    if text is None:
        raise CorruptDataError(f"{path} carries no ModelSpec ({where} {SPEC_KEY!r}); the SDK takes its "
                               "preprocessing from it, so re-export the model with `asymfuse export`")
    try:
        return ModelSpec.from_json(text)
    except ConfigError as exc:
        raise CorruptDataError(f"{path}: {where} {SPEC_KEY!r} is not a ModelSpec this asymfuse can honour "
                               f"({exc}); re-export the model (or upgrade asymfuse)") from exc


def check_nchw(x: np.ndarray, model_spec: ModelSpec, *, name: str) -> np.ndarray:
    """``(B, 3, H, W)`` with (H, W) = ``model_spec.input_size`` and B >= 1, as contiguous float32.

    Raises:
        ShapeError: another shape.
    """
    arr = np.asarray(x)
    h, w = model_spec.input_size
    if arr.ndim != 4 or arr.shape[1:] != (3, h, w) or arr.shape[0] == 0:
        raise ShapeError(f"{name} expects (B, 3, {h}, {w}) NCHW float32 with B >= 1, got shape {arr.shape}; "
                         "preprocess with asymfuse.edge.preprocess.preprocess(images, runner.model_spec)")
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_io(path: Path, model_spec: ModelSpec, *, input_hw: tuple[Any, Any], output_dim: Any) -> None:
    """Refuse a file whose tensors disagree with its own ModelSpec (a spec the SDK cannot honour).

    ``input_hw`` / ``output_dim``: the file's (H, W) and embedding width; non-int (symbolic) sizes
    are not checked.

    Raises:
        CorruptDataError: a fixed size differs from ``model_spec.input_size`` / ``embed_dim``.
    """
    want_h, want_w = model_spec.input_size
    for got, want, what in ((input_hw[0], want_h, "input height"), (input_hw[1], want_w, "input width"),
                            (output_dim, model_spec.embed_dim, "output width")):
        if isinstance(got, numbers.Integral) and int(got) != want:
            raise CorruptDataError(f"{path.name}: the model's {what} is {got} but its ModelSpec says {want}; "
                                   "the file and its spec disagree, re-export the model")
