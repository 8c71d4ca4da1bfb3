"""The pooled query-trunk cache: rows equal to a fresh computation, a key per weights / preprocessing /
image set, damaged files recomputed, and a cached ridge start equal to an uncached one."""

from __future__ import annotations

import numpy as np
import torch

from asymfuse.cloud.data.records import TrainingSet
from asymfuse.cloud.models.query_net import create_query_net
from asymfuse.cloud.train.aff_data import AFFImageDataset, load_training_set
from asymfuse.cloud.train.pooled_cache import cached_pooled, pooled_trunk_features, trunk_fingerprint
from asymfuse.cloud.train.query_start import fit_query_head

CPU = torch.device("cpu")


def _net(seed=0):
    torch.manual_seed(seed)  # the random trunk init draws from the global RNG
    return create_query_net("mobilenet_v2", embed_dim=8, input_size=48, seed=seed, pooling="gem_l2").eval()


def test_cache_rows_equal_a_fresh_computation_and_are_reused(bench, tmp_path):
    ts = load_training_set("benchmark", bench.root)
    net = _net()
    ref = pooled_trunk_features(net, AFFImageDataset(training_set=ts, spec=net.spec, augment=None, seed=0),
                                epochs=[0], device=CPU)
    cold = cached_pooled(net, ts, cache_dir=tmp_path, preload_side=0, device=CPU)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and cold.dtype == np.float32 and cold.shape == (len(ts), net.whiten.in_features)
    np.testing.assert_array_equal(cold.astype(np.float64), ref)  # lossless: the trunk computes in float32
    stamp = files[0].stat().st_mtime_ns
    warm = cached_pooled(net, ts, cache_dir=tmp_path, preload_side=0, device=CPU)
    np.testing.assert_array_equal(warm, cold)
    assert files[0].stat().st_mtime_ns == stamp  # read, not rewritten


def test_the_key_follows_weights_bn_statistics_preprocessing_and_images(bench, tmp_path):
    ts = load_training_set("benchmark", bench.root)
    half = TrainingSet(name="half", root=ts.root, paths=ts.paths[::2], labels=ts.labels[::2],
                       class_names=ts.class_names)
    net = _net()
    base = trunk_fingerprint(net, preload_side=0)
    assert trunk_fingerprint(_net(), preload_side=0) == base  # same weights, same key
    assert trunk_fingerprint(net, preload_side=64) != base
    assert trunk_fingerprint(_net(seed=1), preload_side=0) != base
    other = _net()
    bn = next(m for m in other.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean += 0.1
    assert trunk_fingerprint(other, preload_side=0) != base
    with torch.no_grad():
        other = _net()
        other.pool.p.fill_(4.0)
    assert trunk_fingerprint(other, preload_side=0) != base
    with torch.no_grad():
        other = _net()
        other.whiten.weight.zero_()  # the head is not part of the pooled rows
    assert trunk_fingerprint(other, preload_side=0) == base
    cached_pooled(net, ts, cache_dir=tmp_path, preload_side=0, device=CPU)
    cached_pooled(net, half, cache_dir=tmp_path, preload_side=0, device=CPU)
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_a_damaged_cache_file_is_recomputed(bench, tmp_path):
    ts = load_training_set("benchmark", bench.root)
    net = _net()
    good = cached_pooled(net, ts, cache_dir=tmp_path, preload_side=0, device=CPU)
    (path,) = tmp_path.glob("*.npy")
    path.write_bytes(b"not a numpy file")
    np.testing.assert_array_equal(cached_pooled(net, ts, cache_dir=tmp_path, preload_side=0, device=CPU), good)
    np.save(path, good[:3])  # truncated rows
    np.testing.assert_array_equal(cached_pooled(net, ts, cache_dir=tmp_path, preload_side=0, device=CPU), good)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_cached_ridge_start_equals_an_uncached_one(bench, tmp_path):
    ts = load_training_set("benchmark", bench.root)
    targets = np.random.default_rng(0).standard_normal((len(ts), 8))
    heads = []
    for cache in (None, tmp_path, tmp_path):  # uncached, cold, warm
        net = _net()
        fit_query_head(net, sources=[(ts, targets)], ridge=0.5, cache_dir=cache)
        heads.append((net.whiten.weight.detach().clone(), net.whiten.bias.detach().clone()))
    for w, b in heads[1:]:
        torch.testing.assert_close(w, heads[0][0], rtol=0, atol=0)
        torch.testing.assert_close(b, heads[0][1], rtol=0, atol=0)
