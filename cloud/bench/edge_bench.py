"""``asymfuse bench edge``: the phone-side SDK on this machine, per exported query model.

Protocol. The artifacts are the ones in ``models`` (a folder written by ``asymfuse export``), or,
without it, the query net ``arch`` at ``input_size`` (ImageNet weights where bundled) exported
here to every ``targets`` format x precision through the gated export loop (static int8 is
calibrated on skimage's bundled photos and crops). For every artifact that exists on disk (a file
that failed the parity gate is benchmarked too, and its gate status is shown):

- **cold start**: :meth:`ImageEmbedder.create_from_options` until the model is ready (median of
  ``cold_runs`` fresh loads);
- **embed** p50 / p90 ms of :meth:`ImageEmbedder.embed` on a real photo (a 512 x 512 RGB array:
  preprocessing + inference), at each thread count;
- **end to end** p50 / p99 ms: embed + :meth:`SearchClient.search` over loopback gRPC against a
  searcher holding a ``gallery``-image index (``factory``; synthetic unit vectors of the model's
  embedding dimension and space), global only, and with AMES re-ranking the top ``top_m`` (a random
  binary AMES over synthetic packed codes; the query sends ``lq`` synthetic local descriptors, as a
  phone would send its SIFT points). Client and server share this process and its cores.
- **install size**: the files of the ``asymfuse[edge]`` dependency closure in this environment
  against every distribution installed in it (MB).

Goal: end-to-end p50 < 50 ms on 2 cores with a 100k gallery.
"""

from __future__ import annotations

import importlib.metadata as md
import logging
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from asymfuse.cloud.bench.overrides import apply_overrides, preset_config
from asymfuse.cloud.bench.report_common import markdown_head, report_head, report_paths
from asymfuse.cloud.bench.serve_bench import ServeBenchConfig, build_searcher_folder, synthetic_ames, synthetic_vectors
from asymfuse.cloud.eval.report import markdown_table, write_json
from asymfuse.edge.errors import ConfigError
from asymfuse.edge.fileio import atomic_write_text

TARGETS = (("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8"))
QUICK: dict[str, Any] = {"targets": (("onnx", "fp32"), ("tflite", "fp32")), "gallery": 20_000, "runs": 10,
                         "e2e_queries": 10, "cold_runs": 2}
DEFAULT: dict[str, Any] = {}
TIERS = {"quick": QUICK, "default": DEFAULT}
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "moon", "page", "text", "clock", "brick",
          "grass")
COLUMNS = ("artifact", "gate", "size_mb", "cold_ms", "embed_p50_1t", "embed_p90_1t", "embed_p50_2t",
           "embed_p90_2t", "e2e_p50_ms", "e2e_p99_ms", "e2e_ames_p50_ms", "e2e_ames_p99_ms")


@dataclass(frozen=True)
class EdgeBenchConfig:
    """Settings of ``bench edge`` (see the module docstring).

    Attributes:
        models: a folder of exported artifacts; None exports ``arch`` here.
        arch, input_size, embed_dim: the query net exported when ``models`` is None.
        targets: ``(format, precision)`` pairs exported when ``models`` is None.
        threads: thread counts of the embed columns (the end-to-end columns use the largest).
        runs, warmup: timed / untimed embeds per thread count; cold_runs: fresh loads timed.
        gallery, factory: searcher size and faiss factory; e2e_queries: timed end-to-end queries.
        top_m, lq, lx, local_dim: AMES re-rank depth and synthetic local descriptors.
    """

    tier: str = "default"
    models: str | None = None
    arch: str = "efficientnet_lite0"
    input_size: int = 224
    embed_dim: int = 512
    targets: tuple[tuple[str, str], ...] = TARGETS
    threads: tuple[int, ...] = (1, 2)
    runs: int = 30
    warmup: int = 3
    cold_runs: int = 3
    gallery: int = 100_000
    factory: str = "IVF1024,SQ8"
    e2e_queries: int = 30
    top_m: int = 100
    lq: int = 64
    lx: int = 48
    local_dim: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise ConfigError(f"unknown bench edge tier {self.tier!r}; choose one of {sorted(TIERS)}")
        for name in ("input_size", "embed_dim", "runs", "cold_runs", "gallery", "e2e_queries", "top_m", "lq", "lx"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"bench edge: {name} must be >= 1, got {getattr(self, name)!r}")
        if not self.threads or min(self.threads) < 1:
            raise ConfigError(f"bench edge: threads must be positive counts, got {self.threads!r}")

    @classmethod
    def preset(cls, tier: str, **overrides: Any) -> EdgeBenchConfig:
        return preset_config(cls, tier, TIERS, what="bench edge", **overrides)

    def with_overrides(self, values: dict[str, Any]) -> EdgeBenchConfig:
        """``--set`` values; ``targets`` takes ``"onnx:fp32"`` or a JSON list of them."""
        return apply_overrides(self, values, what="bench edge", convert={"targets": _targets})


def _targets(value: Any) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(str(v).split(":", 1)) for v in (value if isinstance(value, list) else [value]))


@dataclass(frozen=True)
class EdgeRow:
    """One artifact's figures (ms unless named otherwise)."""

    artifact: str
    gate: str
    size_mb: float
    cold_ms: float
    embed_ms: dict[str, list[float]]
    e2e_p50_ms: float
    e2e_p99_ms: float
    e2e_ames_p50_ms: float
    e2e_ames_p99_ms: float
    notes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------- inputs
def photos() -> list[np.ndarray]:
    """skimage's bundled photos as RGB uint8 arrays, plus a centre crop of each."""
    import skimage.data

    out = []
    for name in PHOTOS:
        img = getattr(skimage.data, name)()
        img = np.stack([img] * 3, axis=-1) if img.ndim == 2 else img[..., :3]
        out.append(np.ascontiguousarray(img))
    h = [im.shape[0] for im in out]
    return out + [im[s // 6: s - s // 6, im.shape[1] // 6: im.shape[1] - im.shape[1] // 6] for im, s in zip(out, h)]


def export_models(cfg: EdgeBenchConfig, out: Path) -> list[tuple[Path, str]]:
    """Export ``cfg.arch`` to every target through the gated loop; ``[(file, gate status)]``."""
    from asymfuse.cloud.bench.export_bench import build_net
    from asymfuse.edge.preprocess import preprocess
    from asymfuse.export.pipeline import GateInputs, export_all
    from asymfuse.export.spec import ExportSpec

    net, _ = build_net(cfg.arch, res=cfg.input_size, embed_dim=cfg.embed_dim)
    x = preprocess(photos(), net.spec)
    specs = [ExportSpec(format=f, precision=p, input_size=cfg.input_size, calibration_images=len(x))
             for f, p in cfg.targets]
    done, _ = export_all(net, model_spec=net.spec, export_specs=specs, out=out,
                         gate=GateInputs(images=x, calibration=x))
    return [(d.artifact.path, d.artifact.status) for d in done if d.artifact.path.is_file()]


def existing_models(folder: str) -> list[tuple[Path, str]]:
    """``[(file, gate status)]`` of a folder written by ``asymfuse export`` (manifest.json), or its
    .onnx / .tflite files when it has no manifest."""
    from asymfuse.export.artifact import read_manifest

    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"bench edge: models={folder!r} is not a folder; give the folder `asymfuse export` wrote")
    if (root / "manifest.json").is_file():
        found = [(a.path, a.status) for a in read_manifest(root) if a.path.is_file()]
    else:
        found = [(p, "unverified") for p in sorted(root.iterdir()) if p.suffix in (".onnx", ".tflite")]
    if not found:
        raise ConfigError(f"bench edge: no .onnx or .tflite model in {root}; export one with `asymfuse export`")
    return found


# ---------------------------------------------------------------------------- timing
def _pct(ms: list[float], qs: tuple[float, ...]) -> list[float]:
    return [round(float(v), 2) for v in np.percentile(np.asarray(ms), qs)]


def time_embedder(path: Path, cfg: EdgeBenchConfig, image: np.ndarray) -> tuple[float, dict[str, list[float]]]:
    """``(cold start ms, {threads: [p50, p90]})`` of one model file."""
    from asymfuse.edge.embedder import ImageEmbedder
    from asymfuse.edge.options import ImageEmbedderOptions

    cold = []
    for _ in range(cfg.cold_runs):
        t0 = time.perf_counter()
        embedder = ImageEmbedder.create_from_options(ImageEmbedderOptions(model_path=str(path)))
        cold.append((time.perf_counter() - t0) * 1e3)
        embedder.close()
    embed: dict[str, list[float]] = {}
    for n in cfg.threads:
        with ImageEmbedder.create_from_options(ImageEmbedderOptions(model_path=str(path), num_threads=n)) as e:
            for _ in range(cfg.warmup):
                e.embed(image)
            ms = []
            for _ in range(cfg.runs):
                t0 = time.perf_counter()
                e.embed(image)
                ms.append((time.perf_counter() - t0) * 1e3)
        embed[str(n)] = _pct(ms, (50, 90))
    return float(np.median(cold)), embed


def time_end_to_end(path: Path, cfg: EdgeBenchConfig, images: list[np.ndarray], *, port: int,
                    q_locals: np.ndarray | None) -> list[float]:
    """``[p50, p99]`` ms of embed + gRPC search (+ AMES when ``q_locals`` is given)."""
    from asymfuse.edge.embedder import ImageEmbedder
    from asymfuse.edge.options import ImageEmbedderOptions
    from asymfuse.edge.search_client import ClientConfig, SearchClient

    options = ImageEmbedderOptions(model_path=str(path), num_threads=max(cfg.threads))
    ms = []
    with ImageEmbedder.create_from_options(options) as e:
        config = ClientConfig(target=f"127.0.0.1:{port}", embedding_space_id=e.model_spec.embedding_space_id,
                              timeout_s=60, retries=0)
        with SearchClient(config) as client:
            client.search(e.embed(images[0]).embedding, k=10)  # warm the channel
            for i in range(cfg.e2e_queries):
                loc = None if q_locals is None else q_locals[i % len(q_locals)]
                t0 = time.perf_counter()
                r = e.embed(images[i % len(images)])
                client.search(r.embedding, k=10, locals_=loc, rerank=loc is not None, rerank_top_m=cfg.top_m)
                ms.append((time.perf_counter() - t0) * 1e3)
    return _pct(ms, (50, 99))


# ---------------------------------------------------------------------------- install size
def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dist_bytes(dist: md.Distribution) -> int:
    total = 0
    for f in dist.files or ():
        p = Path(str(dist.locate_file(f)))
        if p.is_file():
            total += p.stat().st_size
    return total


def install_sizes(extra: str = "edge") -> dict[str, float]:
    """MB of the ``asymfuse[extra]`` dependency closure and of every installed distribution."""
    from packaging.requirements import Requirement

    dists = {_norm(d.metadata["Name"]): d for d in md.distributions()}
    todo = [Requirement(r) for r in (dists["asymfuse"].requires or [])]
    todo = [r for r in todo if r.marker is None or r.marker.evaluate({"extra": extra})]
    seen = {"asymfuse"}
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        if name in seen or name not in dists:
            continue
        seen.add(name)
        for r in dists[name].requires or []:
            sub = Requirement(r)
            if sub.marker is None or sub.marker.evaluate({"extra": ""}):
                todo.append(sub)
    mb = 2.0 ** 20
    return {"edge_mb": round(sum(_dist_bytes(dists[n]) for n in seen) / mb, 1),
            "full_mb": round(sum(_dist_bytes(d) for d in dists.values()) / mb, 1),
            "edge_packages": len(seen)}


# ---------------------------------------------------------------------------- the bench
def run_edge_bench(cfg: EdgeBenchConfig, *, out_dir: str | Path, log: Any = print) -> dict[str, Any]:
    """Export (or find) the models, time them, write ``report.md`` / ``report.json``; returns the report."""
    from asymfuse.cloud.service.config import ServerConfig
    from asymfuse.cloud.service.loader import open_searcher
    from asymfuse.cloud.service.server import create_server
    from asymfuse.edge.embedder import ImageEmbedder

    t_start = time.perf_counter()
    out = Path(out_dir)
    images = photos()
    if cfg.models:
        models = existing_models(cfg.models)
    else:
        log(f"[bench edge] exporting {cfg.arch} at {cfg.input_size} px: {cfg.targets}")
        models = export_models(cfg, out / "models")
    with ImageEmbedder.create_from_model_path(models[0][0]) as first:
        spec = first.model_spec
    work = Path(tempfile.mkdtemp(prefix="asymfuse-bench-edge-"))
    rows: list[EdgeRow] = []
    try:
        log(f"[bench edge] indexing {cfg.gallery} synthetic vectors ({cfg.factory}) with AMES")
        serve_cfg = ServeBenchConfig(lq=cfg.lq, lx=cfg.lx, local_dim=cfg.local_dim, seed=cfg.seed)
        xb = synthetic_vectors(cfg.gallery, spec.embed_dim, seed=cfg.seed)
        build_searcher_folder(xb, work / "index", factory=cfg.factory, space=spec.embedding_space_id)
        del xb
        synthetic_ames(work / "index", cfg.gallery, cfg=serve_cfg)
        config = ServerConfig(index_dir=str(work / "index"), snapshot_interval_s=0, rerank_top_m=cfg.top_m)
        server, port = create_server(config, searcher=open_searcher(config))
        service_log = logging.getLogger("asymfuse.service")
        level = service_log.level
        service_log.setLevel(logging.WARNING)  # one INFO line per search would bury the table
        q_locals = np.random.default_rng(cfg.seed + 3).standard_normal((8, cfg.lq, cfg.local_dim)).astype(np.float32)
        try:
            for path, gate in models:
                log(f"[bench edge] {path.name}: timing")
                cold, embed = time_embedder(path, cfg, images[0])
                e2e = time_end_to_end(path, cfg, images, port=port, q_locals=None)
                e2e_ames = time_end_to_end(path, cfg, images, port=port, q_locals=q_locals)
                rows.append(EdgeRow(artifact=path.name, gate=gate, size_mb=round(path.stat().st_size / 2**20, 2),
                                    cold_ms=round(cold, 1), embed_ms=embed, e2e_p50_ms=e2e[0], e2e_p99_ms=e2e[1],
                                    e2e_ames_p50_ms=e2e_ames[0], e2e_ames_p99_ms=e2e_ames[1]))
                log(f"[bench edge]   cold {cold:.0f} ms, embed {embed}, e2e {e2e}, +AMES {e2e_ames}")
        finally:
            service_log.setLevel(level)
            server.stop(0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    runtime = time.perf_counter() - t_start
    info = {"description": __doc__.split("\n\n", 1)[1].split("\n\nGoal")[0].replace("\n", " "),
            "config": asdict(cfg), "install": install_sizes(), "cpus": _cpus(),
            "model_spec": spec.to_dict()}
    report = report_head(rows, title=f"bench edge ({cfg.tier})", runtime_s=runtime, info=info)
    markdown = render_markdown(report)
    paths = report_paths(out, {"markdown": "report.md", "json": "report.json"})
    atomic_write_text(paths["markdown"], markdown)
    write_json(paths["json"], report)
    return {"rows": rows, "markdown": markdown, "paths": paths, "runtime_s": runtime}


def _cpus() -> int:
    import os

    return int(os.cpu_count() or 0)


def render_markdown(report: dict[str, Any]) -> str:
    info = report["info"]
    cells = []
    for r in report["rows"]:
        cell = {k: r[k] for k in COLUMNS if k in r}
        for n, (p50, p90) in r["embed_ms"].items():
            cell[f"embed_p50_{n}t"], cell[f"embed_p90_{n}t"] = p50, p90
        cells.append(cell)
    inst = info["install"]
    lines = markdown_head(report["title"], {})
    lines += [markdown_table(cells, COLUMNS, digits=2), "",
              f"ms unless named; embed = preprocess + inference of a 512 x 512 photo; e2e = embed + gRPC search of "
              f"a {info['config']['gallery']}-image {info['config']['factory']} index (k = 10); e2e_ames adds the "
              f"AMES re-rank of the top {info['config']['top_m']} (L_q {info['config']['lq']}, "
              f"L_x {info['config']['lx']}). Client and server share one process on {info['cpus']} CPUs.",
              f"Install size: asymfuse[edge] closure {inst['edge_mb']} MB ({inst['edge_packages']} packages) vs "
              f"this full environment {inst['full_mb']} MB.",
              "Goal: end-to-end p50 < 50 ms on 2 cores with a 100k gallery.",
              f"Runtime {report['runtime_s']:.0f} s.", ""]
    return "\n".join(lines)
