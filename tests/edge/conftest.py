"""Fixtures of the edge SDK tests: real exported files of a real (tiny) query net, and real photos.

The net is the export tests' tiny :class:`QueryNet` (4 convs, GeM, whitening, L2 norm) at 64 px;
it is exported once per session to ONNX fp32 / int8 and TFLite fp32 / int8 by the real exporters
(~30 s in all). Torch is used here, by the tests, never by ``asymfuse.edge``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.export.conftest import TINY_SIZE, photos, tiny_query_net

FORMATS = {  # name -> (export format, precision)
    "onnx-fp32": ("onnx", "fp32"),
    "onnx-int8": ("onnx", "int8"),
    "tflite-fp32": ("tflite", "fp32"),
    "tflite-int8": ("tflite", "int8"),
}


@pytest.fixture(scope="session")
def query_net():
    """The torch query net the files are exported from (eval mode)."""
    return tiny_query_net()


@pytest.fixture(scope="session")
def real_photos() -> list[np.ndarray]:
    """skimage's bundled photos and two crops of each (48 real images of many sizes; ``(H, W, 3)``
    uint8 RGB, and ``(H, W)`` grey for 8 of the 16 photos). ``[0]`` is the astronaut."""
    return [np.ascontiguousarray(p) for p in photos()]


@pytest.fixture(scope="session")
def edge_models(tmp_path_factory, query_net, real_photos) -> dict[str, Path]:
    """``{name: path}`` of :data:`FORMATS`, exported with the default ExportSpec settings (int8
    TFLite keeps its default float input). Calibration: the 24 even-indexed photos, as in tests/export."""
    from asymfuse.edge.preprocess import preprocess
    from asymfuse.export.registry import create_exporter
    from asymfuse.export.spec import ExportSpec

    out = tmp_path_factory.mktemp("edge-models")
    calib = preprocess(real_photos[::2], query_net.spec)
    paths = {}
    for name, (fmt, precision) in FORMATS.items():
        spec = ExportSpec(format=fmt, precision=precision, input_size=TINY_SIZE, calibration_images=len(calib))
        art = create_exporter(fmt)(query_net, model_spec=query_net.spec, export=spec, out=out, calibration=calib)
        paths[name] = art.path
    return paths
