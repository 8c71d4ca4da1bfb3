"""``asymfuse serve``: the gRPC searcher over an index folder (``asymfuse index build``)."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from asymfuse.edge.errors import ConfigError

KEYS_ENV = "ASYMFUSE_API_KEYS"
TOKEN_ENV = "ASYMFUSE_MILVUS_TOKEN"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the gRPC searcher over an index folder (until SIGTERM)")
    p.add_argument("--index", required=True, help="index folder from `asymfuse index build`, or a Milvus collection "
                                                  "milvus://host:19530/<collection> (milvus+https://... for TLS)")
    p.add_argument("--ames", help="milvus:// index built with AMES: the checkpoint it was built with")
    p.add_argument("--milvus-token-file", help=f"file holding the Milvus user:password or API key (or set {TOKEN_ENV})")
    p.add_argument("--milvus-timeout", type=float, default=10.0, help="seconds per Milvus call (default 10)")
    p.add_argument("--bind", default="127.0.0.1:50051", help="host:port (default 127.0.0.1:50051; port 0 = any)")
    p.add_argument("--tls-cert", help="PEM certificate (with --tls-key) for TLS")
    p.add_argument("--tls-key", help="PEM private key")
    p.add_argument("--api-key-file", help=f"file with one accepted API key per line (or set {KEYS_ENV}, comma-"
                                          "separated); writes need a key")
    p.add_argument("--auth-reads", action="store_true", help="require an API key for searches too")
    p.add_argument("--threads", type=int, default=8, help="concurrent RPCs (default 8)")
    p.add_argument("--max-k", type=int, default=1000)
    p.add_argument("--max-batch", type=int, default=256)
    p.add_argument("--max-message-mb", type=int, default=16)
    p.add_argument("--rerank-top-m", type=int, default=100, help="default AMES depth (default 100)")
    p.add_argument("--snapshot-interval", type=float, default=300.0,
                   help="seconds between snapshots when writes arrived (0: only at shutdown)")
    p.add_argument("--device", default="cpu", help="where AMES runs (cpu, cuda)")
    p.add_argument("--scorer", default="fp32", help="AMES scorer kind: fp32 (exact, CPU), batched (exact, one call; "
                                                    "GPU), bf16 (GPU), int8 (default fp32)")
    p.add_argument("--resident-gallery", action="store_true",
                   help="keep the projected AMES gallery tokens on the device (small galleries / big GPUs)")
    p.add_argument("--faiss-threads", type=int, default=1,
                   help="OpenMP threads per faiss search (default 1: parallelism comes from concurrent RPCs)")
    p.set_defaults(func=run)


def api_keys(path: str | None) -> tuple[str, ...]:
    """Keys from ``path`` (one per line, # comments) and the environment."""
    keys = [k.strip() for k in os.environ.get(KEYS_ENV, "").split(",") if k.strip()]
    if path:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read --api-key-file {path}: {exc}") from exc
        keys += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return tuple(keys)


def run(args: argparse.Namespace) -> int:
    from asymfuse.cloud.service.config import MiB, ServerConfig
    from asymfuse.cloud.service.server import serve

    logging.getLogger("asymfuse.service").setLevel(logging.INFO)
    config = ServerConfig(index_dir=args.index, bind=args.bind, tls_cert=args.tls_cert, tls_key=args.tls_key,
                          api_keys=api_keys(args.api_key_file), auth_reads=args.auth_reads, threads=args.threads,
                          max_k=args.max_k, max_batch=args.max_batch, max_message_bytes=args.max_message_mb * MiB,
                          rerank_top_m=args.rerank_top_m, snapshot_interval_s=args.snapshot_interval,
                          device=args.device, faiss_threads=args.faiss_threads, scorer=args.scorer,
                          resident_gallery=args.resident_gallery, ames_checkpoint=args.ames,
                          milvus_token=milvus_token(args.milvus_token_file), milvus_timeout_s=args.milvus_timeout)
    return serve(config)


def milvus_token(path: str | None) -> str | None:
    """The token in ``path`` (first line), else the environment's, else None."""
    if path:
        try:
            return Path(path).read_text().strip().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ConfigError(f"cannot read a token from --milvus-token-file {path} ({exc})") from exc
    return os.environ.get(TOKEN_ENV) or None
