"""The ``asymfuse`` console script: one entry point, one sub-command module per job.

Each command module exposes ``register(subparsers)``, which adds its parser and sets
``func(args) -> int``. Imports are lazy inside the commands, so ``asymfuse --help`` is fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from asymfuse.cloud.cli.heap import tune_heap
from asymfuse.edge.errors import AsymfuseError

COMMAND_MODULES = (
    "asymfuse.cloud.cli.data_cmd",
    "asymfuse.cloud.cli.extract_cmd",
    "asymfuse.cloud.cli.eval_cmd",
    "asymfuse.cloud.cli.models_cmd",
    "asymfuse.cloud.cli.demo_cmd",
    "asymfuse.cloud.cli.train_cmd",
    "asymfuse.cloud.cli.index_cmd",
    "asymfuse.cloud.cli.serve_cmd",
    "asymfuse.cloud.cli.bench_cmd",
    "asymfuse.cloud.cli.flops_cmd",
    "asymfuse.cloud.cli.export_cmd",
    "asymfuse.cloud.cli.verify_cmd",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every sub-command."""
    import importlib

    parser = argparse.ArgumentParser(prog="asymfuse", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


QUIET_LOGGERS = ("faiss", "onnx_ir", "onnxscript", "torch.onnx", "root.litert_torch", "jax._src.xla_bridge",
                 "onnxruntime.quantization.shape_inference")
"""Third-party loggers that talk at INFO on every call (faiss: each CPU-feature probe; the ONNX
exporter: each initializer it de-duplicates; JAX, under the TFLite converter: the missing TPU backend;
ONNX Runtime's quantizer: each shape inference); shown again with ``-v``."""


ENVIRONMENT_LOGGERS = ("torchao", "torch.utils._pytree")
"""Loggers that warn about the environment, not the run, on every export (torchao: its CUDA kernels
do not load on a CPU host; torch's pytree: an Enum registration deprecation); errors still show."""


def quiet_third_party() -> None:
    """Hide the converters' progress chatter: the loggers above at WARNING, and LiteRT-Torch's
    console progress (hundreds of "Run Decompositions" / "MLIR Module" lines per TFLite file),
    which it reads from ``LITERT_TORCH_SHOW_PROGRESS`` (a value the user set is kept)."""
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ "I0000 ..." op-count lines
    for name in ENVIRONMENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # torch's pytree deprecation, raised once per exported graph by the PT2E quantizer's pickling
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*", category=FutureWarning)
    root = logging.getLogger()
    if not any(isinstance(f, RootChatterFilter) for f in root.filters):
        root.addFilter(RootChatterFilter())


class RootChatterFilter(logging.Filter):
    """Drops what converters log on the *root* logger below WARNING (LiteRT-Torch's "Use JAX lowering"
    per op; asymfuse logs under ``asymfuse.*`` only), and LiteRT-Torch's "converted in training mode"
    warning, which it raises for every PT2E-quantized graph: :mod:`asymfuse.export.tflite` passes the
    module in eval mode, and only the quantized graph it exports carries a training flag."""

    TRAINING_MODE = "Your model is converted in training mode"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name != "root":
            return True
        return record.levelno >= logging.WARNING and not str(record.msg).startswith(self.TRAINING_MODE)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (2 for user errors, with a one-line reason)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        quiet_third_party()
    try:
        heap = tune_heap()
        logging.getLogger("asymfuse.cli").debug("heap tuning: %s", "applied" if heap.applied else heap.reason)
        return int(args.func(args) or 0)
    except AsymfuseError as exc:
        print(f"asymfuse {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
