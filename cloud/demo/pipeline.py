"""``asymfuse demo``: benchmark -> real gallery features -> faiss search -> AFF training -> mAP table.

Steps: build the embedded benchmark; extract the test split's gallery and (bbx-cropped) queries
with real global models and SIFT into feature stores; aggregate SIFT with a VLAD codebook learnt
on the *train* split; search each single feature and the naive concatenations with an exact faiss
index; train the quick-tier joint AFF setting (mixer + Lite0 query net) and add its symmetric
and asymmetric rows; train a quick binary AMES and add a re-ranked row per AFF search
(:mod:`asymfuse.cloud.demo.ames_stage`); serve the fused gallery with AMES through the gRPC searcher
and query it as a phone would (:mod:`asymfuse.cloud.demo.serve_stage`); export the query net, gated
(:mod:`asymfuse.cloud.demo.export_stage`); query the searcher again from the torch-free edge SDK
with the exported int8 TFLite file (:mod:`asymfuse.cloud.demo.edge_stage`); write the table as
Markdown and JSON.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.cloud.bench.aff_bench_config import QUICK_TRAIN
from asymfuse.cloud.data.benchmark import BenchmarkConfig, build_benchmark, dataset_name
from asymfuse.cloud.data.records import RetrievalDataset
from asymfuse.cloud.data.revisitop import load_revisitop
from asymfuse.cloud.demo.aff_stage import aff_config, run_aff_stage
from asymfuse.cloud.demo.ames_stage import aff_searches, ames_config, run_ames_stage
from asymfuse.cloud.demo.results import AFFStageResult, AMESStageResult
from asymfuse.cloud.demo.export_stage import DEMO_TARGETS, run_export_stage
from asymfuse.cloud.eval.evaluate import evaluate_ranking, rank_features
from asymfuse.cloud.eval.report import markdown_table, write_json
from asymfuse.cloud.features.aggregate import train_vlad_codebook, vlad
from asymfuse.cloud.features.extract_dataset import extract_dataset
from asymfuse.cloud.features.layout import part_dir
from asymfuse.cloud.features.registry import create_feature_extractor
from asymfuse.edge.errors import ConfigError
from asymfuse.edge.fileio import atomic_write_text

LOG = logging.getLogger("asymfuse.demo")
COLUMNS = ("feature", "kind", "dim", "mAP_easy", "mAP_medium", "mAP_hard", "mP@10_medium", "mP@10_hard")
EXPORT_COLUMNS = ("feature", "status", "cosine_min", "file_mb", "mAP_easy", "mAP_medium", "mAP_hard", "reason")


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs. ``global_extractors`` and ``local_extractors`` are registry names."""

    out_dir: str = "runs/demo"
    seed: int = 0
    global_extractors: tuple[str, ...] = ("gem_lite1", "gem_lite2")
    local_extractors: tuple[str, ...] = ("sift",)
    vlad_words: int = 32
    codebook_images: int = 120
    device: str = "cpu"
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    progress: bool = True
    aff: bool = True  # train the quick-tier joint AFF setting and add its rows
    aff_overrides: tuple[tuple[str, Any], ...] = ()  # (TrainConfig key, value) pairs, e.g. (("epochs", 1),)
    ames: bool = True  # train a quick binary AMES and re-rank the AFF searches (or the first global feature's)
    ames_local_feature: str = "sift"  # already extracted by the demo (local_lite2 would add minutes)
    ames_global_feature: str = "gem_lite1"  # hard-negative mining and the val search of the AMES trainer
    ames_overrides: tuple[tuple[str, Any], ...] = ()  # (AMESTrainConfig key, value) pairs
    serve: bool = True  # index build + gRPC searcher: query the fused gallery with AMES as a phone would
    export: bool = True  # export the AFF query net (ONNX, TFLite), gate each file and add its rows
    export_targets: tuple[tuple[str, str], ...] = DEMO_TARGETS  # (format, precision) pairs
    export_calibration: int = 32  # train-split photos that calibrate int8
    edge: bool = True  # the edge SDK runs the exported int8 TFLite file (else the first exported file) via gRPC

    def __post_init__(self) -> None:
        if len(self.global_extractors) + len(self.local_extractors) < 1:
            raise ConfigError("the demo needs at least one extractor")
        if self.vlad_words < 2 or self.codebook_images < 1:
            raise ConfigError(f"vlad_words must be >= 2 and codebook_images >= 1, got "
                              f"{self.vlad_words}, {self.codebook_images}")
        if self.ames and not self.aff and not self.global_extractors:
            raise ConfigError("the AMES stage re-ranks a global search: keep aff=True or add a global extractor, "
                              "or set ames=False")
        if self.serve and not (self.aff and self.ames):
            raise ConfigError("the serving stage serves the AFF gallery with the AMES stage's model: keep aff=True "
                              "and ames=True, or set serve=False")
        if self.export and not self.aff:
            raise ConfigError("the export stage exports the AFF stage's query net: keep aff=True or set export=False")
        if self.edge and not (self.serve and self.export):
            raise ConfigError("the edge stage runs an exported file against the served gallery: keep serve=True "
                              "and export=True, or set edge=False")


def load_split(bench_root: Path, part: str, name: str) -> RetrievalDataset:
    """The revisitop dataset of one benchmark part."""
    return load_revisitop(bench_root / part, name=dataset_name(name, part))


def _global_vectors(name: str, test: RetrievalDataset, out: Path, cfg: DemoConfig) -> tuple[np.ndarray, np.ndarray]:
    with create_feature_extractor(name, device=cfg.device) as ex:
        stores = extract_dataset(ex, test, part_dir(out / "features", name, "test"), progress=cfg.progress)
    return np.asarray(stores["queries"].global_features()), np.asarray(stores["gallery"].global_features())


def _vlad_vectors(name: str, train: RetrievalDataset, test: RetrievalDataset, out: Path,
                  cfg: DemoConfig) -> tuple[np.ndarray, np.ndarray]:
    """Local features -> VLAD with a codebook learnt on train-split gallery images only."""
    with create_feature_extractor(name, device=cfg.device) as ex:
        rng = np.random.default_rng(cfg.seed)
        n = min(cfg.codebook_images, train.nb)
        subset = sorted(rng.choice(train.nb, size=n, replace=False).tolist())
        sub_ds = _gallery_subset(train, subset)
        train_store = extract_dataset(ex, sub_ds, part_dir(out / "features", name, "train-codebook"),
                                      sides=("gallery",), progress=cfg.progress)["gallery"]
        stores = extract_dataset(ex, test, part_dir(out / "features", name, "test"), progress=cfg.progress)
    tr = train_store.get(np.arange(len(train_store)))
    book = train_vlad_codebook(tr.descriptors[~tr.mask], k=cfg.vlad_words, seed=cfg.seed)
    q = stores["queries"].get(np.arange(len(stores["queries"])))
    g = stores["gallery"].get(np.arange(len(stores["gallery"])))
    return vlad(q.descriptors, q.mask, book), vlad(g.descriptors, g.mask, book)


def _gallery_subset(ds: RetrievalDataset, idx: list[int]) -> RetrievalDataset:
    return RetrievalDataset(name=f"{ds.name}-subset", root=ds.root, protocol="revisitop",
                            gallery_paths=[ds.gallery_paths[i] for i in idx],
                            gallery_ids=[ds.gallery_ids[i] for i in idx],
                            query_paths=[], query_ids=[], gnd=[])


def concat(parts: list[np.ndarray]) -> np.ndarray:
    """Naive fusion: concatenate unit-norm features, re-normalise. ``(n, sum D_i)`` float32."""
    x = np.concatenate(parts, axis=1).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _row(feature: str, kind: str, xq: np.ndarray, xb: np.ndarray, test: RetrievalDataset) -> dict[str, Any]:
    metrics = evaluate_ranking(rank_features(xq, xb), test)
    return {"feature": feature, "kind": kind, "dim": int(xb.shape[1]), **metrics}


def _serve(aff_cfg: Any, aff: AFFStageResult, ames: AMESStageResult, aff_vectors: dict[str, Any], *,
           test: RetrievalDataset, out: Path) -> Any:
    """The serving stage on the asymmetric AFF search (the phone's query net against the fused gallery)."""
    from asymfuse.cloud.demo.serve_stage import run_serve_stage
    from asymfuse.cloud.features.layout import store_path

    feats = Path(aff_cfg.features_dir)
    label = aff.searches.asymmetric.label
    weights = ames.weights[label]
    query_locals = _test_locals(aff_cfg, ames, "queries")
    return run_serve_stage(test=test, xq=aff_vectors[label]["test"][0], mixer=aff.mixer,
                           gallery_stores=[store_path(feats, n, "test", "gallery") for n in aff_cfg.gallery_features],
                           ames_checkpoint=ames.checkpoint, packed=ames.run_dir / "packed-test",
                           query_locals=query_locals, lam=weights.lam, gamma=weights.gamma, top_m=ames.top_m,
                           lq=ames.lq, lx=ames.lx, label=label, out_dir=out / "serve", space=aff.embedding_space_id)


def _test_locals(aff_cfg: Any, ames: AMESStageResult, side: str) -> Any:
    """The test split's ``side`` ("queries" or "gallery") local descriptors (the AMES stage's feature) as an
    ``ArrayLocals``."""
    from asymfuse.cloud.ames.sources import ArrayLocals
    from asymfuse.cloud.features.layout import store_path
    from asymfuse.cloud.features.store_reader import FeatureStore

    path = store_path(Path(aff_cfg.features_dir), ames.local_feature, "test", side)
    with FeatureStore.open(path, verify="none") as store:
        return ArrayLocals.from_store(store)


def _without_locals(aff_cfg: Any, ames: AMESStageResult) -> dict[str, int]:
    """How many test queries and gallery images have no local descriptor (AMES keeps their global score)."""
    out = {}
    for side in ("queries", "gallery"):
        locals_ = _test_locals(aff_cfg, ames, side)
        out[side] = int((locals_.counts(np.arange(len(locals_))) == 0).sum())
    return out


def _edge(aff_cfg: Any, ames: AMESStageResult, served: Any, export_rows: list[dict[str, Any]], *,
          test: RetrievalDataset) -> Any:
    """The edge stage on the int8 TFLite file (else the first exported file on disk); None without one."""
    from asymfuse.cloud.demo.edge_stage import run_edge_stage

    files = [r for r in export_rows if r.get("path") and Path(r["path"]).is_file()]
    files.sort(key=lambda r: ("[tflite int8]" not in r["feature"], "[tflite " not in r["feature"],
                              r.get("status") != "passed"))
    if not files:
        LOG.warning("edge stage skipped: no exported file on disk")
        return None
    pick = files[0]
    label = f"{pick['feature'].split(' → ')[0]} (edge SDK) + AMES via gRPC"
    return run_edge_stage(test=test, model=Path(pick["path"]), index_dir=served.index_dir,
                          query_locals=_test_locals(aff_cfg, ames, "queries"), top_m=ames.top_m, lq=ames.lq,
                          torch_row=served.row, torch_ranks=served.ranks, label=label)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo; returns the report dict (also written to ``out_dir/report.{md,json}``)."""
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    bench = build_benchmark(out / "benchmark", config=cfg.benchmark)
    name = cfg.benchmark.name
    test, train = load_split(bench.root, "test", name), load_split(bench.root, "train", name)
    t_bench = time.perf_counter() - t0
    LOG.info("benchmark: %d test queries, %d test gallery images", test.nq, test.nb)

    vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    kinds: dict[str, str] = {}
    for ext in cfg.global_extractors:
        vectors[ext], kinds[ext] = _global_vectors(ext, test, out, cfg), "global"
    for ext in cfg.local_extractors:
        key = f"{ext}+vlad{cfg.vlad_words}"
        vectors[key], kinds[key] = _vlad_vectors(ext, train, test, out, cfg), "local→VLAD"
    t_extract = time.perf_counter() - t0 - t_bench

    rows = [_row(k, kinds[k], xq, xb, test) for k, (xq, xb) in vectors.items()]
    combos = []
    if len(cfg.global_extractors) > 1:
        combos.append(list(cfg.global_extractors))
    if len(vectors) > 1 and list(vectors) not in combos:
        combos.append(list(vectors))
    for keys in combos:
        xq, xb = concat([vectors[k][0] for k in keys]), concat([vectors[k][1] for k in keys])
        rows.append(_row("concat(" + " + ".join(keys) + ")", "concat", xq, xb, test))
    aff: AFFStageResult | None = None
    t_aff = 0.0
    if cfg.aff:
        t1 = time.perf_counter()
        aff_cfg = aff_config(bench_root=bench.root, features_dir=out / "features", device=cfg.device, seed=cfg.seed,
                             progress=cfg.progress, gallery_features=QUICK_TRAIN["gallery_features"],
                             **dict(cfg.aff_overrides))
        aff = run_aff_stage(aff_cfg, test=test, out_dir=out / "aff")
        rows.extend(aff.rows)
        t_aff = time.perf_counter() - t1
    ames: AMESStageResult | None = None
    t_ames = 0.0
    val = load_split(bench.root, "val", name) if cfg.aff and cfg.ames else None
    aff_vectors = (aff_searches(aff_cfg, aff, splits={"test": test} if val is None else {"test": test, "val": val})
                   if aff is not None and (cfg.ames or cfg.export) else {})
    if cfg.ames:
        t1 = time.perf_counter()
        first = cfg.global_extractors[0] if cfg.global_extractors else None
        searches = aff_vectors if aff is not None else {first: {"test": vectors[first]}}
        ames_cfg = ames_config(bench_root=bench.root, features_dir=out / "features",
                               local_feature=cfg.ames_local_feature, global_feature=cfg.ames_global_feature,
                               device=cfg.device, seed=cfg.seed, progress=cfg.progress, **dict(cfg.ames_overrides))
        ames = run_ames_stage(ames_cfg, test=test, searches=searches, out_dir=out / "ames", val=val)
        rows.extend(ames.rows)
        t_ames = time.perf_counter() - t1
    serve_info: dict[str, Any] = {}
    t_serve = 0.0
    if cfg.serve and aff is not None and ames is not None:
        t1 = time.perf_counter()
        served: Any = _serve(aff_cfg, aff, ames, aff_vectors, test=test, out=out)
        rows.append(served.row)
        serve_info = served.info()
        t_serve = time.perf_counter() - t1
    export_info: dict[str, Any] = {}
    t_export = 0.0
    if cfg.export and aff is not None:
        t1 = time.perf_counter()
        asym = aff.searches.asymmetric
        export_rows, export_info = run_export_stage(
            query_net=aff.query_net, bench=bench, test=test, gallery=aff_vectors[asym.label]["test"][1],
            gallery_label=asym.gallery_side, out_dir=out / "export", targets=cfg.export_targets,
            calibration=cfg.export_calibration)
        rows.extend(export_rows)
        t_export = time.perf_counter() - t1
    edge_info: dict[str, Any] = {}
    t_edge = 0.0
    if cfg.edge and serve_info and export_info and ames is not None:
        t1 = time.perf_counter()
        edge = _edge(aff_cfg, ames, served, export_rows, test=test)
        if edge is not None:
            rows.append({**edge.row, "gate_status": next(r.get("status") for r in export_rows
                                                          if r.get("path") == str(edge.model))})
            edge_info = edge.info()
        t_edge = time.perf_counter() - t1
    total = time.perf_counter() - t0
    report = {
        "title": "asymfuse demo: single gallery features vs naive concatenation (test split)",
        "dataset": {"name": test.name, "queries": test.nq, "gallery": test.nb, "root": str(test.root)},
        "rows": rows,
        "timing_s": {"benchmark": round(t_bench, 1), "extract": round(t_extract, 1), "aff": round(t_aff, 1),
                     "ames": round(t_ames, 1), "serve": round(t_serve, 1), "export": round(t_export, 1),
                     "edge": round(t_edge, 1), "total": round(total, 1)},
        "aff": {} if aff is None else aff.info(),
        "ames": {} if ames is None else ames.info(),
        "serve": serve_info,
        "export": export_info,
        "edge": edge_info,
        "config": asdict(cfg),
    }
    table = markdown_table([r for r in rows if r["kind"] != "exported query net"], COLUMNS)
    md = (f"# {report['title']}\n\nDataset `{test.name}` test split: {test.nq} queries, "
          f"{test.nb} gallery images (revisitop protocol, mAP in %).\n\n{table}\n\n"
          f"Runtime: {total:.1f} s (benchmark {t_bench:.1f} s, features {t_extract:.1f} s, "
          f"AFF training + eval {t_aff:.1f} s, AMES training + re-ranking {t_ames:.1f} s, gRPC serving "
          f"{t_serve:.1f} s, export + gate "
          f"{t_export:.1f} s, edge SDK {t_edge:.1f} s).\n")
    if aff is not None:
        md += (f"\nAFF (quick tier, joint, alpha={aff_cfg.alpha}): best val epoch {aff.best_epoch}, "
               f"embedding space `{aff.embedding_space_id}`; models and curves in `{aff.run_dir}`.\n")
    if ames is not None:
        md += (f"\nAMES (binary, {ames.local_feature}, {ames.epochs} epochs, L_q = L_x = {ames.lx}, "
               f"{ames.local_bytes_per_image} bytes of descriptors per image) re-ranks the top {ames.top_m}; λ/γ "
               f"are chosen per search on its val split (λ = 1: global score only); model in `{ames.checkpoint}`.\n")
        empty = _without_locals(aff_cfg, ames) if aff is not None else {}
        if any(empty.values()):
            md += (f"{ames.local_feature} finds no keypoint in {empty['queries']} of {test.nq} test queries and "
                   f"{empty['gallery']} of {test.nb} test gallery images (featureless photos); AMES keeps their "
                   "global scores.\n")
    if serve_info:
        md += (f"\nServing (`asymfuse index build` + `asymfuse serve` in-process, Flat index): the test queries sent "
               f"over gRPC as a phone sends them (query-net vector + SIFT descriptors) gave the offline ranking for "
               f"{serve_info['rankings_equal']}/{serve_info['queries']} queries; latency per query p50 "
               f"{serve_info['p50_ms']:.1f} ms, p99 {serve_info['p99_ms']:.1f} ms (AMES re-ranks the top "
               f"{ames.top_m if ames else 0}).\n")
    if export_info:
        exported = [r for r in rows if r["kind"] == "exported query net"]
        md += (f"\n## Exported query net (asymmetric: artifact queries → fused torch gallery; torch mAP_medium "
               f"{export_info['torch_mAP_medium']:.2f}; int8 calibrated on {export_info['calibration_images']} train "
               f"photos)\n\n{markdown_table(exported, EXPORT_COLUMNS, digits=4)}"
               f"\n\nFiles and `manifest.json` in `{export_info['dir']}` (a file that fails the gate is under "
               "`failed/` and is not shippable).\n")
    if edge_info:
        md += (f"\nPhone side (`asymfuse.edge.ImageEmbedder`, no torch, on `{Path(edge_info['model']).name}`): each "
               f"test query photo embedded by the SDK and sent with its SIFT descriptors to the searcher; mAP Medium "
               f"drop against the torch query net's gRPC row {edge_info['map_drop']:.2f} points (the gate allows "
               f"1.0: {'within' if edge_info['within_gate'] else 'OUTSIDE'}); whole rankings equal to the torch "
               f"query net's (= the offline evaluation) for {edge_info['rankings_equal_torch']}/{test.nq} queries; "
               f"end to end (embed + gRPC + AMES) "
               f"p50 {edge_info['p50_ms']:.1f} ms, p99 {edge_info['p99_ms']:.1f} ms.\n")
    atomic_write_text(out / "report.md", md)
    write_json(out / "report.json", report)
    report["markdown"] = md
    return report
