"""`asymfuse index build` from the command line: a folder the searcher opens, refusals with the fix."""

from __future__ import annotations

import numpy as np

from asymfuse.cloud.cli.main import main
from asymfuse.cloud.features.base import GlobalFeatures
from asymfuse.cloud.features.store import create_store_from_arrays
from asymfuse.cloud.index.durable import DurableIndex


def _store(root, n, *, space, seed=0, dim=16):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    create_store_from_arrays(root, ids=[f"{root.name}-{i}" for i in range(n)], features=GlobalFeatures(x),
                             meta={"extractor_id": space, "embedding_space_id": space}).close()
    return x


def test_build_two_stores_then_open(tmp_path, capsys):
    a = _store(tmp_path / "a", 30, space="s1")
    b = _store(tmp_path / "b", 20, space="s1", seed=1)
    rc = main(["index", "build", "--features", str(tmp_path / "a"), str(tmp_path / "b"), "--factory", "HNSW32",
               "--out", str(tmp_path / "ix")])
    assert rc == 0 and "indexed 50 items" in capsys.readouterr().out
    with DurableIndex.open(tmp_path / "ix") as index:
        assert index.size == 50 and index.meta.embedding_space_id == "s1"
        assert index.meta.checksums["snapshot.afs"] and index.meta.config["factory"] == "HNSW32"
        _, ids = index.search(np.concatenate([a[:1], b[:1]]), k=1)
        assert ids[:, 0].tolist() == [0, 30]
        assert index.metadata([30]) == [{"key": "b-0"}]


def test_refusals_leave_nothing_behind(tmp_path, capsys):
    _store(tmp_path / "a", 10, space="s1")
    _store(tmp_path / "b", 10, space="s2")
    assert main(["index", "build", "--features", str(tmp_path / "a"), str(tmp_path / "b"), "--out",
                 str(tmp_path / "ix")]) == 2
    assert "different embedding spaces" in capsys.readouterr().err
    assert main(["index", "build", "--features", str(tmp_path / "a"), "--ames", "x.pt", "--out",
                 str(tmp_path / "ix")]) == 2
    assert "--ames and --packed together" in capsys.readouterr().err
    assert main(["index", "build", "--features", str(tmp_path / "a"), "--factory", "IVF64,Flat", "--out",
                 str(tmp_path / "ix")]) == 2
    assert "at least 64 training vectors" in capsys.readouterr().err
    assert not (tmp_path / "ix").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".ix")]
    (tmp_path / "ix").mkdir()
    assert main(["index", "build", "--features", str(tmp_path / "a"), "--out", str(tmp_path / "ix")]) == 2
    assert "already exists" in capsys.readouterr().err
