"""Extraction driver: one-shot runs against a direct NumPy reference, resume, mismatches."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asymfuse.cloud.features.base import FeatureExtractor, Features, GlobalFeatures, LocalFeatures, check_batch
from asymfuse.cloud.features.extract import default_ids, extract_to_store, ids_digest
from asymfuse.cloud.features.store import FeatureStore
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError
from asymfuse.edge.preprocess import load_image


class MeanColour(FeatureExtractor):
    """Global: unit-norm (mean R, mean G, mean B, 1)."""

    name, kind, dim = "mean_colour", "global", 4

    def __init__(self, tag: str = "v1") -> None:
        self.tag, self.seen = tag, 0

    @property
    def extractor_id(self) -> str:
        return f"mean_colour-{self.tag}"

    def extract(self, images: Sequence[np.ndarray]) -> Features:
        check_batch(images)
        self.seen += len(images)
        return GlobalFeatures(features=np.stack([mean_colour(im) for im in images]))


def mean_colour(image: np.ndarray) -> np.ndarray:
    v = np.append(image.reshape(-1, 3).mean(0) / 255.0, 1.0).astype(np.float32)
    return v / np.linalg.norm(v)


class FailAfter(MeanColour):
    """Raises on batch ``k + 1``."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k, self.batches = k, 0

    def extract(self, images: Sequence[np.ndarray]) -> Features:
        if self.batches == self.k:
            raise RuntimeError("extractor crashed")
        self.batches += 1
        return super().extract(images)


class QuadrantColours(FeatureExtractor):
    """Local: one slot per image quadrant (unit-norm mean colour), the last slot is padding."""

    name, kind, dim, max_local = "quadrants", "local", 3, 5

    @property
    def extractor_id(self) -> str:
        return "quadrants-v1"

    def extract(self, images: Sequence[np.ndarray]) -> Features:
        check_batch(images)
        out = [quadrant_features(im) for im in images]
        return LocalFeatures(*(np.stack([o[i] for o in out]) for i in range(5)))


def quadrant_features(image: np.ndarray) -> tuple[np.ndarray, ...]:
    h, w = image.shape[:2]
    desc, weights, xy, scale = np.zeros((5, 3), np.float32), np.zeros(5, np.float32), \
        np.zeros((5, 2), np.float32), np.zeros(5, np.float32)
    for q, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        block = image[r * h // 2:(r + 1) * h // 2, c * w // 2:(c + 1) * w // 2].reshape(-1, 3).mean(0) + 1.0
        desc[q] = block / np.linalg.norm(block)
        weights[q], xy[q], scale[q] = 4 - q, ((c + 0.5) * w / 2, (r + 0.5) * h / 2), min(h, w) / 2
    mask = np.array([False] * 4 + [True])
    return desc, weights, mask, xy, scale


def write_images(folder: Path, n: int, *, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sub = folder / ("a" if i % 3 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(12 + i, 16, 3), dtype=np.uint8)
        path = sub / f"im{i:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    return write_images(tmp_path / "imgs", 11)


def test_one_shot_matches_direct_extraction(tmp_path: Path, images: list[Path]) -> None:
    store = extract_to_store(MeanColour(), images, tmp_path / "s", batch_size=3, shard_size=4, progress=False)
    expect = np.stack([mean_colour(load_image(p)) for p in images])
    np.testing.assert_allclose(store.global_features(), expect, rtol=0, atol=1e-7)
    assert store.ids == [p.relative_to(tmp_path / "imgs").as_posix() for p in images]
    assert store.ids[0] == "b/im000.jpg" and store.ids[1] == "a/im001.jpg"
    meta = store.meta
    assert (meta["extractor_id"], meta["kind"], meta["dim"], meta["max_local"]) == ("mean_colour-v1", "global", 4, None)
    assert meta["ids_sha256"] == ids_digest(store.ids) and meta["num_target_items"] == 11


def test_local_extraction_with_float16(tmp_path: Path, images: list[Path]) -> None:
    ids = [f"id{i}" for i in range(len(images))]
    store = extract_to_store(QuadrantColours(), images, tmp_path / "s", ids=ids, batch_size=4, shard_size=5,
                             progress=False, desc_dtype="float16", meta={"spec": {"arch": "toy"}})
    assert (store.kind, store.dim, store.max_local, store.desc_dtype) == ("local", 3, 5, "float16")
    assert store.meta["spec"] == {"arch": "toy"} and store.ids == ids
    got = store.get(np.arange(len(images)))
    for n, path in enumerate(images):
        desc, weights, mask, xy, scale = quadrant_features(load_image(path))
        np.testing.assert_array_equal(got.descriptors[n], desc.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(got.mask[n], mask)
        np.testing.assert_array_equal(got.xy[n], xy)
        np.testing.assert_array_equal(got.weights[n], weights)
        np.testing.assert_array_equal(got.scale[n], scale)


def test_resume_after_crash_does_not_redo_work(tmp_path: Path, images: list[Path]) -> None:
    root = tmp_path / "s"
    with pytest.raises(RuntimeError, match="extractor crashed"):
        extract_to_store(FailAfter(3), images, root, batch_size=2, shard_size=4, progress=False)
    partial = FeatureStore.open(root)
    assert len(partial) == 6  # 3 batches of 2: one full shard plus the flushed remainder
    counting = MeanColour()
    resumed = extract_to_store(counting, images, root, batch_size=2, shard_size=4, progress=False)
    assert counting.seen == len(images) - 6
    one_shot = extract_to_store(MeanColour(), images, tmp_path / "ref", batch_size=2, shard_size=4, progress=False)
    assert resumed.ids == one_shot.ids
    np.testing.assert_array_equal(resumed.global_features(), one_shot.global_features())
    again = MeanColour()
    extract_to_store(again, images, root, batch_size=2, progress=False)  # complete: nothing to do
    assert again.seen == 0


def test_bad_image_keeps_earlier_batches(tmp_path: Path, images: list[Path]) -> None:
    good = images[7].read_bytes()
    images[7].write_bytes(b"not a jpeg")
    root = tmp_path / "s"
    with pytest.raises(CorruptDataError, match="im007"):
        extract_to_store(MeanColour(), images, root, batch_size=3, shard_size=100, progress=False)
    assert len(FeatureStore.open(root)) == 6
    images[7].write_bytes(good)
    counting = MeanColour()
    store = extract_to_store(counting, images, root, batch_size=3, progress=False)
    assert counting.seen == 5 and len(store) == 11


def test_resume_mismatch_raises_and_resume_false_overwrites(tmp_path: Path, images: list[Path]) -> None:
    root = tmp_path / "s"
    extract_to_store(MeanColour(), images[:5], root, batch_size=2, progress=False)
    with pytest.raises(ConfigError, match=r"mean_colour-v1.*new output folder.*resume=False"):
        extract_to_store(MeanColour(tag="v2"), images[:5], root, progress=False)
    with pytest.raises(ConfigError, match="different list of images"):
        extract_to_store(MeanColour(), images[:6], root, progress=False)
    with pytest.raises(ConfigError, match="different list"):
        extract_to_store(MeanColour(), images[:5], root, ids=list("abcde"), progress=False)
    other = MeanColour(tag="v2")
    store = extract_to_store(other, images[:6], root, resume=False, progress=False)
    assert other.seen == 6 and len(store) == 6 and store.meta["extractor_id"] == "mean_colour-v2"
    extract_to_store(QuadrantColours(), images[:2], tmp_path / "l", progress=False)
    with pytest.raises(ConfigError, match="float16"):
        extract_to_store(QuadrantColours(), images[:2], tmp_path / "l", desc_dtype="float16", progress=False)


def test_argument_errors(tmp_path: Path, images: list[Path]) -> None:
    root = tmp_path / "s"
    with pytest.raises(ConfigError, match="one id per image"):
        extract_to_store(MeanColour(), images, root, ids=["x"], progress=False)
    with pytest.raises(ConfigError, match="duplicates"):
        extract_to_store(MeanColour(), images[:2], root, ids=["x", "x"], progress=False)
    with pytest.raises(ConfigError, match="extractor_id"):
        extract_to_store(MeanColour(), images, root, meta={"extractor_id": "mine"}, progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        extract_to_store(MeanColour(), images, root, batch_size=0, progress=False)
    with pytest.raises(ConfigError, match="empty"):
        extract_to_store(MeanColour(), [], root, progress=False)


def test_extractor_returning_wrong_rows_or_kind(tmp_path: Path, images: list[Path]) -> None:
    class Short(MeanColour):
        def extract(self, images: Sequence[np.ndarray]) -> Features:
            return GlobalFeatures(features=super().extract(images).features[:1])

    class Liar(MeanColour):
        dim = 5  # claims 5, returns 4

    with pytest.raises(ShapeError, match="one row per image"):
        extract_to_store(Short(), images, tmp_path / "a", batch_size=3, progress=False)
    with pytest.raises(ShapeError, match=r"5.*4"):
        extract_to_store(Liar(), images, tmp_path / "b", progress=False)


def test_progress_bar_runs(tmp_path: Path, images: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    extract_to_store(MeanColour(), images[:4], tmp_path / "s", batch_size=2, progress=True)
    assert "4/4" in capsys.readouterr().err


def test_default_ids() -> None:
    assert default_ids(["/d/x/a.jpg", "/d/x/sub/b.jpg"]) == ["a.jpg", "sub/b.jpg"]
    assert default_ids(["/d/x/a.jpg"]) == ["a.jpg"]
    assert default_ids(["rel/one.png", "rel/two.png"]) == ["one.png", "two.png"]
    with pytest.raises(ConfigError, match="ids="):
        default_ids(["/abs/a.jpg", "rel/b.jpg"])
    assert json.loads(json.dumps(default_ids(["/d/é.jpg"]))) == ["é.jpg"]


def test_custom_loader_extracts_in_memory_items(tmp_path):
    """Queries cropped on the fly (load_fn) go through the same driver, ids required."""
    from asymfuse.cloud.features.registry import create_feature_extractor
    from asymfuse.edge.errors import ConfigError as _ConfigError

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40 + 8 * i, 50, 3), dtype=np.uint8) for i in range(3)]
    ex = create_feature_extractor("sift", max_local=16)
    with pytest.raises(_ConfigError, match="ids="):
        extract_to_store(ex, range(3), tmp_path / "q0", load_fn=images.__getitem__, progress=False)
    store = extract_to_store(ex, range(3), tmp_path / "q", ids=["a", "b", "c"],
                             load_fn=images.__getitem__, progress=False, batch_size=2)
    ref = ex.extract(images)
    np.testing.assert_array_equal(store.get(np.arange(3)).descriptors, ref.descriptors)
    assert store.ids == ["a", "b", "c"]
