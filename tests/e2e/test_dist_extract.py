"""``torchrun ... asymfuse extract`` on CPU (gloo, 2 processes): the merged stores equal a
single-process run's; a killed rank fails the job and a restart resumes it, skipping the complete
shards; a hung rank fails the job within ``--dist-timeout``; ``--max-restarts`` heals a kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from asymfuse.cloud.features.extract_sharded import TEST_FAULT_ENV
from asymfuse.cloud.features.store import FeatureStore
from asymfuse.cloud.features.store_parts import PARTS_DIR

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _photo_folder(root: Path, classes: tuple[str, ...], per_class: int) -> Path:
    for c, name in enumerate(classes):
        img = getattr(skdata, name)()
        (root / name).mkdir(parents=True)
        for k in range(per_class):
            crop = img[k * 20:, (k * 30 + c * 7):]
            Image.fromarray(np.ascontiguousarray(crop)).resize((96 + 8 * k, 72)).save(root / name / f"{k}.jpg")
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """4 classes x 4 photos: 16 gallery images (3 full shards of 5, one of 1), 4 queries."""
    return _photo_folder(tmp_path_factory.mktemp("dist") / "photos", PHOTOS, 4)


def extract(root: Path, out: Path, *extra: str, nproc: int | None = 2, fault: str | None = None,
            restarts: int = 0, timeout: float = 120) -> subprocess.CompletedProcess:
    """``asymfuse extract`` of gem_lite1 at 64 px, under torchrun (``nproc``) or plain (None)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", TEST_FAULT_ENV)}
    env["OMP_NUM_THREADS"] = "1"  # as torchrun sets it: equal threads give equal floats
    if fault:
        env[TEST_FAULT_ENV] = fault
    cli = ["-m", "asymfuse.cloud.cli.main", "extract", "--dataset", "folder-retrieval", "--root", str(root),
           "--extractor", "gem_lite1", "--option", "max_side=64", "--out", str(out), "--shard-size", "5",
           "--batch-size", "2", "--workers", "1", *extra]
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                         str(nproc), "--max-restarts", str(restarts)]
    return subprocess.run([sys.executable, *launcher, *cli], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "features"
    proc = extract(photos, out, nproc=None)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def assert_same_stores(got: Path, want: Path, sides=("gallery", "queries")) -> None:
    for side in sides:
        a, b = FeatureStore.open(got / side, verify="eager"), FeatureStore.open(want / side, verify="eager")
        assert a.ids == b.ids and a.meta == b.meta and len(a) == len(b)
        np.testing.assert_allclose(a.global_features(), b.global_features(), rtol=0, atol=1e-6)
        ma, mb = (json.loads((p / side / "store.json").read_text()) for p in (got, want))
        assert [(s["name"], s["start"], s["count"]) for s in ma["shards"]] == \
            [(s["name"], s["start"], s["count"]) for s in mb["shards"]]
        assert {k: v for k, v in ma.items() if k != "shards"} == {k: v for k, v in mb.items() if k != "shards"}
        assert not (got / side / PARTS_DIR).exists()


def test_two_processes_write_the_single_process_stores(photos, reference, tmp_path):
    proc = extract(photos, tmp_path / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gallery: 16 items, global dim 1280" in proc.stdout and "(2 processes)" in proc.stdout
    assert proc.stdout.count("gallery:") == 1  # rank 0 reports
    assert_same_stores(tmp_path / "two", reference)


def test_a_killed_rank_fails_the_job_and_a_restart_skips_the_complete_shards(photos, reference, tmp_path):
    out = tmp_path / "kill"
    proc = extract(photos, out, "--sides", "gallery", fault="rank=1,after=1,mode=kill")
    assert proc.returncode != 0
    parts = out / "gallery" / PARTS_DIR
    # complete = listed by its manifest: torchrun may stop rank 0 between a shard file and its
    # manifest, and that part is rightly redone
    complete = {p.name: (p / "shard-00000.features.npy").stat() for p in parts.glob("shard-*")
                if (p / "store.json").is_file() and json.loads((p / "store.json").read_text())["shards"]}
    assert "shard-00002" in complete  # rank 1's first shard (shards 0-1 are rank 0's, 2-3 rank 1's)
    proc = extract(photos, out, "--sides", "gallery")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, st in complete.items():  # linked into the store as they were: not extracted again
        final = (out / "gallery" / f"{name}.features.npy").stat()
        assert (final.st_ino, final.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert_same_stores(out, reference, sides=("gallery",))


def test_a_hung_rank_fails_the_job_within_the_timeout(photos, tmp_path):
    start = time.monotonic()
    proc = extract(photos, tmp_path / "hang", "--sides", "gallery", "--dist-timeout", "5",
                   fault="rank=1,after=1,mode=hang", timeout=90)
    took = time.monotonic() - start
    assert proc.returncode != 0
    assert "did not complete the extraction of every shard within 5 s" in proc.stderr
    assert "Rank 1 failed to pass monitoredBarrier" in proc.stderr or "Ranks 1 failed" in proc.stderr
    assert took < 60, f"the job took {took:.0f} s to fail"


def test_max_restarts_resumes_after_a_kill(photos, reference, tmp_path):
    proc = extract(photos, tmp_path / "heal", "--sides", "gallery", fault="rank=1,after=1,mode=kill,attempt=0",
                   restarts=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exitcode: -9" in proc.stderr or "SIGKILL" in proc.stderr  # the first attempt did die
    assert_same_stores(tmp_path / "heal", reference, sides=("gallery",))


def test_more_processes_than_items_is_refused_before_any_work(tmp_path):
    root = _photo_folder(tmp_path / "one-class", ("coffee",), 3)  # 1 query
    proc = extract(root, tmp_path / "out", timeout=90)
    assert proc.returncode != 0
    assert "queries of one-class: 2 processes for only 1 items; launch at most 1" in proc.stderr
    assert not (tmp_path / "out" / "gallery").exists()
