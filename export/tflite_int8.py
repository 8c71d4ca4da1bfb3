"""TFLite full-integer int8: PT2E quantisation with a fused conv + ReLU6 quantizer and the search
for the fewest leading convs kept in float (see :mod:`asymfuse.export.tflite` for the recipe and
the figures it was tuned on)."""

from __future__ import annotations

from typing import Any

import numpy as np

from asymfuse.edge.runtimes.litert import dequantize_output, quantize_input
from asymfuse.export.quantize import FLOAT_PREFIX_STEPS, INT8_SELF_CHECK, search_float_prefix
from asymfuse.export.tflite_flatbuffer import set_input_type

__all__ = ["FLOAT_PREFIX_STEPS", "INT8_SELF_CHECK"]


def _convert_int8(module: Any, sample: tuple[Any, ...], calibration: np.ndarray, *, channel_last: bool,
                  int8_io: str) -> tuple[bytes, dict[str, Any]]:
    """Full-integer PT2E, with leading convs kept in float while a self-check falls short.

    Depthwise-separable nets (EfficientNet-Lite, MobileNet) lose most int8 accuracy in their first
    blocks. After quantising everything, the flatbuffer is run on the calibration images and compared
    with the float module; while the worst cosine is below :data:`INT8_SELF_CHECK`, more leading conv
    layers (:data:`FLOAT_PREFIX_STEPS`) are left unannotated (float weights and activations). The
    best-scoring graph is kept and the choice is returned, never silent.

    Returns:
        The flatbuffer (input type set per ``int8_io``) and ``{"float_convs": k, "n_convs": n,
        "calibration_cosine_min": c, "calibration_images": N, ...}``.
    """

    reference = _torch_rows(module, calibration, channel_last=channel_last)

    graphs: dict[int, tuple[Any, Any, int]] = {}  # k -> (quantized graph, quantizer, convs), built by screen

    def screen(k: int) -> tuple[np.ndarray, int]:
        graphs[k] = _pt2e_graph(module, sample, calibration, channel_last=channel_last, float_convs=k)
        quantized, _, n_convs = graphs[k]
        return _torch_rows(quantized, calibration, channel_last=channel_last), n_convs

    def attempt(k: int) -> tuple[bytes, np.ndarray, int]:
        quantized, quantizer, n_convs = graphs.pop(k, None) or _pt2e_graph(
            module, sample, calibration, channel_last=channel_last, float_convs=k)
        content = _lower(quantized, sample, quantizer)
        return content, _run_flatbuffer(content, calibration, channel_last=channel_last), n_convs

    content, k, cos, n_convs = search_float_prefix(attempt, reference, screen=screen)
    info = {"float_convs": k, "n_convs": n_convs, "calibration_cosine_min": round(cos, 6),
            "calibration_images": len(calibration), "calibration_method": "histogram",
            "activations": "int8 per-tensor", "weights": "int8 per-channel"}
    return set_input_type(content, int8_io), info


def _torch_rows(fn: Any, images: np.ndarray, *, channel_last: bool) -> np.ndarray:
    """``(N, 3, H, W)`` -> ``(N, D)``: ``fn`` (the float module, or a quantized graph) one image at a time."""
    import torch

    with torch.no_grad():
        return np.concatenate([fn(_sample_row(torch, row, channel_last)).numpy() for row in images])


def _sample_row(torch: Any, row: np.ndarray, channel_last: bool) -> Any:
    x = torch.from_numpy(np.ascontiguousarray(row[None], dtype=np.float32))
    return x.permute(0, 2, 3, 1).contiguous() if channel_last else x


def _conv_ops(torch: Any) -> tuple[Any, ...]:
    return (torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default)


def _pt2e_graph(module: Any, sample: tuple[Any, ...], calibration: np.ndarray, *, channel_last: bool,
                float_convs: int) -> tuple[Any, Any, int]:
    """One PT2E pass: export, annotate (all but the first ``float_convs`` convs), calibrate, convert.

    The model input is always quantized (so a float prefix still gives an int8 input to hand to
    :func:`set_input_type`). Returns the quantized graph (runnable in torch: the screen of
    :func:`~asymfuse.export.quantize.search_float_prefix`), its quantizer and the number of conv layers.
    """
    import torch
    from litert_torch.quantize import pt2e_quantizer as pq
    from torchao.quantization.pt2e import quantize_pt2e

    quantizer = _fused_clamp_quantizer(pq, float_convs=float_convs).set_global(
        pq.get_symmetric_quantization_config(is_per_channel=True))
    with torch.no_grad():
        graph = torch.export.export(module, sample).module()
        n_convs = sum(1 for n in graph.graph.nodes if n.op == "call_function" and n.target in _conv_ops(torch))
        prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
        for row in calibration:
            prepared(_sample_row(torch, row, channel_last))
        quantized = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    return quantized, quantizer, n_convs


def _lower(quantized: Any, sample: tuple[Any, ...], quantizer: Any) -> bytes:
    """The TFLite flatbuffer of a PT2E-quantized graph (the slow step: about 26 s for Lite0 at 224 px)."""
    import litert_torch
    import torch
    from litert_torch.quantize.quant_config import QuantConfig

    with torch.no_grad():
        content = litert_torch.convert(quantized, sample, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    return bytes(content.model_content())


def _run_flatbuffer(content: bytes, images: np.ndarray, *, channel_last: bool) -> np.ndarray:
    """``(N, 3, H, W)`` -> ``(N, D)`` float32 through the real interpreter (int8 I/O quantized as the edge
    runner does). The bytes carry no ModelSpec yet, so the edge runner itself cannot take them."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=content, num_threads=None)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    rows = []
    for row in images:
        x = row.transpose(1, 2, 0)[None] if channel_last else row[None]
        interp.set_tensor(inp["index"], quantize_input(x, inp))
        interp.invoke()
        rows.append(dequantize_output(interp.get_tensor(out["index"]), out))
    return np.concatenate(rows)


def _fused_clamp_quantizer(pq: Any, *, float_convs: int = 0) -> Any:
    """A ``PT2EQuantizer`` that annotates conv -> hardtanh (ReLU6) as one fused op (see module doc)
    and leaves every node up to the ``float_convs``-th conv (and its clamp) unannotated, i.e. float;
    the model input itself stays quantized."""
    import torch
    from litert_torch.quantize import pt2e_quantizer_utils as pu
    from torch.fx import Node
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    convs = _conv_ops(torch)
    clamps = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default)

    def float_prefix(model: torch.fx.GraphModule) -> list[Node]:
        nodes = [n for n in model.graph.nodes if n.op == "call_function"]
        conv_at = [i for i, n in enumerate(nodes) if n.target in convs]
        if float_convs <= 0 or not conv_at:
            return []
        end = conv_at[min(float_convs, len(conv_at)) - 1]
        last = nodes[end]
        if len(last.users) == 1 and next(iter(last.users)).target in clamps:
            end = nodes.index(next(iter(last.users)))
        return nodes[:end + 1]

    class FusedClampQuantizer(pq.PT2EQuantizer):  # type: ignore[misc,name-defined]
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            cfg = self.global_config
            if cfg is None or cfg.input_activation is None:
                return super().annotate(model)
            prefix = float_prefix(model)
            if prefix:
                first = prefix[0]
                inputs = [a for a in first.args if isinstance(a, Node) and a.op == "placeholder"]
                first.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={a: pu.get_input_act_qspec(cfg) for a in inputs}, _annotated=True)
                pu._mark_nodes_as_annotated(prefix)
            for node in model.graph.nodes:
                conv = node.args[0] if node.op == "call_function" and node.target in clamps else None
                if not isinstance(conv, Node) or conv.target not in convs or len(conv.users) != 1:
                    continue
                qmap = {conv.args[0]: pu.get_input_act_qspec(cfg), conv.args[1]: pu.get_weight_qspec(cfg)}
                part = [node, conv, conv.args[1]]
                if len(conv.args) > 2 and isinstance(conv.args[2], Node):
                    qmap[conv.args[2]] = pu.get_bias_qspec(cfg)
                    part.append(conv.args[2])
                if pu._is_annotated(part):
                    continue
                conv.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=qmap, _annotated=True)
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    output_qspec=pu.get_output_act_qspec(cfg), _annotated=True)
                pu._mark_nodes_as_annotated(part)
            return super().annotate(model)

    return FusedClampQuantizer()
