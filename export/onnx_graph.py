"""ONNX plumbing shared by the ONNX exporter and its int8 quantizers: lazy imports, node names.

Kept apart from :mod:`asymfuse.export.onnx` so that :mod:`asymfuse.export.onnx_int8` needs
nothing from the exporter that calls it.
"""

from __future__ import annotations

from typing import Any

from asymfuse.edge.errors import missing_dependency

INPUT_NAME = "image"


def import_onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise missing_dependency("onnx", extra="export") from exc
    return onnx


def import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover
        raise missing_dependency("onnxruntime", extra="export") from exc
    return onnxruntime


def head_nodes(model: Any) -> list[str]:
    """Names of the nodes after the last Conv (GeM, whitening, L2 norm): kept in float."""
    nodes = list(model.graph.node)
    last_conv = max((i for i, n in enumerate(nodes) if n.op_type in ("Conv", "ConvInteger", "QLinearConv")),
                    default=-1)
    return [n.name for n in nodes[last_conv + 1:] if n.name]


def name_nodes(model: Any) -> None:
    """Give every node a unique name (block and exclude lists work by name)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)
