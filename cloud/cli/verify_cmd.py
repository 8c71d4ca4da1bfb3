"""``asymfuse verify``: re-run the parity gate on artifacts that ``asymfuse export`` wrote.

For a developer who got an export folder from someone else, or who wants Core ML's prediction
parity on a Mac: each artifact listed in a folder's ``manifest.json`` is checked again, read-only:

1. its sha256 must equal the manifest's (a changed or truncated file fails with "re-export");
2. then the gate of :func:`asymfuse.export.verify.verify_artifact` runs with the real runtime on the
   embedded benchmark's test queries against the checkpoint's torch model (cosine and, unless
   ``--no-map``, the mAP of the artifact's query vectors against the torch gallery).

``--coreml`` keeps the Core ML artifacts only: on macOS they are run by Core ML; elsewhere their
MIL program is loaded back and checked and the status is "skipped: needs macOS". Nothing is moved
or rewritten (``asymfuse export`` owns ``failed/`` and the manifest). Exit code 0 when every
checked artifact passed (or was skipped), 1 otherwise, 2 for bad input.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="re-run the parity gate on exported artifacts (a manifest folder or files)")
    p.add_argument("paths", nargs="+", help="export folders (with manifest.json) or artifact files inside one")
    p.add_argument("--checkpoint", required=True, help="the query net checkpoint the artifacts were exported from")
    p.add_argument("--coreml", action="store_true",
                   help="check the Core ML artifacts only (prediction on macOS; elsewhere 'skipped: needs macOS')")
    p.add_argument("--bench-root", default="runs/benchmark",
                   help="the embedded benchmark (built there when missing; default runs/benchmark)")
    p.add_argument("--no-map", action="store_true", help="gate on cosine only (skips embedding the test gallery)")
    p.set_defaults(func=run)


def collect(paths: list[str], *, coreml_only: bool = False) -> list[Any]:
    """The manifest records of ``paths`` (folders: all their artifacts; files: their own record).

    Raises:
        ConfigError: a path that does not exist, a file no manifest lists, or nothing to check.
        CorruptDataError: a missing or malformed manifest.
    """
    from asymfuse.edge.errors import ConfigError
    from asymfuse.export.artifact import MANIFEST_NAME, read_manifest

    picked: list[Any] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ConfigError(f"{path} does not exist; pass an `asymfuse export --out` folder or a file in it")
        if path.is_dir() and (path / MANIFEST_NAME).is_file():
            picked += [a for a in read_manifest(path) if a.status != "export_failed"]
            continue
        folder = path.parent.parent if path.parent.name == "failed" else path.parent
        records = [a for a in read_manifest(folder) if a.path.resolve() == path.resolve()]
        if not records:
            raise ConfigError(f"{folder / MANIFEST_NAME} does not list {path.name}; verify files that "
                              "`asymfuse export` wrote, or re-export them")
        picked += records
    if coreml_only:
        picked = [a for a in picked if a.format == "coreml"]
    if not picked:
        raise ConfigError("nothing to verify" + (" (no Core ML artifacts; drop --coreml)" if coreml_only else ""))
    return picked


def check_one(artifact: Any, *, nets: dict[int, Any], refs: dict[int, Any], map_fns: dict[int, Any],
              no_map: bool) -> Any:
    """The sha256 check, then the parity gate (never moving the file)."""
    from asymfuse.export.artifact import sha256_of
    from asymfuse.export.verify import verify_artifact

    if not artifact.path.exists():
        return artifact.with_status("failed", reason=f"{artifact.path} is missing; re-export it")
    digest = sha256_of(artifact.path)
    if digest != artifact.sha256:
        return artifact.with_status("failed", reason=f"sha256 {digest[:12]}... differs from the manifest's "
                                                     f"{artifact.sha256[:12]}...: the file changed; re-export it")
    size = artifact.input_size
    return verify_artifact(artifact, model=nets[size], images=refs[size].images,
                           map_fn=None if no_map else map_fns[size], torch_map=None if no_map else refs[size].map,
                           move_failed=False)


def run(args: argparse.Namespace) -> int:
    from asymfuse.cloud.bench.export_data import ensure_benchmark, make_map_fn, test_split, torch_reference
    from asymfuse.cloud.cli.export_cmd import load_net, quiet_toolchain_logs
    from asymfuse.cloud.eval.report import markdown_table

    quiet_toolchain_logs(getattr(args, "verbose", False))
    artifacts = collect(args.paths, coreml_only=args.coreml)
    bench = ensure_benchmark(args.bench_root)
    test = test_split(bench)
    nets, refs, map_fns = {}, {}, {}
    for size in sorted({a.input_size for a in artifacts}):
        nets[size] = load_net(args.checkpoint, size=size)
        refs[size] = torch_reference(nets[size], test)
        map_fns[size] = make_map_fn(test, refs[size].gallery)
    checked = [check_one(a, nets=nets, refs=refs, map_fns=map_fns, no_map=args.no_map) for a in artifacts]
    rows = [{"file": str(a.path), "format": a.format, "precision": a.precision, "size": a.input_size,
             "cosine min": a.parity.get("cosine_min"), "mAP": a.parity.get("map"),
             "mAP drop": a.parity.get("map_drop"), "status": a.status + (f": {a.reason}" if a.reason else "")}
            for a in checked]
    print(markdown_table(rows, ("file", "format", "precision", "size", "cosine min", "mAP", "mAP drop", "status"),
                         digits=4))
    return 0 if all(a.status in ("passed", "skipped") for a in checked) else 1
