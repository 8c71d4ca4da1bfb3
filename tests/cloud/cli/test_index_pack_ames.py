"""``asymfuse index pack-ames``: packs a real local store with a binary checkpoint; refuses an fp one."""

from __future__ import annotations

import numpy as np
import torch

from asymfuse.cloud.ames.binary import pack_signs
from asymfuse.cloud.ames.checkpoint import save_ames
from asymfuse.cloud.ames.model import create_ames
from asymfuse.cloud.ames.packed_store import PackedLocalStore
from asymfuse.cloud.cli.main import main
from asymfuse.cloud.features.base import LocalFeatures
from asymfuse.cloud.features.store import create_store_from_arrays


def _local_store(root, *, n=5, length=12, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    desc = rng.normal(size=(n, length, dim)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=-1, keepdims=True)
    mask = np.zeros((n, length), bool)
    mask[:, 9:] = True
    desc[mask] = 0.0
    feats = LocalFeatures(desc, np.where(mask, 0.0, 1.0).astype(np.float32), mask,
                          np.zeros((n, length, 2), np.float32), np.zeros((n, length), np.float32))
    create_store_from_arrays(root, ids=[f"im{i}" for i in range(n)], features=feats).close()
    return desc, mask


def test_pack_ames_writes_the_codes_of_the_checkpoint(tmp_path, capsys):
    desc, mask = _local_store(tmp_path / "local")
    model = create_ames(local_dim=16, binary=True, seed=3, layers=1)
    save_ames(model, tmp_path / "ames.pt")
    out = tmp_path / "packed"
    assert main(["index", "pack-ames", "--ames", str(tmp_path / "ames.pt"), "--store", str(tmp_path / "local"),
                 "--max-local", "6", "--out", str(out)]) == 0
    assert "96 bytes of codes per image" in capsys.readouterr().out
    with PackedLocalStore.open(out, model=model) as packed:
        codes, counts = packed.get(np.arange(5))
    want = pack_signs((torch.from_numpy(desc[:, :6]) @ model.remap_local[0].W.detach()).numpy() >= 0)
    np.testing.assert_array_equal(counts, 6)
    np.testing.assert_array_equal(codes, want)


def test_pack_ames_refuses_a_full_precision_checkpoint(tmp_path, capsys):
    _local_store(tmp_path / "local")
    save_ames(create_ames(local_dim=16, binary=False, layers=1), tmp_path / "fp.pt")
    assert main(["index", "pack-ames", "--ames", str(tmp_path / "fp.pt"), "--store", str(tmp_path / "local"),
                 "--out", str(tmp_path / "packed")]) == 2
    assert "binary" in capsys.readouterr().err
    assert not (tmp_path / "packed").exists()
