"""AFF evaluation helpers: query embeddings, batched fusion of a gallery table, retrieval metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from asymfuse.cloud.data.benchmark import dataset_name
from asymfuse.cloud.data.registry import create_dataset
from asymfuse.cloud.embed import embed_images, embed_pixels, embed_queries, fuse_table
from asymfuse.cloud.eval.evaluate import evaluate_aff, evaluate_ranking, rank_features
from asymfuse.cloud.features.base import GlobalFeatures, LocalFeatures
from asymfuse.cloud.features.gallery_table import load_gallery_table
from asymfuse.cloud.features.store import create_store_from_arrays
from asymfuse.cloud.models.fusion import FusionInputs
from asymfuse.cloud.models.query_net import create_query_net
from asymfuse.edge.errors import ConfigError, ShapeError
from asymfuse.edge.preprocess import load_image, preprocess
from torch import nn


@pytest.fixture(scope="module")
def test_split(bench):
    return create_dataset("revisitop", root=bench.root / "test", name=dataset_name(bench.config.name, "test"))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_query_net("mobilenet_v2", embed_dim=16, input_size=64)


# ---------------------------------------------------------------- query side

def test_embed_queries_equals_the_net_on_preprocessed_crops(net, test_split):
    net.train()
    xq = embed_queries(net, test_split, batch_size=2)
    assert net.training  # mode restored
    assert xq.shape == (test_split.nq, 16) and xq.dtype == np.float32
    net.eval()
    with torch.no_grad():
        ref = np.concatenate([net(torch.from_numpy(preprocess(test_split.load_query_image(i), net.spec))).numpy()
                              for i in range(test_split.nq)])
    np.testing.assert_allclose(xq, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(xq, axis=1), 1.0, atol=1e-5)
    assert test_split.query_bbx is not None and test_split.query_bbx[0] is not None  # really crops


def test_embed_images_accepts_arrays_and_paths(net, test_split):
    paths = list(test_split.gallery_paths[:3])
    from_paths = embed_images(net, paths, batch_size=2)
    from_arrays = embed_images(net, [load_image(p) for p in paths], batch_size=3)
    np.testing.assert_allclose(from_paths, from_arrays, atol=1e-6)
    assert embed_images(net, []).shape == (0, 16)
    with pytest.raises(ConfigError):
        embed_images(net, paths, batch_size=0)
    with pytest.raises(ConfigError, match="lives on cpu"):
        embed_images(net, paths, device="meta")


def test_embed_pixels_equals_embed_images_on_the_same_preprocessing(net, test_split):
    paths = list(test_split.gallery_paths[:5])
    pixels = preprocess([load_image(p) for p in paths], net.spec)
    np.testing.assert_allclose(embed_pixels(net, pixels, batch_size=2), embed_images(net, paths, batch_size=4),
                               atol=1e-6)
    with pytest.raises(ShapeError, match="embed_images for raw images"):
        embed_pixels(net, np.zeros((2, 64, 64, 3), np.float32))


def test_a_diverged_net_is_reported(test_split):
    broken = create_query_net("mobilenet_v2", embed_dim=4, input_size=32)
    with torch.no_grad():
        broken.whiten.weight.fill_(float("nan"))
    with pytest.raises(ShapeError, match="NaN"):
        embed_queries(broken, test_split)
    with pytest.raises(ConfigError, match="spec"):
        embed_queries(nn.Linear(2, 2), test_split)


# ---------------------------------------------------------------- gallery side

class _StubMixer(nn.Module):
    """Linear map of each global input + masked mean of each local set, summed and normalised."""

    def __init__(self, dims_g, dims_l, out=5):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.wg = nn.ParameterList([nn.Parameter(torch.randn(d, out, generator=g)) for d in dims_g])
        self.wl = nn.ParameterList([nn.Parameter(torch.randn(d, out, generator=g)) for d in dims_l])

    def forward(self, x: FusionInputs) -> torch.Tensor:
        z = sum(t @ w for t, w in zip(x.globals_, self.wg))
        for t, m, w in zip(x.locals_, x.local_pads, self.wl):
            keep = (~m).unsqueeze(-1).float()
            z = z + ((t * keep).sum(1) / keep.sum(1).clamp(min=1)) @ w
        return torch.nn.functional.normalize(z, dim=-1)


def _reference(mixer, g, desc, mask):
    z = g @ mixer.wg[0].detach().numpy()
    keep = (~mask)[..., None]
    mean = (desc * keep).sum(1) / np.maximum(keep.sum(1), 1)
    z = z + mean @ mixer.wl[0].detach().numpy()
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def test_fuse_table_equals_a_numpy_reference(tmp_path):
    rng = np.random.default_rng(0)
    n, ids = 11, [f"i{k}" for k in range(11)]
    g = rng.normal(size=(n, 3)).astype(np.float32)
    desc = rng.normal(size=(n, 4, 2)).astype(np.float32)
    mask = np.arange(4)[None] >= rng.integers(1, 5, size=n)[:, None]
    desc[mask] = 0
    create_store_from_arrays(tmp_path / "g", ids=ids, features=GlobalFeatures(features=g))
    create_store_from_arrays(tmp_path / "l", ids=ids, features=LocalFeatures(
        descriptors=desc, weights=np.ones((n, 4), np.float32), mask=mask,
        xy=np.zeros((n, 4, 2), np.float32), scale=np.ones((n, 4), np.float32)))
    table = load_gallery_table([tmp_path / "g", tmp_path / "l"], ids=ids, local_tokens=4)
    mixer = _StubMixer([3], [2])
    mixer.train()
    out = fuse_table(mixer, table, batch_size=4)
    assert mixer.training
    assert out.shape == (n, 5) and out.dtype == np.float32
    np.testing.assert_allclose(out, _reference(mixer, g, desc, mask), atol=1e-5)
    with torch.no_grad():
        mixer.wg[0].fill_(float("nan"))
    with pytest.raises(ShapeError, match="NaN"):
        fuse_table(mixer, table)


# ---------------------------------------------------------------- metrics

def _perfect(ds):
    """Query q = e_q; gallery image j = normalised sum of e_q over the queries it is easy/hard for."""
    xq = np.eye(ds.nq, dtype=np.float32)
    xb = np.zeros((ds.nb, ds.nq), dtype=np.float32)
    for q, entry in enumerate(ds.gnd):
        xb[np.concatenate([entry["easy"], entry["hard"]]), q] = 1.0
    xb /= np.maximum(np.linalg.norm(xb, axis=1, keepdims=True), 1e-12)
    return xq, xb


def test_perfect_vectors_score_100(test_split):
    xq, xb = _perfect(test_split)
    metrics = evaluate_aff(dataset=test_split, query_vectors=xq, gallery_vectors=xb)
    for key in ("mAP_easy", "mAP_medium", "mAP_hard"):
        assert metrics[key] == pytest.approx(100.0)
    worst = evaluate_aff(dataset=test_split, query_vectors=xq, gallery_vectors=-xb)
    assert worst["mAP_medium"] < 100.0
    rng = np.random.default_rng(0)
    rq, rb = rng.normal(size=(test_split.nq, 8)), rng.normal(size=(test_split.nb, 8))
    assert evaluate_aff(dataset=test_split, query_vectors=rq, gallery_vectors=rb) == evaluate_ranking(
        rank_features(rq.astype(np.float32), rb.astype(np.float32)), test_split)


def test_evaluate_aff_rejects_bad_inputs(test_split):
    xq, xb = _perfect(test_split)
    with pytest.raises(ShapeError, match="nq"):
        evaluate_aff(dataset=test_split, query_vectors=xq[:-1], gallery_vectors=xb)
    with pytest.raises(ShapeError, match="nb"):
        evaluate_aff(dataset=test_split, query_vectors=xq, gallery_vectors=xb[:-1])
    with pytest.raises(ShapeError, match="same embedding space"):
        evaluate_aff(dataset=test_split, query_vectors=xq, gallery_vectors=np.ones((test_split.nb, 2)))
    bad = xb.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ShapeError, match="NaN"):
        evaluate_aff(dataset=test_split, query_vectors=xq, gallery_vectors=bad)
    with pytest.raises(ShapeError):
        evaluate_aff(dataset=test_split, query_vectors=xq[0], gallery_vectors=xb)
