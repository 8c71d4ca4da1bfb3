"""ONNX int8: static QDQ (calibrated, per-channel) and dynamic-range quantisation, each with the
float-prefix self-check of :func:`asymfuse.export.quantize.search_float_prefix`.

Called by :func:`asymfuse.export.onnx.export_onnx` on the raw dynamo export; every intermediate
file goes into the caller's private work folder.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.edge.errors import ConfigError
from asymfuse.export.onnx_graph import INPUT_NAME, head_nodes, import_onnx, import_ort, name_nodes
from asymfuse.export.quantize import batches, search_float_prefix


def _pre_process(src: Path, dst: Path) -> tuple[Path, Any, list[Any], list[int]]:
    """onnxruntime ``quant_pre_process`` (shape inference + optimisation before quantisation), then
    every node named (exclude lists work by name) and saved back to ``dst``.

    Symbolic shape inference cannot follow the ``Expand`` of ``F.normalize`` with a dynamic batch;
    plain ONNX shape inference is enough for these CNNs, so it falls back to that.

    Returns:
        ``(dst, proto, nodes, conv_at)``: the file, its ModelProto, its nodes in order and the
        positions of the Conv nodes among them.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx = import_onnx()
    try:
        quant_pre_process(str(src), str(dst))
    except (TypeError, ValueError, AssertionError, KeyError):
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
    proto = onnx.load(str(dst))
    name_nodes(proto)
    onnx.save(proto, str(dst))
    nodes = list(proto.graph.node)
    return dst, proto, nodes, [i for i, n in enumerate(nodes) if n.op_type == "Conv"]


def _float_prefix(nodes: list[Any], conv_at: list[int], k: int) -> list[str]:
    """Names of every node up to the ``k``-th Conv (none for ``k == 0``): kept in float."""
    return [n.name for n in nodes[:conv_at[k - 1] + 1]] if k > 0 else []


class _Reader:
    """onnxruntime ``CalibrationDataReader`` over ``(N, 3, S, S)`` images, one image per call."""

    def __init__(self, images: np.ndarray) -> None:
        self._images = images
        self._it = iter(batches(images, batch_size=1))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else {INPUT_NAME: batch}

    def rewind(self) -> None:
        self._it = iter(batches(self._images, batch_size=1))


def quantize_static_int8(raw: Path, work: Path, calib: np.ndarray | None) -> tuple[Path, dict[str, Any]]:
    """quant_pre_process + static QDQ int8 (per-channel weights) calibrated on ``calib``.

    Depthwise-separable nets (MobileNet, EfficientNet-Lite) lose most accuracy in their first
    blocks, where per-tensor activation ranges differ wildly between channels. After quantising
    everything, the result is checked against the float model on the calibration images; while the
    worst cosine is below :data:`~asymfuse.export.quantize.INT8_SELF_CHECK`, more leading Conv
    layers (:data:`~asymfuse.export.quantize.FLOAT_PREFIX_STEPS`) are kept in float. The choice is
    recorded, never silent.

    Returns:
        The quantised file and what was done: ``{"float_convs": k, "n_convs": n,
        "calibration_cosine_min": c, "calibration_images": N, ...}``.
    """
    ort = import_ort()
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static

    if calib is None:  # pragma: no cover - checked by the caller
        raise ConfigError("static int8 needs calibration images")
    pre, proto, nodes, conv_at = _pre_process(raw, work / "pre.onnx")
    head = head_nodes(proto)
    reference = run_file(ort, pre, calib)
    cache = work / "calibration.json"

    def attempt(k: int) -> tuple[Path, np.ndarray, int]:
        prefix = _float_prefix(nodes, conv_at, k)
        dst = work / f"int8-{k}.onnx"
        reader = type("AsymfuseReader", (_Reader, CalibrationDataReader), {})(calib)
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints progress
            quantize_static(str(pre), str(dst), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            nodes_to_exclude=head + prefix, calibrate_method=CalibrationMethod.MinMax,
                            calibration_cache_path=str(cache),
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        return dst, run_file(ort, dst, calib), len(conv_at)

    dst, k, cos, _ = search_float_prefix(attempt, reference)
    info = {"float_convs": k, "n_convs": len(conv_at), "calibration_cosine_min": round(cos, 6),
            "calibration_images": len(calib), "calibration_method": "minmax", "activations": "uint8 per-tensor",
            "weights": "int8 per-channel"}
    return dst, info


def run_file(ort: Any, path: Path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: b})[0] for b in batches(x, batch_size=16)])


def quantize_dynamic_int8(raw: Path, work: Path, calib: np.ndarray | None) -> tuple[Path, dict[str, Any]]:
    """Dynamic-range int8: per-channel uint8 weights (ConvInteger on the CPU needs uint8), activation
    ranges computed per run. Depthwise convs and the head stay float (per-tensor dynamic activations
    wreck them). When ``calib`` is given, leading convs are kept in float as for static int8 until the
    self-check on those images passes; without images no check is possible and none is claimed.
    """
    ort = import_ort()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pre, proto, nodes, conv_at = _pre_process(raw, work / "pre.onnx")
    depthwise = [n.name for n in nodes if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)]
    keep = head_nodes(proto) + depthwise

    def quantize(k: int) -> Path:
        prefix = _float_prefix(nodes, conv_at, k)
        dst = work / f"int8_dynamic-{k}.onnx"
        quantize_dynamic(str(pre), str(dst), per_channel=True, weight_type=QuantType.QUInt8,
                         nodes_to_exclude=keep + prefix)
        return dst

    info: dict[str, Any] = {"n_convs": len(conv_at), "float_depthwise": len(depthwise),
                            "weights": "uint8 per-channel", "activations": "dynamic uint8"}
    if calib is None:  # nothing to check against: all convs but the depthwise ones and the head quantised
        return quantize(0), {"float_convs": 0, **info}

    def attempt(k: int) -> tuple[Path, np.ndarray, int]:
        dst = quantize(k)
        return dst, run_file(ort, dst, calib), len(conv_at)

    dst, k, cos, _ = search_float_prefix(attempt, run_file(ort, pre, calib))
    return dst, {"float_convs": k, **info, "calibration_cosine_min": round(cos, 6), "calibration_images": len(calib)}
