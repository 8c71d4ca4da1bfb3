"""`asymfuse index build --backend milvus`: batches with progress, resume after an interruption (no duplicates),
idempotent reruns, and refusals with the fix."""

from __future__ import annotations

import numpy as np
import pytest

from asymfuse.cloud.cli.main import main
from asymfuse.cloud.features.base import GlobalFeatures
from asymfuse.cloud.features.store import create_store_from_arrays
from asymfuse.cloud.index.milvus_build import build_milvus_index
from asymfuse.cloud.index.milvus_config import MilvusIndexConfig
from asymfuse.cloud.index.milvus_index import MilvusIndex


def _store(root, n, *, space, seed=0, dim=16):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    create_store_from_arrays(root, ids=[f"{root.name}-{i}" for i in range(n)], features=GlobalFeatures(x),
                             meta={"extractor_id": space, "embedding_space_id": space, "query_spec": {"name": "q"}}
                             ).close()
    return x


class Interrupted(Exception):
    pass


def test_an_interrupted_build_resumes_without_duplicates(tmp_path, capsys, milvus_target):
    a = _store(tmp_path / "a", 250, space="s1")
    b = _store(tmp_path / "b", 100, space="s1", seed=1)
    features = [str(tmp_path / "a"), str(tmp_path / "b")]
    lines = []

    def crash_after_two_batches(line):
        lines.append(line)
        if len(lines) == 2:
            raise Interrupted  # as if the process died after acknowledged inserts

    with pytest.raises(Interrupted):
        build_milvus_index(features, milvus_target, config=MilvusIndexConfig.from_factory("HNSW16"), batch_size=100,
                           log=crash_after_two_batches)
    assert lines[-1].startswith("[index build] vectors 200/350")
    args = ["index", "build", "--backend", "milvus", "--uri", milvus_target.uri, "--collection",
            milvus_target.collection, "--features", *features, "--factory", "HNSW16", "--batch-size", "100"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "vectors 350/350 (200 already there)" in out
    assert f"serve it with `asymfuse serve --index {milvus_target.url}`" in out
    with MilvusIndex.open(milvus_target) as index:
        assert index.size == 350 and index.config.index_type == "HNSW" and index.meta.model_spec == {"name": "q"}
        _, ids = index.search(np.concatenate([a[:1], b[:1]]), k=1)
        assert ids[:, 0].tolist() == [0, 250] and index.metadata([250]) == [{"key": "b-0"}]
    assert main(args) == 0 and "nothing to do" in capsys.readouterr().out
    assert main(args[:-4] + ["--factory", "Flat"]) == 2  # another build into the same collection
    assert "holds another build" in capsys.readouterr().err


def test_milvus_build_refusals(tmp_path, capsys):
    _store(tmp_path / "a", 10, space="s1")
    base = ["index", "build", "--features", str(tmp_path / "a")]
    assert main(base) == 2 and "give --out" in capsys.readouterr().err
    assert main(base + ["--backend", "milvus", "--uri", "http://127.0.0.1:1"]) == 2
    assert "needs --uri (e.g. http://localhost:19530) and --collection" in capsys.readouterr().err
    milvus = base + ["--backend", "milvus", "--uri", "http://127.0.0.1:1", "--collection", "c"]
    assert main(milvus + ["--index-type", "DISKANN"]) == 2 and "DISKANN is refused" in capsys.readouterr().err
    assert main(milvus + ["--index-type", "ANNOY"]) == 2 and "unknown Milvus index type" in capsys.readouterr().err
    assert main(milvus + ["--factory", "OPQ8,IVF4,PQ8"]) == 2 and "no Milvus counterpart" in capsys.readouterr().err
    assert main(milvus) == 2 and "127.0.0.1:1 is unreachable" in capsys.readouterr().err
