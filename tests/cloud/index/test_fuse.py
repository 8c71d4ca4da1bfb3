"""``index fuse``: a saved mixer over stored features equals the mixer run directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from asymfuse.cloud.cli.main import main
from asymfuse.cloud.features.base import GlobalFeatures, LocalFeatures
from asymfuse.cloud.features.store import create_store_from_arrays
from asymfuse.cloud.index.fuse import fuse_stores
from asymfuse.cloud.models.fusion import FeatureSlot, FusionInputs, GallerySchema
from asymfuse.cloud.models.mixers import create_mixer
from asymfuse.cloud.models.mixers.checkpoint import load_mixer, save_mixer
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError

N, GD, LD, L = 12, 10, 6, 5


def _stores(root, *, gd=GD, ids=None):
    rng = np.random.default_rng(0)
    ids = ids or [f"img{i:03d}" for i in range(N)]
    g = rng.standard_normal((len(ids), gd)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    d = rng.standard_normal((len(ids), L, LD)).astype(np.float32)
    d /= np.linalg.norm(d, axis=2, keepdims=True)
    mask = np.zeros((len(ids), L), bool)
    mask[:, 3:] = True
    d[mask] = 0
    loc = LocalFeatures(descriptors=d, weights=(~mask).astype(np.float32), mask=mask,
                        xy=np.zeros((len(ids), L, 2), np.float32), scale=np.ones((len(ids), L), np.float32))
    create_store_from_arrays(root / "g", ids=ids, features=GlobalFeatures(g), meta={"extractor_name": "g"})
    create_store_from_arrays(root / "l", ids=ids, features=loc, meta={"extractor_name": "l"})
    return [root / "g", root / "l"], g, d, mask


@pytest.fixture()
def mixer_file(tmp_path):
    schema = GallerySchema((FeatureSlot("g", "global", GD), FeatureSlot("l", "local", LD, max_local=L)))
    mixer = create_mixer("transformer", schema=schema, embed_dim=8, layers=1, heads=2, seed=3).eval()
    return save_mixer(mixer, tmp_path / "mixer.pt", embedding_space_id="es-0123456789abcdef"), mixer


def test_fused_store_equals_the_mixer_run_directly(tmp_path, mixer_file):
    path, mixer = mixer_file
    roots, g, d, mask = _stores(tmp_path)
    store = fuse_stores(path, roots, tmp_path / "fused", batch_size=5)
    with torch.no_grad():
        want = mixer(FusionInputs((torch.from_numpy(g),), (torch.from_numpy(d),), (torch.from_numpy(mask),))).numpy()
    np.testing.assert_allclose(np.asarray(store.global_features()), want, atol=1e-5)
    assert store.ids == [f"img{i:03d}" for i in range(N)]
    assert store.meta["embedding_space_id"] == "es-0123456789abcdef"
    assert [s["name"] for s in store.meta["gallery_schema"]["slots"]] == ["g", "l"]
    rebuilt, info = load_mixer(path)
    assert info.embedding_space_id == "es-0123456789abcdef" and info.query_model_spec is None


def test_cli_fuse_with_explicit_stores(tmp_path, mixer_file, capsys):
    path, _ = mixer_file
    roots, _, _, _ = _stores(tmp_path)
    argv = ["index", "fuse", "--mixer", str(path), "--stores", *map(str, roots), "--out", str(tmp_path / "o")]
    assert main(argv) == 0 and "fused 12 items" in capsys.readouterr().out
    assert main(argv) == 2  # the output store exists: refused, never overwritten


def test_store_of_another_dimension_is_refused(tmp_path, mixer_file):
    path, _ = mixer_file
    roots, *_ = _stores(tmp_path, gd=GD + 1)
    with pytest.raises(ShapeError, match="disagree on its dimension"):
        fuse_stores(path, roots, tmp_path / "fused")
    assert not (tmp_path / "fused" / "store.json").exists()


def test_wrong_store_count_and_other_files_are_refused(tmp_path, mixer_file):
    path, _ = mixer_file
    roots, *_ = _stores(tmp_path)
    with pytest.raises(ConfigError, match="one store per feature"):
        fuse_stores(path, roots[:1], tmp_path / "fused")
    bad = tmp_path / "bad.pt"
    torch.save({"format": "something else"}, bad)
    with pytest.raises(CorruptDataError, match="not an asymfuse mixer file"):
        fuse_stores(bad, roots, tmp_path / "fused")
    with pytest.raises(CorruptDataError, match="does not exist; train one"):
        fuse_stores(tmp_path / "missing.pt", roots, tmp_path / "fused")
