"""Wrap any user ONNX model that maps an image batch to global vectors (onnxruntime)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from asymfuse.cloud.features.base import FeatureExtractor, GlobalFeatures, check_batch
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError, missing_dependency
from asymfuse.edge.preprocess import preprocess
from asymfuse.edge.spec import SPEC_KEY, ModelSpec


class OnnxGlobalExtractor(FeatureExtractor):
    """Runs ``model_path`` with onnxruntime on images preprocessed by ``model_spec``.

    The model takes ``(B, 3, H, W)`` float32 (B may be fixed to 1, then images run one by one)
    and returns ``(B, D)`` (or ``(B, D, 1, 1)``); outputs are L2-normalised here. Without a
    ``model_spec``, the one stored in the file's metadata (``asymfuse export`` writes it) is used.

    Raises:
        CorruptDataError: the file is missing or not a loadable ONNX model.
        ConfigError: not one ``(B, 3, H, W)`` input, an unknown ``output_name``, or no
            ``model_spec`` given and none stored in the file.
    """

    kind = "global"

    def __init__(self, *, name: str, model_path: str | os.PathLike[str], model_spec: ModelSpec | None = None,
                 output_name: str | None = None, threads: int = 0) -> None:
        try:
            import onnxruntime as ort
        except ModuleNotFoundError as exc:
            raise missing_dependency("onnxruntime", "cloud") from exc
        path = Path(model_path)
        if not path.is_file():
            raise CorruptDataError(f"ONNX model {path} does not exist; check model_path")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        try:
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise CorruptDataError(f"ONNX model {path} cannot be loaded: {exc}") from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ConfigError(f"ONNX model {path} must take one (B, 3, H, W) input, got "
                              f"{[(i.name, i.shape) for i in inputs]}")
        self._input = inputs[0].name
        self._fixed_batch = inputs[0].shape[0] if isinstance(inputs[0].shape[0], int) else None
        outputs = [o.name for o in self._session.get_outputs()]
        if output_name is not None and output_name not in outputs:
            raise ConfigError(f"output {output_name!r} not in ONNX model outputs {outputs}")
        self._output = output_name or outputs[0]
        if model_spec is None:
            model_spec = _stored_spec(self._session, path)
        self.name, self.spec, self.model_path = name, model_spec, path
        self.dim = model_spec.embed_dim

    @cached_property
    def extractor_id(self) -> str:
        digest = hashlib.sha256(self.model_path.read_bytes()).hexdigest()[:12]
        spec_digest = hashlib.sha256(self.spec.to_json().encode()).hexdigest()[:8]
        return f"{self.name}/{digest}-{spec_digest}"

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise ConfigError(f"{self.name} extractor is closed; create a new one")
        if self._fixed_batch == 1 and len(x) > 1:
            return np.concatenate([self._run(x[i:i + 1]) for i in range(len(x))])
        return np.asarray(self._session.run([self._output], {self._input: x})[0])

    def extract(self, images: Sequence[np.ndarray]) -> GlobalFeatures:
        check_batch(images)
        y = self._run(preprocess(list(images), self.spec)).astype(np.float32)
        y = y.reshape(len(images), -1)
        if y.shape[1] != self.dim:
            raise ShapeError(f"ONNX model outputs dim {y.shape[1]} but model_spec.embed_dim is {self.dim}; "
                             "fix the model_spec or pick the right output_name")
        if not np.all(np.isfinite(y)):
            raise ShapeError(f"ONNX model {self.model_path} produced NaN/inf")
        return GlobalFeatures(y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12))

    def close(self) -> None:
        self._session = None


def _stored_spec(session: object, path: Path) -> ModelSpec:
    """The ModelSpec in the file's ``metadata_props`` (read through onnxruntime, no onnx package)."""
    meta = dict(session.get_modelmeta().custom_metadata_map)  # type: ignore[attr-defined]
    if SPEC_KEY not in meta:
        raise ConfigError(f"ONNX model {path} carries no ModelSpec (metadata {SPEC_KEY!r}); pass the "
                          "preprocessing as --option model_spec=<ModelSpec JSON file>, or export the model "
                          "with `asymfuse export`, which stores it")
    try:
        return ModelSpec.from_json(meta[SPEC_KEY])
    except (ConfigError, ValueError, TypeError, KeyError) as exc:
        raise CorruptDataError(f"ONNX model {path}: its stored ModelSpec is unreadable ({exc}); re-export it") from exc
