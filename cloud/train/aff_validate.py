"""Per-epoch validation of an AFF run on a revisitop split: symmetric and asymmetric mAP."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from asymfuse.cloud.embed import embed_images, embed_queries, fuse_table
from asymfuse.cloud.eval.evaluate import evaluate_aff
from asymfuse.cloud.features.gallery_table import GalleryTable
from asymfuse.cloud.models.mixers.base import pooled_features
from asymfuse.cloud.train.aff_model import AFFSystem
from asymfuse.cloud.train.aff_setup import ValData


def gallery_vectors(system: AFFSystem, table: GalleryTable, *, device: torch.device) -> np.ndarray:
    """``(N, d)`` float32 unit-norm gallery-side vectors of ``table``: fused, or the single feature."""
    if system.mixer is not None:
        return fuse_table(system.mixer, table, device=device)
    return np.ascontiguousarray(table.global_matrix(table.schema.slots[0].name), dtype=np.float32)


def validate(system: AFFSystem, val: ValData, *, device: torch.device) -> dict[str, Any]:
    """Val metrics: ``val_sym_*`` (gallery side on both ends) and ``val_asym_*`` (query net -> gallery).

    For the symmetric scheme the query net embeds both ends, reported as ``val_asym_*`` too.
    """
    was_training = system.training
    system.eval()
    out: dict[str, Any] = {}
    try:
        xb = None
        if val.gallery is not None and val.queries is not None:
            xb = gallery_vectors(system, val.gallery, device=device)
            xq_sym = gallery_vectors(system, val.queries, device=device)
            out.update(_prefixed("val_sym_", evaluate_aff(dataset=val.dataset, query_vectors=xq_sym,
                                                          gallery_vectors=xb)))
        if system.query_net is not None and system.stage != "mixer":
            xq = embed_queries(system.query_net, val.dataset, device=device)
            if xb is None:  # symmetric scheme: the query net on the gallery too
                xb = embed_images(system.query_net, list(val.dataset.gallery_paths), device=device)
            out.update(_prefixed("val_asym_", evaluate_aff(dataset=val.dataset, query_vectors=xq,
                                                           gallery_vectors=xb)))
    finally:
        system.train(was_training)
    return out


def input_metrics(val: ValData, *, metric: str) -> dict[str, float]:
    """``{"val_input_<name>_<metric>": value}``: each gallery input of the run alone on both ends of
    the val split (a global feature as stored, a local set mean-pooled and L2-normalised, as
    ``bench aff``'s single-feature rows), the baselines the fused space must not fall below."""
    if val.gallery is None or val.queries is None:
        return {}
    sides = [pooled_features(t.inputs(np.arange(len(t))), dtype=torch.float32) for t in (val.gallery, val.queries)]
    out = {}
    for slot, xb, xq in zip(val.gallery.schema.slots, *sides):  # pooled_features: unit-norm rows already
        res = evaluate_aff(dataset=val.dataset, query_vectors=xq.numpy(), gallery_vectors=xb.numpy())
        out[f"val_input_{slot.name}_{metric}"] = float(res[metric])
    return out


def _prefixed(prefix: str, metrics: dict[str, Any]) -> dict[str, Any]:
    return {prefix + k: v for k, v in metrics.items() if isinstance(v, (int, float))}
