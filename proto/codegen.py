"""Generate the Python gRPC modules from ``proto/asymfuse/v1/*.proto`` with grpcio-tools.

The generated modules are checked in next to their ``.proto`` (so the edge SDK needs only grpcio and
protobuf, not grpcio-tools) and are never edited by hand: ``tests/proto/test_codegen.py``
regenerates them into a temporary folder and fails when the checked-in copies differ.

Regenerate after changing a ``.proto``::

    python -m asymfuse.proto.codegen

protoc names the ``_grpc`` module's import of its messages after the ``.proto`` path
(``from asymfuse.v1 import searcher_pb2``); the files install as ``asymfuse.proto.asymfuse.v1``, so
that one import line is rewritten to the installed package path as part of generation.
"""

from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path


PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILES = ("asymfuse/v1/searcher.proto",)
PACKAGE = "asymfuse.proto"  # where PROTO_ROOT installs
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generated_names(proto: str) -> list[str]:
    """The generated files of one ``.proto`` (paths relative to :data:`PROTO_ROOT`)."""
    stem = proto[: -len(".proto")]
    return [stem + suffix for suffix in SUFFIXES]


def _fix_imports(path: Path) -> None:
    """``from asymfuse.v1 import x_pb2`` -> ``from asymfuse.proto.asymfuse.v1 import x_pb2``."""
    text = path.read_text()
    fixed = re.sub(r"^from (asymfuse\.v\d+) import ", rf"from {PACKAGE}.\1 import ", text, flags=re.M)
    path.write_text(fixed)


def generate(out_dir: str | Path) -> list[Path]:
    """Run protoc (grpcio-tools) on :data:`PROTO_FILES` into ``out_dir``; returns the written files.

    Raises:
        ImportError: grpcio-tools is not installed.
        RuntimeError: protoc rejected a ``.proto``.

    (``asymfuse.proto`` sits below every other package, so it uses built-in exceptions.)
    """
    try:
        from grpc_tools import protoc
    except ImportError as exc:
        raise ImportError("grpcio-tools is not installed; install it with: pip install 'asymfuse[dev]'") from exc
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).resolve().parent / "_proto"  # google/protobuf/*.proto
    for proto in PROTO_FILES:
        rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
                          f"--grpc_python_out={out}", str(PROTO_ROOT / proto)])
        if rc != 0:
            raise RuntimeError(f"protoc failed on {proto} (exit {rc}); fix the .proto and rerun")
    written = [out / name for proto in PROTO_FILES for name in generated_names(proto)]
    for path in written:
        _fix_imports(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(tmp):
            rel = path.relative_to(tmp)
            shutil.copyfile(path, PROTO_ROOT / rel)
            print(f"wrote {PROTO_ROOT / rel}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
