"""``asymfuse index``: ``fuse`` (fused gallery vectors from stored features and a trained mixer) and
``pack-ames`` (a binary AMES checkpoint's packed local codes for a gallery, ~16 bytes per descriptor)."""

from __future__ import annotations

import argparse
import os

from asymfuse.edge.errors import ConfigError

TOKEN_ENV = "ASYMFUSE_MILVUS_TOKEN"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="build gallery indexes (fuse, pack-ames, build)")
    isub = p.add_subparsers(dest="index_kind", required=True, metavar="ACTION")
    f = isub.add_parser("fuse", help="run a trained mixer over stored gallery features -> fused feature store")
    f.add_argument("--mixer", required=True, help="mixer.pt written by `asymfuse train aff`")
    src = f.add_mutually_exclusive_group(required=True)
    src.add_argument("--stores", nargs="+", help="one feature store per mixer input, in the mixer's order")
    src.add_argument("--features-dir", help="feature cache laid out as <dir>/<feature>/<part>/<gallery|queries>")
    f.add_argument("--part", default="test", help="with --features-dir: the dataset part (default: test)")
    f.add_argument("--side", "--which", dest="side", choices=("gallery", "queries"), default="gallery",
                   help="which side of the dataset to fuse (default gallery)")
    f.add_argument("--out", required=True, help="output store folder (must not exist)")
    f.add_argument("--device", default="cpu")
    f.add_argument("--batch-size", type=int, default=256)
    f.set_defaults(func=run_fuse)
    a = isub.add_parser("pack-ames", help="binarise a local feature store with a binary AMES checkpoint -> "
                                          "packed codes for re-ranking")
    a.add_argument("--ames", required=True, help="a binary AMES checkpoint (ames.pt of `asymfuse train ames`)")
    a.add_argument("--store", required=True, help="the gallery's local feature store (same feature as training)")
    a.add_argument("--max-local", type=int, default=48, help="descriptors kept per image (default 48: ~1 KB)")
    a.add_argument("--out", required=True, help="output folder (must not exist)")
    a.add_argument("--device", default="cpu")
    a.set_defaults(func=run_pack_ames)
    b = isub.add_parser("build", help="a searcher index folder (faiss + write-ahead log, optional AMES), or a Milvus "
                                      "collection (--backend milvus), from fused gallery stores")
    b.add_argument("--features", nargs="+", required=True,
                   help="fused gallery store(s) from `asymfuse index fuse` (one embedding space)")
    b.add_argument("--factory", default="Flat",
                   help="faiss factory: Flat, HNSW32, IVF{n},Flat, IVF{n},PQ{m}, OPQ{m},IVF{n},PQ{m} (default Flat)")
    b.add_argument("--nprobe", type=int, default=64, help="IVF lists probed per query (default 64)")
    b.add_argument("--ef-search", type=int, default=400, help="HNSW efSearch (default 400)")
    b.add_argument("--train-size", type=int, default=100_000, help="vectors sampled to train IVF/PQ (default 100000)")
    b.add_argument("--ames", help="binary AMES checkpoint for re-ranking (with --packed)")
    b.add_argument("--packed", help="the gallery's packed local store from `asymfuse index pack-ames`")
    b.add_argument("--copy-packed", action="store_true", help="copy the packed store into the folder (default: link)")
    b.add_argument("--lq", type=int, help="AMES: query descriptors kept (default: all sent)")
    b.add_argument("--lx", type=int, help="AMES: gallery descriptors kept (default: all packed)")
    b.add_argument("--lam", type=float, help="AMES ensemble weight of the global score (default: the checkpoint's)")
    b.add_argument("--gamma", type=float, help="AMES logit temperature (default: the checkpoint's)")
    b.add_argument("--out", help="the index folder to create (must not exist; --backend faiss)")
    m = b.add_argument_group("Milvus (--backend milvus; resumable: rerun the same command after an interruption)")
    m.add_argument("--backend", choices=("faiss", "milvus"), default="faiss",
                   help="faiss: an index folder (default); milvus: a collection on a Milvus server")
    m.add_argument("--uri", help="the Milvus server, e.g. http://localhost:19530 (https://... with --token)")
    m.add_argument("--token", help=f"Milvus user:password or API key (or set {TOKEN_ENV})")
    m.add_argument("--collection", help="the collection to fill (AMES codes go to <collection>_ames)")
    m.add_argument("--index-type", help="a Milvus index type instead of the --factory translation: FLAT, HNSW, "
                                        "IVF_FLAT, IVF_PQ, IVF_SQ8")
    m.add_argument("--metric", choices=("IP", "COSINE"), default="IP", help="Milvus metric (default IP)")
    m.add_argument("--batch-size", type=int, default=10_000, help="vectors per insert (default 10000)")
    b.set_defaults(func=run_build)


def run_fuse(args: argparse.Namespace) -> int:
    from asymfuse.cloud.index.fuse import fuse_stores, store_roots_for
    from asymfuse.cloud.models.mixers.checkpoint import load_mixer

    roots = args.stores
    if roots is None:
        _, info = load_mixer(args.mixer)
        roots = store_roots_for(info.schema.names, features_dir=args.features_dir, part=args.part,
                                side=args.side)
    store = fuse_stores(args.mixer, roots, args.out, device=args.device, batch_size=args.batch_size)
    print(f"fused {len(store)} items -> {args.out} (dim {store.dim}, space "
          f"{store.meta.get('embedding_space_id')})")
    return 0


def run_build(args: argparse.Namespace) -> int:
    from asymfuse.cloud.index.build import build_index
    from asymfuse.cloud.index.faiss_index import IndexConfig

    if args.backend == "milvus":
        return run_build_milvus(args)
    if not args.out:
        raise ConfigError("give --out (the index folder to create), or --backend milvus with --uri and --collection")

    config = IndexConfig(factory=args.factory, nprobe=args.nprobe, ef_search=args.ef_search,
                         train_size=args.train_size)
    meta = build_index(args.features, args.out, config=config, ames=args.ames, packed=args.packed,
                       copy_packed=args.copy_packed, lq=args.lq, lx=args.lx, lam=args.lam, gamma=args.gamma)
    ames = "off" if meta.ames is None else f"on ({meta.ames['items_with_locals']} items with packed locals)"
    print(f"indexed {meta.count} items -> {args.out} ({args.factory}, dim {meta.dim}, space "
          f"{meta.embedding_space_id}, AMES {ames}); serve it with `asymfuse serve --index {args.out}`")
    return 0


def run_build_milvus(args: argparse.Namespace) -> int:
    from asymfuse.cloud.index.milvus_build import build_milvus_index
    from asymfuse.cloud.index.milvus_config import MilvusIndexConfig, MilvusTarget

    if not args.uri or not args.collection:
        raise ConfigError("--backend milvus needs --uri (e.g. http://localhost:19530) and --collection")
    if args.index_type:
        config = MilvusIndexConfig(index_type=args.index_type.upper(), metric=args.metric, nprobe=args.nprobe,
                                   ef_search=args.ef_search)
    else:
        config = MilvusIndexConfig.from_factory(args.factory, ef_search=args.ef_search, nprobe=args.nprobe,
                                                metric=args.metric)
    target = MilvusTarget(uri=args.uri, collection=args.collection, token=args.token or os.environ.get(TOKEN_ENV))
    meta = build_milvus_index(args.features, target, config=config, ames=args.ames, packed=args.packed, lq=args.lq,
                              lx=args.lx, lam=args.lam, gamma=args.gamma, batch_size=args.batch_size)
    ames = "off" if meta.ames is None else f"on ({meta.ames['items_with_locals']} items with packed locals)"
    extra = f" --ames {args.ames}" if args.ames else ""
    print(f"indexed {meta.count} items -> {target.url} ({config.index_type}, dim {meta.dim}, space "
          f"{meta.embedding_space_id}, AMES {ames}); serve it with `asymfuse serve --index {target.url}{extra}`")
    return 0


def run_pack_ames(args: argparse.Namespace) -> int:
    from asymfuse.cloud.ames.checkpoint import load_ames
    from asymfuse.cloud.ames.packed_build import build_packed_store
    from asymfuse.cloud.features.store_reader import FeatureStore

    model, _ = load_ames(args.ames, variant="binary", device=args.device)
    with FeatureStore.open(args.store) as local:
        packed = build_packed_store(model, local, args.out, max_local=args.max_local, device=args.device)
    with packed:
        print(f"packed {len(packed)} items -> {args.out} ({packed.bytes_per_image()} bytes of codes per image "
              f"at L={packed.max_local})")
    return 0
