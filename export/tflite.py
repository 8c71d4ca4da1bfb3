"""TFLite export (litert-torch). The runner and the ModelSpec reader are the edge SDK's
(:mod:`asymfuse.edge.runtimes.litert`, :mod:`asymfuse.edge.runtimes.tflite_file`), which the parity
gate uses too.

File layout (what the edge SDK reads):

- Input ``"args_0"``: ``(1, H, W, 3)`` NHWC (``ExportSpec.channel_last``, the default; the torch
  model is wrapped by ``litert_torch.to_channel_last_io``) or ``(1, 3, H, W)`` NCHW, holding pixels
  already normalised as the ModelSpec says (RGB, ``/255``, resize, ``(x - mean) / std``). An NHWC
  camera frame therefore only needs resize + normalise, no transpose. Batch is fixed to 1.
- Output: ``(1, D)`` float32 embedding (unit-norm when ``spec.l2_normalized``).
- Full int8 input type follows ``ExportSpec.int8_io``: ``"float"`` (a QUANTIZE op is the first op,
  so callers pass float32), ``"int8"`` or ``"uint8"`` (callers quantize with the input tensor's
  ``(scale, zero_point)``: ``q = round(x / scale) + zero_point``; the edge ``TFLiteRunner`` does it).
- ModelSpec, twice: a TFLite **metadata** entry named ``"asymfuse.model_spec"`` whose buffer holds
  the UTF-8 :meth:`ModelSpec.to_json`, and a sidecar ``<file>.json`` (e.g. ``x.tflite.json``)
  ``{"model_spec": {...}, "export": {...}, "layout": "NHWC"|"NCHW"}``. The edge ``read_spec`` prefers the
  embedded entry and falls back to the sidecar. The export settings are also embedded, as
  ``"asymfuse.export"``.

Precisions:

- ``fp32``: ``litert_torch.convert``.
- ``fp16``: the fp32 flatbuffer with fp16 weights (ai-edge-quantizer FLOAT_CASTING weight-only
  recipe; weights are stored fp16 and dequantized, compute stays fp32 on CPU).
- ``int8``: full-integer PT2E (litert-torch ``PT2EQuantizer``: per-channel symmetric int8 weights,
  histogram-calibrated per-tensor int8 activations) calibrated on real images. Conv -> ReLU6
  (``hardtanh``) pairs are annotated as one fused op: litert-torch's quantizer only fuses ReLU and
  otherwise observes the *pre*-clamp range, which took EfficientNet-Lite0's cosine from 0.99 to
  0.82. Ops PT2E does not annotate (GeM's ``pow``, ``normalize``) stay float. The result is run
  on the calibration images against the float model; while its worst cosine is below
  :data:`INT8_SELF_CHECK`, the first 4, 12, 20, 28 convs are kept in float (EfficientNet-Lite0 at
  224 px: all-int8 worst cosine 0.914 on calibration / 0.944 on other photos; on the benchmark's
  bbx-cropped test queries 12 float convs of 49 gave 0.989, below the 0.99 gate, and 28 give
  0.9968 at a calibration cosine of 0.9959). The model input stays int8 either way. The choice is embedded as metadata
  ``"asymfuse.quantization"`` (JSON) and returned in ``Artifact.parity["quantization"]``.
- ``int8_dynamic``: dynamic-range int8 (ai-edge-quantizer ``dynamic_legacy_wi8_afp32``: int8
  per-channel weights for layers with >= 1024 weights, activations quantized on the fly by the
  kernels; small layers such as depthwise 3x3 stay float, as the TF converter did. Quantizing those
  too, ``dynamic_wi8_afp32``, took EfficientNet-Lite0's worst cosine from 0.982 to 0.952).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.edge.errors import ConfigError
from asymfuse.edge.fileio import atomic_write_text
from asymfuse.edge.runtimes.tflite_file import sidecar_path
from asymfuse.edge.spec import SPEC_KEY, ModelSpec
from asymfuse.export.artifact import Artifact, atomic_artifact, make_artifact
from asymfuse.export.quantize import QUANT_KEY, check_calibration
from asymfuse.export.spec import ExportSpec, artifact_name
from asymfuse.export.tflite_flatbuffer import embed_metadata, set_input_type
from asymfuse.export.tflite_int8 import FLOAT_PREFIX_STEPS, INT8_SELF_CHECK, _convert_int8

__all__ = ["FLOAT_PREFIX_STEPS", "INT8_SELF_CHECK", "QUANT_KEY", "embed_metadata", "set_input_type", "sidecar_path"]

EXPORT_KEY = "asymfuse.export"


# ---- export ------------------------------------------------------------------------------------
def export_tflite(model: Any, *, model_spec: ModelSpec, export: ExportSpec, out: Path,
                  calibration: np.ndarray | None = None) -> Artifact:
    """Convert ``model`` to ``out / artifact_name(...)`` (``.tflite``) plus its ``.json`` sidecar.

    Args:
        model: eval torch module, ``(B, 3, H, W)`` normalised float32 -> ``(B, D)``.
        model_spec: embedded in the file and the sidecar.
        export: format ``"tflite"``; precision, input size, ``int8_io`` and ``channel_last`` are used.
        out: output folder (created if needed).
        calibration: ``(N, 3, H, W)`` float32 preprocessed real images; needed for ``int8``.

    Returns:
        An ``"unverified"`` :class:`Artifact` (``parity["convert_s"]`` holds the conversion time).

    Raises:
        ConfigError: wrong format, input size that disagrees with ``model_spec``, too few
            calibration images, or a non-writable ``out``.
        ShapeError: calibration images of the wrong shape.
    """
    if export.format != "tflite":
        raise ConfigError(f"export_tflite got format {export.format!r}; use EXPORTERS[{export.format!r}]")
    size = export.input_size
    if tuple(model_spec.input_size) != (size, size):
        raise ConfigError(f"ExportSpec.input_size={size} but the ModelSpec says {model_spec.input_size}; "
                          "export at the size the model was built for")
    cal = None
    if export.precision == "int8":
        cal = check_calibration(calibration, minimum=export.min_calibration, input_size=size)
        cal = cal[: export.calibration_images]
    out = Path(out)
    path = out / artifact_name(model_spec, export)
    start = time.perf_counter()
    content, quant_info = convert_with_info(model, export=export, calibration=cal)
    entries = {SPEC_KEY: model_spec.to_json(), EXPORT_KEY: export.to_json()}
    if quant_info:
        entries[QUANT_KEY] = json.dumps(quant_info, sort_keys=True)
    content = embed_metadata(content, entries)
    seconds = time.perf_counter() - start
    with atomic_artifact(path) as tmp:
        tmp.write_bytes(content)
    sidecar = {"model_spec": model_spec.to_dict(), "export": export.to_dict(),
               "layout": "NHWC" if export.channel_last else "NCHW"}
    atomic_write_text(sidecar_path(path), json.dumps(sidecar, sort_keys=True, indent=1))
    art = make_artifact(path, format="tflite", precision=export.precision, input_size=size, spec=model_spec)
    parity: dict[str, Any] = {"convert_s": round(seconds, 2)}
    if quant_info:
        parity["quantization"] = quant_info
    return art.with_status("unverified", parity=parity)


def convert_bytes(model: Any, *, export: ExportSpec, calibration: np.ndarray | None = None) -> bytes:
    """The flatbuffer bytes of ``model`` at ``export.precision`` (no metadata).

    ``calibration``: ``(N, 3, H, W)`` float32, already checked (needed for ``int8``).
    """
    return convert_with_info(model, export=export, calibration=calibration)[0]


def convert_with_info(model: Any, *, export: ExportSpec,
                      calibration: np.ndarray | None = None) -> tuple[bytes, dict[str, Any]]:
    """:func:`convert_bytes` plus what quantisation did (``{}`` except for ``int8``: see
    :func:`_convert_int8`; embedded as metadata ``"asymfuse.quantization"``)."""
    import litert_torch
    import torch

    size = export.input_size
    module = litert_torch.to_channel_last_io(model, args=[0]).eval() if export.channel_last else model.eval()
    shape = (1, size, size, 3) if export.channel_last else (1, 3, size, size)
    sample = (torch.zeros(shape, dtype=torch.float32),)
    if export.precision == "int8":
        if calibration is None:
            raise ConfigError("tflite int8 needs calibration images; pass calibration=(N, 3, H, W) real images")
        return _convert_int8(module, sample, calibration, channel_last=export.channel_last, int8_io=export.int8_io)
    with torch.no_grad():
        fp32 = bytes(litert_torch.convert(module, sample).model_content())
    if export.precision == "fp32":
        return fp32, {}
    return _quantize_aeq(fp32, export.precision), {}


def _quantize_aeq(fp32: bytes, precision: str) -> bytes:
    """fp16 weights or dynamic-range int8 with ai-edge-quantizer on an fp32 flatbuffer."""
    from ai_edge_quantizer import qtyping, quantizer, recipe

    qt = quantizer.Quantizer(bytearray(fp32))
    if precision == "int8_dynamic":
        qt.load_quantization_recipe(recipe.dynamic_legacy_wi8_afp32())
    elif precision == "fp16":
        qt.update_quantization_recipe(
            regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING,
            op_config=qtyping.OpQuantizationConfig(
                weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
                compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True))
    else:
        raise ConfigError(f"tflite precision {precision!r} is not an ai-edge-quantizer recipe")
    return bytes(qt.quantize().quantized_model)
