"""``asymfuse bench ames-latency``: ms to re-score one query's top-``top_m`` per AMES scorer kind.

Synthetic and quick (well under a minute on 2 CPU cores): a seeded binary AMES with the project
defaults (:class:`~asymfuse.cloud.ames.model.AMESConfig`, ``local_dim`` 128 as SIFT), a packed
gallery of ``gallery_size`` random images with ``lx`` descriptors each (written to a temporary
folder), one query with ``lq`` descriptors and ``top_m`` random candidates. Each kind of
:func:`~asymfuse.cloud.ames.factory.create_scorer` scores the candidates ``runs`` times after
``warmup`` calls, from the packed store (``source = packed``: read, unpack and project per call)
and from a :class:`~asymfuse.cloud.ames.resident.ResidentGallery` (``source = resident``: tokens
decoded once). Reported: p50/p99 wall ms, the largest logit difference to ``fp32`` and the
number of candidate pairs whose fp32 order (logits more than ``tie`` apart) the kind inverts.
A randomly initialised model has a small logit spread; parameters are perturbed (as the tests
do) so that logits vary between candidates.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asymfuse.cloud.ames.factory import SCORER_KINDS, TIE, order_violations
from asymfuse.edge.errors import ConfigError, UnknownNameError



@dataclass(frozen=True)
class LatencyConfig:
    """Settings of ``bench ames-latency`` (defaults: the serving target, top-100 at 64/64)."""

    kinds: tuple[str, ...] = ("fp32", "batched", "int8", "bf16")
    sources: tuple[str, ...] = ("packed", "resident")
    top_m: int = 100
    lq: int = 64
    lx: int = 64
    local_dim: int = 128
    gallery_size: int = 1000
    threads: int = 2
    runs: int = 15
    warmup: int = 2
    device: str = "cpu"
    seed: int = 0
    skip: tuple[str, ...] = ()  # kinds listed but not run (e.g. bf16 on a CPU without bf16 matmul)

    def __post_init__(self) -> None:
        for name in ("top_m", "lq", "lx", "local_dim", "gallery_size", "threads", "runs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"LatencyConfig.{name} must be a positive int, got {value!r}")
        if self.top_m > self.gallery_size:
            raise ConfigError(f"top_m={self.top_m} exceeds gallery_size={self.gallery_size}")
        unknown = sorted((set(self.kinds) | set(self.skip)) - set(SCORER_KINDS))
        if unknown:
            raise UnknownNameError(f"unknown scorer kinds {unknown}; choose from {sorted(SCORER_KINDS)}")
        bad = sorted(set(self.sources) - {"packed", "resident"})
        if bad:
            raise ConfigError(f"unknown sources {bad}; use 'packed' and/or 'resident'")


@dataclass(frozen=True)
class LatencyRow:
    kind: str
    source: str
    p50_ms: float
    p99_ms: float
    max_abs_diff: float
    order_violations: int
    status: str = "ok"


def _spread(model: torch.nn.Module, *, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith(".W"):
                p.add_(torch.randn(p.shape, generator=gen) * 0.08)


def _packed_gallery(model: object, cfg: LatencyConfig, root: Path) -> object:
    from asymfuse.cloud.ames.packed_build import build_packed_store
    from asymfuse.cloud.features.base import LocalFeatures
    from asymfuse.cloud.features.store import create_store_from_arrays

    rng = np.random.default_rng(cfg.seed)
    n, lx, d = cfg.gallery_size, cfg.lx, cfg.local_dim
    feats = LocalFeatures(descriptors=rng.standard_normal((n, lx, d)).astype(np.float32),
                          weights=np.ones((n, lx), np.float32), mask=np.zeros((n, lx), bool),
                          xy=np.zeros((n, lx, 2), np.float32), scale=np.ones((n, lx), np.float32))
    store = create_store_from_arrays(root / "locals", ids=[f"img{i}" for i in range(n)], features=feats,
                                     meta={"extractor_id": "bench-random-v1", "extractor_name": "random"})
    return build_packed_store(model, store, root / "packed", max_local=lx)  # type: ignore[arg-type]


def _timed(fn: Callable[[], np.ndarray], *, runs: int, warmup: int) -> tuple[float, float, np.ndarray]:
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), out


def run_latency(cfg: LatencyConfig) -> list[LatencyRow]:
    """One row per (kind, source); a kind that cannot run here is a row with ``status`` set.

    Raises:
        ConfigError: a bad config or device.
    """
    from asymfuse.cloud.ames.factory import create_scorer
    from asymfuse.cloud.ames.model import create_ames
    from asymfuse.cloud.ames.resident import ResidentGallery

    old_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        model = create_ames(local_dim=cfg.local_dim, binary=True, seed=cfg.seed).eval()
        _spread(model, seed=cfg.seed)
        rng = np.random.default_rng(cfg.seed + 1)
        q = rng.standard_normal((cfg.lq, cfg.local_dim)).astype(np.float32)
        cand = rng.choice(cfg.gallery_size, cfg.top_m, replace=False)
        with tempfile.TemporaryDirectory() as tmp:
            packed = _packed_gallery(model, cfg, Path(tmp))
            galleries = {"packed": packed}
            if "resident" in cfg.sources:
                galleries["resident"] = ResidentGallery(packed, model, length=cfg.lx, device=cfg.device)  # type: ignore[arg-type]
            ref = create_scorer(model, kind="fp32", device=cfg.device).score(q, None, packed, cand,  # type: ignore[arg-type]
                                                                             lq=cfg.lq, lx=cfg.lx)
            rows = []
            for kind in cfg.kinds:
                rows += _kind_rows(kind, cfg, model, galleries, q, cand, ref)
            packed.close()  # type: ignore[attr-defined]
        return rows
    finally:
        torch.set_num_threads(old_threads)


def _kind_rows(kind: str, cfg: LatencyConfig, model: object, galleries: dict[str, object], q: np.ndarray,
               cand: np.ndarray, ref: np.ndarray) -> list[LatencyRow]:
    from asymfuse.cloud.ames.factory import create_scorer

    if kind in cfg.skip:
        return [LatencyRow(kind, s, float("nan"), float("nan"), float("nan"), -1, "skipped") for s in cfg.sources]
    try:
        scorer = create_scorer(model, kind=kind, device=cfg.device)  # type: ignore[arg-type]
    except ConfigError as exc:
        return [LatencyRow(kind, s, float("nan"), float("nan"), float("nan"), -1, f"n/a: {exc}") for s in cfg.sources]
    rows = []
    for source in cfg.sources:
        gallery = galleries[source]
        p50, p99, out = _timed(lambda g=gallery: scorer.score(q, None, g, cand, lq=cfg.lq, lx=cfg.lx),  # type: ignore[misc]
                               runs=cfg.runs, warmup=cfg.warmup)
        rows.append(LatencyRow(kind, source, p50, p99, float(np.abs(out - ref).max()), order_violations(ref, out)))
    return rows


def render_table(rows: list[LatencyRow], cfg: LatencyConfig) -> str:
    """A markdown table of the rows, with the setting in its title line."""
    lines = [f"AMES re-rank latency: top-{cfg.top_m}, L_q = {cfg.lq}, L_x = {cfg.lx}, binary AMES "
             f"(local_dim {cfg.local_dim}), {cfg.threads} torch threads, device {cfg.device}, {cfg.runs} runs",
             "", "| kind | source | p50 ms | p99 ms | max abs logit diff vs fp32 | order violations "
             f"(fp32 gap > {TIE:g}) | status |", "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r.kind} | {r.source} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | {r.max_abs_diff:.1e} | "
                     f"{r.order_violations} | {r.status} |")
    return "\n".join(lines)
