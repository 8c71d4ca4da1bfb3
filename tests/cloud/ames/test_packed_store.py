"""The packed binary gallery store, checked against brute-force binarisation and model.project."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asymfuse.cloud.ames.binary import pack_signs
from asymfuse.cloud.ames.model import create_ames
from asymfuse.cloud.ames.packed_build import build_packed_store
from asymfuse.cloud.ames.packed_format import MANIFEST
from asymfuse.cloud.ames.packed_store import PackedLocalStore, projection_digest
from asymfuse.cloud.features.base import LocalFeatures
from asymfuse.cloud.features.store import create_store_from_arrays
from asymfuse.cloud.features.store_reader import FeatureStore
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError

D, L_SRC, N = 24, 10, 9


def _local_features(seed: int = 0) -> LocalFeatures:
    """Unit-norm descriptors; padding in varying places (trailing, interleaved, none, everything)."""
    rng = np.random.default_rng(seed)
    desc = rng.standard_normal((N, L_SRC, D)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=-1, keepdims=True)
    mask = rng.random((N, L_SRC)) < 0.35  # interleaved padding
    mask[0] = False  # full
    mask[1] = True  # empty
    mask[2] = np.arange(L_SRC) >= 3  # trailing padding, 3 valid
    mask[3] = np.arange(L_SRC) < 4  # leading padding
    desc[mask] = 0.0
    return LocalFeatures(descriptors=desc, weights=rng.random((N, L_SRC)).astype(np.float32), mask=mask,
                         xy=np.zeros((N, L_SRC, 2), np.float32), scale=np.ones((N, L_SRC), np.float32))


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> FeatureStore:
    root = tmp_path_factory.mktemp("local") / "store"
    ids = [f"img{i:02d}" for i in range(N)]
    # shard_size 4: batches of 3 in the build straddle shards
    return create_store_from_arrays(root, ids=ids, features=_local_features(), shard_size=4,
                                    meta={"extractor_id": "test-local-v1", "extractor_name": "toy_local"})


@pytest.fixture(scope="module")
def model():
    return create_ames(local_dim=D, binary=True, seed=0, layers=1, ffn_dim=64).eval()


@pytest.fixture
def packed(local, model, tmp_path) -> PackedLocalStore:
    return build_packed_store(model, local, tmp_path / "packed", max_local=6, batch_size=3)


def _valid(local: FeatureStore, i: int) -> np.ndarray:
    f = local.get([i])
    return np.asarray(f.descriptors[0][~f.mask[0]])  # (count, d), store order


def test_codes_equal_brute_force(local, model, packed):
    codes, counts = packed.get(np.arange(N))
    assert codes.shape == (N, 6, 16) and codes.dtype == np.uint8
    for i in range(N):
        x = _valid(local, i)[:6]
        assert counts[i] == len(x)
        if len(x):
            bits = model.remap_local[0].bits(F.normalize(torch.from_numpy(x), dim=-1)).numpy()
            assert np.array_equal(codes[i, : len(x)], pack_signs(bits)), i
        assert not codes[i, len(x):].any()  # the rest is zero
    assert counts.tolist()[:4] == [6, 0, 3, 6]
    assert np.array_equal(packed.counts([3, 1, 2]), counts[[3, 1, 2]])


def test_manifest_and_metadata(local, model, packed):
    assert len(packed) == N and packed.ids == local.ids
    assert packed.max_local == 6 and packed.bits == 128 and packed.bytes_per_descriptor == 16
    assert packed.bytes_per_image() == 96 and packed.bytes_per_image(4) == 64 and packed.bytes_per_image(48) == 96
    assert packed.projection_sha256 == projection_digest(model)
    assert packed.local_feature == "toy_local" and packed.extractor_id == "test-local-v1"
    m = json.loads((packed.root / MANIFEST).read_text())
    assert m["format"] == "asymfuse-ames-packed" and m["version"] == 1 and m["num_items"] == N
    assert np.load(packed.root / "counts.npy").dtype == np.int32
    assert sorted(p.name for p in packed.root.iterdir()) == sorted([MANIFEST, "ids.json", "codes.npy", "counts.npy"])
    assert not [p for p in packed.root.parent.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("length", [4, 6, 9])
def test_tokens_equal_model_project(local, model, packed, length):
    idx = np.array([5, 0, 3, 1, 7, 2, 8])  # any order
    tok, pad = packed.tokens(model, idx, length=length, device="cpu")
    assert tok.shape == (len(idx), length, 128) and pad.shape == (len(idx), length) and pad.dtype == torch.bool
    keep = min(length, 6)
    desc = np.zeros((len(idx), length, D), np.float32)
    ref_pad = np.ones((len(idx), length), bool)
    for r, i in enumerate(idx):
        x = _valid(local, i)[:keep]
        desc[r, : len(x)], ref_pad[r, : len(x)] = x, False
    assert np.array_equal(pad.numpy(), ref_pad)
    with torch.no_grad():
        ref = model.project(torch.from_numpy(desc), torch.from_numpy(ref_pad), gallery=True)
        tok_valid, ref_valid = tok[~pad], ref[torch.from_numpy(~ref_pad)]
    assert torch.allclose(tok_valid, ref_valid, atol=1e-6, rtol=0)
    assert torch.allclose(tok, ref, atol=1e-6, rtol=0)  # padding slots too (all-+1 codes)


def test_tokens_empty_and_bad_arguments(model, packed):
    tok, pad = packed.tokens(model, np.array([], dtype=np.int64), length=5)
    assert tok.shape == (0, 5, 128) and pad.shape == (0, 5)
    for bad in ([N], [-1], np.array([[0]]), np.array([0.5])):
        with pytest.raises(ConfigError):
            packed.counts(bad)
    with pytest.raises(ConfigError):
        packed.tokens(model, [0], length=0)


def test_model_checks(local, model, packed):
    other = create_ames(local_dim=D, binary=True, seed=1, layers=1, ffn_dim=64).eval()
    with pytest.raises(ConfigError, match="another projection W"):
        packed.tokens(other, [0], length=4)
    with pytest.raises(ConfigError, match="another projection W"):
        PackedLocalStore.open(packed.root, model=other)
    fp = create_ames(local_dim=D, binary=False, seed=0, layers=1, ffn_dim=64).eval()
    for call in (lambda: packed.tokens(fp, [0], length=4), lambda: PackedLocalStore.open(packed.root, model=fp)):
        with pytest.raises(ConfigError, match="full-precision"):
            call()
    with pytest.raises(ConfigError, match="full-precision"):
        build_packed_store(fp, local, packed.root.parent / "fp", max_local=4)
    wrong_dim = create_ames(local_dim=D + 8, binary=True, layers=1, ffn_dim=64)
    with pytest.raises(ShapeError, match=str(D)):
        build_packed_store(wrong_dim, local, packed.root.parent / "wd", max_local=4)
    PackedLocalStore.open(packed.root, model=model).close()  # the right model passes


def test_check_index(packed):
    packed.check_index(N)
    packed.check_index(packed.ids)
    with pytest.raises(CorruptDataError, match="does not match its index"):
        packed.check_index(N + 1)
    with pytest.raises(CorruptDataError, match="does not match its index"):
        packed.check_index(packed.ids[::-1])


def test_close_and_context_manager(model, packed):
    with PackedLocalStore.open(packed.root) as s:
        assert s.counts([0]).tolist() == [6]
    with pytest.raises(ConfigError, match="closed"):
        s.tokens(model, [0], length=3)
    packed.close()
    packed.close()


def test_overwrite(local, model, packed):
    with pytest.raises(ConfigError, match="exists"):
        build_packed_store(model, local, packed.root, max_local=3)
    s = build_packed_store(model, local, packed.root, max_local=3, overwrite=True)
    assert s.max_local == 3 and s.bytes_per_image() == 48
    assert sorted(p.name for p in packed.root.parent.iterdir()) == ["packed"]
    (packed.root.parent / "other").mkdir()
    (packed.root.parent / "other" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a packed local store"):
        build_packed_store(model, local, packed.root.parent / "other", max_local=3, overwrite=True)


# ------------------------------------------------------------------------------ corruption


def _resave(path: Path, arr: np.ndarray) -> None:
    np.save(path, arr)


@pytest.mark.parametrize("what", ["codes", "counts", "ids"])
def test_size_not_matching_index(packed, what):
    root = packed.root
    packed.close()
    if what == "ids":
        ids = json.loads((root / "ids.json").read_text())
        (root / "ids.json").write_text(json.dumps(ids[:-1]))
    else:
        _resave(root / f"{what}.npy", np.load(root / f"{what}.npy")[:-1])
    with pytest.raises(CorruptDataError, match="does not match its index.*build_packed_store"):
        PackedLocalStore.open(root)


def test_flipped_bytes_fail_checksum(packed):
    root = packed.root
    codes = np.load(root / "codes.npy")
    codes[2, 0, 0] ^= 0xFF
    _resave(root / "codes.npy", codes)
    with pytest.raises(CorruptDataError, match="sha256.*build_packed_store"):
        PackedLocalStore.open(root)
    PackedLocalStore.open(root, verify=False).close()  # sizes still agree


def test_counts_out_of_range(packed):
    counts = np.load(packed.root / "counts.npy")
    counts[0] = 7
    _resave(packed.root / "counts.npy", counts)
    with pytest.raises(CorruptDataError, match="outside"):
        PackedLocalStore.open(packed.root)


@pytest.mark.parametrize("text", ["{not json", '{"format": "something-else", "version": 1}', "[]"])
def test_corrupt_manifest(packed, text):
    (packed.root / MANIFEST).write_text(text)
    with pytest.raises(CorruptDataError, match=MANIFEST):
        PackedLocalStore.open(packed.root)


def test_manifest_with_bad_fields(packed):
    m = json.loads((packed.root / MANIFEST).read_text())
    m["files"]["codes"]["file"] = "../elsewhere.npy"
    (packed.root / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(CorruptDataError, match="inconsistent"):
        PackedLocalStore.open(packed.root)


def test_missing_files(packed, tmp_path):
    (packed.root / "codes.npy").unlink()
    with pytest.raises(CorruptDataError, match="codes.npy is missing"):
        PackedLocalStore.open(packed.root)
    (packed.root / MANIFEST).unlink()
    with pytest.raises(CorruptDataError, match="missing"):
        PackedLocalStore.open(packed.root)
    with pytest.raises(ConfigError, match="does not exist"):
        PackedLocalStore.open(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a packed local store"):
        PackedLocalStore.open(tmp_path / "empty")


def _tampered_store(tmp_path: Path, *, padding: bool) -> tuple[FeatureStore, str, np.ndarray]:
    """A local store with one NaN in its last shard, in a valid slot or (``padding``) a padding slot.

    The shard file keeps its size, so only a checksum would notice: open with ``verify='none'``.
    Returns the opened store, the id of the tampered item and the clean features' mask.
    """
    root = tmp_path / "nanstore"
    feats = _local_features(seed=1)
    create_store_from_arrays(root, ids=[f"x{i}" for i in range(N)], features=feats, shard_size=4).close()
    shard = json.loads((root / "store.json").read_text())["shards"][-1]
    path = root / shard["files"]["descriptors"]["file"]
    desc = np.load(path)
    mask = feats.mask[shard["start"]:]
    row, slot = (int(v[0]) for v in np.nonzero(mask if padding else ~mask))
    desc[row, slot, 3] = np.nan
    np.save(path, desc)
    return FeatureStore.open(root, verify="none"), f"x{shard['start'] + row}", feats.mask


def test_nan_midway_leaves_nothing(model, tmp_path):
    """NaN in a valid slot of the last shard: CorruptDataError naming the item; no folder, no temp files."""
    store, item, _ = _tampered_store(tmp_path, padding=False)
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    with store, pytest.raises(CorruptDataError, match=f"{item}.*re-extract"):
        build_packed_store(model, store, out_parent / "packed", max_local=6, batch_size=2)
    assert list(out_parent.iterdir()) == []


def test_nan_in_padding_is_ignored(model, tmp_path):
    store, _, mask = _tampered_store(tmp_path, padding=True)
    with store:
        packed = build_packed_store(model, store, tmp_path / "packed", max_local=L_SRC, batch_size=2)
    clean = create_store_from_arrays(tmp_path / "clean", ids=[f"x{i}" for i in range(N)],
                                     features=_local_features(seed=1))
    ref = build_packed_store(model, clean, tmp_path / "ref", max_local=L_SRC)
    assert np.array_equal(packed.get(np.arange(N))[0], ref.get(np.arange(N))[0])
    assert np.array_equal(packed.counts(np.arange(N)), (~mask).sum(axis=1))
