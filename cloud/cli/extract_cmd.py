"""``asymfuse extract``: gallery (and query) features of a dataset into feature stores."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="extract features of a dataset into feature stores (resumable)")
    p.add_argument("--dataset", default="revisitop", help="registered dataset name (default: revisitop)")
    p.add_argument("--root", required=True, help="dataset folder")
    p.add_argument("--dataset-option", action="append", metavar="KEY=VALUE",
                   help="loader option, e.g. name=asymfuse-skimage for the revisitop loader")
    p.add_argument("--extractor", required=True, help="feature extractor name (see `asymfuse models`)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="extractor option, e.g. max_side=512, checkpoint=runs/aff/query_net.pt (query_net), "
                        "model_path=q.onnx (onnx_global; its ModelSpec is read from the file)")
    p.add_argument("--out", required=True, help="output folder; stores go to OUT/gallery and OUT/queries")
    p.add_argument("--sides", "--parts", dest="sides", default="gallery,queries",
                   help="which sides of the dataset: gallery,queries (default both)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--no-resume", action="store_true", help="overwrite an existing store instead of resuming")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from asymfuse.cloud.cli.options import parse_options
    from asymfuse.cloud.data.records import RetrievalDataset
    from asymfuse.cloud.data.registry import create_dataset
    from asymfuse.cloud.features.extract_dataset import extract_dataset
    from asymfuse.cloud.features.registry import create_feature_extractor
    from asymfuse.edge.errors import ConfigError

    dataset = create_dataset(args.dataset, root=args.root, **parse_options(args.dataset_option))
    if not isinstance(dataset, RetrievalDataset):
        raise ConfigError(f"dataset {args.dataset!r} is a training set; extract needs a retrieval dataset (photos in "
                          "<root>/<class>/<image> folders: --dataset folder-retrieval)")
    with create_feature_extractor(args.extractor, device=args.device, **parse_options(args.option)) as ex:
        sides = tuple(s.strip() for s in args.sides.split(",") if s.strip())
        stores = extract_dataset(ex, dataset, args.out, sides=sides, batch_size=args.batch_size,
                                 resume=not args.no_resume)
    for side, store in stores.items():
        print(f"{side}: {len(store)} items, {store.kind} dim {store.dim} -> {store.root}")
    return 0
