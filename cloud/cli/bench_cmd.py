"""``asymfuse bench``: benchmarks that compose the packages; ``bench aff`` runs the AFF ablations,
``bench ames`` the AMES re-ranking tables, ``bench ames-latency`` the AMES scorer kinds' latency,
``bench export`` the exported query nets (parity and speed), ``bench serve`` the searcher,
``bench edge`` the torch-free edge SDK (embed and end-to-end latency, install size), ``bench extract``
gallery extraction throughput for 1 and 2 processes (torchrun)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (aff: the AFF paper's ablations; ames: AMES re-ranking; "
                                     "export: query nets x formats x precisions)")
    benches = p.add_subparsers(dest="bench", required=True, metavar="BENCH")
    _add_trained_bench(benches, "aff", func=run_aff,
                       summary="AFF ablations on the embedded benchmark: table, curves, mAP vs GFLOPs",
                       quick="the quick tier (under 10 min on 2 CPU cores)",
                       keys="override a bench key (query_archs, blocks, baselines) or a training key "
                            "(epochs, dim, input_size, ...); repeatable")
    _add_trained_bench(benches, "ames", func=run_ames,
                       summary="AMES re-ranking on the embedded benchmark: quality, memory, asymmetry, "
                               "latency tables and mAP vs bytes per image",
                       quick="the quick tier (one local feature, fp + binary)",
                       keys="override a bench key (local_features, variants, blocks, epochs, lq, lx, memory_lx, ...) "
                            "or a training key (batch_size, lr, ...); repeatable")
    export = benches.add_parser("export", help="query nets exported to ONNX / TFLite / Core ML x fp32 / fp16 / int8: "
                                               "parity gate, mAP, batch-1 latency, Pareto plot")
    export.add_argument("--quick", action="store_true", help="the quick tier (EfficientNet-Lite0 at 224 only)")
    export.add_argument("--out", default=None, help="output folder (default runs/bench/export or "
                                                    "runs/bench/export-quick)")
    export.add_argument("--bench-root", default=None,
                        help="use (or build) the embedded benchmark here instead of <out>/benchmark")
    export.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                        help="override a bench key (archs, sizes, formats, precisions, threads, runs, warmup, "
                             "calibration, embed_dim); repeatable")
    export.set_defaults(func=run_export)
    serve = benches.add_parser("serve", help="the gRPC searcher at 100k / 1M synthetic 512-d vectors: build time, "
                                             "memory, recall@100, QPS and p50/p99 (gRPC and in-process), AMES")
    serve.add_argument("--quick", action="store_true", help="the quick tier (100k only, under 10 min)")
    serve.add_argument("--out", default=None, help="output folder (default runs/bench/serve or runs/bench/serve-quick)")
    serve.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                       help="override a bench key (sizes, factories, queries, clients, ames, ames_queries, lq, lx); "
                            "repeatable")
    serve.set_defaults(func=run_serve)
    edge = benches.add_parser("edge", help="the edge SDK per exported model: cold start, embed p50/p90 at 1 and 2 "
                                           "threads, end to end with a local searcher (+AMES), install size")
    edge.add_argument("--quick", action="store_true", help="the quick tier (ONNX and TFLite fp32, 20k gallery)")
    edge.add_argument("--models", default=None, help="a folder written by `asymfuse export` (default: export "
                                                     "EfficientNet-Lite0 at 224 px here)")
    edge.add_argument("--out", default=None, help="output folder (default runs/bench/edge or runs/bench/edge-quick)")
    edge.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                      help="override a bench key (targets, threads, runs, gallery, factory, e2e_queries, top_m, "
                           "input_size, ...); repeatable")
    edge.set_defaults(func=run_edge)
    ext = benches.add_parser("extract", help="gallery extraction img/s for 1 and 2 processes (torchrun), scaling "
                                             "efficiency, decode and model stages alone; real photos and weights")
    ext.add_argument("--quick", action="store_true", help="the quick tier (96 photos at 256 px, under 2 min on 2 CPUs)")
    ext.add_argument("--device", default="cpu", help="cpu or cuda (CUDA: gem_lite2, bf16, batch 64, 4 workers; "
                                                     "one GPU per process)")
    ext.add_argument("--out", default=None, help="output folder (default runs/bench/extract or "
                                                 "runs/bench/extract-quick)")
    ext.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                     help="override a bench key (extractor, images, max_side, procs, workers, threads, batch_size, "
                          "shard_size, precision, ...); repeatable")
    ext.set_defaults(func=run_extract)
    lat = benches.add_parser("ames-latency", help="ms to re-score one query's top-100 (L_q = L_x = 64) per AMES "
                                                  "scorer kind (fp32, batched, int8, bf16); synthetic, < 1 min")
    lat.add_argument("--kinds", default=None, help="comma-separated scorer kinds (default: fp32,batched,int8 on "
                                                    "cpu, fp32,batched,bf16 on cuda)")
    lat.add_argument("--skip", default="", help="comma-separated kinds to list but not run (e.g. bf16 on a CPU "
                                                "without bf16 matmul, where it takes seconds)")
    lat.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    lat.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    lat.add_argument("--runs", type=int, default=10, help="timed calls per kind and source")
    lat.add_argument("--top-m", type=int, default=100, help="candidates per query")
    lat.add_argument("--lq", type=int, default=64, help="query descriptors")
    lat.add_argument("--lx", type=int, default=64, help="descriptors per gallery image")
    lat.set_defaults(func=run_ames_latency)


def _add_trained_bench(benches: argparse._SubParsersAction, name: str, *, func: Callable[[argparse.Namespace], int],
                       summary: str, quick: str, keys: str) -> None:
    """The ``bench aff`` / ``bench ames`` parser: --quick, --out, --device, --set, --progress."""
    b = benches.add_parser(name, help=summary)
    b.add_argument("--quick", action="store_true", help=quick)
    b.add_argument("--out", default=None, help=f"output folder (default runs/bench/{name} or runs/bench/{name}-quick)")
    b.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    b.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE", help=keys)
    b.add_argument("--progress", action="store_true", help="show extraction and training progress bars")
    b.set_defaults(func=func)


def run_aff(args: argparse.Namespace) -> int:
    from asymfuse.cloud.bench.aff_bench import run_aff_bench
    from asymfuse.cloud.bench.aff_bench_config import AFFBenchConfig

    return _run_trained_bench(args, AFFBenchConfig, run_aff_bench, name="aff", figures=("curves", "gflops"))


def run_ames(args: argparse.Namespace) -> int:
    from asymfuse.cloud.bench.ames_bench import AMESBenchConfig, run_ames_bench

    return _run_trained_bench(args, AMESBenchConfig, run_ames_bench, name="ames", figures=("plot",))


def _run_trained_bench(args: argparse.Namespace, config_type: Any, run: Callable[..., dict[str, Any]], *,
                       name: str, figures: tuple[str, ...]) -> int:
    """``bench aff`` / ``bench ames``: preset tier + ``--set`` overrides, run, print the report and its files."""
    from asymfuse.cloud.cli.options import parse_options

    tier = "quick" if args.quick else "default"
    cfg = config_type.preset(tier, device=args.device, progress=args.progress)
    cfg = cfg.with_overrides(parse_options(args.overrides))
    out = args.out or (f"runs/bench/{name}-quick" if args.quick else f"runs/bench/{name}")
    result = run(cfg, out_dir=out)
    print(result["markdown"])
    failed = sum(not r.ok for r in result["rows"])
    print(f"runtime: {result['runtime_s']:.1f} s ({tier} tier, {len(result['rows'])} rows, {failed} failed)")
    print("report: " + ", ".join(str(result["paths"][key]) for key in ("markdown", "json", *figures)))
    return 0


def _run_table_bench(args: argparse.Namespace, name: str, config_type: Any, run: Callable[..., dict[str, Any]],
                     **preset: Any) -> int:
    """``bench serve`` / ``bench edge``: preset tier + ``--set`` overrides, run, print the table and its files."""
    from asymfuse.cloud.cli.options import parse_options

    cfg = config_type.preset("quick" if args.quick else "default", **preset)
    cfg = cfg.with_overrides(parse_options(args.overrides))
    result = run(cfg, out_dir=args.out or (f"runs/bench/{name}-quick" if args.quick else f"runs/bench/{name}"))
    print(result["markdown"])
    print(f"report: {result['paths']['markdown']}, {result['paths']['json']}")
    return 0


def run_edge(args: argparse.Namespace) -> int:
    from asymfuse.cloud.bench.edge_bench import EdgeBenchConfig, run_edge_bench

    return _run_table_bench(args, "edge", EdgeBenchConfig, run_edge_bench, models=args.models)


def run_serve(args: argparse.Namespace) -> int:
    from asymfuse.cloud.bench.serve_bench import ServeBenchConfig, run_serve_bench

    return _run_table_bench(args, "serve", ServeBenchConfig, run_serve_bench)


def run_extract(args: argparse.Namespace) -> int:
    from asymfuse.cloud.bench.extract_bench import ExtractBenchConfig, run_extract_bench

    return _run_table_bench(args, "extract", ExtractBenchConfig, run_extract_bench, device=args.device)


def run_ames_latency(args: argparse.Namespace) -> int:
    from asymfuse.cloud.bench.ames_latency import LatencyConfig, render_table, run_latency

    def names(text: str) -> tuple[str, ...]:
        return tuple(k.strip() for k in text.split(",") if k.strip())

    default = "fp32,batched,int8" if args.device == "cpu" else "fp32,batched,bf16"
    cfg = LatencyConfig(kinds=names(args.kinds or default), skip=names(args.skip), device=args.device,
                        threads=args.threads, runs=args.runs, top_m=args.top_m, lq=args.lq, lx=args.lx)
    print(render_table(run_latency(cfg), cfg))
    return 0


def run_export(args: argparse.Namespace) -> int:
    from asymfuse.cloud.bench.export_bench import ExportBenchConfig, run_export_bench
    from asymfuse.cloud.cli.export_cmd import quiet_toolchain_logs
    from asymfuse.cloud.cli.options import parse_options

    quiet_toolchain_logs(getattr(args, "verbose", False))
    tier = "quick" if args.quick else "default"
    cfg = ExportBenchConfig.preset(tier, **({"bench_root": args.bench_root} if args.bench_root else {}))
    cfg = cfg.with_overrides(parse_options(args.overrides))
    out = args.out or ("runs/bench/export-quick" if args.quick else "runs/bench/export")
    result = run_export_bench(cfg, out_dir=out)
    print(result["markdown"])
    rows = result["rows"]
    crashed = sum(r.status == "export_failed" for r in rows)
    gated = sum(r.status == "failed" for r in rows)
    print(f"runtime: {result['runtime_s']:.1f} s ({tier} tier, {len(rows)} rows, {crashed} export failures, "
          f"{gated} gate failures)")
    print(f"report: {result['paths']['markdown']}, {result['paths']['csv']}, {result['paths']['json']}, "
          f"{result['paths']['plot']}")
    return 0
