"""Import guard for torchvision, whose C++ extension may not load here.

Why this exists: the registry's torchvision wheel can be a CUDA build. On a CPU-only torch its
``_C`` extension fails to load, and ``import torchvision`` then dies while registering fake
kernels for ``torchvision::nms`` and ``torchvision::qnms``, because those op *schemas* are only
defined by the extension. asymfuse needs only torchvision's pure-Python model definitions, so
when (and only when) the plain import fails for that reason, we define the two schemas ourselves
and import again. Where the extension loads (a matching GPU host), nothing is changed.
"""

from __future__ import annotations

import sys
from types import ModuleType

import torch

from asymfuse.edge.errors import missing_dependency

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
# The Library object must outlive this call, or torch drops the schemas again. Defining op
# schemas is process-global by nature; this keeps the one handle that owns them.
_SCHEMA_LIBRARY: list[torch.library.Library] = []


def _has_schema(op: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{op}", "")
        return True
    except RuntimeError:
        return False


def import_torchvision() -> ModuleType:
    """Return the ``torchvision`` module, importing it safely.

    Raises:
        MissingDependencyError: torchvision is not installed.
    """
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "models"):
        return sys.modules["torchvision"]
    try:
        import torchvision
        return torchvision
    except ModuleNotFoundError as exc:
        raise missing_dependency("torchvision", "cloud") from exc
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    # The C++ extension failed: drop the half-imported package and retry with the schemas.
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    missing = [op for op in _SCHEMAS if not _has_schema(op)]
    if missing:
        lib = torch.library.Library("torchvision", "DEF")
        for op in missing:
            lib.define(_SCHEMAS[op])
        _SCHEMA_LIBRARY.append(lib)
    import torchvision
    return torchvision
