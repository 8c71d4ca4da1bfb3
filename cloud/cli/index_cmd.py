"""``asymfuse index fuse``: fused gallery vectors from stored features and a trained mixer."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build gallery indexes (fuse)")
    isub = p.add_subparsers(dest="index_kind", required=True, metavar="ACTION")
    f = isub.add_parser("fuse", help="run a trained mixer over stored gallery features -> fused feature store")
    f.add_argument("--mixer", required=True, help="mixer.pt written by `asymfuse train aff`")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--stores", nargs="+", help="one feature store per mixer input, in the mixer's order")
    src.add_argument("--features-dir", help="feature cache laid out as <dir>/<feature>/<part>/<gallery|queries>")
    f.add_argument("--part", default="test", help="with --features-dir: the dataset part (default: test)")
    f.add_argument("--which", choices=("gallery", "queries"), default="gallery")
    f.add_argument("--out", required=True, help="output store folder (must not exist)")
    f.add_argument("--device", default="cpu")
    f.add_argument("--batch-size", type=int, default=256)
    f.set_defaults(func=run_fuse)


def run_fuse(args: argparse.Namespace) -> int:
    from asymfuse.cloud.index.fuse import fuse_stores, store_roots_for
    from asymfuse.cloud.train.artifacts import load_mixer

    roots = args.stores
    if roots is None:
        _, info = load_mixer(args.mixer)
        roots = store_roots_for(info["schema"].names, features_dir=args.features_dir, part=args.part,
                                which=args.which)
    store = fuse_stores(args.mixer, roots, args.out, device=args.device, batch_size=args.batch_size)
    print(f"fused {len(store)} items -> {args.out} (dim {store.dim}, space "
          f"{store.meta.get('embedding_space_id')})")
    return 0
