"""Index folders and loopback servers (port 0) for the searcher tests: real faiss, real gRPC, and the same
gallery in a collection on the embedded Milvus server (``served_any`` runs a test on both backends)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from asymfuse.cloud.features.base import GlobalFeatures, LocalFeatures
from asymfuse.cloud.features.store import create_store_from_arrays
from asymfuse.cloud.index.build import build_index
from asymfuse.cloud.index.faiss_index import IndexConfig
from asymfuse.cloud.service.config import ServerConfig
from asymfuse.cloud.service.server import SearchServer, create_server
from asymfuse.edge.search_client import ClientConfig, SearchClient

SPACE = "space-test-1"
DIM = 32
N = 500
LOCAL_DIM, L = 24, 10
API_KEY = "test-key-123"


def unit_vectors(n: int, d: int, *, seed: int, clusters: int = 50) -> np.ndarray:
    """Clustered unit vectors (a Gaussian mixture): realistic neighbourhoods for ANN recall."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def gallery_ids(n: int) -> list[str]:
    return [f"img{i:05d}.jpg" for i in range(n)]


def write_fused_store(root: Path, x: np.ndarray, *, space: str = SPACE) -> Path:
    create_store_from_arrays(root, ids=gallery_ids(len(x)), features=GlobalFeatures(x),
                             meta={"extractor_name": "aff_fused", "extractor_id": space, "embedding_space_id": space,
                                   "query_spec": {"name": "toy-query-net", "input_size": 64}}).close()
    return root


def local_features(n: int, *, seed: int) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    desc = rng.standard_normal((n, L, LOCAL_DIM)).astype(np.float32)
    desc /= np.linalg.norm(desc, axis=-1, keepdims=True)
    counts = 3 + np.arange(n) % (L - 2)
    mask = np.arange(L)[None, :] >= counts[:, None]
    desc[mask] = 0.0
    return LocalFeatures(descriptors=desc, weights=(~mask).astype(np.float32), mask=mask,
                         xy=np.zeros((n, L, 2), np.float32), scale=np.ones((n, L), np.float32))


@pytest.fixture(scope="session")
def gallery() -> np.ndarray:
    return unit_vectors(N, DIM, seed=0)


@pytest.fixture(scope="session")
def flat_folder(tmp_path_factory, gallery) -> Path:
    root = tmp_path_factory.mktemp("flat")
    build_index([write_fused_store(root / "fused", gallery)], root / "index", config=IndexConfig(factory="Flat"))
    return root / "index"


@pytest.fixture(scope="session")
def ames_folder(tmp_path_factory, gallery) -> tuple[Path, Path, Path]:
    """``(index folder, ames.pt, packed dir)``: a random binary AMES and the gallery's packed codes
    (the last 50 images have none, so they keep their global score)."""
    from asymfuse.cloud.ames.checkpoint import save_ames
    from asymfuse.cloud.ames.model import create_ames
    from asymfuse.cloud.ames.packed_build import build_packed_store

    root = tmp_path_factory.mktemp("ames")
    model = create_ames(local_dim=LOCAL_DIM, binary=True, seed=0, layers=1, ffn_dim=64).eval()
    ckpt = save_ames(model, root / "ames.pt", lam=0.5, gamma=0.5)
    ids = gallery_ids(N)[: N - 50]
    local = create_store_from_arrays(root / "local", ids=ids, features=local_features(len(ids), seed=1),
                                     meta={"extractor_id": "toy-local", "extractor_name": "toy_local"})
    with local as store:
        build_packed_store(model, store, root / "packed", max_local=L)
    build_index([write_fused_store(root / "fused", gallery)], root / "index", ames=ckpt, packed=root / "packed")
    return root / "index", ckpt, root / "packed"


def copy_folder(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, symlinks=True)
    return dst


@pytest.fixture
def served(tmp_path, flat_folder) -> Iterator[tuple[SearchServer, int]]:
    """A fresh copy of the flat index folder behind a loopback server with one API key."""
    folder = copy_folder(flat_folder, tmp_path / "index")
    server, port = create_server(ServerConfig(index_dir=str(folder), api_keys=(API_KEY,), max_k=200, max_batch=8,
                                              max_message_bytes=1 << 20, snapshot_interval_s=0))
    yield server, port
    server.stop(0)


def milvus_collection(target, fused: Path, **kw):
    """Build the fused store into ``target`` with ``index build --backend milvus``'s code (FLAT: exact)."""
    from asymfuse.cloud.index.milvus_build import build_milvus_index
    from asymfuse.cloud.index.milvus_config import MilvusIndexConfig

    build_milvus_index([fused], target, config=MilvusIndexConfig(index_type="FLAT"), log=lambda _line: None, **kw)
    return target


@pytest.fixture
def served_milvus(milvus_target, flat_folder) -> Iterator[tuple[SearchServer, int]]:
    """``served``'s gallery and settings, in a fresh Milvus collection on the embedded server."""
    target = milvus_collection(milvus_target, flat_folder.parent / "fused")
    server, port = create_server(ServerConfig(index_dir=target.url, api_keys=(API_KEY,), max_k=200, max_batch=8,
                                              max_message_bytes=1 << 20, snapshot_interval_s=0))
    yield server, port
    server.stop(0)


@pytest.fixture(params=["faiss", "milvus"])
def served_any(request) -> tuple[SearchServer, int]:
    """``served`` on either backend: the faiss index folder, or the same gallery in a Milvus collection."""
    return request.getfixturevalue("served" if request.param == "faiss" else "served_milvus")


def client(port: int, *, space: str = SPACE, key: str | None = API_KEY, **kw) -> SearchClient:
    settings = {"retries": 0, "timeout_s": 20, **kw}
    return SearchClient(ClientConfig(target=f"127.0.0.1:{port}", embedding_space_id=space, api_key=key, **settings))
