"""The demo's AMES stage: a quickly trained binary AMES re-ranks the demo's global searches.

The searches are the AFF stage's (the fused gallery with fused queries, and the Lite0 query net
against the fused gallery; their vectors are rebuilt from the stage's ``mixer.pt`` and
``query_net.pt``), or the first single global feature when the AFF stage is off. The AMES model is
binary, trained a few epochs on the benchmark's train split with the local feature the demo already
extracted (SIFT: the demo's VLAD rows and the AFF stage hold it for train, val and test, so this
stage extracts nothing new; ``local_lite2`` would add minutes of extraction).

λ/γ are chosen per search by a grid search on *that search's* val split (the AFF mixer and query
net applied to val), since the weights depend on the global score's scale and quality; λ = 1 (global
score only) is in the grid, so a re-ranker that does not help on val is switched off rather than
allowed to hurt. A search given without val vectors uses the trainer's λ/γ (chosen on the
``global_feature`` val search). The test gallery is packed (16 bytes per descriptor) and every
search's top-``top_m`` is re-ranked. One row per search: ``"<search> + AMES"``, next to the
search's own row; then one ``"<search> + mutual NN"`` row per search: the untrained baseline
(:mod:`asymfuse.cloud.ames.mutual_nn`, mutual-nearest-neighbour counts of the same float
descriptors, λ/γ chosen on val by the same rule) that a learned re-ranker must beat. The run folder
is ``<out>/ames``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from asymfuse.cloud.data.records import RetrievalDataset
from asymfuse.cloud.demo.results import AFFStageResult, AMESStageResult, EnsembleWeights
from asymfuse.cloud.train.aff_config import TrainConfig
from asymfuse.cloud.train.ames_config import AMESTrainConfig
from asymfuse.edge.errors import ConfigError

# A few epochs at 32 descriptors keep the stage near a minute on 2 CPU cores; the recipe (lr, negatives
# from the global top-100) is the bench's (asymfuse.cloud.bench.ames_bench_config.TRAIN_BASE).
# The matching start (cloud/ames/match_init.py) is validated as epoch 0 and kept unless an epoch beats it
# on val: on CPU budgets training has not (bench ames quick: the start re-ranks gem_lite2 from 73.04 to
# 76.31 binary / 77.26 fp on test; 5 epochs of training from it lowered val).
DEMO_AMES: dict[str, Any] = {"binary": True, "start": "match", "epochs": 2, "lq": 32, "lx": 32, "batch_size": 32,
                             "lr": 5e-4, "hard_negatives_k": 100, "warmup_steps": 5, "log_every": 5, "val": "val"}
# Re-rank a search only when AMES adds a full point of val mAP-M over its global score: the val split
# has 15 queries; measured, the val-chosen λ on the fused search cost 0.95 point of test mAP-M.
VAL_MIN_GAIN = 1.0
Vectors = tuple[np.ndarray, np.ndarray]  # (queries (nq, d), gallery (nb, d))
Searches = Mapping[str, Mapping[str, Vectors]]  # {row label: {"test": vectors, optional "val": vectors}}


def ames_config(*, bench_root: Path, features_dir: Path, local_feature: str, global_feature: str, device: str,
                seed: int, progress: bool, **overrides: Any) -> AMESTrainConfig:
    """The demo's quick binary AMES run (``DEMO_AMES`` plus ``overrides``).

    ``batch_size`` is capped at the number of training images (tiny benchmarks).

    Raises:
        ConfigError: a bad override. CorruptDataError: an unreadable benchmark.
    """
    from asymfuse.cloud.train.aff_data import load_training_set

    values = {**DEMO_AMES, "data_source": "benchmark", "data_root": str(bench_root), "features_dir": str(features_dir),
              "local_feature": local_feature, "global_feature": global_feature, "device": device, "seed": seed,
              "progress": progress, **overrides}
    n = len(load_training_set("benchmark", bench_root))
    values["batch_size"] = max(1, min(int(values["batch_size"]), n))
    return AMESTrainConfig().replace(**values)


def aff_searches(aff_cfg: TrainConfig, aff: AFFStageResult, *,
                 splits: Mapping[str, RetrievalDataset]) -> dict[str, dict[str, Vectors]]:
    """The AFF stage's two searches on each split, ``{row label: {part: (xq, xb)}}`` (labels as in
    its rows; ``splits`` maps a cache part, e.g. ``"test"``/``"val"``, to its dataset).

    Raises:
        ConfigError, CorruptDataError: the stage's artifacts or a split's features are missing or unreadable.
    """
    from asymfuse.cloud.embed import embed_queries, fuse_table
    from asymfuse.cloud.features.gallery_table import load_gallery_table
    from asymfuse.cloud.features.layout import store_path
    from asymfuse.cloud.models.checkpoint import load_query_net
    from asymfuse.cloud.models.mixers.checkpoint import load_mixer

    mixer, _ = load_mixer(aff.mixer)
    net, _ = load_query_net(aff.query_net)
    feats = Path(aff_cfg.features_dir)
    sym, asym = aff.searches.symmetric.label, aff.searches.asymmetric.label
    out: dict[str, dict[str, Vectors]] = {sym: {}, asym: {}}
    for part, ds in splits.items():
        tables = {side: load_gallery_table([store_path(feats, n, part, side) for n in aff_cfg.gallery_features],
                                           ids=list(ds.gallery_ids if side == "gallery" else ds.query_ids),
                                           local_tokens=aff_cfg.local_tokens) for side in ("gallery", "queries")}
        xb = fuse_table(mixer, tables["gallery"])
        out[sym][part] = (fuse_table(mixer, tables["queries"]), xb)
        out[asym][part] = (embed_queries(net, ds), xb)
    return out


def _check_vectors(label: str, part: str, vectors: Vectors, ds: RetrievalDataset) -> None:
    xq, xb = vectors
    if xq.shape[0] != ds.nq or xb.shape[0] != ds.nb:
        raise ConfigError(f"search {label!r} has {xq.shape[0]} queries / {xb.shape[0]} gallery vectors on {part} but "
                          f"that split has {ds.nq} / {ds.nb}")


def run_ames_stage(cfg: AMESTrainConfig, *, test: RetrievalDataset, searches: Searches, out_dir: Path,
                   val: RetrievalDataset | None = None) -> AMESStageResult:
    """Train, pack the test gallery, re-rank every search's top-m; returns the rows and the model's settings.

    Args:
        cfg: the AMES run (its ``val`` names the cache part of ``val``).
        test: the test split the rows are measured on.
        searches: ``{label: {"test": (xq, xb), "val": (xq, xb)}}``; with ``"val"`` (and ``val``
            given) λ/γ are chosen for that search on val, else the trainer's are used.
        out_dir: the stage's run folder.
        val: the val split of the searches' ``"val"`` vectors.

    Raises:
        ConfigError: no search given, or a search's vectors do not fit its split.
        CorruptDataError, UnknownNameError: missing or broken features (see ``train_ames``).
    """
    from asymfuse.cloud.ames.evaluate import evaluate_ames, select_ensemble
    from asymfuse.cloud.ames.options import RerankOptions
    from asymfuse.cloud.ames.packed_build import build_packed_store
    from asymfuse.cloud.ames.scorer import AMESScorer
    from asymfuse.cloud.ames.sources import ArrayLocals
    from asymfuse.cloud.features.store import FeatureStore
    from asymfuse.cloud.train.ames_trainer import train_ames
    from asymfuse.cloud.features.layout import store_path
    from asymfuse.cloud.train.feature_cache import ensure_dataset_features

    if not searches:
        raise ConfigError("the AMES stage needs at least one global search to re-rank")
    for label, parts in searches.items():
        if "test" not in parts:
            raise ConfigError(f"search {label!r} has no test vectors; give {{'test': (xq, xb)}}")
        _check_vectors(label, "test", parts["test"], test)
        if "val" in parts and val is not None:
            _check_vectors(label, "val", parts["val"], val)
    result = train_ames(cfg, out_dir=out_dir)
    feats = Path(cfg.features_dir)
    scorer = AMESScorer(result.model, device=cfg.device)
    base = RerankOptions(top_m=cfg.top_m, lq=cfg.lq, lx=cfg.lx)

    def locals_of(part: str, ds: RetrievalDataset, side: str, max_local: int | None = None) -> ArrayLocals:
        ensure_dataset_features(cfg.local_feature, ds, features_dir=feats, part=part, device=cfg.device,
                                progress=cfg.progress)
        with FeatureStore.open(store_path(feats, cfg.local_feature, part, side), verify="none") as store:
            return ArrayLocals.from_store(store, max_local=max_local)

    weights: dict[str, EnsembleWeights] = {}
    val_locals: tuple[ArrayLocals, ArrayLocals] | None = None
    for label, parts in searches.items():
        weights[label] = EnsembleWeights(result.lam, result.gamma, "trainer val search")
        if "val" in parts and val is not None:
            if val_locals is None:
                val_locals = (locals_of(cfg.val, val, "queries"), locals_of(cfg.val, val, "gallery", cfg.lx))
            xq, xb = parts["val"]
            res = evaluate_ames(dataset=val, xq=xq, xb=xb, query_locals=val_locals[0], gallery=val_locals[1],
                                scorer=scorer, options=replace(base, lam=result.lam, gamma=result.gamma))
            lam, gamma, _ = select_ensemble(dataset=val, global_scores=res.global_scores, topm=res.topm,
                                            logits=res.logits, full_ranks=res.ranks, metric=cfg.select_metric,
                                            min_gain=VAL_MIN_GAIN)
            weights[label] = EnsembleWeights(lam, gamma, "this search on val")
    test_gallery = locals_of("test", test, "gallery", cfg.lx)  # extracts the store if missing
    with FeatureStore.open(store_path(feats, cfg.local_feature, "test", "gallery"), verify="none") as store:
        packed = build_packed_store(result.model, store, out_dir / "packed-test", max_local=cfg.lx,
                                    device=cfg.device, overwrite=True)
    queries = locals_of("test", test, "queries")
    rows = []
    with packed:
        for label, parts in searches.items():
            xq, xb = parts["test"]
            w = weights[label]
            res = evaluate_ames(dataset=test, xq=xq, xb=xb, query_locals=queries, gallery=packed, scorer=scorer,
                                options=replace(base, lam=w.lam, gamma=w.gamma))
            rows.append({"feature": f"{label} + AMES", "kind": "AMES re-ranking", "dim": int(xb.shape[1]),
                         "lam": w.lam, "gamma": w.gamma, "weights_chosen_on": w.chosen_on,
                         **{k: v for k, v in res.ames_metrics.items() if isinstance(v, (int, float))}})
        bytes_per_image = packed.bytes_per_image(cfg.lx)
    rows += _mutual_nn_rows(cfg, searches=searches, test=test, test_locals=(queries, test_gallery), val=val,
                            val_locals=val_locals)
    return AMESStageResult(rows=tuple(rows), run_dir=out_dir, checkpoint=Path(result.checkpoint),
                           local_feature=cfg.local_feature, lq=cfg.lq, lx=cfg.lx, top_m=cfg.top_m, epochs=cfg.epochs,
                           lam=result.lam, gamma=result.gamma, train_runtime_s=float(result.runtime_s),
                           local_bytes_per_image=int(bytes_per_image), weights=weights)


def _mutual_nn_rows(cfg: AMESTrainConfig, *, searches: Searches, test: RetrievalDataset,
                    test_locals: tuple[Any, Any], val: RetrievalDataset | None,
                    val_locals: tuple[Any, Any] | None) -> list[dict[str, Any]]:
    """The untrained local baseline next to AMES: mutual-nearest-neighbour counts of the same float
    descriptors (first ``lq`` / ``lx``) re-rank each search's top-m; λ/γ chosen on that search's val
    vectors with the same rule as AMES (:data:`VAL_MIN_GAIN`), else λ = 1 (off)."""
    from asymfuse.cloud.ames.evaluate import evaluate_ames, select_ensemble
    from asymfuse.cloud.ames.mutual_nn import MutualNNScorer
    from asymfuse.cloud.ames.options import RerankOptions

    base, scorer = RerankOptions(top_m=cfg.top_m, lq=cfg.lq, lx=cfg.lx), MutualNNScorer()
    rows = []
    for label, parts in searches.items():
        lam, gamma, chosen_on = 1.0, 1.0, "no val vectors: off"
        if "val" in parts and val is not None and val_locals is not None:
            xq, xb = parts["val"]
            res = evaluate_ames(dataset=val, xq=xq, xb=xb, query_locals=val_locals[0], gallery=val_locals[1],
                                scorer=scorer, options=base)
            lam, gamma, _ = select_ensemble(dataset=val, global_scores=res.global_scores, topm=res.topm,
                                            logits=res.logits, full_ranks=res.ranks, metric=cfg.select_metric,
                                            min_gain=VAL_MIN_GAIN)
            chosen_on = "this search on val"
        xq, xb = parts["test"]
        res = evaluate_ames(dataset=test, xq=xq, xb=xb, query_locals=test_locals[0], gallery=test_locals[1],
                            scorer=scorer, options=replace(base, lam=lam, gamma=gamma))
        rows.append({"feature": f"{label} + mutual NN", "kind": "mutual-NN re-ranking (untrained)",
                     "dim": int(xb.shape[1]), "lam": lam, "gamma": gamma, "weights_chosen_on": chosen_on,
                     **{k: v for k, v in res.ames_metrics.items() if isinstance(v, (int, float))}})
    return rows
