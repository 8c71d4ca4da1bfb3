"""Feature store: round trips against in-memory NumPy, memory mapping, corruption, atomicity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from asymfuse.cloud.features.base import GlobalFeatures, LocalFeatures
from asymfuse.cloud.features.store import (
    FeatureStore,
    FeatureStoreWriter,
    create_store_from_arrays,
)
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError, UnknownNameError


def global_feats(n: int, d: int = 8, seed: int = 0) -> GlobalFeatures:
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return GlobalFeatures(features=x / np.linalg.norm(x, axis=1, keepdims=True))


def local_feats(n: int, n_loc: int = 5, d: int = 6, seed: int = 0) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, n_loc + 1, size=n)
    mask = np.arange(n_loc)[None, :] >= counts[:, None]
    desc = rng.normal(size=(n, n_loc, d)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=2, keepdims=True)
    desc[mask] = 0
    weights = np.where(mask, 0, rng.uniform(0.1, 2, size=(n, n_loc))).astype(np.float32)
    xy = np.where(mask[..., None], 0, rng.uniform(0, 500, size=(n, n_loc, 2))).astype(np.float32)
    scale = np.where(mask, 0, rng.uniform(1, 30, size=(n, n_loc))).astype(np.float32)
    return LocalFeatures(descriptors=desc, weights=weights, mask=mask, xy=xy, scale=scale)


LOCAL_KEYS = ("descriptors", "weights", "mask", "xy", "scale")


def assert_local_equal(a: LocalFeatures, b: LocalFeatures) -> None:
    for key in LOCAL_KEYS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
        assert getattr(a, key).dtype == getattr(b, key).dtype, key


def names(n: int, prefix: str = "img") -> list[str]:
    return [f"{prefix}{i:04d}.jpg" for i in range(n)]


def is_mmap_backed(arr: np.ndarray) -> bool:
    while arr is not None:
        if isinstance(arr, np.memmap):
            return True
        arr = arr.base if isinstance(arr.base, np.ndarray) else None
    return False


def shard_files(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


# ---------------------------------------------------------------- round trips


def test_global_round_trip_across_shards(tmp_path: Path) -> None:
    feats, ids = global_feats(23), names(23)
    with FeatureStoreWriter.create(tmp_path, kind="global", dim=8, shard_size=5, meta={"m": [1, 2]}) as w:
        for a in range(0, 23, 4):  # batches that straddle shard boundaries
            w.append(ids[a:a + 4], GlobalFeatures(feats.features[a:a + 4]))
    with FeatureStore.open(tmp_path) as store:
        assert (len(store), store.kind, store.dim, store.max_local, store.num_shards) == (23, "global", 8, None, 5)
        assert store.ids == ids and store.meta == {"m": [1, 2]}
        np.testing.assert_array_equal(store.global_features(), feats.features)
        idx = np.array([22, 0, 7, 7, 13, 4])  # unsorted, repeated, across shards
        np.testing.assert_array_equal(store.get(idx).features, feats.features[idx])
        np.testing.assert_array_equal(store.get(slice(3, 17)).features, feats.features[3:17])
        np.testing.assert_array_equal(store.get(slice(20, 2, -3)).features, feats.features[20:2:-3])
        got_ids, got = zip(*[(i, f.features) for i, f in store.iter_batches(7)])
        assert [len(i) for i in got_ids] == [7, 7, 7, 2] and [i for b in got_ids for i in b] == ids
        np.testing.assert_array_equal(np.concatenate(got), feats.features)
        assert store.index_of("img0013.jpg") == 13
        with pytest.raises(UnknownNameError, match="nope"):
            store.index_of("nope")


@pytest.mark.parametrize("desc_dtype", ["float32", "float16"])
def test_local_round_trip(tmp_path: Path, desc_dtype: str) -> None:
    feats, ids = local_feats(17), names(17)
    store = create_store_from_arrays(tmp_path, ids=ids, features=feats, shard_size=6, desc_dtype=desc_dtype)
    assert (store.kind, store.dim, store.max_local, store.desc_dtype) == ("local", 6, 5, desc_dtype)
    expect = feats
    if desc_dtype == "float16":
        expect = LocalFeatures(descriptors=feats.descriptors.astype(np.float16).astype(np.float32),
                               weights=feats.weights, mask=feats.mask, xy=feats.xy, scale=feats.scale)
        assert np.load(tmp_path / "shard-00000.descriptors.npy").dtype == np.float16
    assert_local_equal(store.get(np.arange(17)), expect)
    idx = [16, 2, 9, 2]
    got = store.get(idx)
    for key in LOCAL_KEYS:
        np.testing.assert_array_equal(getattr(got, key), getattr(expect, key)[idx])
    np.testing.assert_array_equal(got.counts, (~feats.mask[idx]).sum(1))
    with pytest.raises(ConfigError, match="local"):
        store.global_features()


def test_reads_are_memory_mapped(tmp_path: Path) -> None:
    create_store_from_arrays(tmp_path / "g", ids=names(10), features=global_feats(10), shard_size=10)
    create_store_from_arrays(tmp_path / "l", ids=names(10), features=local_feats(10), shard_size=4)
    with FeatureStore.open(tmp_path / "g") as g, FeatureStore.open(tmp_path / "l") as loc:
        assert isinstance(g.global_features(), np.memmap)
        assert is_mmap_backed(g.get(slice(2, 6)).features)
        _, batch = next(loc.iter_batches(4))  # exactly shard 0
        for key in LOCAL_KEYS:
            assert is_mmap_backed(getattr(batch, key)), key
        assert not batch.descriptors.flags.writeable
        assert not is_mmap_backed(loc.get([0, 1]).descriptors)  # fancy indexing copies


def test_empty_store(tmp_path: Path) -> None:
    FeatureStoreWriter.create(tmp_path, kind="global", dim=4).close()
    store = FeatureStore.open(tmp_path)
    assert len(store) == 0 and store.ids == []
    assert store.global_features().shape == (0, 4)
    assert list(store.iter_batches(3)) == []


def test_flush_writes_partial_shard_and_caller_buffer_is_copied(tmp_path: Path) -> None:
    buf = global_feats(3).features.copy()
    expect = buf.copy()
    w = FeatureStoreWriter.create(tmp_path, kind="global", dim=8, shard_size=100)
    w.append(names(3), GlobalFeatures(buf))
    buf[:] = 0  # caller reuses its buffer before the shard is written
    w.flush()
    assert w.num_committed == 3 and len(w) == 3
    w.close()
    w.close()  # idempotent
    np.testing.assert_array_equal(FeatureStore.open(tmp_path).global_features(), expect)


# ---------------------------------------------------------------- misuse


def test_wrong_dim_kind_and_max_local(tmp_path: Path) -> None:
    with FeatureStoreWriter.create(tmp_path / "g", kind="global", dim=128) as w:
        with pytest.raises(ShapeError, match=r"128.*64"):
            w.append(names(2), global_feats(2, d=64))
        with pytest.raises(ShapeError, match="LocalFeatures"):
            w.append(names(2), local_feats(2))
        with pytest.raises(ShapeError, match="ids"):
            w.append(names(3), global_feats(2, d=128))
    with FeatureStoreWriter.create(tmp_path / "l", kind="local", dim=6, max_local=5) as w:
        with pytest.raises(ShapeError, match=r"6.*7"):
            w.append(names(2), local_feats(2, d=7))
        with pytest.raises(ShapeError, match="max_local"):
            w.append(names(2), local_feats(2, n_loc=4))
    for bad in [dict(kind="glob", dim=3), dict(kind="global", dim=0), dict(kind="local", dim=3),
                dict(kind="global", dim=3, desc_dtype="float16"), dict(kind="global", dim=3, shard_size=0),
                dict(kind="global", dim=3, meta={"x": object()})]:
        with pytest.raises(ConfigError):
            FeatureStoreWriter.create(tmp_path / "bad", **bad)


def test_nan_and_inf_rejected(tmp_path: Path) -> None:
    g = global_feats(3).features.copy()
    g[1, 2] = np.nan
    with FeatureStoreWriter.create(tmp_path / "g", kind="global", dim=8) as w:
        with pytest.raises(ShapeError, match="NaN"):
            w.append(names(3), GlobalFeatures(g))
        assert len(w) == 0
    loc = local_feats(2)
    xy = loc.xy.copy()
    xy[0, 0, 1] = np.inf
    bad = LocalFeatures(descriptors=loc.descriptors, weights=loc.weights, mask=loc.mask, xy=xy, scale=loc.scale)
    with FeatureStoreWriter.create(tmp_path / "l", kind="local", dim=6, max_local=5) as w:
        with pytest.raises(ShapeError, match="xy"):
            w.append(names(2), bad)
    big = loc.descriptors.copy()
    big[0, 0, 0] = 1e6  # finite in float32, inf in float16
    over = LocalFeatures(descriptors=big, weights=loc.weights, mask=loc.mask, xy=loc.xy, scale=loc.scale)
    with FeatureStoreWriter.create(tmp_path / "h", kind="local", dim=6, max_local=5, desc_dtype="float16") as w:
        with pytest.raises(ShapeError, match="float16"):
            w.append(names(2), over)


def test_duplicate_ids(tmp_path: Path) -> None:
    with FeatureStoreWriter.create(tmp_path, kind="global", dim=8, shard_size=2) as w:
        with pytest.raises(ConfigError, match="duplicate id 'a'"):
            w.append(["a", "b", "a"], global_feats(3))
        w.append(["a", "b", "c"], global_feats(3))
        with pytest.raises(ConfigError, match="duplicate id 'b'"):
            w.append(["d", "b"], global_feats(2))
        with pytest.raises(ConfigError, match="non-empty"):
            w.append([""], global_feats(1))
        w.append(["d"], global_feats(1))
    with FeatureStoreWriter.open_for_resume(tmp_path) as w:
        with pytest.raises(ConfigError, match="duplicate id 'c'"):
            w.append(["c"], global_feats(1))
    assert FeatureStore.open(tmp_path).ids == ["a", "b", "c", "d"]


def test_closed_handles_and_bad_indices(tmp_path: Path) -> None:
    w = FeatureStoreWriter.create(tmp_path, kind="global", dim=8)
    w.append(names(4), global_feats(4))
    w.close()
    with pytest.raises(ConfigError, match="closed"):
        w.append(["x"], global_feats(1))
    store = FeatureStore.open(tmp_path)
    for bad in ([4], [-1], [[0, 1]], [0.5]):
        with pytest.raises(ConfigError):
            store.get(bad)
    with pytest.raises(ConfigError):
        store.iter_batches(0).__next__()
    store.close()
    with pytest.raises(ConfigError, match="is closed; open it again"):
        store.global_features()
    with pytest.raises(ConfigError, match="verify"):
        FeatureStore.open(tmp_path, verify="sometimes")  # type: ignore[arg-type]


def test_existing_store_and_second_writer(tmp_path: Path) -> None:
    create_store_from_arrays(tmp_path, ids=names(3), features=global_feats(3))
    with pytest.raises(ConfigError, match="overwrite=True"):
        FeatureStoreWriter.create(tmp_path, kind="global", dim=8)
    with FeatureStoreWriter.open_for_resume(tmp_path):
        with pytest.raises(ConfigError, match="another writer"):
            FeatureStoreWriter.open_for_resume(tmp_path)
    with FeatureStoreWriter.create(tmp_path, kind="global", dim=2, overwrite=True) as w:
        w.append(["z"], GlobalFeatures(np.array([[1, 0]], np.float32)))
    store = FeatureStore.open(tmp_path)
    assert store.ids == ["z"] and store.dim == 2
    assert np.load(tmp_path / "shard-00000.features.npy").shape == (1, 2)


# ---------------------------------------------------------------- corruption


def flip_byte(path: Path, offset: int = -3) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def test_flipped_byte_raises_on_read_with_shard_name(tmp_path: Path) -> None:
    create_store_from_arrays(tmp_path, ids=names(10), features=global_feats(10), shard_size=4)
    flip_byte(tmp_path / "shard-00001.features.npy")
    store = FeatureStore.open(tmp_path)  # lazy: opening is fine
    np.testing.assert_array_equal(store.get(slice(0, 4)).features, global_feats(10).features[:4])
    with pytest.raises(CorruptDataError, match=r"shard-00001\.features\.npy.*sha256.*resume=True"):
        store.get([5])
    with pytest.raises(CorruptDataError, match="shard-00001"):
        FeatureStore.open(tmp_path, verify="eager")
    unchecked = FeatureStore.open(tmp_path, verify="none").global_features()  # no hashing: reads it
    assert not np.array_equal(unchecked, global_feats(10).features)


def test_flipped_byte_in_ids_file(tmp_path: Path) -> None:
    create_store_from_arrays(tmp_path, ids=names(6), features=global_feats(6), shard_size=3)
    flip_byte(tmp_path / "shard-00000.ids.json", offset=3)
    with pytest.raises(CorruptDataError, match=r"shard-00000\.ids\.json"):
        _ = FeatureStore.open(tmp_path).ids


@pytest.mark.parametrize("verify", ["lazy", "none"])
def test_truncated_and_missing_files(tmp_path: Path, verify: str) -> None:
    create_store_from_arrays(tmp_path, ids=names(9), features=local_feats(9), shard_size=3)
    path = tmp_path / "shard-00002.xy.npy"
    path.write_bytes(path.read_bytes()[:-10])
    (tmp_path / "shard-00001.mask.npy").unlink()
    store = FeatureStore.open(tmp_path, verify=verify)  # type: ignore[arg-type]
    store.get([0, 1, 2])
    with pytest.raises(CorruptDataError, match=r"shard-00002\.xy\.npy has \d+ bytes, the manifest records"):
        store.get([7])
    with pytest.raises(CorruptDataError, match=r"shard-00001\.mask\.npy is missing"):
        store.get([4])


def test_wrong_array_shape_inside_valid_checksum(tmp_path: Path) -> None:
    create_store_from_arrays(tmp_path, ids=names(4), features=global_feats(4))
    manifest = json.loads((tmp_path / "store.json").read_text())
    manifest["dim"] = 4  # manifest now disagrees with the (intact) file
    (tmp_path / "store.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptDataError, match="expected"):
        FeatureStore.open(tmp_path).global_features()


def test_missing_or_bad_manifest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        FeatureStore.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a feature store"):
        FeatureStore.open(tmp_path / "empty")
    create_store_from_arrays(tmp_path / "s", ids=names(3), features=global_feats(3))
    (tmp_path / "s" / "store.json").unlink()
    with pytest.raises(CorruptDataError, match="store.json is missing"):
        FeatureStore.open(tmp_path / "s")
    (tmp_path / "s" / "store.json").write_text("{not json")
    with pytest.raises(CorruptDataError, match="not a valid feature-store manifest"):
        FeatureStore.open(tmp_path / "s")
    (tmp_path / "s" / "store.json").write_text(json.dumps({"format": "asymfuse-feature-store", "version": 99}))
    with pytest.raises(ConfigError, match="version"):
        FeatureStore.open(tmp_path / "s")


def test_manifest_cannot_point_outside_the_store(tmp_path: Path) -> None:
    create_store_from_arrays(tmp_path, ids=names(3), features=global_feats(3))
    manifest = json.loads((tmp_path / "store.json").read_text())
    manifest["shards"][0]["files"]["features"]["file"] = "../secret.npy"
    (tmp_path / "store.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptDataError, match="bad file name"):
        FeatureStore.open(tmp_path)


# ---------------------------------------------------------------- atomicity and resume


def failing_replace(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    real = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst).name == target:
            raise OSError(f"simulated crash while replacing {target}")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def test_crash_between_shard_and_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    feats, ids = global_feats(10), names(10)
    w = FeatureStoreWriter.create(tmp_path, kind="global", dim=8, shard_size=4)
    w.append(ids[:4], GlobalFeatures(feats.features[:4]))  # shard 0 lands
    failing_replace(monkeypatch, "store.json")
    with pytest.raises(OSError, match="simulated crash"):
        w.append(ids[4:8], GlobalFeatures(feats.features[4:8]))  # shard 1 files land, manifest does not
    with pytest.raises(ConfigError, match="earlier shard write failed"):
        w.append(ids[8:], GlobalFeatures(feats.features[8:]))
    w.close()  # must not try to write again
    monkeypatch.undo()
    files = shard_files(tmp_path)
    assert not [f for f in files if f.startswith(".tmp-")]
    assert "shard-00001.features.npy" in files  # complete, but unlisted
    np.load(tmp_path / "shard-00001.features.npy")  # whatever sits under a final name is whole
    store = FeatureStore.open(tmp_path, verify="eager")
    assert store.ids == ids[:4]
    np.testing.assert_array_equal(store.global_features(), feats.features[:4])
    with FeatureStoreWriter.open_for_resume(tmp_path) as w2:
        assert "shard-00001.features.npy" not in shard_files(tmp_path)  # orphan removed
        w2.append(ids[4:], GlobalFeatures(feats.features[4:]))
    store = FeatureStore.open(tmp_path, verify="eager")
    assert store.ids == ids
    np.testing.assert_array_equal(store.global_features(), feats.features)


def test_crash_mid_shard_leaves_nothing_under_final_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w = FeatureStoreWriter.create(tmp_path, kind="local", dim=6, max_local=5, shard_size=3)
    w.append(names(3), local_feats(3))
    failing_replace(monkeypatch, "shard-00001.mask.npy")  # ids, descriptors, weights landed; mask fails
    with pytest.raises(OSError):
        w.append(names(3, "b"), local_feats(3, seed=1))
    monkeypatch.undo()
    w.close()
    files = shard_files(tmp_path)
    assert not [f for f in files if f.startswith(".tmp-")] and "shard-00001.mask.npy" not in files
    store = FeatureStore.open(tmp_path, verify="eager")
    assert len(store) == 3
    assert_local_equal(store.get(slice(0, 3)), local_feats(3))


def test_stray_temp_files_cleaned_when_opened_for_writing(tmp_path: Path) -> None:
    create_store_from_arrays(tmp_path, ids=names(3), features=global_feats(3))
    stray = tmp_path / ".tmp-shard-00001.features.npy.deadbeef"
    stray.write_bytes(b"half a shard")
    other = tmp_path / "notes.txt"
    other.write_text("user file")
    assert FeatureStore.open(tmp_path).ids == names(3)  # readers ignore temp files
    FeatureStoreWriter.open_for_resume(tmp_path).close()
    assert not stray.exists() and other.exists()


def test_resume_drops_damaged_shard_and_later_ones(tmp_path: Path) -> None:
    feats, ids = global_feats(12), names(12)
    create_store_from_arrays(tmp_path, ids=ids, features=feats, shard_size=4)
    path = tmp_path / "shard-00001.features.npy"
    path.write_bytes(path.read_bytes()[:-4])
    with FeatureStoreWriter.open_for_resume(tmp_path) as w:
        assert w.ids == ids[:4] and w.num_committed == 4
        assert not path.exists() and not (tmp_path / "shard-00002.ids.json").exists()
        w.append(ids[4:], GlobalFeatures(feats.features[4:]))
    store = FeatureStore.open(tmp_path, verify="eager")
    assert store.ids == ids
    np.testing.assert_array_equal(store.global_features(), feats.features)
