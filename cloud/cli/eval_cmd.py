"""``asymfuse eval``: official metrics from a ranking file or from stored features."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="revisitop / GLDv2 / Holidays / UKBench metrics")
    p.add_argument("--dataset", default="revisitop", help="registered dataset name (default: revisitop)")
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--dataset-option", action="append", metavar="KEY=VALUE",
                   help="loader option, e.g. name=asymfuse-skimage")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ranking", help=".npy int ranking: (nb, nq) revisitop layout or (nq, k) with --layout faiss")
    src.add_argument("--features", help="folder with gallery/ and queries/ feature stores (from `asymfuse extract`)")
    p.add_argument("--layout", choices=("revisitop", "faiss"), default="revisitop")
    p.add_argument("--json", help="also write the metrics to this JSON file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from asymfuse.cloud.cli.options import parse_options
    from asymfuse.cloud.data.records import RetrievalDataset
    from asymfuse.cloud.data.registry import create_dataset
    from asymfuse.cloud.eval.evaluate import evaluate_ranking, rank_features
    from asymfuse.cloud.features.store import FeatureStore
    from asymfuse.edge.errors import ConfigError, CorruptDataError

    dataset = create_dataset(args.dataset, root=args.root, **parse_options(args.dataset_option))
    if not isinstance(dataset, RetrievalDataset):
        raise ConfigError(f"dataset {args.dataset!r} is a training set; eval needs a retrieval dataset")
    layout = args.layout
    if args.ranking:
        try:
            ranks = np.load(args.ranking, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CorruptDataError(f"ranking file {args.ranking!r} is not a readable .npy: {exc}") from exc
    else:
        with FeatureStore.open(Path(args.features) / "queries") as q, \
                FeatureStore.open(Path(args.features) / "gallery") as g:
            if q.kind != "global" or g.kind != "global":
                raise ConfigError("eval --features needs global feature stores; aggregate local "
                                  "features first (e.g. VLAD) or use a global extractor")
            if list(g.ids) != list(dataset.gallery_ids):
                raise ConfigError("the gallery store's ids do not match the dataset's gallery; "
                                  "re-extract it with `asymfuse extract` on this dataset")
            ranks = rank_features(np.asarray(q.global_features()), np.asarray(g.global_features()))
        layout = "revisitop"
    metrics = evaluate_ranking(ranks, dataset, layout=layout)
    for key, value in metrics.items():
        print(f"{key:>16}: {value:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"dataset": dataset.name, **metrics}, indent=2))
    return 0
