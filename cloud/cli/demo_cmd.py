"""``asymfuse demo``: the main job, end to end on the embedded benchmark."""

from __future__ import annotations

import argparse
import logging
import warnings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="end-to-end demo on the embedded real-photo benchmark")
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asymfuse.cloud.ames.sources import MissingLocalsWarning
    from asymfuse.cloud.data.benchmark import BenchmarkConfig
    from asymfuse.cloud.demo.pipeline import DemoConfig, run_demo

    if not getattr(args, "verbose", False):  # the in-process searcher's per-request access log (shown with -v)
        logging.getLogger("asymfuse.service").setLevel(logging.WARNING)
    cfg = DemoConfig(out_dir=args.out, seed=args.seed, device=args.device,
                     benchmark=BenchmarkConfig(seed=args.seed), progress=not args.no_progress)
    with warnings.catch_warnings():
        if not getattr(args, "verbose", False):  # one per AMES evaluation; the report says it once
            warnings.simplefilter("ignore", MissingLocalsWarning)
        report = run_demo(cfg)
    print(report["markdown"])
    print(f"report: {args.out}/report.md and report.json")
    return 0
