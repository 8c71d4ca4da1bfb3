"""``ImageEmbedder``: the phone-side SDK. An exported query net in, unit-norm embeddings out.

Shaped like MediaPipe Tasks' image embedder::

    with ImageEmbedder.create_from_model_path("lite0-tflite-int8-224.tflite") as embedder:
        result = embedder.embed("photo.jpg")        # or a uint8 array, or a PIL image
        result.embedding                            # (embed_dim,) float32, unit-norm

Preprocessing comes only from the ModelSpec embedded in the file (resize policy, size, mean/std),
through the same NumPy + Pillow code the training side uses (:mod:`asymfuse.edge.preprocess`).
The runners are those of :mod:`asymfuse.edge.runtimes`, which the exporters' parity gate also
runs. No torch, ever.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.edge.errors import ClosedError, ConfigError, IncompatibleModelError, ShapeError
from asymfuse.edge.image_input import ImageInput, to_model_input
from asymfuse.edge.options import ImageEmbedderOptions
from asymfuse.edge.results import EmbeddingResult
from asymfuse.edge.runtimes import Runner, load_runner
from asymfuse.edge.spec import ModelSpec
from asymfuse.edge.wire import Hit

MAX_BATCH = 32
"""Images per runtime call in :meth:`ImageEmbedder.embed_batch` on a dynamic-batch file (bounds memory)."""


class ImageEmbedder:
    """Embeds images with one exported query net. Create it with :meth:`create_from_model_path` or
    :meth:`create_from_options`; use it as a context manager or call :meth:`close`.

    Not thread-safe: use one embedder per thread.
    """

    def __init__(self, runner: Runner, *, options: ImageEmbedderOptions) -> None:
        """Wrap an open ``runner``; prefer the ``create_from_*`` class methods.

        Raises:
            IncompatibleModelError: ``options.search`` names another embedding space than the model's.
        """
        spec = runner.model_spec
        if options.search is not None and options.search.embedding_space_id != spec.embedding_space_id:
            raise IncompatibleModelError(
                f"the search config's embedding space {options.search.embedding_space_id!r} is not the model's "
                f"{spec.embedding_space_id!r}; use the searcher that serves this model's space",
                server_space=options.search.embedding_space_id, client_space=spec.embedding_space_id)
        self._runner: Runner | None = runner
        self._options = options
        self._model_spec = spec
        self._client: Any = None

    # ---------------------------------------------------------------- creation
    @classmethod
    def create_from_model_path(cls, model_path: str | os.PathLike[str]) -> ImageEmbedder:
        """An embedder with default options (runtime picked by the file's suffix).

        Raises:
            UnknownNameError: a suffix no runtime reads.
            CorruptDataError: a missing or damaged file, or one without a valid ModelSpec.
            ConfigError: a Core ML file off macOS.
            MissingDependencyError: the runtime package is not installed.
        """
        return cls.create_from_options(ImageEmbedderOptions(model_path=Path(model_path)))

    @classmethod
    def create_from_options(cls, options: ImageEmbedderOptions) -> ImageEmbedder:
        """An embedder as ``options`` say.

        Raises:
            ConfigError: ``options`` is not an ImageEmbedderOptions; a Core ML file off macOS.
            UnknownNameError, CorruptDataError, MissingDependencyError: as :meth:`create_from_model_path`.
            IncompatibleModelError: ``options.search`` names another embedding space.
        """
        if not isinstance(options, ImageEmbedderOptions):
            raise ConfigError(f"create_from_options takes an ImageEmbedderOptions, got {type(options).__name__}")
        runner = load_runner(options.model_path, runtime=options.runtime, num_threads=options.num_threads)
        try:
            return cls(runner, options=options)
        except BaseException:
            runner.close()
            raise

    # ---------------------------------------------------------------- properties
    @property
    def model_spec(self) -> ModelSpec:
        """The ModelSpec embedded in the model file (preprocessing and embedding space)."""
        return self._model_spec

    @property
    def options(self) -> ImageEmbedderOptions:
        return self._options

    @property
    def runtime(self) -> str:
        """``"onnxruntime"``, ``"litert"`` or ``"coreml"``."""
        return self._open().runtime

    # ---------------------------------------------------------------- embedding
    def embed(self, image: ImageInput) -> EmbeddingResult:
        """Embed one image (see :mod:`asymfuse.edge.image_input` for what is accepted).

        Returns:
            An :class:`EmbeddingResult`; its ``embedding`` is ``(embed_dim,)`` float32, unit-norm.

        Raises:
            ShapeError: a wrong dtype or shape, an empty image, or a model output that is not finite.
            CorruptDataError: an unreadable image file.
            ConfigError: an unsupported input type.
            ClosedError: the embedder is closed.
        """
        runner = self._open()
        t0 = time.perf_counter()
        x = self._preprocess(image)
        t1 = time.perf_counter()
        y = runner.run(x[None])
        t2 = time.perf_counter()
        return self._result(y[0], (t1 - t0) * 1e3, (t2 - t1) * 1e3)

    def embed_batch(self, images: Sequence[ImageInput] | np.ndarray) -> list[EmbeddingResult]:
        """Embed several images: one runtime call per :data:`MAX_BATCH` images on a dynamic-batch
        file (ONNX), one call per image otherwise (TFLite, Core ML take a batch of 1).

        Args:
            images: a sequence of images (any mix of accepted inputs and sizes), or a
                ``(B, H, W, C)`` uint8 array of B images.

        Returns:
            One :class:`EmbeddingResult` per image, in order (``[]`` for no images).

        Raises:
            ConfigError: ``images`` is a single image (use :meth:`embed`) or not a sequence.
            ShapeError, CorruptDataError, ClosedError: as :meth:`embed`.
        """
        runner = self._open()
        items = self._as_list(images)
        results: list[EmbeddingResult] = []
        step = MAX_BATCH if runner.dynamic_batch else 1
        for start in range(0, len(items), step):
            chunk = items[start:start + step]
            pre_ms, rows = [], []
            for item in chunk:
                t0 = time.perf_counter()
                rows.append(self._preprocess(item))
                pre_ms.append((time.perf_counter() - t0) * 1e3)
            t1 = time.perf_counter()
            y = runner.run(np.stack(rows))
            each_ms = (time.perf_counter() - t1) * 1e3 / len(chunk)
            results += [self._result(vec, ms, each_ms) for vec, ms in zip(y, pre_ms)]
        return results

    def search(self, image: ImageInput, *, k: int = 10) -> list[Hit]:
        """Embed ``image`` and search the gallery of ``options.search`` (top ``k`` hits, best first).

        Raises:
            ConfigError: the options carry no ``search`` config.
            RemoteError, IncompatibleModelError: the searcher refused (see :class:`SearchClient`).
            ShapeError, CorruptDataError, ClosedError: as :meth:`embed`.
        """
        if self._options.search is None:
            raise ConfigError("this embedder has no search config; create it with "
                              "ImageEmbedderOptions(search=ClientConfig(target=..., embedding_space_id=...))")
        result = self.embed(image)
        if self._client is None:
            from asymfuse.edge.search_client import SearchClient

            self._client = SearchClient(self._options.search)
        hits: list[Hit] = self._client.search(result.embedding, k)
        return hits

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Release the runtime (and the search channel); later calls raise :class:`ClosedError`.
        Closing twice is fine."""
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> ImageEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- internals
    def _open(self) -> Runner:
        if self._runner is None:
            raise ClosedError(f"this ImageEmbedder ({self._options.model_path.name}) is closed; create a new one")
        return self._runner

    def _preprocess(self, image: ImageInput) -> np.ndarray:
        """One image -> ``(3, H, W)`` float32 normalised per the ModelSpec."""
        return to_model_input(image, self._model_spec, color_order=self._options.color_order)

    @staticmethod
    def _as_list(images: Sequence[ImageInput] | np.ndarray) -> list[ImageInput]:
        if isinstance(images, np.ndarray):
            if images.ndim != 4:
                raise ConfigError(f"embed_batch takes a list of images or a (B, H, W, C) array, got an array of "
                                  f"shape {images.shape}; for one image use embed()")
            return list(images)
        if isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
            raise ConfigError(f"embed_batch takes a list of images, got {type(images).__name__}; for one image "
                              "use embed()")
        return list(images)

    def _result(self, vec: np.ndarray, preprocess_ms: float, inference_ms: float) -> EmbeddingResult:
        v = np.asarray(vec, dtype=np.float32)
        norm = float(np.linalg.norm(v)) if np.all(np.isfinite(v)) else float("nan")
        if not np.isfinite(norm) or norm == 0.0:
            raise ShapeError(f"{self._options.model_path.name} returned a zero or non-finite embedding; the model "
                             "file is broken, re-export it")
        runner = self._open()
        return EmbeddingResult(embedding=v / np.float32(norm), embedding_space_id=self._model_spec.embedding_space_id,
                               model_name=runner.path.name, runtime=runner.runtime, preprocess_ms=preprocess_ms,
                               inference_ms=inference_ms)
