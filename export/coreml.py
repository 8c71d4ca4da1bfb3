"""Core ML export (coremltools ``mlprogram``) and a structural check that runs everywhere. The
ModelSpec reader and the prediction runner (macOS only) are the edge SDK's
(:mod:`asymfuse.edge.runtimes.coreml`), which the parity gate uses too.

The ``.mlpackage`` (a folder) has:

- input ``"image"``: ``ct.ImageType`` RGB, ``H x W`` of the ModelSpec, so iOS code passes a
  ``CVPixelBuffer`` already resized to ``input_size``. Core ML applies ``y = scale * pixel + bias``
  with one scale for all channels; the ModelSpec wants ``(pixel / 255 - mean_c) / std_c``. We set
  ``scale = 1 / (255 * s)`` and ``bias_c = -mean_c / s`` with ``s = std[0]``; when the per-channel
  ``std`` differ (ImageNet's do), the remaining factor ``s / std_c`` is folded into a first layer of
  a wrapper module (:class:`ChannelGain`), so the file computes exactly the ModelSpec's normalisation.
- output ``"embedding"``: ``(1, D)`` float32 (the compute may be fp16; the output is cast).
- ``user_defined_metadata["asymfuse.model_spec"]``: :meth:`ModelSpec.to_json`, plus
  ``"asymfuse.export"`` (the :class:`ExportSpec` JSON).

Precisions: ``fp16`` (default Core ML compute precision), ``fp32``, ``int8`` (the fp16 program with
int8 per-channel symmetric weights via ``coremltools.optimize.coreml.linear_quantize_weights``).

Prediction needs the Core ML framework (macOS). Elsewhere :func:`check_mil` loads the saved
package back (``skip_model_load=True``) and checks its op types and I/O, and the parity gate says
"skipped: needs macOS"; no Core ML parity number is ever made up.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.edge.errors import ConfigError, CorruptDataError
from asymfuse.edge.runtimes.coreml import INPUT_NAME, OUTPUT_NAME, load_package, read_spec
from asymfuse.edge.spec import SPEC_KEY, ModelSpec
from asymfuse.export.artifact import Artifact, atomic_artifact, make_artifact
from asymfuse.export.spec import ExportSpec, artifact_name

__all__ = ["EXPORT_KEY", "INPUT_NAME", "OUTPUT_NAME", "check_mil", "export_coreml", "image_scale_bias"]

EXPORT_KEY = "asymfuse.export"
QUANTIZED_WEIGHT_OPS = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")
"""MIL ops that hold int8 weights (iOS16 / iOS18 opsets)."""


def image_scale_bias(spec: ModelSpec) -> tuple[float, list[float], list[float]]:
    """``(scale, bias per channel, gain per channel)`` so that ``gain_c * (scale * p + bias_c)``
    equals ``(p / 255 - mean_c) / std_c`` for 0..255 pixels ``p``; gain is all ones when the std agree."""
    s = float(spec.std[0])
    scale = 1.0 / (255.0 * s)
    bias = [-float(m) / s for m in spec.mean]
    gain = [s / float(sd) for sd in spec.std]
    return scale, bias, gain


def _wrap(model: Any, gain: list[float]) -> Any:
    import torch
    from torch import nn

    class ChannelGain(nn.Module):
        """Multiplies channel c by ``gain[c]`` then runs the wrapped net (per-channel std folding)."""

        def __init__(self, net: nn.Module, values: list[float]) -> None:
            super().__init__()
            self.net = net
            self.gain: torch.Tensor
            self.register_buffer("gain", torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x * self.gain)

    if all(abs(g - 1.0) < 1e-12 for g in gain):
        return model
    return ChannelGain(model, gain).eval()


def export_coreml(model: Any, *, model_spec: ModelSpec, export: ExportSpec, out: Path,
                  calibration: np.ndarray | None = None) -> Artifact:
    """Convert ``model`` to ``out / artifact_name(...)`` (``.mlpackage``).

    Args:
        model: eval torch module, ``(B, 3, H, W)`` normalised float32 -> ``(B, D)``.
        model_spec: preprocessing (becomes the ImageType scale/bias) and embedded metadata.
        export: format ``"coreml"``, precision ``fp32`` | ``fp16`` | ``int8`` (int8 weights).
        out: output folder (created if needed).
        calibration: unused (weight quantization needs no data); accepted for the common signature.

    Returns:
        An ``"unverified"`` :class:`Artifact` (``parity["convert_s"]``: conversion seconds).

    Raises:
        ConfigError: wrong format or precision, size mismatch with the ModelSpec, non-writable ``out``.
    """
    import coremltools as ct
    import torch

    if export.format != "coreml":
        raise ConfigError(f"export_coreml got format {export.format!r}; use EXPORTERS[{export.format!r}]")
    size = export.input_size
    if tuple(model_spec.input_size) != (size, size):
        raise ConfigError(f"ExportSpec.input_size={size} but the ModelSpec says {model_spec.input_size}; "
                          "export at the size the model was built for")
    start = time.perf_counter()
    scale, bias, gain = image_scale_bias(model_spec)
    net = _wrap(model.eval(), gain)
    with torch.no_grad():
        program = torch.export.export(net, (torch.zeros(1, 3, size, size),)).run_decompositions({})
    precision = ct.precision.FLOAT32 if export.precision == "fp32" else ct.precision.FLOAT16
    image = ct.ImageType(name=INPUT_NAME, shape=(1, 3, size, size), scale=scale, bias=bias,
                         color_layout=ct.colorlayout.RGB)
    mlmodel = ct.convert(program, inputs=[image], outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
                         convert_to="mlprogram", compute_precision=precision,
                         minimum_deployment_target=ct.target.iOS16, skip_model_load=True)
    if export.precision == "int8":
        from coremltools.optimize import coreml as cto

        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity="per_channel"))
        mlmodel = cto.linear_quantize_weights(mlmodel, config=config)
    mlmodel.user_defined_metadata[SPEC_KEY] = model_spec.to_json()
    mlmodel.user_defined_metadata[EXPORT_KEY] = export.to_json()
    mlmodel.short_description = f"asymfuse {model_spec.arch} query net ({export.precision}), embedding space " \
                                f"{model_spec.embedding_space_id}"
    path = Path(out) / artifact_name(model_spec, export)
    with atomic_artifact(path) as tmp:
        mlmodel.save(str(tmp))
    seconds = time.perf_counter() - start
    art = make_artifact(path, format="coreml", precision=export.precision, input_size=size, spec=model_spec)
    return art.with_status("unverified", parity={"convert_s": round(seconds, 2)})


def _feature(desc: Any) -> dict[str, Any]:
    kind = desc.type.WhichOneof("Type")
    if kind == "imageType":
        t = desc.type.imageType
        color = {10: "GRAYSCALE", 20: "RGB", 30: "BGR"}.get(int(t.colorSpace), str(t.colorSpace))
        return {"name": desc.name, "type": "image", "shape": [1, 3, int(t.height), int(t.width)], "color": color}
    if kind == "multiArrayType":
        t = desc.type.multiArrayType
        dtype = {65568: "float32", 65552: "float16", 65600: "float64", 131104: "int32"}.get(int(t.dataType),
                                                                                           str(t.dataType))
        return {"name": desc.name, "type": "multiarray", "shape": [int(v) for v in t.shape], "dtype": dtype}
    return {"name": desc.name, "type": str(kind), "shape": []}


def check_mil(path: str | Path) -> dict[str, Any]:
    """Load the saved package back (no Core ML framework needed) and check it structurally.

    Returns:
        ``{"ops": {op type: count}, "inputs": [...], "outputs": [...], "precision": str,
        "quantized_weight_ops": int}``; each I/O entry has ``name``, ``type``, ``shape``.

    Raises:
        CorruptDataError: not an ML program, no ModelSpec, or I/O / ops that disagree with the
            embedded ModelSpec and export settings (e.g. int8 without quantized weights).
    """
    import json

    mlmodel = load_package(path, skip_model_load=True)
    spec = read_spec(path)
    pb = mlmodel.get_spec()
    if pb.WhichOneof("Type") != "mlProgram":
        raise CorruptDataError(f"{path} is not an ML program (got {pb.WhichOneof('Type')}); re-export")
    ops: Counter[str] = Counter()
    for func in pb.mlProgram.functions.values():
        for block in func.block_specializations.values():
            ops.update(op.type for op in block.operations)
    inputs = [_feature(d) for d in pb.description.input]
    outputs = [_feature(d) for d in pb.description.output]
    h, w = spec.input_size
    want_in = [{"name": INPUT_NAME, "type": "image", "shape": [1, 3, h, w], "color": "RGB"}]
    if inputs != want_in:
        raise CorruptDataError(f"{path}: inputs {inputs} differ from the expected {want_in}")
    if [(o["name"], o["shape"]) for o in outputs] != [(OUTPUT_NAME, [1, spec.embed_dim])]:
        raise CorruptDataError(f"{path}: outputs {outputs} are not [{OUTPUT_NAME!r} (1, {spec.embed_dim})]")
    precision = json.loads(dict(mlmodel.user_defined_metadata).get(EXPORT_KEY, "{}")).get("precision", "unknown")
    n_quant = sum(ops[k] for k in QUANTIZED_WEIGHT_OPS)
    if precision == "int8" and n_quant == 0:
        raise CorruptDataError(f"{path} claims int8 weights but has no {'/'.join(QUANTIZED_WEIGHT_OPS)} ops")
    if not any(k in ops for k in ("conv", "linear", "matmul")):
        raise CorruptDataError(f"{path} has no conv/linear ops; the program is empty or broken")
    return {"ops": dict(sorted(ops.items())), "inputs": inputs, "outputs": outputs, "precision": precision,
            "quantized_weight_ops": n_quant}
