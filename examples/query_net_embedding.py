"""Embed a real photo with a query net; its ModelSpec drives the preprocessing.

Run: .venv/bin/python examples/query_net_embedding.py
"""

import torch
from skimage import data

from asymfuse.cloud.models import create_query_net
from asymfuse.edge.preprocess import preprocess

net = create_query_net("efficientnet_lite0", embed_dim=256, pretrained=True).eval()
x = torch.from_numpy(preprocess([data.chelsea(), data.coffee()], net.spec))
with torch.inference_mode():
    q = net(x)
print("spec:", net.spec.to_json())
print("embeddings:", tuple(q.shape), "norms:", [round(float(v), 4) for v in q.norm(dim=-1)])
print("cosine(cat, coffee) =", round(float(q[0] @ q[1]), 4))
