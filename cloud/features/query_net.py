"""A trained asymfuse query net as a feature extractor: the phone's side, run in the cloud.

``asymfuse extract --extractor query_net --option checkpoint=runs/aff/query_net.pt`` embeds a
dataset's queries (bbx crops) or gallery with the query net, so asymmetric retrieval can be scored
on any dataset: query vectors from here, gallery vectors from ``asymfuse index fuse``, then
``asymfuse eval --features``. Preprocessing is the checkpoint's ModelSpec (the reference numpy
pipeline the exported files use), and the store's metadata records the embedding-space id.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asymfuse.cloud.device import resolve_device
from asymfuse.cloud.embed import embed_images
from asymfuse.cloud.features.base import FeatureExtractor, GlobalFeatures, check_batch
from asymfuse.cloud.models.checkpoint import load_query_net
from asymfuse.cloud.models.weights import state_dict_digest
from asymfuse.edge.errors import ConfigError
from asymfuse.edge.spec import ModelSpec


class QueryNetExtractor(FeatureExtractor):
    """``(B, d)`` float32 unit-norm query-net embeddings of whole images.

    Raises:
        CorruptDataError: the checkpoint is missing, unreadable or does not fit its ModelSpec.
        ConfigError: ``batch_size`` < 1, or the extractor is used after ``close()``.
    """

    kind = "global"
    name = "query_net"

    def __init__(self, *, checkpoint: str | os.PathLike[str], batch_size: int = 16,
                 device: str | torch.device = "cpu") -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
        self.device = resolve_device(device)
        net, info = load_query_net(checkpoint, device=self.device)
        self.net: torch.nn.Module | None = net.eval().requires_grad_(False)
        self.model_spec: ModelSpec = info.model_spec
        self.checkpoint, self.batch_size = Path(checkpoint), batch_size
        self.dim = self.model_spec.embed_dim

    @cached_property
    def extractor_id(self) -> str:
        """``query_net/<space id>/<12 hex of the weights>``: changes whenever the weights do."""
        return f"{self.name}/{self.model_spec.embedding_space_id}/{state_dict_digest(self._net())[:12]}"

    @property
    def store_meta(self) -> dict[str, Any]:
        """What a feature store of these vectors records: the space id and the query side's ModelSpec."""
        return {"embedding_space_id": self.model_spec.embedding_space_id, "query_spec": self.model_spec.to_dict()}

    def extract(self, images: Sequence[np.ndarray]) -> GlobalFeatures:
        check_batch(images)
        return GlobalFeatures(embed_images(self._net(), list(images), device=self.device, batch_size=self.batch_size))

    def _net(self) -> torch.nn.Module:
        if self.net is None:
            raise ConfigError("the query_net extractor is closed; create a new one")
        return self.net

    def close(self) -> None:
        self.net = None
