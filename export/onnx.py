"""ONNX export: ``torch.onnx.export(dynamo=True)`` with a dynamic batch axis and a fixed image
size, offline onnxruntime graph optimisation, and fp16 / static int8 (QDQ) / dynamic int8.

Pipeline (all intermediate files in a private temp folder, the final file written through
:func:`~asymfuse.export.artifact.atomic_artifact`):

1. ``torch.onnx.export(model, x, dynamo=True)`` with batch dim dynamic; input ``"image"``
   ``(B, 3, S, S)`` float32 NCHW normalised, output ``"embedding"`` ``(B, D)`` float32.
2. onnxruntime basic graph optimisation, saved offline (constant folding, Conv+BN fusion;
   standard ONNX ops only, so the file stays portable across onnxruntime builds).
3. Precision:
   - ``fp32``: as is;
   - ``fp16``: ``onnxruntime.transformers.float16.convert_float_to_float16`` with float32 I/O;
     the head (GeM, whitening, L2 norm: every node after the last Conv) stays float32 because
     GeM's ``x**p`` overflows fp16;
   - ``int8``: ``quant_pre_process`` then ``quantize_static`` in QDQ format, per-channel int8
     weights, uint8 activations calibrated (min-max) on the given real images, head in float;
     leading layers stay float when a self-check on the calibration images falls short;
   - ``int8_dynamic``: ``quantize_dynamic`` (per-channel uint8 weights, ConvInteger/MatMulInteger;
     activation ranges computed at run time; depthwise convs and the head stay float).

   Both int8 paths live in :mod:`asymfuse.export.onnx_int8`.
4. ModelSpec JSON in ``metadata_props["asymfuse.model_spec"]`` and the ExportSpec JSON in
   ``metadata_props["asymfuse.export"]``; read back with :func:`asymfuse.edge.runtimes.ort.read_spec`
   and :func:`read_export_spec`.

torch is imported only by :func:`export_onnx`; :func:`read_metadata` needs ``onnx``. Reading the
ModelSpec back and running the file is the edge SDK's job (:mod:`asymfuse.edge.runtimes.ort`,
onnxruntime only), which the parity gate uses too.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.edge.errors import ConfigError, CorruptDataError, missing_dependency
from asymfuse.edge.spec import SPEC_KEY, ModelSpec
from asymfuse.export.artifact import Artifact, atomic_artifact, make_artifact
from asymfuse.export.onnx_graph import INPUT_NAME, head_nodes, import_onnx, import_ort, name_nodes
from asymfuse.export.quantize import QUANT_KEY, check_calibration
from asymfuse.export.spec import ExportSpec, artifact_name

EXPORT_KEY = "asymfuse.export"
OUTPUT_NAME = "embedding"
OPSET = 18


# ---- export ----------------------------------------------------------------------------------
def export_onnx(model: Any, *, model_spec: ModelSpec, export: ExportSpec, out: Path,
                calibration: np.ndarray | None = None) -> Artifact:
    """Export ``model`` to ``out / artifact_name(model_spec, export)``.

    Args:
        model: torch module, ``(B, 3, S, S)`` float32 NCHW normalised -> ``(B, D)`` float32.
            Run in eval mode (its previous mode is restored).
        model_spec: the model's spec; its ``input_size`` must be (S, S) with S = ``export.input_size``.
        export: an ``ExportSpec`` with ``format="onnx"``.
        out: output folder (created if missing).
        calibration: ``(N, 3, S, S)`` float32 preprocessed real images; needed for ``int8``, used by
            ``int8_dynamic`` (when given) to check which leading layers must stay float.

    Returns:
        An ``"unverified"`` :class:`Artifact`; run :func:`asymfuse.export.verify.verify_artifact`.

    Raises:
        ConfigError: wrong format, size mismatch, too few calibration images, unwritable ``out``.
        ShapeError: calibration images of the wrong shape or with NaN.
        MissingDependencyError: onnx / onnxruntime / onnxscript not installed.
    """
    if export.format != "onnx":
        raise ConfigError(f"export_onnx got an ExportSpec for {export.format!r}; use EXPORTERS[{export.format!r}]")
    size = export.input_size
    if tuple(model_spec.input_size) != (size, size):
        raise ConfigError(f"the model's ModelSpec.input_size is {tuple(model_spec.input_size)} but the export asks "
                          f"for {size}x{size}; rebuild the net at input_size={size} (or pass --size "
                          f"{model_spec.input_size[0]})")
    calib = None
    if export.precision == "int8" or (export.precision == "int8_dynamic" and calibration is not None):
        calib = check_calibration(calibration, minimum=export.min_calibration, input_size=size)
        calib = calib[:export.calibration_images]
    onnx = import_onnx()
    import_ort()
    from asymfuse.export.onnx_int8 import quantize_dynamic_int8, quantize_static_int8

    target = Path(out) / artifact_name(model_spec, export)
    with atomic_artifact(target) as tmp_final, tempfile.TemporaryDirectory(prefix="asymfuse-onnx-") as work:
        work_dir = Path(work)
        raw = work_dir / "raw.onnx"
        _torch_export(model, raw, size=size, batch=export.batch)
        quant_info: dict[str, Any] = {}
        if export.precision == "int8":
            final, quant_info = quantize_static_int8(raw, work_dir, calib)
        elif export.precision == "int8_dynamic":
            final, quant_info = quantize_dynamic_int8(raw, work_dir, calib)
        else:
            opt = _ort_optimize(raw, work_dir / "opt.onnx")
            final = _to_fp16(opt, work_dir / "fp16.onnx") if export.precision == "fp16" else opt
        proto = onnx.load(str(final))
        _set_metadata(proto, model_spec, export, quant_info)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp_final))
    art = make_artifact(target, format="onnx", precision=export.precision, input_size=size, spec=model_spec)
    return art.with_status("unverified", parity={"quantization": quant_info}) if quant_info else art


def _torch_export(model: Any, path: Path, *, size: int, batch: str) -> None:
    """torch -> ONNX (dynamo), batch axis dynamic unless ``batch == "fixed"``."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter needs it)
        import torch
    except ImportError as exc:
        raise missing_dependency(getattr(exc, "name", None) or "onnxscript", extra="export") from exc
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        if batch == "dynamic":
            x = torch.zeros(2, 3, size, size, device=device)  # batch 2: torch.export specialises batch 1
            dynamic_shapes: Any = ({0: torch.export.Dim("batch", min=1, max=4096)},)
        else:
            x = torch.zeros(1, 3, size, size, device=device)
            dynamic_shapes = None
        with torch.no_grad():
            prog = torch.onnx.export(model, (x,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                     dynamic_shapes=dynamic_shapes, opset_version=OPSET, optimize=True,
                                     external_data=False, verbose=False)
        if prog is None:  # pragma: no cover - dynamo=True always returns a program
            raise ConfigError("torch.onnx.export returned nothing; upgrade torch")
        prog.save(str(path), external_data=False)
    finally:
        model.train(was_training)


def _ort_optimize(src: Path, dst: Path) -> Path:
    """Offline onnxruntime basic optimisation (portable: standard ONNX ops only)."""
    ort = import_ort()
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(dst)
    opts.log_severity_level = 3
    ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    return dst


def _to_fp16(src: Path, dst: Path) -> Path:
    """fp16 weights and activations with float32 I/O; the head stays float32."""
    onnx = import_onnx()
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # pragma: no cover
        raise missing_dependency("onnxruntime", extra="export") from exc
    proto = onnx.load(str(src))
    name_nodes(proto)
    fp16 = convert_float_to_float16(proto, keep_io_types=True, node_block_list=head_nodes(proto))
    _toposort(fp16.graph)  # the converter appends the input casts at the end
    onnx.save(fp16, str(dst))
    return dst


def _toposort(graph: Any) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise CorruptDataError(f"ONNX graph has a cycle or a missing input at node {rest[0].name!r}")
        pending = rest
    copies = [type(n)() for n in ordered]
    for dst, src in zip(copies, ordered):
        dst.CopyFrom(src)
    del graph.node[:]
    graph.node.extend(copies)


def _set_metadata(proto: Any, model_spec: ModelSpec, export: ExportSpec, quant_info: dict[str, Any]) -> None:
    props = {p.key: p.value for p in proto.metadata_props}
    props[SPEC_KEY] = model_spec.to_json()
    props[EXPORT_KEY] = export.to_json()
    if quant_info:
        props[QUANT_KEY] = json.dumps(quant_info, sort_keys=True)
    del proto.metadata_props[:]
    for key in sorted(props):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, props[key]
    proto.producer_name = "asymfuse"
    proto.doc_string = (f"asymfuse query net {model_spec.arch}: input '{INPUT_NAME}' (B, 3, {export.input_size}, "
                        f"{export.input_size}) float32 NCHW normalised per metadata '{SPEC_KEY}'; output "
                        f"'{OUTPUT_NAME}' (B, {model_spec.embed_dim}) float32")


# ---- reading back (export-only keys; the ModelSpec and the runner live in asymfuse.edge.runtimes.ort) ----
def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """All ``metadata_props`` of an ONNX file (weights are not loaded)."""
    onnx = import_onnx()
    p = Path(path)
    if not p.is_file():
        raise CorruptDataError(f"ONNX file {p} does not exist; check the path")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise CorruptDataError(f"{p} is not a readable ONNX file ({exc}); re-export it") from exc
    return {e.key: e.value for e in proto.metadata_props}


def read_export_spec(path: str | os.PathLike[str]) -> ExportSpec:
    """The :class:`ExportSpec` an ONNX file was exported with."""
    props = read_metadata(path)
    if EXPORT_KEY not in props:
        raise CorruptDataError(f"{path} carries no '{EXPORT_KEY}' metadata; re-export it with asymfuse")
    return ExportSpec.from_dict(json.loads(props[EXPORT_KEY]))
