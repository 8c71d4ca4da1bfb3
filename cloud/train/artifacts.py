"""Trained gallery-side artifacts: the mixer file that ``index fuse`` and the searcher load.

``mixer.pt`` = ``{"format", "mixer" (its config: name, dim, kwargs, schema), "state_dict",
"embedding_space_id", "query_spec" (JSON of the query net's ModelSpec, or None), "extra"}``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from asymfuse.cloud.models.checkpoint import atomic_torch_save
from asymfuse.cloud.models.fusion import GallerySchema
from asymfuse.cloud.models.mixers import mixer_from_config
from asymfuse.cloud.models.weights import load_strict
from asymfuse.edge.errors import ConfigError, CorruptDataError
from asymfuse.edge.spec import ModelSpec

MIXER_FORMAT = "asymfuse.mixer/1"


def save_mixer(path: str | os.PathLike[str], mixer: nn.Module, *, embedding_space_id: str,
               query_spec: ModelSpec | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the mixer artifact atomically."""
    payload = {"format": MIXER_FORMAT, "mixer": mixer.config(),
               "state_dict": {k: v.detach().cpu() for k, v in mixer.state_dict().items()},
               "embedding_space_id": embedding_space_id,
               "query_spec": None if query_spec is None else query_spec.to_json(), "extra": dict(extra or {})}
    return atomic_torch_save(payload, path)


def load_mixer(path: str | os.PathLike[str], *, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a mixer from its artifact; returns ``(mixer in eval mode, info)``.

    ``info`` has ``embedding_space_id``, ``schema`` (GallerySchema), ``query_spec`` (ModelSpec or
    None) and ``extra``.

    Raises:
        ConfigError: no such file. CorruptDataError: unreadable, another format, or weights that
        do not fit the recorded architecture.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"mixer file {str(p)!r} does not exist; train one with `asymfuse train aff`")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise CorruptDataError(f"{str(p)!r} is not a readable mixer file ({exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != MIXER_FORMAT:
        raise CorruptDataError(f"{str(p)!r} is not an asymfuse mixer file (format {MIXER_FORMAT!r}); pass the "
                               "mixer.pt written by `asymfuse train aff`")
    mixer = mixer_from_config(payload["mixer"], device="cpu")
    load_strict(mixer, payload["state_dict"], source=str(p))
    mixer.to(device).eval()
    spec = payload.get("query_spec")
    info = {"embedding_space_id": payload["embedding_space_id"], "schema": mixer.schema,
            "query_spec": None if spec is None else ModelSpec.from_json(spec), "extra": payload.get("extra", {})}
    if not isinstance(info["schema"], GallerySchema):
        raise CorruptDataError(f"{str(p)!r}: the mixer has no gallery schema")
    return mixer, info
