"""The AFF feature cache: extract once into <features_dir>/<name>/<part>/..., existing stores win."""

from __future__ import annotations

import asymfuse.cloud.train.feature_cache as feature_cache
import numpy as np
import pytest
from asymfuse.cloud.data.benchmark import dataset_name
from asymfuse.cloud.data.registry import create_dataset
from asymfuse.cloud.features.base import GlobalFeatures
from asymfuse.cloud.features.extract import default_ids
from asymfuse.cloud.features.gallery_table import load_gallery_table
from asymfuse.cloud.features.registry import create_feature_extractor
from asymfuse.cloud.features.store import FeatureStore, create_store_from_arrays
from asymfuse.cloud.features.layout import store_path
from asymfuse.cloud.train.feature_cache import (
    ensure_dataset_features,
    ensure_training_features,
    is_complete,
    training_ids,
)
from asymfuse.edge.errors import ConfigError, UnknownNameError
from asymfuse.edge.preprocess import load_image


@pytest.fixture(scope="module")
def train_set(bench):
    return create_dataset("benchmark_train", root=bench.root)


@pytest.fixture(scope="module")
def test_split(bench):
    return create_dataset("revisitop", root=bench.root / "test", name=dataset_name(bench.config.name, "test"))


def _no_extractor(name, **kw):
    raise AssertionError(f"extractor {name!r} should not have been built")


def _synthetic(root, ids, dim=6, seed=0):
    x = np.random.default_rng(seed).normal(size=(len(ids), dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    create_store_from_arrays(root, ids=ids, features=GlobalFeatures(features=x), meta={"extractor_name": "noise"})
    return x


def test_training_ids_are_the_default_ids(train_set):
    ids = training_ids(train_set)
    assert ids == default_ids(train_set.paths) and ids[0] == train_set.paths[0].name
    assert len(set(ids)) == len(ids) == len(train_set)


def test_sift_training_features_are_extracted_once(train_set, tmp_path, monkeypatch):
    root = ensure_training_features("sift", train_set, features_dir=tmp_path, batch_size=32)
    assert root == tmp_path / "sift" / "train" / "gallery"
    with FeatureStore.open(root) as store:
        assert store.ids == training_ids(train_set) and store.kind == "local"
        assert store.meta["extractor_name"] == "sift" and store.meta["dataset"] == train_set.name
        got = store.get([3])
    with create_feature_extractor("sift") as ex:  # reference: the extractor on the whole image
        ref = ex.extract([load_image(train_set.paths[3])])
    assert np.array_equal(got.descriptors, ref.descriptors)
    monkeypatch.setattr(feature_cache, "create_feature_extractor", _no_extractor)
    assert ensure_training_features("sift", train_set, features_dir=tmp_path) == root
    table = load_gallery_table([root], ids=training_ids(train_set), local_tokens=8)
    assert table.schema.slots[0].name == "sift" and len(table) == len(train_set)


def test_an_existing_store_wins_even_for_unregistered_names(train_set, tmp_path, monkeypatch):
    monkeypatch.setattr(feature_cache, "create_feature_extractor", _no_extractor)
    ids = training_ids(train_set)
    for name in ("noise_gauss", "gem_lite1"):  # unregistered and registered: neither is rebuilt
        root = tmp_path / name / "train" / "gallery"
        x = _synthetic(root, ids[::-1] + ["extra.jpg"])
        assert ensure_training_features(name, train_set, features_dir=tmp_path) == root
        table = load_gallery_table([root], ids=ids, local_tokens=1)
        assert np.array_equal(table.global_matrix(0), x[: len(ids)][::-1])


def test_unknown_name_without_store_names_both_fixes(train_set, tmp_path):
    with pytest.raises(UnknownNameError, match=r"no store at .*not a registered feature extractor") as err:
        ensure_training_features("nope", train_set, features_dir=tmp_path)
    assert "register" in str(err.value) and "create_store_from_arrays" in str(err.value)
    _synthetic(tmp_path / "half" / "train" / "gallery", training_ids(train_set)[:5])
    with pytest.raises(UnknownNameError, match="lack some of the ids"):
        ensure_training_features("half", train_set, features_dir=tmp_path)


def test_dataset_features_gallery_and_cropped_queries(test_split, tmp_path, monkeypatch):
    roots = ensure_dataset_features("sift", test_split, features_dir=tmp_path, part="test")
    assert roots == {"gallery": tmp_path / "sift" / "test" / "gallery",
                     "queries": tmp_path / "sift" / "test" / "queries"}
    with FeatureStore.open(roots["gallery"]) as g, FeatureStore.open(roots["queries"]) as q:
        assert g.ids == list(test_split.gallery_ids) and q.ids == list(test_split.query_ids)
        got = q.get([0])
    with create_feature_extractor("sift") as ex:  # queries are the bbx crops
        ref = ex.extract([test_split.load_query_image(0)])
    assert np.array_equal(got.descriptors, ref.descriptors)
    monkeypatch.setattr(feature_cache, "create_feature_extractor", _no_extractor)
    assert ensure_dataset_features("sift", test_split, features_dir=tmp_path, part="test") == roots


def test_dataset_features_existing_stores_and_unknown_names(test_split, tmp_path, monkeypatch):
    monkeypatch.setattr(feature_cache, "create_feature_extractor", _no_extractor)
    _synthetic(tmp_path / "noise" / "val" / "gallery", list(test_split.gallery_ids))
    with pytest.raises(UnknownNameError, match="queries"):  # the query store is still missing
        ensure_dataset_features("noise", test_split, features_dir=tmp_path, part="val")
    _synthetic(tmp_path / "noise" / "val" / "queries", list(test_split.query_ids))
    roots = ensure_dataset_features("noise", test_split, features_dir=tmp_path, part="val")
    assert is_complete(roots["gallery"], test_split.gallery_ids) and is_complete(roots["queries"], test_split.query_ids)


def test_store_path_rejects_odd_names(tmp_path):
    assert store_path(tmp_path, "sift", "val", "queries") == tmp_path / "sift" / "val" / "queries"
    for name, part, which in (("../x", "train", "gallery"), ("sift", "a/b", "gallery"), ("sift", "", "gallery"),
                              ("sift", "train", "other")):
        with pytest.raises(ConfigError):
            store_path(tmp_path, name, part, which)
    assert not is_complete(tmp_path / "absent", ["a"])
