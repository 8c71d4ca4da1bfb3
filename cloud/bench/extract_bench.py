"""``asymfuse bench extract``: gallery extraction throughput (images/s) for 1 and 2 processes.

Real photos (scikit-image's bundled ones, random crops of them) are written as JPEG files; a real
extractor (EfficientNet-Lite + GeM with its ImageNet weights, ``gem_lite1`` by default) extracts
them with the code ``torchrun ... asymfuse extract`` runs (:func:`extract_sharded`: DataLoader
workers decode and resize, each rank writes its part stores, rank 0 merges). Rows:

- **decode + preprocess**: the DataLoader alone (JPEG decode, resize, normalise, pad), one process;
- **model**: the forward alone on batches collated beforehand, one process;
- **P processes**: a ``torchrun --nproc_per_node P`` job, timed from a barrier after the warm-up
  to the merged store (``wall_s`` adds the start: interpreter, torch, weights, process group).

Scaling efficiency = img/s(P) / (P x img/s(1)). On CPU each process uses ``threads`` torch
threads; on CUDA (``--device cuda``) rank r uses ``cuda:r`` and P must not exceed the GPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from asymfuse.cloud.bench.extract_worker import build_extractor, synchronize
from asymfuse.cloud.bench.overrides import apply_overrides, preset_config
from asymfuse.cloud.bench.report_common import markdown_head, report_head, report_paths
from asymfuse.cloud.eval.report import markdown_table, write_json
from asymfuse.cloud.features.batches import iter_collated
from asymfuse.edge.errors import ConfigError
from asymfuse.edge.fileio import atomic_write_text
from asymfuse.edge.preprocess import load_image

DESCRIPTION = ("Real photos (random crops of scikit-image's bundled photos) as JPEG files, extracted by a real "
               "EfficientNet-Lite + GeM extractor with the code torchrun ... asymfuse extract runs: DataLoader "
               "workers decode and resize, each process writes its part stores, rank 0 merges them. img/s of a "
               "P-process row is timed from a barrier after the warm-up to the merged store; wall_s adds the start.")
QUICK: dict[str, Any] = {"images": 96, "photo_side": 480, "max_side": 256, "shard_size": 16}
DEFAULT: dict[str, Any] = {"images": 384, "photo_side": 640, "max_side": 384, "shard_size": 32}
TIERS = {"quick": QUICK, "default": DEFAULT}
CUDA: dict[str, Any] = {"extractor": "gem_lite2", "batch_size": 64, "workers": 4, "precision": "bf16",
                        "shard_size": 256}
"""Applied on top of a tier by ``preset(..., device="cuda")``; images x 8 as well."""
COLUMNS = ("run", "processes", "workers", "threads", "images", "seconds", "img_per_s", "efficiency", "wall_s")


@dataclass(frozen=True)
class ExtractBenchConfig:
    """One bench run; build it with :meth:`preset`.

    Attributes:
        extractor: a CNN extractor (``gem_lite1``, ``gem_lite2``); max_side: its input's longer side.
        images: photos extracted per row; photo_side: longer side of the JPEG files.
        procs: process counts timed (the first is the scaling baseline, normally 1).
        workers: DataLoader workers per process; threads: torch CPU threads per process.
        batch_size, shard_size, precision: as ``asymfuse extract``; timeout_s: per torchrun job.
    """

    tier: str = "quick"
    extractor: str = "gem_lite1"
    device: str = "cpu"
    images: int = 96
    photo_side: int = 480
    max_side: int = 256
    procs: tuple[int, ...] = (1, 2)
    workers: int = 1
    threads: int = 1
    batch_size: int = 16
    shard_size: int = 16
    precision: str = "fp32"
    timeout_s: float = 600.0
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("images", "photo_side", "max_side", "threads", "batch_size", "shard_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"bench extract: {key} must be a positive int, got {value!r}")
        if not self.procs or any(isinstance(p, bool) or not isinstance(p, int) or p < 1 for p in self.procs):
            raise ConfigError(f"bench extract: procs must list positive ints, got {self.procs!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ConfigError(f"bench extract: workers must be an int >= 0, got {self.workers!r}")
        if max(self.procs) > self.images:
            raise ConfigError(f"bench extract: {max(self.procs)} processes for {self.images} images; raise images")

    @classmethod
    def preset(cls, tier: str, *, device: str = "cpu", **overrides: Any) -> ExtractBenchConfig:
        """The ``tier`` settings; on CUDA with gem_lite2, bf16, batch 64, 4 workers and 8x the images."""
        if not device.startswith("cuda"):
            return preset_config(cls, tier, TIERS, what="bench extract", device=device, **overrides)
        base = preset_config(cls, tier, TIERS, what="bench extract")
        return preset_config(cls, tier, {tier: {**TIERS[tier], **CUDA, "images": base.images * 8}},
                             what="bench extract", device=device, **overrides)

    def with_overrides(self, values: Mapping[str, Any]) -> ExtractBenchConfig:
        """``--set`` values; ``procs`` takes a JSON list or one value."""
        return apply_overrides(self, values, what="bench extract")


@dataclass(frozen=True)
class ExtractRow:
    """One table row (see the module docstring)."""

    run: str
    processes: int
    workers: int
    threads: int
    images: int
    seconds: float
    img_per_s: float
    efficiency: float | None = None
    wall_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_photos(folder: Path, cfg: ExtractBenchConfig) -> list[Path]:
    """``cfg.images`` JPEG files: random crops (50-100 % per side) of scikit-image's photos, longer
    side ``cfg.photo_side``; the same files for the same config."""
    from asymfuse.cloud.data.photos import list_skimage_photos, load_skimage_photo

    names = list_skimage_photos()
    photos = {name: load_skimage_photo(name) for name in names}
    rng = np.random.default_rng(cfg.seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(cfg.images):
        img = photos[names[i % len(names)]]
        h, w = img.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        scale = cfg.photo_side / max(ch, cw)
        crop = Image.fromarray(np.ascontiguousarray(img[y:y + ch, x:x + cw]))
        crop = crop.resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.BILINEAR)
        paths.append(folder / f"img{i:05d}.jpg")
        crop.save(paths[-1], quality=90)
    return paths


def time_stages(cfg: ExtractBenchConfig, photos: list[Path]) -> list[ExtractRow]:
    """Decode + preprocess alone (DataLoader, ``cfg.workers``) and the model alone, in this process."""
    torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device if cfg.device != "cuda" else "cuda:0")
    extractor = build_extractor(asdict(cfg), device)
    batches = [list(range(s, min(s + cfg.batch_size, len(photos)))) for s in range(0, len(photos), cfg.batch_size)]
    start = time.perf_counter()
    collated = list(iter_collated(extractor, photos, batches, load_fn=load_image, workers=cfg.workers))
    decode_s = time.perf_counter() - start
    extractor.extract_collated(collated[0])  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for batch in collated:
        extractor.extract_collated(batch)
    synchronize(device)
    model_s = time.perf_counter() - start
    n = len(photos)
    return [ExtractRow("decode + preprocess", 1, cfg.workers, cfg.threads, n, decode_s, n / decode_s),
            ExtractRow("model", 1, 0, cfg.threads, n, model_s, n / model_s)]


def time_job(cfg: ExtractBenchConfig, photos: list[Path], work: Path, procs: int) -> tuple[dict[str, Any], float]:
    """Run the timed job under torchrun with ``procs`` processes: ``(rank 0's timings, wall seconds)``.

    Raises:
        ConfigError: the job failed (its output is in the message).
    """
    job = {**asdict(cfg), "photos": [str(p) for p in photos], "out": str(work / f"store-{procs}"),
           "result": str(work / f"result-{procs}.json")}
    (work / f"job-{procs}.json").write_text(json.dumps(job), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = str(cfg.threads)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
           "-m", "asymfuse.cloud.bench.extract_worker", str(work / f"job-{procs}.json")]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=cfg.timeout_s + 120)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise ConfigError(f"bench extract: the {procs}-process job failed (exit {proc.returncode}):\n"
                          f"{proc.stderr[-3000:]}")
    return json.loads((work / f"result-{procs}.json").read_text(encoding="utf-8")), wall


def run_extract_bench(cfg: ExtractBenchConfig, *, out_dir: str | os.PathLike[str],
                      log: Any = print) -> dict[str, Any]:
    """Run the bench; write ``report.md`` and ``report.json`` to ``out_dir``.

    Returns:
        ``{"rows", "markdown", "paths", "runtime_s"}``.

    Raises:
        ConfigError: more CUDA processes than GPUs, or a job failed.
    """
    if cfg.device.startswith("cuda") and max(cfg.procs) > torch.cuda.device_count():
        raise ConfigError(f"bench extract: {max(cfg.procs)} processes need as many GPUs, this host has "
                          f"{torch.cuda.device_count()}; pass --set procs=1")
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        work = Path(tmp)
        photos = write_photos(work / "photos", cfg)
        log(f"[bench extract] {len(photos)} photos written; timing the stages")
        rows = time_stages(cfg, photos)
        base = None
        for procs in cfg.procs:
            log(f"[bench extract] {procs} process(es)")
            result, wall = time_job(cfg, photos, work, procs)
            ips = result["images"] / result["seconds"]
            base = base if base is not None else (ips, procs)
            eff = ips / (base[0] * procs / base[1])
            rows.append(ExtractRow(f"{procs} process{'es' if procs > 1 else ''}", procs, cfg.workers, cfg.threads,
                                   result["images"], result["seconds"], ips, eff, wall))
    runtime = time.perf_counter() - t_start
    info = {"description": DESCRIPTION, "config": asdict(cfg),
            "machine": {"cpus": os.cpu_count(), "device": _device_name(cfg.device)}}
    report = report_head(rows, title=f"bench extract ({cfg.tier})", runtime_s=runtime, info=info)
    markdown = render_markdown(report)
    paths = report_paths(out_dir, {"markdown": "report.md", "json": "report.json"})
    atomic_write_text(paths["markdown"], markdown)
    write_json(paths["json"], report)
    return {"rows": rows, "markdown": markdown, "paths": paths, "runtime_s": runtime}


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def render_markdown(report: Mapping[str, Any]) -> str:
    cfg, machine = report["info"]["config"], report["info"]["machine"]
    lines = markdown_head(report["title"], report["info"])
    lines += [markdown_table(report["rows"], COLUMNS, digits=2), "",
              f"{cfg['extractor']} at max_side {cfg['max_side']} ({cfg['precision']}, batch {cfg['batch_size']}), "
              f"{cfg['images']} JPEGs of longer side {cfg['photo_side']}, shards of {cfg['shard_size']}; "
              f"device {machine['device']}, {machine['cpus']} CPUs; runtime {report['runtime_s']:.0f} s. "
              "efficiency = img/s / (processes x img/s of the first process row).", ""]
    return "\n".join(lines)
