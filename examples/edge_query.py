"""The phone flow with the torch-free edge SDK: load an exported query model, embed a photo, search.

Run: python examples/edge_query.py MODEL(.onnx|.tflite) HOST:PORT PHOTO [PHOTO ...]
(install with `pip install asymfuse[edge]`; set ASYMFUSE_API_KEY if the searcher guards reads)
"""

import os
import sys

from asymfuse.edge import ImageEmbedder, ImageEmbedderOptions
from asymfuse.edge.errors import IncompatibleModelError
from asymfuse.edge.search_client import ClientConfig, SearchClient

model, server, *photos = sys.argv[1:]
options = ImageEmbedderOptions(model_path=model, num_threads=2)
with ImageEmbedder.create_from_options(options) as embedder:
    # the client sends the model's embedding space; a searcher of another space refuses it on connect
    config = ClientConfig(target=server, embedding_space_id=embedder.model_spec.embedding_space_id,
                          api_key=os.environ.get("ASYMFUSE_API_KEY"), timeout_s=5.0, check_on_connect=True)
    try:
        client = SearchClient(config)
    except IncompatibleModelError as exc:
        sys.exit(f"stale model: {exc}")
    with client:
        for photo in photos:
            result = embedder.embed(photo)  # (d,) float32, unit-norm
            hits = client.search(result.embedding, k=5)
            print(f"{photo}: embedded in {result.latency_ms:.1f} ms")
            for rank, hit in enumerate(hits, 1):
                print(f"  {rank}. id={hit.id} score={hit.score:.4f} key={hit.metadata.get('key', '')}")
