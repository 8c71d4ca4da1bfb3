"""``asymfuse extract``: gallery (and query) features of a dataset into feature stores.

Plain ``asymfuse extract`` runs in one process. Under ``torchrun`` every rank extracts its share
of the store shards and rank 0 merges them (:mod:`asymfuse.cloud.features.extract_sharded`); the
stores are the same either way.
"""

from __future__ import annotations

import argparse
import os

PRECISION_CHOICES = ("fp32", "bf16", "fp16")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="extract features of a dataset into feature stores (resumable; "
                                       "torchrun-ready)")
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
    p.add_argument("--device", default="cpu", help="cpu or cuda (under torchrun each rank takes cuda:LOCAL_RANK)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per batch (default 16); when given, also the extractor's forward batch unless "
                        "--option batch_size=... says otherwise")
    p.add_argument("--shard-size", type=int, default=256, help="items per store shard, the unit of resume "
                                                               "(a resumed store keeps its own)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers that decode and resize per process (default: min(4, CPUs per process)); "
                        "0 = in the main process")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32",
                   help="autocast precision of the CNN forward (bf16, or fp16 on CUDA); recorded in the store meta")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format for the CNN forward (default: on; measured 1.5x faster than "
                        "contiguous for gem_lite1 on 2 CPU cores, features equal up to float rounding)")
    p.add_argument("--dist-timeout", type=float, default=1800.0, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others at a collective before the job fails")
    p.add_argument("--no-resume", action="store_true", help="overwrite an existing store instead of resuming")
    p.set_defaults(func=run)


def default_workers(environ: dict[str, str] | None = None) -> int:
    """``min(4, CPUs / processes on this node)``, at least 1."""
    env = os.environ if environ is None else environ
    per_node = max(1, int(env.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(4, (os.cpu_count() or 1) // per_node))


def extractor_kwargs(args: argparse.Namespace, accepted: set[str]) -> dict[str, object]:
    """The extractor's options: ``--option`` values plus batch size, precision and memory format.

    Raises:
        ConfigError: ``--precision``/``--channels-last`` for an extractor that has no such option.
    """
    from asymfuse.cloud.cli.options import parse_options
    from asymfuse.edge.errors import ConfigError

    kwargs = dict(parse_options(args.option))
    if "batch_size" in accepted and args.batch_size is not None:
        kwargs.setdefault("batch_size", args.batch_size)
    if "channels_last" in accepted:  # default: on (faster on CUDA and on CPU)
        kwargs.setdefault("channels_last", True if args.channels_last is None else args.channels_last)
    for key, value, default in (("precision", args.precision, "fp32"), ("channels_last", args.channels_last, None)):
        if key in accepted:
            kwargs.setdefault(key, value)
        elif value not in (default, False):
            raise ConfigError(f"extractor {args.extractor!r} has no {key} option; drop --{key.replace('_', '-')} "
                              "(the CNN extractors gem_* and local_lite2 take it)")
    return kwargs


def run(args: argparse.Namespace) -> int:
    from asymfuse.cloud.data.records import RetrievalDataset
    from asymfuse.cloud.data.registry import create_dataset
    from asymfuse.cloud.cli.options import parse_options
    from asymfuse.cloud.distributed import dist_env_from_environ, launched_by_torchrun, process_group, rank_device
    from asymfuse.cloud.features.extract import ExtractOptions
    from asymfuse.cloud.features.extract_dataset import extract_dataset
    from asymfuse.cloud.features.registry import create_feature_extractor, extractor_options
    from asymfuse.edge.errors import ConfigError

    dataset = create_dataset(args.dataset, root=args.root, **parse_options(args.dataset_option))
    if not isinstance(dataset, RetrievalDataset):
        raise ConfigError(f"dataset {args.dataset!r} is a training set; extract needs a retrieval dataset (photos in "
                          "<root>/<class>/<image> folders: --dataset folder-retrieval)")
    env = dist_env_from_environ()
    device = rank_device(args.device, env)
    sides = tuple(s.strip() for s in args.sides.split(",") if s.strip())
    options = ExtractOptions(batch_size=16 if args.batch_size is None else args.batch_size, shard_size=args.shard_size,
                             workers=default_workers() if args.workers is None else args.workers,
                             resume=not args.no_resume, progress=env.is_main, dist_timeout_s=args.dist_timeout)
    kwargs = extractor_kwargs(args, extractor_options(args.extractor))
    with process_group(env, device, timeout_s=args.dist_timeout), \
            create_feature_extractor(args.extractor, device=device, **kwargs) as ex:
        stores = extract_dataset(ex, dataset, args.out, sides=sides, options=options,
                                 env=env if launched_by_torchrun() else None)
    if env.is_main:
        for side, store in stores.items():
            print(f"{side}: {len(store)} items, {store.kind} dim {store.dim} -> {store.root}"
                  + (f" ({env.world_size} processes)" if env.distributed else ""))
    return 0
