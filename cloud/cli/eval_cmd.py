"""``asymfuse eval``: official metrics from a ranking file or from stored features, optionally AMES re-ranked."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="revisitop / GLDv2 / Holidays / UKBench metrics")
    p.add_argument("--dataset", default="revisitop", help="registered dataset name (default: revisitop)")
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--dataset-option", action="append", metavar="KEY=VALUE",
                   help="loader option, e.g. name=asymfuse-skimage")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ranking", help=".npy int ranking: (nb, nq) revisitop layout or (nq, k) with --layout faiss")
    src.add_argument("--features", help="folder with gallery/ and queries/ feature stores (from `asymfuse extract`)")
    src.add_argument("--queries", help="query feature store (e.g. from `asymfuse extract --extractor query_net`); "
                                       "needs --gallery")
    p.add_argument("--gallery", help="with --queries: the gallery feature store (e.g. from `asymfuse index fuse`)")
    p.add_argument("--layout", choices=("revisitop", "faiss"), default="revisitop")
    ames = p.add_argument_group("AMES re-ranking (with --features or --queries)")
    ames.add_argument("--ames", help="binary AMES checkpoint (ames.pt from `asymfuse train ames`)")
    ames.add_argument("--packed", help="the gallery's packed local store (from `asymfuse index pack-ames`)")
    ames.add_argument("--query-locals", help="the queries' local feature store (same local feature as the gallery's)")
    ames.add_argument("--top-m", type=int, default=100, help="re-rank depth (default 100)")
    ames.add_argument("--lq", type=int, default=None, help="query descriptors kept (default: all stored)")
    ames.add_argument("--device", default="cpu", help="cpu or cuda[:N] for the AMES scorer")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from asymfuse.cloud.cli.options import parse_options
    from asymfuse.cloud.data.records import RetrievalDataset
    from asymfuse.cloud.data.registry import create_dataset
    from asymfuse.cloud.eval.evaluate import evaluate_ranking, rank_features
    from asymfuse.edge.errors import ConfigError

    dataset = create_dataset(args.dataset, root=args.root, **parse_options(args.dataset_option))
    if not isinstance(dataset, RetrievalDataset):
        raise ConfigError(f"dataset {args.dataset!r} is a training set; eval needs a retrieval dataset")
    wants_ames = any(v is not None for v in (args.ames, args.packed, args.query_locals))
    if wants_ames and not (args.ames and args.packed and args.query_locals):
        raise ConfigError("AMES re-ranking needs all of --ames, --packed and --query-locals")
    if args.ranking:
        if wants_ames:
            raise ConfigError("AMES re-ranking needs global vectors: use --features or --queries/--gallery")
        metrics = {"global": evaluate_ranking(_load_ranking(args.ranking), dataset, layout=args.layout)}
    else:
        xq, xb = _vectors(args, dataset)
        metrics = {"global": evaluate_ranking(rank_features(xq, xb), dataset)}
        if wants_ames:
            metrics["ames"] = _ames_metrics(args, dataset, xq, xb)
    for name, values in metrics.items():
        print(f"[{name}]")
        for key, value in values.items():
            print(f"{key:>16}: {value:.2f}" if isinstance(value, float) else f"{key:>16}: {value}")
    if args.json:
        flat = dict(metrics["global"]) if len(metrics) == 1 else metrics
        Path(args.json).write_text(json.dumps({"dataset": dataset.name, **flat}, indent=2))
    return 0


def _load_ranking(path: str) -> Any:
    import numpy as np

    from asymfuse.edge.errors import CorruptDataError

    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CorruptDataError(f"ranking file {path!r} is not a readable .npy: {exc}") from exc


def _vectors(args: argparse.Namespace, dataset: Any) -> tuple[Any, Any]:
    """``(xq, xb)`` from ``--features DIR`` or ``--queries STORE --gallery STORE``."""
    from pathlib import Path

    from asymfuse.cloud.eval.stores import query_and_gallery
    from asymfuse.cloud.features.store import FeatureStore
    from asymfuse.edge.errors import ConfigError

    if args.queries and not args.gallery:
        raise ConfigError("--queries needs --gallery (the gallery store of the same embedding space)")
    if args.gallery and not args.queries:
        raise ConfigError("--gallery goes with --queries; or pass --features DIR holding gallery/ and queries/")
    q_root, g_root = ((args.queries, args.gallery) if args.queries
                      else (Path(args.features) / "queries", Path(args.features) / "gallery"))
    with FeatureStore.open(q_root) as q, FeatureStore.open(g_root) as g:
        xq, xb, info = query_and_gallery(dataset, q, g)
    print(f"queries: {info['query_extractor']}, gallery: {info['gallery_extractor']}"
          + (f", space {info['embedding_space_id']}" if info["embedding_space_id"] else ""))
    return xq, xb


def _ames_metrics(args: argparse.Namespace, dataset: Any, xq: Any, xb: Any) -> dict[str, Any]:
    """Re-rank the global top-m with the checkpoint's λ/γ; the metrics after re-ranking."""
    from asymfuse.cloud.ames.checkpoint import load_ames
    from asymfuse.cloud.ames.evaluate import evaluate_ames
    from asymfuse.cloud.ames.options import RerankOptions
    from asymfuse.cloud.ames.packed_store import PackedLocalStore
    from asymfuse.cloud.ames.scorer import AMESScorer
    from asymfuse.cloud.ames.sources import ArrayLocals
    from asymfuse.cloud.features.store import FeatureStore
    from asymfuse.edge.errors import ConfigError

    model, info = load_ames(args.ames, variant="binary", device=args.device)
    with FeatureStore.open(args.query_locals) as store:
        if list(store.ids) != list(dataset.query_ids):
            raise ConfigError(f"the query local store {args.query_locals} does not hold this dataset's queries in "
                              "order; extract them with `asymfuse extract --sides queries` and the local feature "
                              "the AMES checkpoint was trained on")
        queries = ArrayLocals.from_store(store, max_local=args.lq)
    with PackedLocalStore.open(args.packed, model=model) as packed:
        if packed.ids != list(dataset.gallery_ids):
            raise ConfigError(f"the packed store {args.packed} does not hold this dataset's gallery in order; "
                              "pack the gallery's local store of this dataset with `asymfuse index pack-ames`")
        options = RerankOptions.from_info(info, top_m=args.top_m, lq=args.lq)
        res = evaluate_ames(dataset=dataset, xq=xq, xb=xb, query_locals=queries, gallery=packed,
                            scorer=AMESScorer(model, device=args.device), options=options)
    return {**res.ames_metrics, "top_m": res.options.top_m, "lam": options.lam, "gamma": options.gamma}
