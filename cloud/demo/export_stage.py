"""The demo's export stage: ship the AFF stage's query net as ONNX and TFLite files, gated.

The trained query net (``<out>/aff/query_net.pt``) is exported to each ``(format, precision)`` of
``targets`` (default ONNX and TFLite, fp32 and int8; int8 calibrated on real train-split photos),
then every file goes through the parity gate (:func:`asymfuse.export.verify.verify_artifact`): its
real runtime embeds the test queries, compared with torch by cosine and by retrieval mAP against
the *fused AFF gallery*, so the check stays asymmetric as in use. One row per file:
``"<arch>@<size> [<format> <precision>] → <gallery>"``, with its gate status. A file that fails
the gate lands under ``failed/`` and is not listed as shippable in ``manifest.json``. The stage
folder is ``<out>/export``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.cloud.data.benchmark import Benchmark
from asymfuse.cloud.data.records import RetrievalDataset
from asymfuse.edge.errors import ConfigError

DEMO_TARGETS: tuple[tuple[str, str], ...] = (("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"),
                                             ("tflite", "int8"))


def run_export_stage(*, query_net: Path, bench: Benchmark, test: RetrievalDataset, gallery: np.ndarray,
                     gallery_label: str, out_dir: Path, targets: Sequence[tuple[str, str]] = DEMO_TARGETS,
                     calibration: int = 32) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Export, gate and score the query net; returns (demo rows, info).

    Args:
        query_net: the AFF stage's ``query_net.pt`` (with its ModelSpec).
        bench: the embedded benchmark (its train split calibrates int8).
        test: the test split; gallery: ``(nb, d)`` float32 the fused test gallery the net was trained against.
        gallery_label: how rows name the gallery.
        out_dir: the stage folder (artifacts + ``manifest.json``).
        targets: ``(format, precision)`` pairs; calibration: how many train photos calibrate int8.

    Raises:
        ConfigError: no target, an unsupported pair (the message names what works), a gallery that
            does not fit ``test``. MissingDependencyError: a toolchain is not installed.
    """
    from asymfuse.cloud.bench.export_data import calibration_images, query_images, retrieval_metrics
    from asymfuse.cloud.models.checkpoint import load_query_net
    from asymfuse.export.pipeline import GateInputs, export_all
    from asymfuse.export.registry import RUNNERS
    from asymfuse.export.spec import ExportSpec, check_combination
    from asymfuse.export.verify import runner_outputs, torch_outputs

    if not targets:
        raise ConfigError("the export stage needs at least one (format, precision) target, e.g. ('onnx', 'fp32')")
    for fmt, precision in targets:
        check_combination(fmt, precision, batch="fixed" if fmt != "onnx" else "dynamic")
    if gallery.shape[0] != test.nb:
        raise ConfigError(f"the gallery has {gallery.shape[0]} vectors but the test split has {test.nb} images")
    net, _ = load_query_net(query_net)
    spec = net.spec
    images = query_images(test, spec)
    torch_metrics = retrieval_metrics(test, torch_outputs(net, images), gallery)
    calib = calibration_images(bench, spec, count=calibration, clip=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    def map_fn(vectors: np.ndarray) -> float:
        return float(retrieval_metrics(test, vectors, gallery)["mAP_medium"])

    specs = [ExportSpec(format=fmt, precision=precision, input_size=spec.input_size[0],
                        calibration_images=len(calib), min_calibration=min(8, len(calib)))
             for fmt, precision in targets]
    gate = GateInputs(images=images, map_fn=map_fn, torch_map=torch_metrics["mAP_medium"], calibration=calib)
    done, manifest = export_all(net, model_spec=spec, export_specs=specs, out=out_dir, gate=gate)
    rows = []
    for export, checked in zip(specs, (d.artifact for d in done)):
        label = f"{spec.arch}@{spec.input_size[0]} [{export.format} {export.precision}] → {gallery_label}"
        row: dict[str, Any] = {"feature": label, "kind": "exported query net", "dim": spec.embed_dim,
                               "status": checked.status, "reason": checked.reason}
        if checked.status != "export_failed":
            row.update(cosine_min=checked.parity.get("cosine_min"), file_mb=round(checked.size_bytes / 1e6, 2),
                       path=str(checked.path))
        if export.format in RUNNERS and checked.status != "export_failed" and checked.path.exists():
            runner = RUNNERS[export.format](checked.path, None)
            out = runner_outputs(runner, images, batch=len(images) if getattr(runner, "dynamic_batch", False) else 1)
            row.update(retrieval_metrics(test, out, gallery))
        rows.append(row)
    info = {"dir": str(out_dir), "manifest": str(manifest), "torch_mAP_medium": torch_metrics["mAP_medium"],
            "calibration_images": len(calib), "input_size": spec.input_size[0],
            "passed": [r["feature"] for r in rows if r.get("status") == "passed"]}
    return rows, info

