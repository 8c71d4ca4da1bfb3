"""AFF training data: training sets, the augmented image dataset, and the in-memory gallery table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import asymfuse.cloud.features.store as store_module
import numpy as np
import pytest
import torch
from asymfuse.cloud.data.gldv2 import load_gldv2_train
from asymfuse.cloud.data.records import TrainingSet
from asymfuse.cloud.data.registry import create_dataset
from asymfuse.cloud.features.base import GlobalFeatures, LocalFeatures
from asymfuse.cloud.features.gallery_table import load_gallery_table
from asymfuse.cloud.features.store import create_store_from_arrays
from asymfuse.cloud.train.aff_data import (
    AFFImageDataset,
    check_training_set,
    downscale_shorter_side,
    load_training_set,
)
from asymfuse.cloud.train.augment import AugmentConfig
from asymfuse.edge.errors import ConfigError, CorruptDataError, UnknownNameError
from asymfuse.edge.preprocess import load_image, preprocess
from asymfuse.edge.spec import ModelSpec
from PIL import Image
from torch.utils.data import DataLoader

SPEC = ModelSpec(arch="t", embed_dim=8, input_size=(40, 48), embedding_space_id="es-test",
                 mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))


@pytest.fixture(scope="module")
def train_set(bench):
    return create_dataset("benchmark_train", root=bench.root)


# ---------------------------------------------------------------- training sets

def test_benchmark_train_is_the_train_csv(bench, train_set):
    assert isinstance(train_set, TrainingSet)
    assert train_set.name == "asymfuse-skimage-train" and train_set.root == bench.root
    with open(bench.root / "train" / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [p.name for p in train_set.paths] == [f"{r['id']}.jpg" for r in rows]
    assert all(p.parent == bench.root / "train" / "jpg" and p.is_file() for p in train_set.paths)
    names = [train_set.class_names[label] for label in train_set.labels]
    assert names == [r["landmark_id"] for r in rows]
    assert train_set.class_counts().min() >= 2 and train_set.num_classes >= 4
    check_training_set(train_set)


def test_benchmark_train_rejects_other_folders(tmp_path):
    with pytest.raises(CorruptDataError, match="not an asymfuse benchmark"):
        create_dataset("benchmark_train", root=tmp_path)


def test_load_training_set_sources(bench, train_set, tmp_path):
    assert load_training_set("benchmark", bench.root).paths == train_set.paths
    gl = load_training_set("gldv2", bench.root / "train" / "jpg", csv="../train.csv")
    ref = load_gldv2_train(bench.root / "train" / "jpg", csv="../train.csv")
    assert gl.paths == ref.paths and np.array_equal(gl.labels, ref.labels)
    for cls, n in (("b", 2), ("a", 3)):
        (tmp_path / cls).mkdir()
        for k in range(n):
            Image.new("RGB", (8, 8)).save(tmp_path / cls / f"{k}.png")
    folder = load_training_set("folder", tmp_path)
    assert folder.class_names == ("a", "b") and folder.labels.tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(UnknownNameError, match="benchmark"):
        load_training_set("imagenet", tmp_path)


def _ts(labels, n_classes) -> TrainingSet:
    return TrainingSet(name="toy", root=Path("/nowhere"), paths=[f"/nowhere/{i}.jpg" for i in range(len(labels))],
                       labels=np.asarray(labels, dtype=np.int64), class_names=[f"c{k}" for k in range(n_classes)])


def test_check_training_set_lists_small_classes():
    check_training_set(_ts([0, 0, 1, 1], 2))
    with pytest.raises(ConfigError, match=r"1 of 2 classes .*'c1' \(1\).*add images") as err:
        check_training_set(_ts([0, 0, 1], 2))
    assert "remove them" in str(err.value)
    with pytest.raises(ConfigError, match=r"'c2' \(0\)"):  # a class without any image
        check_training_set(_ts([0, 0, 1, 1], 3))
    with pytest.raises(ConfigError, match="and 3 more"):
        check_training_set(_ts(list(range(8)), 8))
    check_training_set(_ts([0, 1], 2), min_images=1)
    with pytest.raises(ConfigError, match="no images"):
        check_training_set(_ts([], 0))
    with pytest.raises(ConfigError):
        check_training_set(_ts([0, 0], 1), min_images=0)


# ---------------------------------------------------------------- image dataset

def _dataset(ts, **kw) -> AFFImageDataset:
    args = dict(training_set=ts, spec=SPEC, augment=AugmentConfig(), seed=7)
    return AFFImageDataset(**{**args, **kw})


def test_items_have_the_documented_form(train_set):
    ds = _dataset(train_set)
    item = ds[5]
    assert item["image"].shape == (3, 40, 48) and item["image"].dtype == torch.float32
    assert item["label"].dtype == torch.int64 and item["label"].ndim == 0
    assert int(item["label"]) == int(train_set.labels[5]) and int(item["index"]) == 5
    assert len(ds) == len(train_set)
    # normalised with the spec's mean/std: pixel values lie in [(0 - mean)/std, (1 - mean)/std]
    x = item["image"].numpy()
    for ch in range(3):
        lo, hi = (0 - SPEC.mean[ch]) / SPEC.std[ch], (1 - SPEC.mean[ch]) / SPEC.std[ch]
        assert lo - 1e-5 <= x[ch].min() and x[ch].max() <= hi + 1e-5
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_items_depend_only_on_seed_epoch_index(train_set):
    a, b = _dataset(train_set), _dataset(train_set)
    order = [3, 0, 9, 3]
    first = [a[i]["image"] for i in order]
    second = [b[i]["image"] for i in reversed(order)][::-1]
    for x, y in zip(first, second):
        assert torch.equal(x, y)
    assert torch.equal(first[0], first[3])  # re-reading an item gives the same draw
    assert not torch.equal(a[3]["image"], _dataset(train_set, seed=8)[3]["image"])
    b.set_epoch(1)
    assert not torch.equal(a[3]["image"], b[3]["image"])
    b.set_epoch(0)
    assert torch.equal(a[3]["image"], b[3]["image"])
    with pytest.raises(ConfigError):
        b.set_epoch(-1)


def test_items_do_not_depend_on_loader_workers(train_set):
    ds = _dataset(train_set)
    ds.set_epoch(2)
    idx = list(range(8))
    direct = torch.stack([ds[i]["image"] for i in idx])
    subset = torch.utils.data.Subset(ds, idx)
    loaded = torch.cat([b["image"] for b in DataLoader(subset, batch_size=3, num_workers=2)])
    assert torch.equal(direct, loaded)


def test_no_augment_is_the_reference_preprocessing(train_set):
    ds = _dataset(train_set, augment=None)
    ref = preprocess(load_image(train_set.paths[4]), SPEC)[0]
    assert np.array_equal(ds[4]["image"].numpy(), ref)


def test_preload_matches_disk_when_nothing_is_downscaled(train_set):
    disk = _dataset(train_set)
    pre = _dataset(train_set, preload_side=10_000)
    for i in (0, 11, len(train_set) - 1):
        assert torch.equal(disk[i]["image"], pre[i]["image"])


def test_preload_downscales_the_shorter_side(train_set):
    pre = _dataset(train_set, preload_side=50)
    assert pre[0]["image"].shape == (3, 40, 48)
    img = load_image(train_set.paths[0])
    small = downscale_shorter_side(img, 50)
    h, w = img.shape[:2]
    assert min(small.shape[:2]) == 50 and small.dtype == np.uint8
    assert abs(small.shape[1] / small.shape[0] - w / h) < 0.05
    tall = downscale_shorter_side(np.zeros((300, 100, 3), np.uint8), 20)
    assert tall.shape == (60, 20, 3)
    assert downscale_shorter_side(img, 10_000) is img


def test_unreadable_image_names_the_file(train_set, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    ts = TrainingSet(name="x", root=tmp_path, paths=[train_set.paths[0], bad], labels=[0, 0], class_names=["a"])
    ds = _dataset(ts)
    ds[0]
    with pytest.raises(CorruptDataError, match="broken.jpg"):
        ds[1]
    with pytest.raises(CorruptDataError, match="broken.jpg"):
        _dataset(ts, preload_side=32)


# ---------------------------------------------------------------- gallery table

def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _local(rng, n: int, length: int, d: int) -> LocalFeatures:
    counts = rng.integers(0, length + 1, size=n)
    counts[0] = length  # one full row
    mask = np.arange(length)[None, :] >= counts[:, None]
    desc = _unit(rng.normal(size=(n, length, d)))
    desc[mask] = 0
    weights = np.where(mask, 0, np.sort(rng.random((n, length)), axis=1)[:, ::-1]).astype(np.float32)
    return LocalFeatures(descriptors=desc, weights=weights, mask=mask, xy=np.zeros((n, length, 2), np.float32),
                         scale=np.ones((n, length), np.float32))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two global stores and one local store of 12 items, each in its own (shuffled) row order."""
    root = tmp_path_factory.mktemp("feats")
    rng = np.random.default_rng(0)
    ids = [f"img{i:02d}.jpg" for i in range(12)]
    data = {"g1": _unit(rng.normal(size=(12, 5))), "g2": _unit(rng.normal(size=(12, 3))),
            "loc": _local(rng, 12, 6, 4)}
    paths = {}
    for name, feats in data.items():
        perm = rng.permutation(12)
        if isinstance(feats, np.ndarray):
            stored = GlobalFeatures(features=feats[perm])
        else:
            stored = LocalFeatures(**{k: getattr(feats, k)[perm] for k in ("descriptors", "weights", "mask",
                                                                             "xy", "scale")})
        meta = {"extractor_id": f"id-{name}"} | ({"extractor_name": f"ext_{name}"} if name != "g2" else {})
        paths[name] = root / name / "train" / "gallery"
        create_store_from_arrays(paths[name], ids=[ids[p] for p in perm], features=stored, meta=meta, shard_size=5)
    return {"ids": ids, "data": data, "paths": paths}


def test_table_equals_direct_gather(stores):
    ids, data, paths = stores["ids"], stores["data"], stores["paths"]
    want = [ids[i] for i in (4, 0, 11, 7, 2, 9, 1)]
    rows = [ids.index(i) for i in want]
    table = load_gallery_table([paths["g1"], paths["g2"], paths["loc"]], ids=want, local_tokens=4)
    assert len(table) == 7 and table.ids == tuple(want)
    slots = table.schema.slots
    assert [s.name for s in slots] == ["ext_g1", "g2", "ext_loc"]  # g2 has no extractor_name: folder name
    assert [(s.kind, s.dim, s.max_local, s.extractor_id) for s in slots] == [
        ("global", 5, None, "id-g1"), ("global", 3, None, "id-g2"), ("local", 4, 4, "id-loc")]
    batch = table.inputs(torch.tensor([6, 0, 3]))
    batch.check(table.schema)
    sel = [rows[k] for k in (6, 0, 3)]
    assert np.array_equal(batch.globals_[0].numpy(), data["g1"][sel])
    assert np.array_equal(batch.globals_[1].numpy(), data["g2"][sel])
    loc = data["loc"]
    assert batch.locals_[0].dtype == torch.float32 and batch.local_pads[0].dtype == torch.bool
    assert np.array_equal(batch.locals_[0].numpy(), loc.descriptors[sel, :4])
    assert np.array_equal(batch.local_pads[0].numpy(), loc.mask[sel, :4])
    assert np.array_equal(table.global_matrix("g2"), data["g2"][rows])
    assert np.array_equal(table.global_matrix(0), data["g1"][rows])
    assert table.inputs(slice(None)).batch_size == 7
    with pytest.raises(ConfigError, match="local"):
        table.global_matrix("ext_loc")
    with pytest.raises(ConfigError):
        table.global_matrix("nope")
    with pytest.raises(ConfigError):
        table.inputs([0, 7])


def test_local_tokens_pad_and_globals_come_first(stores):
    ids, data, paths = stores["ids"], stores["data"], stores["paths"]
    table = load_gallery_table([paths["loc"], paths["g2"]], ids=ids, local_tokens=9)
    assert [s.kind for s in table.schema.slots] == ["global", "local"]
    assert table.store_roots == (paths["g2"], paths["loc"])
    batch = table.inputs(np.arange(12))
    desc, mask = batch.locals_[0].numpy(), batch.local_pads[0].numpy()
    assert desc.shape == (12, 9, 4) and mask.shape == (12, 9)
    assert np.array_equal(desc[:, :6], data["loc"].descriptors) and not desc[:, 6:].any()
    assert np.array_equal(mask[:, :6], data["loc"].mask) and mask[:, 6:].all()
    named = load_gallery_table([paths["g1"], paths["g2"]], ids=ids, local_tokens=1, names=["a", "b"])
    assert named.schema.names == ("a", "b")


def test_missing_ids_and_bad_arguments(stores):
    paths = stores["paths"]
    with pytest.raises(ConfigError, match=r"lacks 2 of the 3 .*'zz1'.*extract features"):
        load_gallery_table([paths["g1"]], ids=["img00.jpg", "zz1", "zz2"], local_tokens=4)
    with pytest.raises(ConfigError, match="share a slot name"):
        load_gallery_table([paths["g1"], paths["g1"]], ids=["img00.jpg"], local_tokens=4)
    with pytest.raises(ConfigError):
        load_gallery_table([], ids=["img00.jpg"], local_tokens=4)
    with pytest.raises(ConfigError):
        load_gallery_table([paths["g1"]], ids=["img00.jpg"], local_tokens=0)


def test_nan_in_a_store_is_reported(tmp_path, monkeypatch):
    def unchecked(layout, features):  # the writer refuses NaN; emulate a store corrupted on disk
        if isinstance(features, GlobalFeatures):
            return {"features": features.features}
        return {k: getattr(features, k) for k in ("descriptors", "weights", "mask", "xy", "scale")}

    rng = np.random.default_rng(1)
    g = _unit(rng.normal(size=(4, 3)))
    g[2, 1] = np.nan
    loc = _local(rng, 4, 5, 2)
    loc.descriptors[3, 4, 0] = np.inf  # beyond the kept tokens: still caught
    with monkeypatch.context() as m:
        m.setattr(store_module, "check_features", unchecked)
        create_store_from_arrays(tmp_path / "g", ids=list("abcd"), features=GlobalFeatures(features=g))
        create_store_from_arrays(tmp_path / "l", ids=list("abcd"), features=loc)
    with pytest.raises(CorruptDataError, match=r"NaN or inf .*first: id 'c'.*re-extract") as err:
        load_gallery_table([tmp_path / "g"], ids=list("dcba"), local_tokens=2)
    assert str(tmp_path / "g") in str(err.value)
    with pytest.raises(CorruptDataError, match="first: id 'd'"):
        load_gallery_table([tmp_path / "l"], ids=list("abcd"), local_tokens=2)
    load_gallery_table([tmp_path / "g"], ids=list("abd"), local_tokens=2)  # rows not asked for are fine
    json.loads((tmp_path / "g" / "store.json").read_text())  # the store itself is well-formed
