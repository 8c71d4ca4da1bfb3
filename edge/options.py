"""``ImageEmbedderOptions``: how to create an :class:`~asymfuse.edge.embedder.ImageEmbedder`.

There is deliberately no option for int8 input handling. The exporter's full-int8 TFLite files
take float32 input by default (``ExportSpec.int8_io="float"``: the file's first op quantizes);
files exported with ``int8_io="int8"`` or ``"uint8"`` carry the input tensor's
``(scale, zero_point)``, and the runner quantizes with them. Either way the file says what it
takes, so no setting could change what works; the runner's ``input_dtype`` shows which it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from asymfuse.edge.errors import ConfigError, unknown_name
from asymfuse.edge.image_input import COLOR_ORDERS
from asymfuse.edge.runtimes import RUNTIMES, runtime_for_path
from asymfuse.edge.runtimes.base import check_num_threads
from asymfuse.edge.search_client import ClientConfig

RUNTIME_CHOICES: tuple[str, ...] = ("auto", *RUNTIMES)


@dataclass(frozen=True)
class ImageEmbedderOptions:
    """Options of an :class:`~asymfuse.edge.embedder.ImageEmbedder`.

    Attributes:
        model_path: an exported query net: ``.onnx``, ``.tflite``, ``.mlpackage`` (folder) or ``.mlmodel``.
            Its embedded ModelSpec is the only source of preprocessing.
        runtime: ``"auto"`` (by the file's suffix), ``"onnxruntime"``, ``"litert"`` or ``"coreml"`` (macOS).
        num_threads: intra-op threads of the runtime; None keeps its default.
        color_order: channel order of NumPy array inputs, ``"RGB"`` or ``"BGR"`` (OpenCV frames). PIL
            images and files carry their own order.
        search: how to reach the searcher for :meth:`ImageEmbedder.search`; its ``embedding_space_id``
            must equal the model's. None: embedding only.
    """

    model_path: Path
    runtime: str = "auto"
    num_threads: int | None = None
    color_order: str = "RGB"
    search: ClientConfig | None = None

    def __post_init__(self) -> None:
        """Raises:
            ConfigError: empty ``model_path``, bad ``num_threads`` / ``color_order`` / ``search``.
            UnknownNameError: unknown ``runtime``, or ``"auto"`` with a suffix no runtime reads.
        """
        if not isinstance(self.model_path, (str, os.PathLike)) or not os.fspath(self.model_path):
            raise ConfigError(f"model_path must be the path of an exported model file, got {self.model_path!r}")
        object.__setattr__(self, "model_path", Path(self.model_path))
        if self.runtime not in RUNTIME_CHOICES:
            raise unknown_name("runtime", str(self.runtime), RUNTIME_CHOICES)
        if self.runtime == "auto":
            runtime_for_path(self.model_path)
        object.__setattr__(self, "num_threads", check_num_threads(self.num_threads))
        if self.color_order not in COLOR_ORDERS:
            raise ConfigError(f"color_order={self.color_order!r} is unknown; choose one of {list(COLOR_ORDERS)}")
        if self.search is not None and not isinstance(self.search, ClientConfig):
            raise ConfigError(f"search must be an asymfuse.edge.search_client.ClientConfig or None, got "
                              f"{type(self.search).__name__}")
