"""The rows of ``asymfuse bench aff``: each one trains (or fits) a setting and scores it on a split.

Every function here takes a :class:`BenchContext` (the shared base :class:`TrainConfig`, the
datasets and the feature cache) and returns a :class:`RowOutcome` (test metrics, training history,
notes). Evaluation conventions:

- symmetric: the gallery-side model on both ends, applied to the *stored* features of the
  (bbx-cropped) queries and of the gallery images; a single local feature is mean-pooled;
- asymmetric: :func:`~asymfuse.cloud.embed.embed_queries` (the query net on the
  bbx-cropped query images) against the fused (or single-feature) gallery vectors;
- query net symmetric: the same query net embeds the query crops and the gallery images.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from asymfuse.cloud.data.records import RetrievalDataset, TrainingSet
from asymfuse.cloud.embed import embed_images, embed_queries, fuse_table
from asymfuse.cloud.eval.evaluate import evaluate_aff
from asymfuse.cloud.features.gallery_table import GalleryTable, load_gallery_table
from asymfuse.cloud.models.mixers import create_mixer
from asymfuse.cloud.models.mixers.base import pooled_features
from asymfuse.cloud.train.aff_config import TrainConfig
from asymfuse.cloud.features.layout import store_path
from asymfuse.cloud.train.feature_cache import training_ids
from asymfuse.edge.errors import ConfigError

HISTORY_SKIP = ("step_losses",)


@dataclass
class BenchContext:
    """What every row shares. ``runs`` caches training results (or their exception) by config."""

    base: TrainConfig
    out: Path
    training_set: TrainingSet
    val: RetrievalDataset
    test: RetrievalDataset
    device: str = "cpu"
    runs: dict[str, Any] = field(default_factory=dict)

    @property
    def features_dir(self) -> Path:
        return Path(self.base.features_dir)

    def dataset(self, part: str) -> RetrievalDataset:
        if part not in ("val", "test"):
            raise ConfigError(f"part must be 'val' or 'test', got {part!r}")
        return self.val if part == "val" else self.test


@dataclass(frozen=True)
class RowOutcome:
    """``metrics``: the row's test metrics (percent); ``history``: per-epoch records of its run."""

    metrics: dict[str, Any]
    history: tuple[dict[str, Any], ...] = ()
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def clean_history(history: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    """Per-epoch records with scalar values only (step losses dropped), JSON-ready."""
    return tuple({k: v for k, v in h.items() if k not in HISTORY_SKIP and isinstance(v, (int, float, str))}
                 for h in history)


def table_for(ctx: BenchContext, features: Sequence[str], *, part: str, side: str = "gallery") -> GalleryTable:
    """The stored features ``features`` of one part (``train``/``val``/``test``) and side, in memory."""
    if part == "train":
        ids = training_ids(ctx.training_set)
    else:
        ds = ctx.dataset(part)
        ids = list(ds.gallery_ids if side == "gallery" else ds.query_ids)
    roots = [store_path(ctx.features_dir, name, part, side) for name in features]
    return load_gallery_table(roots, ids=ids, local_tokens=ctx.base.local_tokens)


def single_vectors(table: GalleryTable) -> np.ndarray:
    """``(N, D)`` float32 unit-norm: the table's only feature (a local set is mean-pooled)."""
    return pooled_features(table.inputs(np.arange(len(table))), dtype=torch.float32)[0].numpy()


def single_feature(ctx: BenchContext, name: str, *, part: str = "test") -> RowOutcome:
    """One stored gallery feature on both ends (no training)."""
    queries = table_for(ctx, [name], part=part, side="queries")
    q, g = single_vectors(queries), single_vectors(table_for(ctx, [name], part=part, side="gallery"))
    kind = queries.schema.slots[0].kind
    notes = "local descriptors mean-pooled" if kind == "local" else ""
    return RowOutcome(evaluate_aff(dataset=ctx.dataset(part), query_vectors=q, gallery_vectors=g), notes=notes)


def concat_symmetric(ctx: BenchContext, features: Sequence[str]) -> RowOutcome:
    """Normalised concatenation PCA-whitened to ``base.embed_dim``, the whitening fitted on the train split."""
    train = table_for(ctx, features, part="train")
    mixer = create_mixer("concat", schema=train.schema, embed_dim=ctx.base.embed_dim, whiten=True)
    mixer.fit(train.inputs(np.arange(len(train))))
    mixer.to(ctx.device)
    outcome = _fused_symmetric(ctx, mixer, features)
    return RowOutcome(outcome, notes=f"PCA-whitened to d={ctx.base.embed_dim} on {len(train)} train images")


def run_key(ctx: BenchContext, **changes: Any) -> str:
    """The cache key of a run: its full config as canonical JSON."""
    return json.dumps(ctx.base.replace(**changes).to_dict(), sort_keys=True)


def train_run(ctx: BenchContext, run_name: str, **changes: Any) -> Any:
    """``train_aff`` of ``base.replace(**changes)`` into ``out/runs/<run_name>``.

    Runs are cached by their full config, so two rows asking for the same config share one run
    (a failed run is not retried: its exception is raised again).
    """
    from asymfuse.cloud.train.aff_trainer import train_aff

    key = run_key(ctx, **changes)
    if key not in ctx.runs:
        cfg = ctx.base.replace(**changes)
        try:
            ctx.runs[key] = train_aff(cfg, out_dir=ctx.out / "runs" / run_name)
        except Exception as exc:
            ctx.runs[key] = exc
            raise
    result = ctx.runs[key]
    if isinstance(result, Exception):
        raise result
    return result


def mixer_symmetric(ctx: BenchContext, run_name: str, *, mixer: str, features: Sequence[str],
                    **changes: Any) -> RowOutcome:
    """A trained mixer (scheme ``mixer_only``, plus training ``changes``) on both ends."""
    res = train_run(ctx, run_name, scheme="mixer_only", mixer=mixer, gallery_features=tuple(features), **changes)
    metrics = _fused_symmetric(ctx, res.mixer.to(ctx.device), features)
    return RowOutcome(metrics, history=clean_history(res.history), notes=f"best epoch {res.best_epoch}")


def mixer_symmetric_start(ctx: BenchContext, run_name: str, *, mixer: str, features: Sequence[str],
                          **changes: Any) -> RowOutcome:
    """The untrained start of the :func:`mixer_symmetric` run (its PCA-whitened anchor) on both ends.

    Raises:
        ConfigError: the run wrote no start (no val split).
    """
    res = train_run(ctx, run_name, scheme="mixer_only", mixer=mixer, gallery_features=tuple(features), **changes)
    start_mixer, _ = _start_of(res)
    return RowOutcome(_fused_symmetric(ctx, start_mixer.to(ctx.device), features),
                      notes=f"before training; the trained row kept epoch {res.best_epoch}")


def fused_asymmetric_start(ctx: BenchContext, run_name: str, **changes: Any) -> RowOutcome:
    """The untrained start of a :func:`fused_asymmetric` run: ridge-fitted query head, anchor mixer."""
    res = train_run(ctx, run_name, **changes)
    start_mixer, start_query = _start_of(res)
    q = embed_queries(start_query.to(ctx.device), ctx.test, device=ctx.device)
    g = fuse_table(start_mixer.to(ctx.device), table_for(ctx, res.config.gallery_features, part="test"),
                   device=ctx.device)
    return RowOutcome(evaluate_aff(dataset=ctx.test, query_vectors=q, gallery_vectors=g),
                      notes=f"before training; the trained row kept epoch {res.best_epoch}")


def _start_of(res: Any) -> tuple[torch.nn.Module, Any]:
    from asymfuse.cloud.train.aff_trainer import start_models

    mixer, query = start_models(res)
    if mixer is None and query is None:
        raise ConfigError(f"run {res.out_dir} wrote no start.pt (it had no val split)")
    return mixer, query


def single_gallery_asymmetric(ctx: BenchContext, *, scheme: str, feature: str) -> RowOutcome:
    """A query net trained with a compatible baseline against ONE frozen global gallery feature."""
    res = train_run(ctx, f"asym-{scheme}", scheme=scheme, gallery_features=(feature,))
    return RowOutcome(_against_feature(ctx, res.query_net, feature), history=clean_history(res.history),
                      notes=f"best epoch {res.best_epoch}")


def single_gallery_start(ctx: BenchContext, *, scheme: str, feature: str) -> RowOutcome:
    """The untrained start of the :func:`single_gallery_asymmetric` run of ``scheme``: the query net
    with its whitening head ridge-fitted onto ``feature`` (every baseline starts from this same head).

    Raises:
        ConfigError: the run wrote no start (no val split).
    """
    res = train_run(ctx, f"asym-{scheme}", scheme=scheme, gallery_features=(feature,))
    _, start_query = _start_of(res)
    return RowOutcome(_against_feature(ctx, start_query, feature),
                      notes=f"before training (from the {scheme.upper()} run); every baseline starts here")


def _against_feature(ctx: BenchContext, query_net: Any, feature: str) -> dict[str, Any]:
    """Test metrics of ``query_net`` (on the query crops) against the stored gallery ``feature``."""
    g = single_vectors(table_for(ctx, [feature], part="test"))
    q = embed_queries(query_net.to(ctx.device), ctx.test, device=ctx.device)
    return evaluate_aff(dataset=ctx.test, query_vectors=q, gallery_vectors=g)


def fused_asymmetric(ctx: BenchContext, run_name: str, **changes: Any) -> RowOutcome:
    """A query net trained against a fused gallery (scheme ``joint`` or ``two_stage``)."""
    reused = run_key(ctx, **changes) in ctx.runs
    res = train_run(ctx, run_name, **changes)
    q = embed_queries(res.query_net.to(ctx.device), ctx.test, device=ctx.device)
    g = fuse_table(res.mixer.to(ctx.device), table_for(ctx, res.config.gallery_features, part="test"),
                   device=ctx.device)
    metrics = evaluate_aff(dataset=ctx.test, query_vectors=q, gallery_vectors=g)
    notes = f"best epoch {res.best_epoch}" + (f"; reuses the run in runs/{res.out_dir.name}" if reused else "")
    return RowOutcome(metrics, history=() if reused else clean_history(res.history), notes=notes)


def query_symmetric(ctx: BenchContext, run_name: str, **changes: Any) -> RowOutcome:
    """The query net of a (cached) run on both ends: query crops and whole gallery images."""
    res = train_run(ctx, run_name, **changes)
    net = res.query_net.to(ctx.device)
    q = embed_queries(net, ctx.test, device=ctx.device)
    g = embed_images(net, list(ctx.test.gallery_paths), device=ctx.device)
    return RowOutcome(evaluate_aff(dataset=ctx.test, query_vectors=q, gallery_vectors=g),
                      notes="same query net on both sides")


def _fused_symmetric(ctx: BenchContext, mixer: torch.nn.Module, features: Sequence[str]) -> dict[str, Any]:
    q = fuse_table(mixer, table_for(ctx, features, part="test", side="queries"), device=ctx.device)
    g = fuse_table(mixer, table_for(ctx, features, part="test", side="gallery"), device=ctx.device)
    return evaluate_aff(dataset=ctx.test, query_vectors=q, gallery_vectors=g)
