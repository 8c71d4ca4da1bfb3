"""``asymfuse export``: a trained query net checkpoint -> ONNX / TFLite / Core ML files, gated.

Every requested format x precision is checked before anything heavy runs (an unsupported pair
is refused with the list of what each format supports). Static int8 is calibrated on real photos:
``--calibration N`` takes N photos of the embedded benchmark's train split (built under
``--bench-root`` when missing), ``--calibration DIR`` the photos of a folder. Each artifact is
then run by its real runtime on the benchmark's test queries and gated (cosine vs torch, and the
mAP of its query vectors against the torch model's gallery vectors); ``manifest.json`` in
``--out`` lists every file with its sha256, ModelSpec, parity figures and status. Exit code 0
when every artifact passed (or was skipped: Core ML prediction needs macOS), 1 otherwise.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

TOOLCHAIN_LOGGERS = ("onnx_ir", "onnxscript", "onnxruntime", "torch.onnx", "torch._export", "torch.export",
                     "coremltools", "litert_torch", "ai_edge_torch", "ai_edge_quantizer", "absl", "tensorflow", "jax")


def quiet_toolchain_logs(verbose: bool = False) -> None:
    """The converters log every graph pass at INFO; keep their warnings only (unless ``-v``)."""
    if not verbose:
        for name in TOOLCHAIN_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a query net checkpoint to ONNX / TFLite / Core ML, with a parity gate")
    p.add_argument("--checkpoint", required=True, help="query net checkpoint with a ModelSpec (query_net.pt)")
    p.add_argument("--format", dest="formats", action="append", required=True,
                   help="comma-separated formats: onnx, tflite, coreml (repeatable)")
    p.add_argument("--precision", dest="precisions", action="append",
                   help="comma-separated precisions: fp32, fp16, int8, int8_dynamic (default fp32; repeatable)")
    p.add_argument("--size", type=int, default=None, help="square input side (default: the checkpoint's)")
    p.add_argument("--out", required=True, help="output folder (artifacts, failed/, manifest.json)")
    p.add_argument("--calibration", default="64",
                   help="static int8 calibration: N train-split photos of the benchmark, or a folder of photos "
                        "(default 64)")
    p.add_argument("--bench-root", default="runs/benchmark",
                   help="the embedded benchmark (built there when missing; default runs/benchmark)")
    p.add_argument("--int8-io", default="float", choices=("float", "uint8", "int8"),
                   help="TFLite full-int8 input type (default float)")
    p.add_argument("--no-map", action="store_true", help="gate on cosine only (skips embedding the test gallery)")
    p.set_defaults(func=run)


def split_list(values: list[str] | None, default: tuple[str, ...]) -> list[str]:
    """``["onnx,tflite", "coreml"]`` -> ``["onnx", "tflite", "coreml"]`` (order kept, duplicates dropped)."""
    items = [v.strip() for value in values or [] for v in value.split(",") if v.strip()]
    return list(dict.fromkeys(items or default))


def export_specs(formats: list[str], precisions: list[str], *, size: int, calibration: int,
                 int8_io: str = "float") -> list[Any]:
    """One :class:`ExportSpec` per format x precision, all validated first.

    Raises:
        UnknownNameError: unknown format or precision. ConfigError: an unsupported pair (the
            message names what each format supports).
    """
    from asymfuse.export.spec import ExportSpec

    specs = []
    for fmt in formats:
        for precision in precisions:
            specs.append(ExportSpec(format=fmt, precision=precision, input_size=size, int8_io=int8_io,
                                    calibration_images=max(calibration, 8)))
    return specs


def load_net(checkpoint: str, *, size: int | None) -> Any:
    """The checkpoint's query net in eval mode, rebuilt at ``size`` x ``size`` when given.

    Raises:
        CorruptDataError: the file is missing or unreadable, carries no ModelSpec, or its weights
            do not fit.
    """
    from asymfuse.cloud.models.checkpoint import load_query_net

    return load_query_net(checkpoint, input_size=None if size is None else (size, size))[0]


def run(args: argparse.Namespace) -> int:
    from asymfuse.cloud.bench.export_data import (calibration_images, ensure_benchmark, folder_images, make_map_fn,
                                                  test_split, torch_reference)
    from asymfuse.cloud.eval.report import markdown_table
    from asymfuse.edge.errors import ConfigError
    from asymfuse.export.artifact import check_writable
    from asymfuse.export.pipeline import GateInputs, export_all
    from asymfuse.export.quantize import check_calibration
    from asymfuse.export.spec import DYNAMIC_BATCH_FORMATS, ExportSpec, check_combination, uses_calibration

    quiet_toolchain_logs(getattr(args, "verbose", False))
    calib_arg = str(args.calibration)
    count = int(calib_arg) if calib_arg.isdigit() else None
    formats = split_list(args.formats, ())
    precisions = split_list(args.precisions, ("fp32",))
    if count is not None and count < 1:
        raise ConfigError(f"--calibration must be a positive count or a folder of photos, got {calib_arg!r}")
    for fmt in formats:  # refuse a bad request before reading anything
        for precision in precisions:
            check_combination(fmt, precision, batch="dynamic" if fmt in DYNAMIC_BATCH_FORMATS else "fixed")
    net = load_net(args.checkpoint, size=args.size)
    size = net.spec.input_size[0]
    out = check_writable(Path(args.out))
    bench = ensure_benchmark(args.bench_root)
    calib = None
    if any(uses_calibration(f, p) for f in formats for p in precisions):  # int8 calibrates / self-checks
        calib = (calibration_images(bench, net.spec, count=count) if count is not None
                 else folder_images(calib_arg, net.spec))
        calib = check_calibration(calib, minimum=ExportSpec.min_calibration, input_size=size)
    specs = export_specs(formats, precisions, size=size, calibration=len(calib) if calib is not None else 64,
                         int8_io=args.int8_io)
    ref = torch_reference(net, test_split(bench))
    map_fn = None if args.no_map else make_map_fn(test_split(bench), ref.gallery)
    gate = GateInputs(images=ref.images, map_fn=map_fn, torch_map=None if args.no_map else ref.map,
                      calibration=calib)
    done, manifest = export_all(net, model_spec=net.spec, export_specs=specs, out=out, gate=gate)
    artifacts = [d.artifact for d in done]
    rows = [{"file": str(a.path.relative_to(out)) if a.path.is_relative_to(out) else str(a.path),
             "format": a.format, "precision": a.precision, "MB": a.size_bytes / 1e6,
             "cosine min": a.parity.get("cosine_min"), "mAP": a.parity.get("map"),
             "mAP drop": a.parity.get("map_drop"), "status": a.status + (f": {a.reason}" if a.reason else "")}
            for a in artifacts]
    print(markdown_table(rows, ("file", "format", "precision", "MB", "cosine min", "mAP", "mAP drop", "status"),
                         digits=4))
    print(f"torch mAP (test split, mAP Medium): {ref.map:.2f}; manifest: {manifest}")
    return 0 if all(a.status in ("passed", "skipped") for a in artifacts) else 1
