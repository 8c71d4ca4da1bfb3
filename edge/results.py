"""``EmbeddingResult``: what :class:`~asymfuse.edge.embedder.ImageEmbedder` returns for one image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asymfuse.edge.errors import ShapeError


@dataclass(frozen=True, eq=False)
class EmbeddingResult:
    """One image's embedding and how it was made.

    Attributes:
        embedding: ``(embed_dim,)`` float32, unit-norm (re-normalised in float32 after the runtime,
            so quantised outputs are unit-norm too), read-only.
        embedding_space_id: the model's space; search only a gallery of the same id.
        model_name: the model file's name, e.g. ``"efficientnet_lite0-tflite-int8-224.tflite"``.
        runtime: ``"onnxruntime"``, ``"litert"`` or ``"coreml"``.
        preprocess_ms: wall ms to decode / convert, resize and normalise this image.
        inference_ms: wall ms of the runtime for this image; for a batch run in one call (ONNX
            ``embed_batch``) the call's time divided evenly among its images.
    """

    embedding: np.ndarray
    embedding_space_id: str
    model_name: str
    runtime: str
    preprocess_ms: float
    inference_ms: float

    def __post_init__(self) -> None:
        """Raises:
            ShapeError: ``embedding`` is not a finite 1-D float vector.
        """
        vec = np.array(self.embedding, dtype=np.float32)  # a private copy, then frozen
        if vec.ndim != 1 or vec.size == 0 or not np.all(np.isfinite(vec)):
            raise ShapeError(f"an embedding must be a finite (d,) vector, got shape {vec.shape}")
        vec.setflags(write=False)
        object.__setattr__(self, "embedding", vec)

    @property
    def latency_ms(self) -> float:
        """``preprocess_ms + inference_ms``."""
        return self.preprocess_ms + self.inference_ms

    @property
    def embed_dim(self) -> int:
        return int(self.embedding.shape[0])
