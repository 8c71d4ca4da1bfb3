"""Sharded extraction in one process: the store equals extract_to_store's; resume per shard; misuse.

The multi-process runs (torchrun, gloo) are in tests/e2e/test_dist_extract.py.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asymfuse.cloud.distributed import DistEnv
from asymfuse.cloud.features import store_parts
from asymfuse.cloud.features.base import FeatureExtractor, GlobalFeatures, LocalFeatures, check_batch
from asymfuse.cloud.features.extract import ExtractOptions, extract_to_store
from asymfuse.cloud.features.extract_sharded import extract_sharded
from asymfuse.cloud.features.store import FeatureStore
from asymfuse.cloud.features.store_parts import PARTS_DIR, part_dir
from asymfuse.edge.errors import ConfigError


class MeanColour(FeatureExtractor):
    """Global: unit-norm (mean R, mean G, mean B, 1); counts the images it sees; fails on batch ``fail_at``."""

    name, kind, dim = "mean_colour", "global", 4

    def __init__(self, tag: str = "v1", fail_at: int | None = None) -> None:
        self.tag, self.fail_at, self.seen, self.batches = tag, fail_at, 0, 0

    @property
    def extractor_id(self) -> str:
        return f"mean_colour-{self.tag}"

    def extract(self, images: Sequence[np.ndarray]) -> GlobalFeatures:
        check_batch(images)
        if self.batches == self.fail_at:
            raise RuntimeError("extractor crashed")
        self.batches += 1
        self.seen += len(images)
        rows = np.stack([np.append(im.reshape(-1, 3).mean(0) / 255.0, 1.0) for im in images]).astype(np.float32)
        return GlobalFeatures(rows / np.linalg.norm(rows, axis=1, keepdims=True))


class Corners(FeatureExtractor):
    """Local: the 4 corner pixels as descriptors, then 2 padding slots."""

    name, kind, dim, max_local = "corners", "local", 3, 6

    @property
    def extractor_id(self) -> str:
        return "corners-v1"

    def extract(self, images: Sequence[np.ndarray]) -> LocalFeatures:
        b = len(images)
        desc = np.zeros((b, 6, 3), np.float32)
        for n, im in enumerate(images):
            desc[n, :4] = [im[0, 0], im[0, -1], im[-1, 0], im[-1, -1]]
        desc[:, :4] = (desc[:, :4] + 1) / np.linalg.norm(desc[:, :4] + 1, axis=2, keepdims=True)
        mask = np.zeros((b, 6), bool)
        mask[:, 4:] = True
        return LocalFeatures(desc, (~mask).astype(np.float32), mask, np.zeros((b, 6, 2), np.float32),
                             np.ones((b, 6), np.float32))


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(11):
        paths.append(tmp_path / "imgs" / f"im{i:02d}.png")
        paths[-1].parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(8 + i, 9, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def opts(**kw) -> ExtractOptions:
    return ExtractOptions(**{"batch_size": 2, "shard_size": 3, "progress": False, **kw})


def manifest(root: Path) -> dict:
    return json.loads((root / "store.json").read_text())


@pytest.mark.parametrize("make,desc_dtype", [(MeanColour, "float32"), (Corners, "float16")])
def test_sharded_store_is_the_single_process_store(tmp_path, images, make, desc_dtype):
    one = extract_to_store(make(), images, tmp_path / "one", batch_size=2, shard_size=3, progress=False,
                           desc_dtype=desc_dtype, meta={"part": "gallery"})
    two = extract_sharded(make(), images, tmp_path / "two", options=opts(desc_dtype=desc_dtype, workers=1),
                          meta={"part": "gallery"})
    assert manifest(tmp_path / "two") == manifest(tmp_path / "one")  # same shards, sha256, meta
    assert two.ids == one.ids and not (tmp_path / "two" / PARTS_DIR).exists()
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_a_crash_is_resumed_shard_by_shard(tmp_path, images):
    root = tmp_path / "s"
    with pytest.raises(RuntimeError, match="crashed"):
        extract_sharded(MeanColour(fail_at=4), images, root, options=opts())  # batches 0-3: shards 0, 1 done
    done = {s: (part_dir(root, s) / "shard-00000.features.npy").stat() for s in (0, 1)}
    assert not (part_dir(root, 2) / "shard-00000.features.npy").exists()  # the shard in flight is not kept
    again = MeanColour()
    store = extract_sharded(again, images, root, options=opts())
    assert again.seen == len(images) - 6                                    # shards 0 and 1 were skipped
    for s, st in done.items():                                              # and linked, not rewritten
        assert (root / f"shard-0000{s}.features.npy").stat().st_ino == st.st_ino
    reference = extract_to_store(MeanColour(), images, tmp_path / "ref", batch_size=2, shard_size=3, progress=False)
    assert manifest(root) == manifest(tmp_path / "ref")
    np.testing.assert_array_equal(store.global_features(), reference.global_features())
    nothing = MeanColour()
    extract_sharded(nothing, images, root, options=opts())                  # complete: nothing to do
    assert nothing.seen == 0


def test_a_damaged_part_is_redone_and_a_merge_cut_short_is_finished(tmp_path, images, monkeypatch):
    root = tmp_path / "s"
    with pytest.raises(RuntimeError):
        extract_sharded(MeanColour(fail_at=4), images, root, options=opts())
    part = part_dir(root, 1) / "shard-00000.features.npy"
    data = bytearray(part.read_bytes())
    data[-1] ^= 0xFF
    part.write_bytes(bytes(data))                                           # same size, wrong sha256
    calls = []
    real = store_parts.write_manifest
    monkeypatch.setattr(store_parts, "write_manifest", lambda *a: calls.append(a) or 1 / 0)
    again = MeanColour()
    with pytest.raises(ZeroDivisionError):                                  # dies between the links and the manifest
        extract_sharded(again, images, root, options=opts())
    assert again.seen == len(images) - 3                                    # shard 1 was redone, shard 0 skipped
    monkeypatch.setattr(store_parts, "write_manifest", real)
    last = MeanColour()
    store = extract_sharded(last, images, root, options=opts())
    assert last.seen == 0 and len(store) == len(images)
    extract_to_store(MeanColour(), images, tmp_path / "ref", batch_size=2, shard_size=3, progress=False)
    assert manifest(root) == manifest(tmp_path / "ref")


def test_mismatched_resume_and_misuse_are_explained(tmp_path, images):
    root = tmp_path / "s"
    with pytest.raises(RuntimeError):
        extract_sharded(MeanColour(fail_at=2), images, root, options=opts())
    with pytest.raises(ConfigError, match="different list of images .*--no-resume"):
        extract_sharded(MeanColour(), images[:7], root, options=opts())
    with pytest.raises(ConfigError, match="built by extractor 'mean_colour-v1', not 'mean_colour-v2'"):
        extract_sharded(MeanColour(tag="v2"), images, root, options=opts())
    with pytest.raises(ConfigError, match="distributed .*resume it under torchrun"):
        extract_to_store(MeanColour(), images, root, progress=False)       # the single-process driver refuses it
    store = extract_sharded(MeanColour(tag="v2"), images[:7], root, options=opts(resume=False))
    assert len(store) == 7 and store.meta["extractor_id"] == "mean_colour-v2"
    with pytest.raises(ConfigError, match="50 processes for only 11 items"):
        extract_sharded(MeanColour(), images, tmp_path / "x", options=opts(), env=DistEnv(rank=0, world_size=50))
    assert not (tmp_path / "x").exists()                                    # refused before any I/O
    partial = tmp_path / "partial"
    with pytest.raises(RuntimeError):
        extract_to_store(MeanColour(fail_at=2), images, partial, batch_size=2, shard_size=3, progress=False)
    with pytest.raises(ConfigError, match="partial store of a single-process run"):
        extract_sharded(MeanColour(), images, partial, options=opts())
    for bad in ({"batch_size": 0}, {"workers": -1}, {"dist_timeout_s": 0}, {"desc_dtype": "int8"}):
        with pytest.raises(ConfigError):
            opts(**bad)


def test_the_store_opens_with_feature_store_open(tmp_path, images):
    extract_sharded(MeanColour(), images, tmp_path / "s", options=opts(shard_size=4))
    with FeatureStore.open(tmp_path / "s", verify="eager") as store:
        assert store.num_shards == 3 and len(store) == 11 and store.ids[0] == "im00.png"
