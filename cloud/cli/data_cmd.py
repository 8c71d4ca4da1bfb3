"""``asymfuse data build``: the embedded real-photo benchmark in revisitop format."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="datasets: build the embedded benchmark, list loaders")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    b = dsub.add_parser("build", help="build the embedded benchmark (deterministic by seed)")
    b.add_argument("--out", default="runs/benchmark", help="output folder (default runs/benchmark)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--source", default="skimage", help="'skimage' (bundled photos) or a folder of your photos")
    b.add_argument("--n-views", type=int, default=None, help="gallery views per instance")
    b.add_argument("--overwrite", action="store_true", help="replace an existing build with another config")
    b.set_defaults(func=run_build)
    ls = dsub.add_parser("list", help="list the dataset loaders")
    ls.set_defaults(func=run_list)


def run_build(args: argparse.Namespace) -> int:
    from asymfuse.cloud.data.benchmark import BenchmarkConfig, build_benchmark

    kwargs = {"seed": args.seed, "source": args.source}
    if args.n_views is not None:
        kwargs["n_views"] = args.n_views
    bench = build_benchmark(args.out, config=BenchmarkConfig(**kwargs), overwrite=args.overwrite)
    state = "reused" if bench.reused else "built"
    print(f"benchmark {state} at {bench.root}")
    for name, part in bench.splits.items():
        print(f"  {name:>9}: {part.gnd_path}")
    if bench.multiview is not None:
        print(f"  multiview: {bench.multiview.gnd_path}")
    print(f"  train labels (GLDv2 CSV): {bench.train_csv}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from asymfuse.cloud.data.registry import dataset_names

    print("datasets: " + ", ".join(dataset_names()))
    return 0
