"""Shared fixtures of the AMES tests (serving in ames/, training in train/): the small real-photo
benchmark of the AFF training tests, plus synthetic label-correlated feature stores dropped into the feature cache (the
"existing store wins" rule), so no extractor runs. Also the embedded Milvus server of the Milvus backend tests
(index/ and service/), started once per test session."""

from __future__ import annotations

import uuid
import zlib

import numpy as np
import pytest
from asymfuse.cloud.data.benchmark import BenchmarkConfig, build_benchmark
from asymfuse.cloud.features.base import GlobalFeatures, LocalFeatures
from asymfuse.cloud.features.store import create_store_from_arrays

GD, LD, L = 16, 16, 12  # global dim, local dim, local slots per image


@pytest.fixture(scope="session")
def small_bench(tmp_path_factory):
    """The AFF tests' 6-photo benchmark (same folder and config, so one build serves both)."""
    config = BenchmarkConfig(seed=3, photos=("astronaut", "camera", "chelsea", "coffee", "coins", "rocket"),
                             n_views=3, image_max_side=128, distractors_per_split=2, multiview_distractors=2)
    return build_benchmark(tmp_path_factory.getbasetemp() / "aff-small-bench", config=config)


def instance_of(item_id: str) -> int:
    """The benchmark instance of an id (``inst012_v01.jpg`` -> 12); distractors get their own."""
    return int(item_id[4:7]) if item_id.startswith("inst") else 10_000 + zlib.crc32(item_id.encode()) % 1000


def global_features(ids, *, seed: int) -> GlobalFeatures:
    """Instance prototype + noise, unit-norm: a global feature that carries the label."""
    rows = []
    for i in ids:
        proto = np.random.default_rng([seed, instance_of(i)]).standard_normal(GD)
        noise = np.random.default_rng([seed + 1, zlib.crc32(i.encode())]).standard_normal(GD)
        rows.append(proto + 1.0 * noise)
    x = np.asarray(rows, dtype=np.float32)
    return GlobalFeatures(x / np.linalg.norm(x, axis=1, keepdims=True))


def local_features(ids, *, seed: int) -> LocalFeatures:
    """Per image 4..L descriptors: half drawn around instance prototypes (shared by the instance's
    images), half noise; valid slots first."""
    n = len(ids)
    d = np.zeros((n, L, LD), np.float32)
    mask = np.ones((n, L), bool)
    for r, i in enumerate(ids):
        rng = np.random.default_rng([seed, zlib.crc32(i.encode())])
        k = 4 + r % (L - 3)
        protos = np.random.default_rng([seed, instance_of(i)]).standard_normal((L, LD))
        pick = rng.choice(L, size=k, replace=False)
        x = protos[pick] + 0.5 * rng.standard_normal((k, LD))
        x[k // 2:] = rng.standard_normal((k - k // 2, LD))
        d[r, :k] = x / np.linalg.norm(x, axis=1, keepdims=True)
        mask[r, :k] = False
    return LocalFeatures(descriptors=d, weights=(~mask).astype(np.float32), mask=mask,
                         xy=np.zeros((n, L, 2), np.float32), scale=np.ones((n, L), np.float32))


def write_store(root, ids, kind: str, *, seed: int) -> None:
    feats = global_features(ids, seed=seed) if kind == "global" else local_features(ids, seed=seed)
    name = root.parts[-3]
    create_store_from_arrays(root, ids=list(ids), features=feats,
                             meta={"extractor_name": name, "extractor_id": f"synthetic-{name}"})


@pytest.fixture(scope="session")
def ames_setup(tmp_path_factory, small_bench):
    """``(benchmark, features_dir)`` with ``syn_g`` (global) and ``syn_l`` (local) stores for the
    train split and the val split (gallery and queries)."""
    from asymfuse.cloud.train.aff_data import load_training_set
    from asymfuse.cloud.train.ames_config import AMESTrainConfig
    from asymfuse.cloud.train.ames_pairs import load_val_dataset
    from asymfuse.cloud.train.feature_cache import training_ids

    feats = tmp_path_factory.mktemp("ames") / "features"
    ts = load_training_set("benchmark", small_bench.root)
    val = load_val_dataset(AMESTrainConfig(data_root=str(small_bench.root)))
    for name, kind, seed in (("syn_g", "global", 1), ("syn_l", "local", 2)):
        write_store(feats / name / "train" / "gallery", training_ids(ts), kind, seed=seed)
        write_store(feats / name / "val" / "gallery", val.gallery_ids, kind, seed=seed)
        write_store(feats / name / "val" / "queries", val.query_ids, kind, seed=seed)
    return small_bench, feats


@pytest.fixture(scope="session")
def milvus_server():
    """An embedded Milvus 2.3.5 standalone server in a temp folder (the ``milvus`` wheel), started once;
    stopping it deletes the folder. Tests that use it skip, with the reason, where it cannot start."""
    from asymfuse.cloud.index.milvus_server import EmbeddedMilvus
    from asymfuse.edge.errors import AsymfuseError

    try:
        server = EmbeddedMilvus.start(timeout_s=120)
    except (AsymfuseError, OSError) as exc:
        pytest.skip(f"the embedded Milvus server cannot start here: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def milvus_target(milvus_server):
    """A fresh collection name on the session's embedded server (nothing is created yet); the test's
    collections (the name and ``<name>_*``) are dropped afterwards, so the server's memory stays small."""
    from pymilvus import MilvusClient

    from asymfuse.cloud.index.milvus_config import MilvusTarget

    target = MilvusTarget(uri=milvus_server.uri, collection=f"t_{uuid.uuid4().hex[:12]}", timeout_s=30)
    yield target
    client = MilvusClient(uri=milvus_server.uri, timeout=30)
    try:
        for name in client.list_collections():
            if name == target.collection or name.startswith(f"{target.collection}_"):
                client.drop_collection(name)
    finally:
        client.close()
