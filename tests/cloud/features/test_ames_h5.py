"""AMES HDF5 import/export: column order, round trip, validation."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from asymfuse.cloud.features.ames_h5 import export_ames_h5, import_ames_h5
from asymfuse.cloud.features.base import GlobalFeatures, LocalFeatures
from asymfuse.cloud.features.store import FeatureStore, create_store_from_arrays
from asymfuse.edge.errors import ConfigError, CorruptDataError, MissingDependencyError, ShapeError

KEYS = ("descriptors", "weights", "mask", "xy", "scale")


def local_feats(n: int, n_loc: int = 6, d: int = 4, seed: int = 0) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    mask = np.arange(n_loc)[None, :] >= rng.integers(1, n_loc + 1, size=n)[:, None]
    desc = rng.normal(size=(n, n_loc, d)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=2, keepdims=True)
    zero = mask[..., None]
    return LocalFeatures(descriptors=np.where(zero, 0, desc).astype(np.float32),
                         weights=np.where(mask, 0, rng.uniform(0.1, 3, (n, n_loc))).astype(np.float32),
                         mask=mask,
                         xy=np.where(zero, 0, rng.uniform(0, 640, (n, n_loc, 2))).astype(np.float32),
                         scale=np.where(mask, 0, rng.uniform(2, 40, (n, n_loc))).astype(np.float32))


def raw_ames_file(path: Path, rows: np.ndarray, ids: list[str] | None = None) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=rows)
        if ids is not None:
            f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
    return path


def test_round_trip_store_h5_store(tmp_path: Path) -> None:
    feats, ids = local_feats(13), [f"im{i}" for i in range(13)]
    src = create_store_from_arrays(tmp_path / "a", ids=ids, features=feats, shard_size=5)
    out = export_ames_h5(src, tmp_path / "x.h5", batch_size=4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    back = import_ames_h5(out, tmp_path / "b", shard_size=3)
    assert back.ids == ids and (back.kind, back.dim, back.max_local) == ("local", 4, 6)
    got = back.get(np.arange(13))
    for key in KEYS:
        np.testing.assert_array_equal(getattr(got, key), getattr(feats, key), err_msg=key)
    assert back.meta["source"] == "ames_h5"


def test_export_column_order(tmp_path: Path) -> None:
    feats = local_feats(3)
    store = create_store_from_arrays(tmp_path / "s", ids=["a", "b", "c"], features=feats)
    export_ames_h5(store, tmp_path / "x.h5")
    with h5py.File(tmp_path / "x.h5", "r") as f:
        rows = f["features"][()]
        assert [s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]] == ["a", "b", "c"]
    assert rows.shape == (3, 6, 9) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[..., 0], feats.xy[..., 0])
    np.testing.assert_array_equal(rows[..., 1], feats.xy[..., 1])
    np.testing.assert_array_equal(rows[..., 2], feats.scale)
    np.testing.assert_array_equal(rows[..., 3], feats.mask.astype(np.float32))
    np.testing.assert_array_equal(rows[..., 4], feats.weights)
    np.testing.assert_array_equal(rows[..., 5:], feats.descriptors)


def test_import_hand_written_file_maps_columns(tmp_path: Path) -> None:
    # one image, two slots (second is padding), d = 2; every column gets a distinct value
    rows = np.array([[[10, 20, 3, 0, 0.5, 0.6, 0.8],
                      [0, 0, 0, 1, 0, 0, 0]]], dtype=np.float32)
    store = import_ames_h5(raw_ames_file(tmp_path / "r.h5", rows), tmp_path / "s", ids=["only"])
    got = store.get([0])
    np.testing.assert_array_equal(got.xy[0, 0], [10, 20])
    assert got.scale[0, 0] == 3 and got.weights[0, 0] == 0.5
    np.testing.assert_array_equal(got.mask[0], [False, True])
    np.testing.assert_array_equal(got.descriptors[0, 0], np.float32([0.6, 0.8]))
    assert store.ids == ["only"]


def test_import_float16_keeps_float16_descriptors(tmp_path: Path) -> None:
    feats = local_feats(4)
    rows = np.concatenate([feats.xy, feats.scale[..., None], feats.mask[..., None], feats.weights[..., None],
                           feats.descriptors], axis=2).astype(np.float16)
    store = import_ames_h5(raw_ames_file(tmp_path / "h.h5", rows), tmp_path / "s")
    assert store.desc_dtype == "float16" and store.ids == ["0", "1", "2", "3"]
    got = store.get(np.arange(4))
    np.testing.assert_array_equal(got.descriptors, rows[..., 5:].astype(np.float32))
    np.testing.assert_array_equal(got.xy, rows[..., :2].astype(np.float32))
    export_ames_h5(store, tmp_path / "h2.h5", dtype="float16")
    with h5py.File(tmp_path / "h2.h5", "r") as f:
        np.testing.assert_array_equal(f["features"][()], rows)


def test_nan_in_padding_is_zeroed_but_nan_in_valid_slot_rejected(tmp_path: Path) -> None:
    rows = np.zeros((2, 3, 7), np.float32)
    rows[:, 2, 3] = 1  # last slot is padding
    rows[0, 2, 5] = np.nan
    store = import_ames_h5(raw_ames_file(tmp_path / "ok.h5", rows), tmp_path / "ok")
    assert np.all(store.get([0]).descriptors == 0)
    rows[1, 0, 6] = np.inf
    with pytest.raises(CorruptDataError, match="slot 0 of image 1"):
        import_ames_h5(raw_ames_file(tmp_path / "bad.h5", rows), tmp_path / "bad")
    assert not (tmp_path / "bad" / "store.json").exists()


def test_bad_files_raise_corrupt_data(tmp_path: Path) -> None:
    rows = np.zeros((2, 3, 7), np.float32)
    rows[0, 1, 3] = 0.5  # mask must be 0 or 1 (e.g. a swapped weight column)
    with pytest.raises(CorruptDataError, match="mask column"):
        import_ames_h5(raw_ames_file(tmp_path / "m.h5", rows), tmp_path / "m")
    assert not (tmp_path / "m" / "store.json").exists()
    with pytest.raises(CorruptDataError, match="5 \\+ d"):
        import_ames_h5(raw_ames_file(tmp_path / "w.h5", np.zeros((2, 3, 5), np.float32)), tmp_path / "w")
    with pytest.raises(CorruptDataError, match="dtype"):
        import_ames_h5(raw_ames_file(tmp_path / "i.h5", np.zeros((2, 3, 7), np.int32)), tmp_path / "i")
    with h5py.File(tmp_path / "n.h5", "w") as f:
        f.create_dataset("other", data=np.zeros(3))
    with pytest.raises(CorruptDataError, match="no 'features'"):
        import_ames_h5(tmp_path / "n.h5", tmp_path / "n")
    (tmp_path / "t.h5").write_bytes(b"plain text")
    with pytest.raises(CorruptDataError, match="not a readable HDF5"):
        import_ames_h5(tmp_path / "t.h5", tmp_path / "t")
    with pytest.raises(CorruptDataError, match="does not exist"):
        import_ames_h5(tmp_path / "missing.h5", tmp_path / "x")
    with pytest.raises(ConfigError, match="one id per image"):
        import_ames_h5(raw_ames_file(tmp_path / "z.h5", np.zeros((2, 3, 7), np.float32)), tmp_path / "z", ids=["a"])


def test_export_global_store_and_bad_args(tmp_path: Path) -> None:
    store = create_store_from_arrays(tmp_path / "g", ids=["a"], features=GlobalFeatures(np.ones((1, 3), np.float32)))
    with pytest.raises(ShapeError, match="only local stores"):
        export_ames_h5(store, tmp_path / "g.h5")
    loc = create_store_from_arrays(tmp_path / "l", ids=["a"], features=local_feats(1))
    with pytest.raises(ConfigError, match="dtype"):
        export_ames_h5(loc, tmp_path / "l.h5", dtype="float64")


def test_export_replaces_existing_file_atomically(tmp_path: Path) -> None:
    target = tmp_path / "x.h5"
    target.write_bytes(b"old")
    store = create_store_from_arrays(tmp_path / "s", ids=["a", "b"], features=local_feats(2))
    export_ames_h5(store, target)
    assert FeatureStore.open(tmp_path / "s").ids == ["a", "b"]
    with h5py.File(target, "r") as f:
        assert f["features"].shape == (2, 6, 9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "x.h5"]


def test_missing_h5py_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(MissingDependencyError, match=r"asymfuse\[cloud\]"):
        import_ames_h5(tmp_path / "x.h5", tmp_path / "s")
