"""Embedding-space ids of a finished AFF run.

The space is defined by the gallery side: the frozen extractors (their ids, in order) and, for a
fused gallery, the mixer's architecture and trained weights. The mixer and every query net
trained against it get this same id; a query net trained against another mixer (other weights)
gets another id, so a client from another space is refused by id alone.
"""

from __future__ import annotations

from torch import nn

from asymfuse.cloud.models.fusion import GallerySchema
from asymfuse.cloud.models.weights import state_dict_digest
from asymfuse.edge.spec import compute_embedding_space_id


def fused_space_id(schema: GallerySchema, mixer: nn.Module, mixer_config: dict) -> str:
    """The space of a fused gallery: extractor ids + mixer config + mixer weights."""
    return compute_embedding_space_id({"gallery": schema.to_dict(), "mixer": mixer_config,
                                       "mixer_weights": state_dict_digest(mixer)})


def single_gallery_space_id(schema: GallerySchema) -> str:
    """The space of one frozen gallery feature: the extractor itself."""
    return compute_embedding_space_id({"gallery": schema.to_dict()})
