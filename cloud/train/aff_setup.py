"""Build what an AFF run needs from its config: data (images, stored gallery features, val split)
and the models. Feature extraction happens once, on rank 0, into the feature-store cache."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asymfuse.cloud.data.benchmark import dataset_name, open_benchmark
from asymfuse.cloud.data.records import RetrievalDataset, TrainingSet
from asymfuse.cloud.data.revisitop import load_revisitop
from asymfuse.cloud.losses import fit_gallery_classifier
from asymfuse.cloud.models.mixers import create_mixer
from asymfuse.cloud.models.query_net import QueryNet, create_query_net
from asymfuse.cloud.train.aff_config import SINGLE_GALLERY_SCHEMES, TrainConfig
from asymfuse.cloud.train.aff_data import (
    GalleryTable,
    check_training_set,
    load_gallery_table,
    load_training_set,
)
from asymfuse.cloud.train.aff_model import AFFSystem
from asymfuse.cloud.train.feature_cache import ensure_dataset_features, ensure_training_features, training_ids
from asymfuse.edge.errors import ConfigError


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
    barrier()
    table = None
    if names:
        roots = [feats / n / "train" / "gallery" for n in names]
        table = load_gallery_table(roots, ids=training_ids(ts), local_tokens=cfg.local_tokens)
    val = None
    if val_ds is not None:
        vg = vq = None
        if names:
            vg = load_gallery_table([feats / n / "val" / "gallery" for n in names], ids=list(val_ds.gallery_ids),
                                    local_tokens=cfg.local_tokens)
            vq = load_gallery_table([feats / n / "val" / "queries" for n in names], ids=list(val_ds.query_ids),
                                    local_tokens=cfg.local_tokens)
        val = ValData(dataset=val_ds, gallery=vg, queries=vq)
    return AFFData(training_set=ts, table=table, val=val)


def mixer_kwargs(cfg: TrainConfig) -> dict:
    """The registry kwargs of ``cfg.mixer``."""
    if cfg.mixer == "transformer":
        return {"layers": cfg.mixer_layers, "heads": cfg.mixer_heads, "mlp_ratio": cfg.mixer_mlp_ratio}
    if cfg.mixer == "mlp":
        return {"hidden": int(cfg.mixer_mlp_ratio * cfg.dim)}
    return {"whiten": True}


def build_query_net(cfg: TrainConfig, *, embed_dim: int, device: torch.device) -> QueryNet:
    """The query net of the run, on ``device``."""
    return create_query_net(cfg.query_arch, embed_dim=embed_dim, pretrained=cfg.query_pretrained,
                            input_size=cfg.input_size, gem_p=cfg.gem_p, seed=cfg.seed, device=device)


def build_system(cfg: TrainConfig, data: AFFData, *, device: torch.device) -> AFFSystem:
    """Mixer, query net, heads and frozen targets of the run, on ``device``.

    Raises:
        ConfigError: a single-gallery scheme pointed at a local feature.
    """
    table, ts = data.table, data.training_set
    mixer = None
    if cfg.trains_mixer:
        mixer = create_mixer(cfg.mixer, schema=table.schema, dim=cfg.dim, seed=cfg.seed, **mixer_kwargs(cfg))
        if not mixer.trainable:  # concat: PCA-whitening learnt on the training rows
            mixer.fit(table.inputs(np.arange(len(table))))
    query_net, gallery_weight, bank = None, None, None
    if cfg.trains_query:
        embed_dim = cfg.dim
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
        query_net = build_query_net(cfg, embed_dim=embed_dim, device=torch.device("cpu"))
    system = AFFSystem(config=cfg, num_classes=ts.num_classes, mixer=mixer, query_net=query_net,
                       gallery_weight=gallery_weight, bank=bank)
    system.to(device)
    if cfg.channels_last and query_net is not None:
        query_net.to(memory_format=torch.channels_last)
    return system

