"""Preparation of ``asymfuse bench ames``: benchmark, feature cache, PQ codec, and the shared context.

- Global features: the registered extractor ``global_feature`` through the feature cache
  (:mod:`asymfuse.cloud.train.feature_cache`), for train, val and test.
- Local features: the registered extractor with ``max_local`` slots (and ``local_max_side`` for
  the CNN map descriptors), written as complete stores at the feature-cache paths
  (``<features>/<name>/<part>/<gallery|queries>``), so the AMES trainer reads them as they are.
  A complete store already there is kept if it has ``max_local`` slots; one with fewer slots is
  an error (it would silently cap the lengths).
- PQ: a faiss ``IndexPQ`` (inner product) trained on the train split's globals. Its asymmetric
  distance between a float query and a code equals the inner product with the code's
  reconstruction, so the PQ search is an exact search over the reconstructed gallery.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from asymfuse.cloud.bench.ames_bench_config import AMESBenchConfig
from asymfuse.cloud.data.records import RetrievalDataset, TrainingSet
from asymfuse.cloud.index.flat import as_float32_matrix
from asymfuse.edge.errors import ConfigError, missing_dependency


LOG = logging.getLogger("asymfuse.bench.ames")
PARTS = ("train", "val", "test")
CNN_LOCALS = ("local_lite2",)  # extractors that take max_side (SIFT only ever shrinks images)


@dataclass
class AMESContext:
    """What every row shares. ``models`` caches training results (or their exception) by row key."""

    cfg: AMESBenchConfig
    out: Path
    features_dir: Path
    bench_root: Path
    training_set: TrainingSet
    val: RetrievalDataset
    test: RetrievalDataset
    extracted: bool = False
    counts: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    counts_note: str = ""
    pq: Any = None
    pq_nbits: int = 8
    threads: int = 1
    timing: dict[str, float] = field(default_factory=dict)
    models: dict[str, Any] = field(default_factory=dict)
    selected: dict[str, tuple[float, float]] = field(default_factory=dict)
    run_info: dict[str, Any] = field(default_factory=dict)
    _cache: dict[Any, Any] = field(default_factory=dict)

    def dataset(self, part: str) -> RetrievalDataset:
        if part not in ("val", "test"):
            raise ConfigError(f"part must be 'val' or 'test', got {part!r}")
        return self.val if part == "val" else self.test

    def store(self, name: str, part: str, side: str = "gallery") -> Path:
        from asymfuse.cloud.features.layout import store_path

        return store_path(self.features_dir, name, part, side)

    def globals(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        """``(xq (nq, D), xb (nb, D))`` float32 unit-norm global vectors of a val/test split."""
        key = ("globals", part)
        if key not in self._cache:
            from asymfuse.cloud.train.ames_pairs import global_rows

            ds = self.dataset(part)
            name = self.cfg.global_feature
            self._cache[key] = (global_rows(self.store(name, part, "queries"), ids=list(ds.query_ids)),
                                global_rows(self.store(name, part, "gallery"), ids=list(ds.gallery_ids)))
        return self._cache[key]

    def pq_globals(self, part: str) -> tuple[np.ndarray, np.ndarray]:
        """``(xq, xb_hat)``: float queries and the PQ reconstruction of the gallery (see the module docstring)."""
        key = ("pq", part)
        if key not in self._cache:
            xq, xb = self.globals(part)
            self._cache[key] = (xq, pq_reconstruct(self.pq, xb))
        return self._cache[key]

    def locals(self, name: str, part: str, side: str) -> Any:
        """:class:`~asymfuse.cloud.ames.sources.ArrayLocals` of a val/test split's queries or gallery."""
        key = ("locals", name, part, side)
        if key not in self._cache:
            from asymfuse.cloud.ames.sources import ArrayLocals
            from asymfuse.cloud.features.store import FeatureStore

            with FeatureStore.open(self.store(name, part, side), verify="none") as store:
                self._cache[key] = ArrayLocals.from_store(store)
        return self._cache[key]

    def cached(self, key: Any, build: Any) -> Any:
        """``build()`` once per ``key``."""
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]


def prepare(cfg: AMESBenchConfig, out: Path) -> AMESContext:
    """Benchmark, datasets, global and local features of train/val/test, PQ codec.

    Raises:
        ConfigError, CorruptDataError, UnknownNameError: a build or extraction failed.
    """
    from asymfuse.cloud.data.benchmark import build_benchmark, dataset_name
    from asymfuse.cloud.data.revisitop import load_revisitop
    from asymfuse.cloud.train.aff_data import load_training_set

    bench = build_benchmark(out / "benchmark", config=cfg.benchmark)
    splits = {p: load_revisitop(bench.split(p).root, name=dataset_name(bench.config.name, p)) for p in ("val", "test")}
    ctx = AMESContext(cfg=cfg, out=out, features_dir=Path(cfg.features_dir) if cfg.features_dir else out / "features",
                      bench_root=bench.root, training_set=load_training_set("benchmark", bench.root),
                      val=splits["val"], test=splits["test"], threads=torch.get_num_threads())
    t0 = time.perf_counter()
    ctx.extracted = ensure_global(ctx) | any([ensure_local(ctx, name) for name in cfg.local_features])
    ctx.timing["features"] = time.perf_counter() - t0
    ctx.counts = {name: local_counts(ctx, name) for name in cfg.local_features}
    ctx.counts_note = "; ".join(
        f"{name}: test queries mean {c['test/queries']['mean']:.0f} (min {c['test/queries']['min']:.0f}), test "
        f"gallery mean {c['test/gallery']['mean']:.0f} (min {c['test/gallery']['min']:.0f})"
        for name, c in ctx.counts.items())
    if "memory" in cfg.blocks:
        from asymfuse.cloud.train.ames_pairs import global_rows
        from asymfuse.cloud.train.feature_cache import training_ids

        xt = global_rows(ctx.store(cfg.global_feature, "train"), ids=training_ids(ctx.training_set))
        ctx.pq, ctx.pq_nbits = train_pq(xt, m=cfg.pq_m, nbits=cfg.pq_nbits)
    return ctx


def ensure_global(ctx: AMESContext) -> bool:
    """The global feature of train, val and test through the feature cache; True when anything was extracted."""
    from asymfuse.cloud.train.feature_cache import (
        ensure_dataset_features,
        ensure_training_features,
        is_complete,
        training_ids,
    )

    cfg, name = ctx.cfg, ctx.cfg.global_feature
    todo = not is_complete(ctx.store(name, "train"), training_ids(ctx.training_set)) or any(
        not is_complete(ctx.store(name, p, s), _ids(ctx.dataset(p), s)) for p in ("val", "test")
        for s in ("gallery", "queries"))
    ensure_training_features(name, ctx.training_set, features_dir=ctx.features_dir, device=cfg.device,
                             progress=cfg.progress)
    for part in ("val", "test"):
        ensure_dataset_features(name, ctx.dataset(part), features_dir=ctx.features_dir, part=part, device=cfg.device,
                                progress=cfg.progress)
    return todo


def _ids(ds: RetrievalDataset, side: str) -> list[str]:
    return list(ds.gallery_ids if side == "gallery" else ds.query_ids)


def local_extractor_options(cfg: AMESBenchConfig, name: str) -> dict[str, Any]:
    """Keyword options of the local extractor ``name``: ``max_local`` (and ``max_side`` for CNN maps)."""
    opts: dict[str, Any] = {"max_local": cfg.max_local}
    if name in CNN_LOCALS:
        opts["max_side"] = cfg.local_max_side
    return opts


def ensure_local(ctx: AMESContext, name: str) -> bool:
    """Complete ``max_local``-slot stores of local feature ``name`` for train, val and test.

    Returns:
        True when anything was extracted.

    Raises:
        ConfigError: a complete store there has fewer than ``max_local`` slots (delete it), or an
            incomplete one was built by another extractor configuration.
    """
    from asymfuse.cloud.features.extract import extract_to_store
    from asymfuse.cloud.features.registry import create_feature_extractor
    from asymfuse.cloud.train.feature_cache import is_complete, training_ids

    cfg = ctx.cfg
    jobs = [(ctx.store(name, "train"), list(ctx.training_set.paths), training_ids(ctx.training_set), None)]
    for part in ("val", "test"):
        ds = ctx.dataset(part)
        jobs += [(ctx.store(name, part, "gallery"), list(ds.gallery_paths), list(ds.gallery_ids), None),
                 (ctx.store(name, part, "queries"), list(range(ds.nq)), list(ds.query_ids), ds.load_query_image)]
    todo = [j for j in jobs if not is_complete(j[0], j[2])]
    todo_roots = {j[0] for j in todo}
    for root, *_ in jobs:
        if root not in todo_roots:
            _check_slots(root, cfg.max_local)
    if not todo:
        return False
    LOG.info("extracting %s (max_local %d) for %d stores", name, cfg.max_local, len(todo))
    with create_feature_extractor(name, device=cfg.device, **local_extractor_options(cfg, name)) as extractor:
        for root, paths, ids, load_fn in todo:
            kw = {} if load_fn is None else {"load_fn": load_fn}
            extract_to_store(extractor, paths, root, ids=ids, resume=True, progress=cfg.progress,
                             meta={"part": root.parent.name, "bench": "ames"}, **kw).close()
    return True


def _check_slots(root: Path, max_local: int) -> None:
    from asymfuse.cloud.features.store import FeatureStore

    with FeatureStore.open(root, verify="none") as store:
        if store.kind != "local" or (store.max_local or 0) < max_local:
            raise ConfigError(f"{root} holds a {store.kind} store with {store.max_local} slots per image, but the "
                              f"bench needs {max_local}; delete that folder (or use another features_dir) so the "
                              "bench extracts it again")


def local_counts(ctx: AMESContext, name: str) -> dict[str, dict[str, float]]:
    """Descriptor counts per image of each val/test store: ``{"test/queries": {min, median, mean, max}}``."""
    from asymfuse.cloud.features.store import FeatureStore

    out = {}
    for part in ("val", "test"):
        for side in ("queries", "gallery"):
            with FeatureStore.open(ctx.store(name, part, side), verify="none") as store:
                counts = np.concatenate([(~f.mask).sum(1) for _, f in store.iter_batches(256)])
            out[f"{part}/{side}"] = {"min": float(counts.min()), "median": float(np.median(counts)),
                                     "mean": float(counts.mean()), "max": float(counts.max())}
    return out


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise missing_dependency("faiss-cpu", "cloud") from exc
    return faiss


def train_pq(xt: np.ndarray, *, m: int, nbits: int) -> tuple[Any, int]:
    """A faiss ``IndexPQ`` (inner product) with ``m`` sub-quantisers trained on ``xt`` ``(n, D)``.

    ``nbits`` drops to ``floor(log2(n))`` when there are fewer than ``2**nbits`` training vectors
    (k-means needs a point per centroid); the second value returned is the one used.

    Raises:
        ConfigError: ``D`` not divisible by ``m``, or fewer than 2 training vectors.
    """
    xt = as_float32_matrix(xt, "xt")
    n, d = xt.shape
    if d % m:
        raise ConfigError(f"PQ needs the global dimension ({d}) divisible by pq_m={m}; pick another pq_m")
    if n < 2:
        raise ConfigError(f"PQ training needs at least 2 vectors, got {n}")
    bits = min(nbits, int(math.floor(math.log2(n))))
    faiss = _faiss()
    index = faiss.IndexPQ(d, m, bits, faiss.METRIC_INNER_PRODUCT)
    index.train(xt)
    return index, bits


def pq_code_bytes(index: Any) -> int:
    """Bytes of one PQ code (``m * nbits / 8``, rounded up by faiss)."""
    return int(index.sa_code_size())


def pq_reconstruct(index: Any, xb: np.ndarray) -> np.ndarray:
    """``(nb, D)`` float32: encode ``xb`` with the PQ and decode it again."""
    xb = as_float32_matrix(xb, "xb")
    return np.ascontiguousarray(index.sa_decode(index.sa_encode(xb)), dtype=np.float32)
