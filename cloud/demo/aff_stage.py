"""The demo's AFF stage: train the quick-tier joint AFF setting, then score it on the test split.

It reuses the demo's feature cache (``<out>/features/<name>/<part>/...``): the test features the
single-feature rows extracted are read again here, and train/val features are extracted once.
Rows: the fused gallery on both sides (symmetric), and the Lite0 query net against the fused
gallery (asymmetric); each first for the closed-form start (``[start]``: the mixer's PCA-whitened
anchor and the ridge-fitted query head, before any gradient step), then for the trained models
(the best val epoch, which is the start itself when no epoch beat it).
The run folder ``<out>/aff`` keeps the checkpoints, models and curves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from asymfuse.cloud.bench.aff_bench_config import QUICK_TRAIN
from asymfuse.cloud.bench.aff_report import BenchRow, plot_curves
from asymfuse.cloud.data.records import RetrievalDataset
from asymfuse.cloud.demo.results import AFFSearches, AFFStageResult
from asymfuse.cloud.embed import embed_queries, fuse_table
from asymfuse.cloud.eval.evaluate import evaluate_aff
from asymfuse.cloud.features.gallery_table import load_gallery_table
from asymfuse.cloud.features.layout import store_path
from asymfuse.cloud.train.aff_config import TrainConfig
from asymfuse.cloud.train.aff_trainer import start_models, train_aff
from asymfuse.cloud.train.feature_cache import ensure_dataset_features


def aff_config(*, bench_root: Path, features_dir: Path, gallery_features: tuple[str, ...], device: str,
               seed: int, progress: bool, **overrides: Any) -> TrainConfig:
    """The quick-tier joint setting over the demo's gallery features."""
    values = {**QUICK_TRAIN, "scheme": "joint", "gallery_features": gallery_features, "data_root": str(bench_root),
              "features_dir": str(features_dir), "device": device, "seed": seed, "progress": progress, **overrides}
    return TrainConfig().replace(**values)


def aff_searches_of(cfg: TrainConfig) -> AFFSearches:
    """The two searches the AFF stage adds to the demo table."""
    return AFFSearches.of(gallery_features=tuple(cfg.gallery_features), query_arch=cfg.query_arch,
                          input_size=cfg.input_size)


def run_aff_stage(cfg: TrainConfig, *, test: RetrievalDataset, out_dir: Path) -> AFFStageResult:
    """Train, then evaluate on ``test``; returns the stage's rows and artifacts."""
    result = train_aff(cfg, out_dir=out_dir)
    feats = Path(cfg.features_dir)
    for name in cfg.gallery_features:
        ensure_dataset_features(name, test, features_dir=feats, part="test", device=cfg.device, progress=cfg.progress)
    tables = {side: load_gallery_table([store_path(feats, n, "test", side) for n in cfg.gallery_features],
                                       ids=list(test.gallery_ids if side == "gallery" else test.query_ids),
                                       local_tokens=cfg.local_tokens) for side in ("gallery", "queries")}
    searches = aff_searches_of(cfg)
    rows = []
    start_mixer, start_query = start_models(result)
    for label, mixer, query_net in (("start", start_mixer, start_query), ("", result.mixer, result.query_net)):
        if mixer is None:
            continue
        xb = fuse_table(mixer, tables["gallery"])
        sym = evaluate_aff(dataset=test, query_vectors=fuse_table(mixer, tables["queries"]), gallery_vectors=xb)
        asym = evaluate_aff(dataset=test, query_vectors=embed_queries(query_net, test), gallery_vectors=xb)
        tag = f" [{label}]" if label else ""
        kind = "AFF start (closed form)" if label else "AFF"
        d = cfg.embed_dim
        rows += [{"feature": f"{searches.symmetric.label}{tag}", "kind": f"{kind} symmetric", "dim": d, **sym},
                 {"feature": f"{searches.asymmetric.label}{tag}", "kind": f"{kind} asymmetric", "dim": d, **asym}]
    curve = BenchRow(block="asymmetric", row="joint", setting="demo quick joint",
                     mAP_medium=asym["mAP_medium"], mAP_hard=asym["mAP_hard"], history=tuple(
                         {k: v for k, v in h.items() if k != "step_losses"} for h in result.history))
    plot_curves([curve], out_dir / "curves.png")
    return AFFStageResult(rows=tuple(rows), searches=searches, run_dir=out_dir, mixer=out_dir / "mixer.pt",
                          query_net=out_dir / "query_net.pt", checkpoint=Path(result.checkpoint),
                          best_epoch=int(result.best_epoch), embedding_space_id=result.embedding_space_id,
                          train_runtime_s=float(result.runtime_s))
