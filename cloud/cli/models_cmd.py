"""``asymfuse models``: list the registered query nets, trunks and gallery extractors."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered query nets and gallery feature extractors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asymfuse.cloud.features.registry import FEATURE_EXTRACTORS
    from asymfuse.cloud.models import QUERY_NETS, TRUNKS

    print("query nets:         " + ", ".join(QUERY_NETS.names()))
    print("backbones:          " + ", ".join(TRUNKS.names()))
    print("feature extractors: " + ", ".join(FEATURE_EXTRACTORS.names()))
    return 0
