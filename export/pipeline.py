"""Export -> parity gate -> record: the one loop behind ``asymfuse export``, the demo and the bench.

Crash policy (one for every caller): each target is converted and gated on its own. Requests that
are wrong whatever the toolchain does (an unsupported format x precision, too few calibration
images) raise before anything is written: callers check them first (``check_combination``,
``check_calibration``). A converter that raises while converting one target (the toolchains fail in
many ways: torch.export, litert-torch and coremltools raise their own and built-in types) is
recorded on that target as ``export_failed`` with its error, logged with its traceback, and the
other targets still run; nothing is written under that target's name. The parity gate itself
(:func:`verify_artifact`) records what the runtimes raise as ``failed`` and lets programming errors
propagate. So a crash is never silent and never ``passed``: the CLI exits 1, the demo and the
bench show the reason in their tables.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.edge.spec import ModelSpec
from asymfuse.export.artifact import Artifact, toolchain_versions, write_manifest
from asymfuse.export.registry import EXPORTERS
from asymfuse.export.spec import ExportSpec, artifact_name
from asymfuse.export.verify import verify_artifact

LOG = logging.getLogger("asymfuse.export")


@dataclass(frozen=True)
class GateInputs:
    """What the parity gate compares on.

    Attributes:
        images: ``(N, 3, H, W)`` float32 real images preprocessed with the model's spec.
        map_fn: ``(N, d)`` query vectors -> mAP (%) against the caller's torch gallery, or None.
        torch_map: torch's mAP for the same queries (None: computed with ``map_fn``).
        calibration: ``(M, 3, H, W)`` float32 real photos for int8 (None when no target needs them).
    """

    images: np.ndarray
    map_fn: Callable[[np.ndarray], float] | None = None
    torch_map: float | None = None
    calibration: np.ndarray | None = None


@dataclass(frozen=True)
class GatedExport:
    """One target's outcome: the gated artifact (or an ``export_failed`` record) and its timings."""

    artifact: Artifact
    export_s: float
    verify_s: float


def export_and_gate(net: Any, *, model_spec: ModelSpec, export_spec: ExportSpec, out: Path,
                    gate: GateInputs) -> GatedExport:
    """Convert ``net`` for one target and gate the file (see the module's crash policy).

    Returns:
        :class:`GatedExport`; ``artifact.status`` is ``passed`` / ``failed`` / ``skipped`` /
        ``export_failed``.

    Raises:
        ShapeError, ConfigError: from the gate (images of the wrong shape, unknown precision).
    """
    t0 = time.perf_counter()
    calibration = gate.calibration if export_spec.uses_calibration else None
    try:
        with contextlib.redirect_stdout(sys.stderr):  # converters print progress; stdout is the caller's
            artifact = EXPORTERS[export_spec.format](net, model_spec=model_spec, export=export_spec, out=out,
                                                     calibration=calibration)
    except Exception as exc:  # noqa: BLE001 - any converter crash is this target's result (module docstring)
        LOG.exception("export %s %s failed", export_spec.format, export_spec.precision)
        return GatedExport(crashed_artifact(out, model_spec, export_spec, exc), time.perf_counter() - t0, 0.0)
    t1 = time.perf_counter()
    checked = verify_artifact(artifact, model=net, images=gate.images, map_fn=gate.map_fn, torch_map=gate.torch_map)
    return GatedExport(checked, t1 - t0, time.perf_counter() - t1)


def export_all(net: Any, *, model_spec: ModelSpec, export_specs: Sequence[ExportSpec], out: Path,
               gate: GateInputs) -> tuple[list[GatedExport], Path]:
    """:func:`export_and_gate` for every target, then ``manifest.json`` of all of them.

    Returns:
        ``(one GatedExport per target, in order; the manifest's path)``.
    """
    out.mkdir(parents=True, exist_ok=True)
    done = [export_and_gate(net, model_spec=model_spec, export_spec=s, out=out, gate=gate) for s in export_specs]
    return done, write_manifest(out, [d.artifact for d in done])


def crash_reason(exc: BaseException) -> str:
    """One line (at most 300 characters, no ``|``, so it fits a table cell) naming a crash."""
    return " ".join(f"{type(exc).__name__}: {exc}".replace("|", "/").split())[:300]


def crashed_artifact(out: Path, model_spec: ModelSpec, export_spec: ExportSpec, exc: BaseException) -> Artifact:
    """The manifest record of a conversion that crashed (no file was written under its name)."""
    reason = crash_reason(exc)
    return Artifact(path=out / artifact_name(model_spec, export_spec), format=export_spec.format,
                    precision=export_spec.precision, input_size=export_spec.input_size, sha256="", size_bytes=0,
                    spec=model_spec, toolchain=toolchain_versions(), status="export_failed", reason=reason)
