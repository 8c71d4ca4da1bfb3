"""``asymfuse flops``: parameters and GFLOPs of a query net at a given input size."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("flops", help="parameters and GFLOPs (2 x multiply-adds) of a query net")
    p.add_argument("--arch", required=True, action="append",
                   help="registered query net (repeatable), e.g. mobilenet_v2")
    p.add_argument("--size", type=int, action="append", help="square input side (repeatable; default 224)")
    p.add_argument("--embed-dim", type=int, default=512)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asymfuse.cloud.eval.report import markdown_table
    from asymfuse.cloud.models.flops import query_net_cost

    rows = []
    for arch in args.arch:
        for size in args.size or [224]:
            cost = query_net_cost(arch, size=size, embed_dim=args.embed_dim)
            rows.append({"arch": arch, "size": size, "params_m": round(cost["params_m"], 3),
                         "gflops": round(cost["gflops"], 3)})
    print(markdown_table(rows, ("arch", "size", "params_m", "gflops")))
    return 0
