"""Mixer checkpoints: the gallery-side artifact that ``index fuse`` and the searcher load.

``mixer.pt`` = ``{"format", "mixer" (its config: name, dim, kwargs, schema), "state_dict",
"embedding_space_id", "query_spec" (JSON of the query net's ModelSpec, or None), "extra"}``; it
holds only tensors and JSON-able values, so it loads with ``weights_only=True``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from asymfuse.cloud.models.checkpoint import atomic_torch_save, read_torch_file
from asymfuse.cloud.models.fusion import GallerySchema
from asymfuse.cloud.models.mixers.base import Mixer
from asymfuse.cloud.models.mixers.registry import mixer_from_config
from asymfuse.cloud.models.weights import load_strict
from asymfuse.edge.errors import CorruptDataError
from asymfuse.edge.spec import ModelSpec

MIXER_FORMAT = "asymfuse.mixer/1"


@dataclass(frozen=True)
class MixerInfo:
    """What a mixer file says besides the weights.

    ``schema``: the gallery features it fuses, in slot order. ``query_model_spec``: the ModelSpec of
    the query net trained into the same space (None for a mixer trained alone).
    """

    embedding_space_id: str
    schema: GallerySchema
    query_model_spec: ModelSpec | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def save_mixer(mixer: Mixer, path: str | os.PathLike[str], *, embedding_space_id: str,
               query_model_spec: ModelSpec | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the mixer artifact atomically (temp file, fsync, rename); returns the path."""
    payload = {"format": MIXER_FORMAT, "mixer": mixer.config(),
               "state_dict": {k: v.detach().cpu() for k, v in mixer.state_dict().items()},
               "embedding_space_id": embedding_space_id,
               "query_spec": None if query_model_spec is None else query_model_spec.to_json(),
               "extra": dict(extra or {})}
    return atomic_torch_save(payload, path)


def load_mixer(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> tuple[Mixer, MixerInfo]:
    """Rebuild a mixer from its artifact; returns ``(mixer in eval mode on device, info)``.

    Raises:
        CorruptDataError: no such file (train one with ``asymfuse train aff``), unreadable, another
            format, or weights that do not fit the recorded architecture.
    """
    p = Path(path)
    payload = read_torch_file(p, what="mixer file",
                              fix="train one with `asymfuse train aff` (it writes <out>/mixer.pt)")
    if not isinstance(payload, dict) or payload.get("format") != MIXER_FORMAT:
        raise CorruptDataError(f"{str(p)!r} is not an asymfuse mixer file (format {MIXER_FORMAT!r}); pass the "
                               "mixer.pt written by `asymfuse train aff`")
    mixer = mixer_from_config(payload["mixer"], device="cpu")
    load_strict(mixer, payload["state_dict"], source=str(p))
    mixer.to(device).eval()
    if not isinstance(mixer.schema, GallerySchema):
        raise CorruptDataError(f"{str(p)!r}: the mixer has no gallery schema; re-train it with `asymfuse train aff`")
    spec = payload.get("query_spec")
    info = MixerInfo(embedding_space_id=str(payload["embedding_space_id"]), schema=mixer.schema,
                     query_model_spec=None if spec is None else ModelSpec.from_json(spec),
                     extra=dict(payload.get("extra") or {}))
    return mixer, info
