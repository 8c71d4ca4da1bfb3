"""``asymfuse.edge.runtimes``: the {runtime: loader} table, suffix lookup, the runners' contract
(shape checks, batch policy, close) on real exported files, and the tflite_runtime fallback."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from asymfuse.edge import runtimes
from asymfuse.edge.errors import ClosedError, ConfigError, MissingDependencyError, ShapeError, UnknownNameError
from asymfuse.edge.preprocess import preprocess
from asymfuse.edge.runtimes import litert, ort


def test_tables_name_every_runtime_and_suffix():
    assert runtimes.RUNTIMES == ("onnxruntime", "litert", "coreml")
    assert set(runtimes.LOADERS) == set(runtimes.SPEC_READERS) == set(runtimes.RUNTIMES)
    assert {runtimes.runtime_for_path(p) for p in ("a.onnx", "b.TFLITE", "c.mlpackage", "d.mlmodel")} == \
        set(runtimes.RUNTIMES)
    with pytest.raises(UnknownNameError, match="unknown model file suffix '.pt'; choose one of: .mlmodel, "
                                               ".mlpackage, .onnx, .tflite"):
        runtimes.runtime_for_path("net.pt")
    with pytest.raises(UnknownNameError, match="unknown runtime 'tensorrt'"):
        runtimes.create_runner("tensorrt", "net.onnx")
    with pytest.raises(UnknownNameError, match="unknown runtime 'tvm'"):
        runtimes.read_model_spec("net.onnx", runtime="tvm")


@pytest.mark.parametrize("name, cls, dynamic", [("onnx-fp32", ort.OnnxRunner, True),
                                                ("tflite-fp32", litert.TFLiteRunner, False),
                                                ("tflite-int8", litert.TFLiteRunner, False)])
def test_runners_run_real_files_and_honour_the_contract(edge_models, query_net, real_photos, name, cls, dynamic):
    path = edge_models[name]
    x = preprocess(real_photos[:3], query_net.spec)
    assert runtimes.read_model_spec(path) == query_net.spec
    with runtimes.load_runner(path, num_threads=1) as runner:
        assert isinstance(runner, cls) and isinstance(runner, runtimes.Runner)
        assert runner.dynamic_batch is dynamic and runner.model_spec == query_net.spec and runner.path == path
        out = runner.run(x)
        assert out.shape == (3, 32) and out.dtype == np.float32
        np.testing.assert_allclose(runner.run(x[1:2]), out[1:2], atol=1e-5)
        with pytest.raises(ShapeError, match=r"expects \(B, 3, 64, 64\) NCHW"):
            runner.run(x.transpose(0, 2, 3, 1))
        with pytest.raises(ShapeError, match="B >= 1"):
            runner.run(x[:0])
    with pytest.raises(ClosedError, match="closed; create a new one"):
        runner.run(x)
    runner.close()


def test_tflite_int8_input_follows_the_file(edge_models):
    """The exporter's default full-int8 file takes float32 input (its first op quantizes), so the
    SDK needs no int8 option; see tests/export/test_tflite.py for int8 / uint8 input files."""
    with litert.load_runner(edge_models["tflite-int8"]) as runner:
        assert runner.input_dtype == np.float32 and runner.layout == "NHWC"


def test_bad_thread_counts_and_packages(edge_models):
    for bad in (0, -2, 2.0, "4", True):
        with pytest.raises(ConfigError, match="num_threads must be a positive int"):
            runtimes.load_runner(edge_models["onnx-fp32"], num_threads=bad)
    with pytest.raises(ConfigError, match="interpreter package 'tensorflow' is unknown"):
        litert.load_runner(edge_models["tflite-fp32"], package="tensorflow")


def test_the_tflite_runtime_fallback_as_it_is_here(edge_models, query_net, real_photos):
    """Forces ``tflite_runtime`` (no mock): where it is missing, the error names the extra; where it is
    built for NumPy 1.x and NumPy is 2 (tflite-runtime 2.14.0, the newest, with numpy 2.4: measured),
    the runner refuses with the fix; with numpy<2 it must agree with ai-edge-litert."""
    path = edge_models["tflite-fp32"]
    x = preprocess(real_photos[:2], query_net.spec)
    if importlib.util.find_spec("tflite_runtime") is None:
        with pytest.raises(MissingDependencyError, match="tflite-runtime is not installed.*asymfuse\\[edge\\]"):
            litert.load_runner(path, package="tflite_runtime")
        return
    if int(np.__version__.split(".")[0]) >= 2:
        with pytest.raises(MissingDependencyError, match="tflite_runtime cannot run with numpy 2.*ai-edge-litert"):
            litert.load_runner(path, package="tflite_runtime")
        return
    with litert.load_runner(path, package="tflite_runtime") as fallback, litert.load_runner(path) as main:
        assert fallback.package == "tflite_runtime" and main.package == "ai_edge_litert"
        np.testing.assert_allclose(fallback.run(x), main.run(x), atol=1e-5)
