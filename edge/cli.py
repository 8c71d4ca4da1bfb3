"""The ``asymfuse-edge`` console script: the phone-side flow on a desktop, with no torch.

- ``asymfuse-edge embed --model m.tflite photo.jpg [...]``: one line per photo with the embedding's
  dimension, norm, first values and the timing.
- ``asymfuse-edge query --model m.tflite --server host:port photo.jpg``: embed, then ask the
  searcher; prints the ranked gallery ids, scores and keys.

User errors (a bad file, a stale model, an unreachable server) exit with code 2 and one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from asymfuse.edge.errors import AsymfuseError, ConfigError

RUNTIMES = ("auto", "onnxruntime", "litert", "coreml")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asymfuse-edge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, helptext in (("embed", "embed photos with an exported query model"),
                           ("query", "embed photos and search the gallery over gRPC")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("photos", nargs="+", help="image files (JPEG, PNG, ...)")
        p.add_argument("--model", required=True, help="exported query model (.onnx, .tflite, .mlpackage)")
        p.add_argument("--runtime", choices=RUNTIMES, default="auto", help="runtime (auto: by file type)")
        p.add_argument("--threads", type=int, default=None, help="inference threads (default: the runtime's)")
    q = sub.choices["query"]
    q.add_argument("--server", required=True, help="searcher address host:port")
    q.add_argument("-k", type=int, default=10, help="results per photo")
    q.add_argument("--api-key-file", default=None,
                   help="file holding the API key (or set ASYMFUSE_API_KEY); needed when the searcher guards reads")
    q.add_argument("--tls", action="store_true", help="connect with TLS (system roots unless --ca)")
    q.add_argument("--ca", default=None, help="PEM file of the CA that signed the searcher's certificate")
    q.add_argument("--timeout", type=float, default=10.0, help="deadline of each call in seconds")
    return parser


def _embedder(args: argparse.Namespace) -> Any:
    from asymfuse.edge.embedder import ImageEmbedder
    from asymfuse.edge.options import ImageEmbedderOptions

    return ImageEmbedder.create_from_options(ImageEmbedderOptions(model_path=args.model, runtime=args.runtime,
                                                                  num_threads=args.threads))


def _api_key(args: argparse.Namespace) -> str | None:
    if args.api_key_file:
        try:
            return Path(args.api_key_file).read_text().strip() or None
        except OSError as exc:
            raise ConfigError(f"cannot read --api-key-file {args.api_key_file}: {exc}") from exc
    return os.environ.get("ASYMFUSE_API_KEY") or None


def run_embed(args: argparse.Namespace) -> int:
    with _embedder(args) as embedder:
        for photo in args.photos:
            r = embedder.embed(photo)
            head = ", ".join(f"{v:+.4f}" for v in r.embedding[:4])
            print(f"{photo}: d={r.embedding.shape[0]} norm={float((r.embedding ** 2).sum()) ** 0.5:.4f} "
                  f"[{head}, ...] {r.latency_ms:.1f} ms space={r.embedding_space_id} model={r.model_name}")
    return 0


def run_query(args: argparse.Namespace) -> int:
    from asymfuse.edge.search_client import ClientConfig, SearchClient

    roots = None
    if args.ca:
        try:
            roots = Path(args.ca).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read --ca {args.ca}: {exc}") from exc
    with _embedder(args) as embedder:
        config = ClientConfig(target=args.server, embedding_space_id=embedder.model_spec.embedding_space_id,
                              api_key=_api_key(args), tls=args.tls or roots is not None, root_certificates=roots,
                              timeout_s=args.timeout)
        with SearchClient(config) as client:
            for photo in args.photos:
                r = embedder.embed(photo)
                hits = client.search(r.embedding, k=args.k)
                print(f"{photo}: embed {r.latency_ms:.1f} ms, {len(hits)} hits")
                for rank, h in enumerate(hits, 1):
                    key = h.metadata.get("key", "")
                    print(f"  {rank:3d}  id={h.id:<10d} score={h.score:.4f}  {key}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for user errors, with a one-line reason)."""
    args = build_parser().parse_args(argv)
    try:
        return run_embed(args) if args.command == "embed" else run_query(args)
    except AsymfuseError as exc:
        print(f"asymfuse-edge {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
