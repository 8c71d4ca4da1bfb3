"""Build what an AFF run needs from its config: data (images, stored gallery features, val split)
and the models. Feature extraction happens once, on rank 0, into the feature-store cache."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from asymfuse.cloud.data.benchmark import dataset_name, open_benchmark
from asymfuse.cloud.data.records import RetrievalDataset, TrainingSet
from asymfuse.cloud.data.revisitop import load_revisitop
from asymfuse.cloud.embed import fuse_table
from asymfuse.cloud.features.gallery_table import GalleryTable, load_gallery_table
from asymfuse.cloud.features.registry import FEATURE_EXTRACTORS
from asymfuse.cloud.losses import fit_gallery_classifier
from asymfuse.cloud.models.fusion import FusionInputs, GallerySchema
from asymfuse.cloud.models.mixers import create_mixer
from asymfuse.cloud.models.query_net import QueryNet, create_query_net
from asymfuse.cloud.train.aff_config import SINGLE_GALLERY_SCHEMES, TrainConfig
from asymfuse.cloud.train.aff_data import check_training_set, load_training_set
from asymfuse.cloud.train.aff_model import AFFSystem
from asymfuse.cloud.features.layout import store_path
from asymfuse.cloud.train.fusion_weighting import margin_weights
from asymfuse.cloud.train.feature_cache import (
    ensure_dataset_features,
    ensure_training_features,
    is_complete,
    training_ids,
)
from asymfuse.cloud.train.pooled_cache import POOLED_FOLDER, cached_pooled
from asymfuse.cloud.train.query_start import fit_query_head
from asymfuse.cloud.train.start_views import crop_views, views_part
from asymfuse.edge.errors import ConfigError

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValData:
    """The validation split: its dataset and its stored gallery/query features (None if unused)."""

    dataset: RetrievalDataset
    gallery: GalleryTable | None
    queries: GalleryTable | None


@dataclass(frozen=True)
class AFFData:
    """Training images + their frozen gallery features (None for the symmetric scheme) + val."""

    training_set: TrainingSet
    table: GalleryTable | None
    val: ValData | None
    start_images: TrainingSet | None = None  # crop views of the training images (closed-form start rows)
    start_table: GalleryTable | None = None  # their gallery features


def load_val_dataset(cfg: TrainConfig) -> RetrievalDataset | None:
    """The revisitop val split: ``val_root`` if set, else the benchmark's val split, else None."""
    if cfg.val_root:
        return load_revisitop(cfg.val_root)
    if cfg.data_source == "benchmark":
        bench = open_benchmark(cfg.data_root)
        paths = bench.split("val")
        return load_revisitop(paths.root, name=dataset_name(bench.config.name, "val"))
    return None


def prepare_data(cfg: TrainConfig, *, is_main: bool, barrier: Callable[[], None]) -> AFFData:
    """Load the training set, extract (rank 0 only) and load gallery features, and the val split.

    Raises:
        ConfigError: a class with fewer than 2 images, stores that do not cover the training set.
        CorruptDataError: NaN/inf in stored features.
    """
    ts = load_training_set(cfg.data_source, cfg.data_root)
    check_training_set(ts, min_images=2)
    val_ds = load_val_dataset(cfg)
    names = () if cfg.scheme == "symmetric" else cfg.gallery_features
    feats = Path(cfg.features_dir)
    if is_main:  # extract once; other ranks wait at the barrier and read the finished stores
        for name in names:
            ensure_training_features(name, ts, features_dir=feats, device=cfg.device, progress=cfg.progress)
            if val_ds is not None:
                ensure_dataset_features(name, val_ds, features_dir=feats, part="val", device=cfg.device,
                                        progress=cfg.progress)
    want_views = bool(names) and cfg.start_views > 0 and (
        (cfg.trains_mixer and cfg.mixer_start == "pca") or (cfg.trains_query and cfg.query_start == "ridge"))
    views = crop_views(ts, features_dir=feats, views=cfg.start_views, seed=cfg.seed,
                       crop_scale_min=cfg.crop_scale_min) if want_views and is_main else None
    if views is not None:
        for name in names:  # a feature that no registered extractor makes (a synthetic store) gets no views
            if name in FEATURE_EXTRACTORS:
                ensure_training_features(name, views, features_dir=feats, device=cfg.device, progress=cfg.progress,
                                         part=_views_part(cfg))
    barrier()
    table = None
    if names:
        roots = [store_path(feats, n, "train") for n in names]
        table = load_gallery_table(roots, ids=training_ids(ts), local_tokens=cfg.local_tokens)
    val = None
    if val_ds is not None:
        vg = vq = None
        if names:
            vg, vq = (load_gallery_table([store_path(feats, n, "val", side) for n in names], ids=list(ids),
                                         local_tokens=cfg.local_tokens)
                      for side, ids in (("gallery", val_ds.gallery_ids), ("queries", val_ds.query_ids)))
        val = ValData(dataset=val_ds, gallery=vg, queries=vq)
    start_images, start_table = _start_views_table(cfg, ts, names) if want_views else (None, None)
    return AFFData(training_set=ts, table=table, val=val, start_images=start_images, start_table=start_table)


def _start_views_table(cfg: TrainConfig, ts: TrainingSet,
                       names: tuple[str, ...]) -> tuple[TrainingSet | None, GalleryTable | None]:
    """The crop views and their gallery rows, or ``(None, None)`` when a feature has no view store."""
    views = crop_views(ts, features_dir=cfg.features_dir, views=cfg.start_views, seed=cfg.seed,
                       crop_scale_min=cfg.crop_scale_min)  # already written by rank 0: reads nothing
    ids = training_ids(views)
    roots = [store_path(cfg.features_dir, n, _views_part(cfg)) for n in names]
    missing = [str(r) for r in roots if not is_complete(r, ids)]
    if missing:
        LOG.warning("no crop-view features in %s: the closed-form start uses the training images only", missing)
        return None, None
    return views, load_gallery_table(roots, ids=ids, local_tokens=cfg.local_tokens)


def _views_part(cfg: TrainConfig) -> str:
    return views_part(views=cfg.start_views, seed=cfg.seed, crop_scale_min=cfg.crop_scale_min)


def _start_rows(data: AFFData, mixer: torch.nn.Module | None) -> tuple[np.ndarray, np.ndarray]:
    """``(N, d)`` start-space vectors of every start row (training images, then crop views) and their labels:
    the mixer's output, or (no mixer) the single gallery feature, unit-norm."""
    def vectors(t: GalleryTable) -> np.ndarray:
        return fuse_table(mixer, t) if mixer is not None else _unit_rows(t.global_matrix(t.schema.slots[0].name))

    if data.start_table is None:
        return vectors(data.table), np.asarray(data.training_set.labels)
    return (np.concatenate([vectors(data.table), vectors(data.start_table)]),
            np.concatenate([data.training_set.labels, data.start_images.labels]))


def start_query_head(cfg: TrainConfig, data: AFFData, *, query_net: QueryNet, x: np.ndarray,
                     device: torch.device) -> None:
    """Fit the query net's whitening layer onto the start space (:mod:`asymfuse.cloud.train.query_start`);
    ``x`` holds the start-space vectors of :func:`_start_rows`."""
    n = len(data.training_set)
    sources = [(data.training_set, x[:n])]
    if data.start_table is not None:
        sources.append((data.start_images, x[n:]))
    fit = fit_query_head(query_net, sources=sources, ridge=cfg.query_start_ridge, preload_side=cfg.preload_side,
                         device=device, cache_dir=pooled_cache_dir(cfg))
    LOG.info("query head: ridge start on %d images, train cosine %.3f", fit.rows, fit.train_cosine)


def pooled_cache_dir(cfg: TrainConfig) -> Path:
    """Where the run's pooled query-trunk rows are cached (:mod:`asymfuse.cloud.train.pooled_cache`)."""
    return Path(cfg.features_dir) / POOLED_FOLDER


@dataclass(frozen=True)
class QueryRows:
    """The rows head-only training (``query_inputs = "cached"``) runs on: the training images, then
    their crop views. ``pooled`` ``(N, C)`` float32 trunk outputs, ``labels`` ``(N,)`` int64, and
    ``gallery`` the rows' frozen gallery features (None for the symmetric scheme)."""

    pooled: np.ndarray
    labels: np.ndarray
    gallery: FusionInputs | None


def query_rows(cfg: TrainConfig, data: AFFData, *, query_net: QueryNet, device: torch.device) -> QueryRows:
    """The pooled trunk rows of every start row (the training images, then their crop views when the
    run has them), read from the pooled cache the closed-form start filled."""
    sets = [data.training_set] + ([data.start_images] if data.start_table is not None else [])
    pooled = np.concatenate([cached_pooled(query_net, s, cache_dir=pooled_cache_dir(cfg),
                                           preload_side=cfg.preload_side, device=device) for s in sets])
    labels = np.concatenate([np.asarray(s.labels, dtype=np.int64) for s in sets])
    return QueryRows(pooled=pooled, labels=labels, gallery=None if data.table is None else start_inputs(data))


def start_inputs(data: AFFData) -> FusionInputs:
    """Every row the closed-form starts are fitted on: the training images, then their crop views."""
    rows = data.table.inputs(np.arange(len(data.table)))
    if data.start_table is None:
        return rows
    extra = data.start_table.inputs(np.arange(len(data.start_table)))
    return FusionInputs(*(tuple(torch.cat([a, b]) for a, b in zip(x, y))
                          for x, y in ((rows.globals_, extra.globals_), (rows.locals_, extra.locals_),
                                       (rows.local_pads, extra.local_pads))))


def class_centres(x: np.ndarray, labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """``(C, d)`` float32 unit-norm mean of the rows of ``x`` ``(N, d)`` of each class (a class with
    no row keeps a zero row, which ArcFace never predicts)."""
    sums = np.zeros((num_classes, x.shape[1]), dtype=np.float64)
    np.add.at(sums, np.asarray(labels, dtype=np.int64), np.asarray(x, dtype=np.float64))
    return torch.from_numpy(_unit_rows(sums).astype(np.float32))


def imprint_classifier(system: AFFSystem, centres: torch.Tensor) -> None:
    """Start psi_mix, and psi_q (its EMA), at the class centres of the mixer's start space, so that
    the first gradient steps pull towards classes the start space already separates."""
    with torch.no_grad():
        system.head_mix.weight.copy_(centres.to(system.head_mix.weight))
        if system.ema is not None:
            system.ema.weight.copy_(centres.to(system.ema.weight))


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def slot_weights(cfg: TrainConfig, schema: GallerySchema) -> tuple[float, ...]:
    """``cfg.fusion_weights`` in the schema's slot order (``()`` when every input weighs 1).

    Raises:
        ConfigError: a weighted gallery feature that is not a slot of ``schema``.
    """
    weights = {n: w for n, w in cfg.fusion_weights if n in cfg.gallery_features}
    names = [s.name for s in schema.slots]
    missing = sorted(set(weights) - set(names))
    if missing:
        raise ConfigError(f"fusion_weights names {missing}, but the gallery inputs are {names}; weight those names")
    out = tuple(weights.get(n, 1.0) for n in names)
    return () if all(w == 1.0 for w in out) else out


def start_weights(cfg: TrainConfig, data: AFFData) -> tuple[float, ...] | None:
    """The PCA start's input weights when ``fusion_weighting = "margin"`` (class margins on the
    training images times ``fusion_weights``), else None (the fixed ``fusion_weights``).

    Raises:
        ConfigError: the training labels do not allow margins (see :func:`margin_weights`).
    """
    uses_pca = cfg.mixer == "concat" or (cfg.mixer == "transformer" and cfg.mixer_start == "pca")
    if cfg.fusion_weighting != "margin" or not uses_pca:
        return None
    table = data.table
    weights, margins = margin_weights(table.inputs(np.arange(len(table))), data.training_set.labels,
                                      fixed=slot_weights(cfg, table.schema))
    names = [s.name for s in table.schema.slots]
    LOG.info("margin weighting on %d training images: %s", len(table),
             ", ".join(f"{n} margin {m:.4f} weight {w:.3f}" for n, m, w in zip(names, margins, weights)))
    return weights


def mixer_kwargs(cfg: TrainConfig, schema: GallerySchema | None = None, *,
                 weights: tuple[float, ...] | None = None) -> dict:
    """The registry kwargs of ``cfg.mixer`` (``schema`` orders the fusion weights; none = no weights;
    ``weights`` given: these input weights, in schema order, instead of ``cfg.fusion_weights``)."""
    if weights is None:
        weights = slot_weights(cfg, schema) if schema is not None else ()
    if cfg.mixer == "transformer":
        anchor = cfg.mixer_start == "pca"
        start = {"anchor_weights": weights, "anchor_shrink": cfg.start_shrink} if anchor else {}
        return {"layers": cfg.mixer_layers, "heads": cfg.mixer_heads, "mlp_ratio": cfg.mixer_mlp_ratio,
                "anchor": anchor, **start}
    if cfg.mixer == "mlp":
        return {"hidden": int(cfg.mixer_mlp_ratio * cfg.embed_dim)}
    return {"whiten": True, "input_weights": weights, "shrink": cfg.start_shrink}


def build_query_net(cfg: TrainConfig, *, embed_dim: int, device: torch.device) -> QueryNet:
    """The query net of the run, on ``device``."""
    return create_query_net(cfg.query_arch, embed_dim=embed_dim, pretrained=cfg.query_pretrained,
                            input_size=cfg.input_size, gem_p=cfg.gem_p, pooling=cfg.query_pooling, seed=cfg.seed,
                            device=device)


def build_system(cfg: TrainConfig, data: AFFData, *, device: torch.device) -> AFFSystem:
    """Mixer, query net, heads and frozen targets of the run, on ``device``.

    Raises:
        ConfigError: a single-gallery scheme pointed at a local feature.
    """
    table, ts = data.table, data.training_set
    mixer = None
    start_x = start_labels = None  # start-space rows, computed once for the query head and the classifier
    if cfg.trains_mixer:
        mixer = create_mixer(cfg.mixer, schema=table.schema, embed_dim=cfg.embed_dim, seed=cfg.seed,
                             **mixer_kwargs(cfg, table.schema, weights=start_weights(cfg, data)))
        # the PCA whitening of concat, or of the anchored transformer's start, learnt on the training
        # rows (plus the crop views' rows when there are any)
        try:
            mixer.fit(start_inputs(data))
        except ConfigError as exc:
            raise ConfigError(f"{exc}; in the training config: lower dim, raise start_views, or set "
                              "mixer_start=random") from exc
    query_net, gallery_weight, bank = None, None, None
    if cfg.trains_query:
        embed_dim = cfg.embed_dim
        if cfg.scheme in SINGLE_GALLERY_SCHEMES:
            slot = table.schema.slots[0]
            if slot.kind != "global":
                raise ConfigError(f"scheme {cfg.scheme!r} needs a global gallery feature, but "
                                  f"{slot.name!r} is local; name a global feature in gallery_features")
            embed_dim = slot.dim
            feats = table.global_matrix(slot.name)
            bank = torch.from_numpy(np.array(feats, dtype=np.float32))
            if cfg.scheme != "reg":
                gallery_weight = fit_gallery_classifier(
                    feats, ts.labels, num_classes=ts.num_classes, epochs=cfg.classifier_epochs,
                    scale=cfg.arcface_scale, margin=cfg.arcface_margin, seed=cfg.seed, device="cpu")
            if cfg.scheme != "csd":
                bank = None
        query_net = build_query_net(cfg, embed_dim=embed_dim, device=device)
        if cfg.query_start == "ridge" and cfg.scheme != "symmetric":
            start_x, start_labels = _start_rows(data, mixer)
            start_query_head(cfg, data, query_net=query_net, x=start_x, device=device)
    system = AFFSystem(config=cfg, num_classes=ts.num_classes, mixer=mixer, query_net=query_net,
                       gallery_weight=gallery_weight, bank=bank)
    if system.head_mix is not None and cfg.mixer_start == "pca":
        if start_x is None:
            start_x, start_labels = _start_rows(data, mixer)
        imprint_classifier(system, class_centres(start_x, start_labels, ts.num_classes))
    system.to(device)
    if cfg.channels_last and query_net is not None:
        query_net.to(memory_format=torch.channels_last)
    return system

