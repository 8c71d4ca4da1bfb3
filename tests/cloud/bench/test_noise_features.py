"""Synthetic noisy gallery features: determinism, shapes, norms, signal, store layout, idempotence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from asymfuse.cloud.bench.noise_features import (
    GAUSSIAN,
    NOISE_FEATURES,
    WEAK,
    NoiseConfig,
    gaussian_features,
    thumbnail,
    weak_features,
    write_noise_features,
)
from asymfuse.cloud.data.records import RetrievalDataset, TrainingSet
from asymfuse.cloud.features.extract import default_ids
from asymfuse.cloud.features.store import FeatureStore
from asymfuse.edge.errors import ConfigError

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "hubble_deep_field", "immunohistochemistry")


def photos() -> list[np.ndarray]:
    out = []
    for name in PHOTOS:
        img = getattr(skdata, name)()
        out.append(np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3])
    return out


def test_gaussian_is_a_function_of_seed_and_id_only():
    a = gaussian_features(["x", "y", "z"], dim=128, seed=3)
    b = gaussian_features(["z", "x"], dim=128, seed=3)
    assert a.shape == (3, 128) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(a[2], b[0])  # same id -> same vector, whatever the position
    np.testing.assert_array_equal(a[0], b[1])
    assert not np.allclose(a[0], gaussian_features(["x"], dim=128, seed=4)[0])
    assert abs(float(a[0] @ a[1])) < 0.4  # independent directions in 128-d


def test_thumbnail_is_the_area_average():
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    img[:4, :4] = 200  # top-left quadrant bright
    t = thumbnail(img, side=2).reshape(2, 2, 3)
    np.testing.assert_allclose(t[0, 0], 200 / 255, atol=1e-6)
    np.testing.assert_allclose(t[1, 1], 0.0, atol=1e-6)


def test_weak_feature_is_deterministic_unit_norm_and_carries_some_signal():
    cfg = NoiseConfig(seed=1)
    crops_a, crops_b, ids_a, ids_b = [], [], [], []
    for k, img in enumerate(photos()):
        h, w = img.shape[:2]
        dh, dw = h // 10, w // 10
        crops_a.append(img[: h - dh, : w - dw])  # two different crops of the same photo
        crops_b.append(img[dh:, dw:])
        ids_a.append(f"a{k}")
        ids_b.append(f"b{k}")
    xa = weak_features(crops_a, ids_a, cfg=cfg)
    xb = weak_features(crops_b, ids_b, cfg=cfg)
    assert xa.shape == (len(PHOTOS), 64) and xa.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(xa, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(xa, weak_features(crops_a, ids_a, cfg=cfg))
    sims = xa @ xb.T
    same = float(np.mean(np.diag(sims)))
    other = float(np.mean(sims[~np.eye(len(PHOTOS), dtype=bool)]))
    assert same > other + 0.2, (same, other)
    # ... but it is weak: noise makes same-photo pairs far from identical
    assert same < 0.95
    # without noise the same crops agree much more closely
    clean = NoiseConfig(seed=1, weak_noise=0.0)
    sims_clean = weak_features(crops_a, ids_a, cfg=clean) @ weak_features(crops_b, ids_b, cfg=clean).T
    assert float(np.mean(np.diag(sims_clean))) > same
    with pytest.raises(ConfigError):
        weak_features(crops_a, ids_a[:-1], cfg=cfg)


def _write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=90)
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[TrainingSet, RetrievalDataset]:
    imgs = [img[::8, ::8].copy() for img in photos()[:4]]
    train_paths = [_write(tmp_path / "train" / "jpg" / f"t{i}.jpg", im) for i, im in enumerate(imgs)]
    ts = TrainingSet(name="tiny-train", root=tmp_path / "train", paths=train_paths,
                     labels=np.array([0, 0, 1, 1]), class_names=("a", "b"))
    gal = [_write(tmp_path / "test" / "jpg" / f"g{i}.jpg", im[::-1]) for i, im in enumerate(imgs)]
    q = [_write(tmp_path / "test" / "jpg" / "q0.jpg", imgs[0])]
    gnd = [{"easy": [0], "hard": [], "junk": []}]
    ds = RetrievalDataset(name="tiny", root=tmp_path / "test", protocol="revisitop", gallery_paths=gal,
                          gallery_ids=[f"g{i}" for i in range(4)], query_paths=q, query_ids=["q0"], gnd=gnd,
                          query_bbx=[(2.0, 2.0, 30.0, 40.0)])
    return ts, ds


def test_stores_follow_the_feature_cache_layout_and_are_idempotent(tmp_path, tiny):
    ts, ds = tiny
    feats = tmp_path / "features"
    roots = write_noise_features(features_dir=feats, training_set=ts, datasets={"test": ds})
    assert set(roots) == set(NOISE_FEATURES)
    for name, dim in ((GAUSSIAN, 128), (WEAK, 64)):
        assert roots[name]["train/gallery"] == feats / name / "train" / "gallery"
        expect_ids = {"train/gallery": default_ids(ts.paths), "test/gallery": list(ds.gallery_ids),
                      "test/queries": list(ds.query_ids)}
        for key, ids in expect_ids.items():
            with FeatureStore.open(feats / name / key) as store:
                assert store.kind == "global" and store.dim == dim
                assert store.ids == ids
                assert store.meta["extractor_name"] == name
                x = np.asarray(store.global_features())
                np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    shard = next((feats / GAUSSIAN / "test" / "gallery").glob("shard-*.ids.json"))
    before = shard.stat().st_mtime_ns
    with FeatureStore.open(feats / GAUSSIAN / "test" / "gallery") as store:
        g1 = np.asarray(store.global_features()).copy()
    write_noise_features(features_dir=feats, training_set=ts, datasets={"test": ds})
    assert shard.stat().st_mtime_ns == before  # a complete store is left as it is
    np.testing.assert_array_equal(g1, gaussian_features(list(ds.gallery_ids), dim=128, seed=0))
    # another generator config replaces the store
    write_noise_features(features_dir=feats, training_set=None, datasets={"test": ds},
                         cfg=NoiseConfig(seed=5), names=(GAUSSIAN,))
    with FeatureStore.open(feats / GAUSSIAN / "test" / "gallery") as store:
        assert not np.allclose(np.asarray(store.global_features()), g1)


def test_more_image_sets_get_gallery_stores_of_their_own(tmp_path, tiny):
    ts, ds = tiny
    feats = tmp_path / "features"
    roots = write_noise_features(features_dir=feats, training_set=None, datasets={}, image_sets={"views": ts})
    for name in NOISE_FEATURES:
        assert list(roots[name]) == ["views/gallery"]
        with FeatureStore.open(feats / name / "views" / "gallery") as store:
            assert store.ids == default_ids(ts.paths)
    with FeatureStore.open(feats / GAUSSIAN / "views" / "gallery") as store:  # a function of the ids alone
        np.testing.assert_array_equal(np.asarray(store.global_features()),
                                      gaussian_features(default_ids(ts.paths), dim=128, seed=0))


def test_bad_arguments(tmp_path, tiny):
    ts, ds = tiny
    with pytest.raises(ConfigError):
        write_noise_features(features_dir=tmp_path, training_set=ts, datasets={"train": ds})
    with pytest.raises(ConfigError):
        NoiseConfig(gaussian_dim=0)
    with pytest.raises(ConfigError):
        NoiseConfig(weak_noise=-1.0)
