"""One timed extraction job of ``asymfuse bench extract``, run by every rank under torchrun.

``python -m torch.distributed.run --nproc_per_node P -m asymfuse.cloud.bench.extract_worker JOB.json``

``JOB.json`` holds the bench settings plus ``photos`` (the image files), ``out`` (the store
folder) and ``result`` (where rank 0 writes the timings). Each rank builds the extractor, warms it
up, waits at a barrier, then runs the real sharded extraction
(:func:`~asymfuse.cloud.features.extract_sharded.extract_sharded`: DataLoader workers, part
stores, merge); the time from the barrier to the merged store is the job's time.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from asymfuse.cloud.distributed import (
    all_gather_objects,
    barrier,
    dist_env_from_environ,
    process_group,
    rank_device,
)
from asymfuse.cloud.features.base import FeatureExtractor
from asymfuse.cloud.features.extract import ExtractOptions
from asymfuse.cloud.features.extract_sharded import extract_sharded
from asymfuse.cloud.features.registry import create_feature_extractor
from asymfuse.edge.fileio import atomic_write_text
from asymfuse.edge.preprocess import load_image


def build_extractor(job: dict[str, Any], device: torch.device) -> FeatureExtractor:
    """The bench's extractor on ``device`` (channels_last on CUDA)."""
    return create_feature_extractor(job["extractor"], device=device, max_side=job["max_side"],
                                    batch_size=job["batch_size"], precision=job["precision"],
                                    channels_last=device.type == "cuda")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_job(job: dict[str, Any]) -> dict[str, Any] | None:
    """Run this rank's part of the timed job; rank 0 returns the timings, the others None."""
    torch.set_num_threads(int(job["threads"]))
    env = dist_env_from_environ()
    device = rank_device(job["device"], env)
    photos = [Path(p) for p in job["photos"]]
    with process_group(env, device, timeout_s=job["timeout_s"]):
        extractor = build_extractor(job, device)
        extractor.extract([load_image(p) for p in photos[:2]])  # warm-up: weights paged in, kernels chosen
        synchronize(device)
        barrier(env, timeout_s=job["timeout_s"], what="the start of the timed run")
        start = time.perf_counter()
        options = ExtractOptions(batch_size=job["batch_size"], shard_size=job["shard_size"], workers=job["workers"],
                                 resume=False, progress=False, dist_timeout_s=job["timeout_s"])
        store = extract_sharded(extractor, photos, job["out"], options=options, env=env)
        synchronize(device)
        seconds = time.perf_counter() - start
        ranks = all_gather_objects(seconds, env)
    if not env.is_main:
        return None
    return {"processes": env.world_size, "images": len(store), "seconds": max(ranks), "rank_seconds": ranks}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    job = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    result = run_job(job)
    if result is not None:
        atomic_write_text(job["result"], json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
