"""Pair sampling of AMES training: kNN vs brute force, label rules, determinism, lengths, data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from asymfuse.cloud.train.ames_config import AMESTrainConfig
from asymfuse.cloud.train.ames_pairs import (
    BatchLengths,
    PairDataset,
    PairSampler,
    TrainingLocals,
    global_knn,
    global_rows,
    prepare_ames_data,
)
from asymfuse.edge.errors import ConfigError, CorruptDataError

from tests.cloud.conftest import GD, LD, instance_of


def _brute_knn(x: np.ndarray, k: int) -> np.ndarray:
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def _clusters(n: int = 60, classes: int = 6, d: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = rng.standard_normal((classes, d))[labels] + 0.9 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_global_knn_matches_numpy_brute_force():
    x, _ = _clusters()
    for k in (1, 5, 59, 500):
        got = global_knn(x, k=k)
        want = _brute_knn(x, min(k, len(x) - 1))
        np.testing.assert_array_equal(got, want)
        assert not (got == np.arange(len(x))[:, None]).any()


def test_global_knn_drops_self_even_among_duplicates():
    x = np.repeat(np.eye(3, dtype=np.float32), 3, axis=0)  # 3 identical rows per direction
    nn = global_knn(x, k=2)
    assert nn.shape == (9, 2)
    for i in range(9):
        assert i not in nn[i] and set(nn[i]) == set(range(3 * (i // 3), 3 * (i // 3) + 3)) - {i}
    with pytest.raises(ConfigError, match="at least 2"):
        global_knn(x[:1], k=1)


def test_partners_follow_the_label_rules_against_brute_force_knn():
    x, labels = _clusters()
    k = 8
    sampler = PairSampler(labels=labels, knn=global_knn(x, k=k), seed=3, pos_fraction=0.5)
    ref = _brute_knn(x, k)
    n_pos = 0
    for epoch in range(4):
        for i in range(len(labels)):
            j, target = sampler.partner(i, epoch=epoch)
            assert j != i
            if target == 1.0:
                n_pos += 1
                assert labels[j] == labels[i]
            else:
                assert labels[j] != labels[i]
                hard = [c for c in ref[i] if labels[c] != labels[i]]
                if hard:
                    assert j in hard  # a hard negative: from the global top-k, another label
    assert 0.35 < n_pos / (4 * len(labels)) < 0.65


def test_partner_draws_are_a_function_of_seed_epoch_and_index():
    x, labels = _clusters()
    knn = global_knn(x, k=6)
    a = PairSampler(labels=labels, knn=knn, seed=1)
    b = PairSampler(labels=labels, knn=knn, seed=1)
    idx = np.arange(len(labels))
    pa, ta = a.pairs(idx, epoch=2)
    pb, tb = b.pairs(idx[::-1], epoch=2)  # another order, another object: same draws
    np.testing.assert_array_equal(pa, pb[::-1])
    np.testing.assert_array_equal(ta, tb[::-1])
    other_epoch = a.pairs(idx, epoch=3)[0]
    other_seed = PairSampler(labels=labels, knn=knn, seed=2).pairs(idx, epoch=2)[0]
    assert (other_epoch != pa).any() and (other_seed != pa).any()
    ds = PairDataset(a)
    ds.set_epoch(2)
    item = ds[7]
    assert (int(item["query"]), int(item["partner"]), float(item["target"])) == (7, pa[7], ta[7])
    with pytest.raises(ConfigError):
        ds.set_epoch(-1)


def test_fallbacks_singleton_label_and_knn_without_other_labels():
    labels = np.array([0, 0, 0, 1])
    knn = np.array([[1, 2], [0, 2], [0, 1], [0, 1]])  # the kNN of 0..2 holds only their own label
    s = PairSampler(labels=labels, knn=knn, seed=0, pos_fraction=0.0)
    assert all(s.partner(i, epoch=0) == (3, 0.0) for i in range(3))  # random image of another label
    s1 = PairSampler(labels=labels, knn=knn, seed=0, pos_fraction=1.0)
    j, t = s1.partner(3, epoch=0)  # label 1 has one image: no positive exists
    assert t == 0.0 and labels[j] == 0
    with pytest.raises(ConfigError, match="at least 2 labels"):
        PairSampler(labels=np.zeros(4, int), knn=knn, seed=0)
    with pytest.raises(ConfigError, match="must agree"):
        PairSampler(labels=labels[:3], knn=knn, seed=0)


def test_universal_lengths_vary_within_the_range_and_repeat():
    fixed = BatchLengths(lq=30, lx=20)
    assert {fixed.at(epoch=e, step=s) for e in range(3) for s in range(5)} == {(30, 20)}
    uni = BatchLengths(lq=30, lx=20, universal=(10, 400), seed=5)
    draws = [uni.at(epoch=e, step=s) for e in range(4) for s in range(25)]
    flat = np.array(draws).ravel()
    assert flat.min() >= 10 and flat.max() < 400 and len(set(draws)) > 90
    assert draws == [BatchLengths(lq=1, lx=1, universal=(10, 400), seed=5).at(epoch=e, step=s)
                     for e in range(4) for s in range(25)]
    assert BatchLengths(lq=1, lx=1, universal=(3, 4)).at(epoch=0, step=0) == (3, 3)
    with pytest.raises(ConfigError):
        BatchLengths(lq=1, lx=1, universal=(5, 5))


def test_training_locals_compact_valid_slots_first_and_pad_batches():
    desc = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    pad = np.array([[True, False, True, False], [False, False, False, True]])
    loc = TrainingLocals(desc, pad)
    np.testing.assert_array_equal(loc.pad, [[False, False, True, True], [False, False, False, True]])
    np.testing.assert_array_equal(loc.descriptors[0, :2], desc[0, [1, 3]])
    assert (loc.descriptors[loc.pad] == 0).all() and loc.counts.tolist() == [2, 3]
    d, p = loc.batch(np.array([1, 0]), length=6)
    assert d.shape == (2, 6, 3) and p.dtype == torch.bool
    np.testing.assert_array_equal(p.numpy(), [[False] * 3 + [True] * 3, [False] * 2 + [True] * 4])
    np.testing.assert_array_equal(d[0, :3].numpy(), desc[1, :3])
    assert loc.valid_descriptors(length=1).shape == (2, 3)
    bad = desc.copy()
    bad[1, 0, 0] = np.nan
    with pytest.raises(CorruptDataError, match="training image 1"):
        TrainingLocals(bad, pad)
    bad[1, 0, 0], bad[0, 0, 0] = 0.0, np.nan  # NaN in a padding slot is ignored
    TrainingLocals(bad, pad)


def test_prepare_data_reads_the_cache_and_mines_with_labels(ames_setup):
    bench, feats = ames_setup
    cfg = AMESTrainConfig(data_root=str(bench.root), features_dir=str(feats), local_feature="syn_l",
                          global_feature="syn_g", lq=5, lx=7, hard_negatives_k=4, progress=False)
    data = prepare_ames_data(cfg, is_main=True, barrier=lambda: None)
    ts = data.training_set
    assert len(data.locals) == len(ts) and data.locals.dim == LD and data.locals.descriptors.shape[1] == 7
    from asymfuse.cloud.train.feature_cache import training_ids

    ids = training_ids(ts)
    assert [instance_of(i) for i in ids] == [int(ts.class_names[c]) for c in ts.labels]
    x = global_rows(feats / "syn_g" / "train" / "gallery", ids=ids)
    assert x.shape == (len(ts), GD)
    np.testing.assert_array_equal(data.sampler.knn, _brute_knn(x, 4))
    assert data.val is not None and data.val.query_locals.descriptors.shape[1] == 5
    assert data.val.gallery_locals.descriptors.shape[1] == 7 and data.val.global_x.shape[1] == GD
    with pytest.raises(ConfigError, match="holds local features"):
        global_rows(feats / "syn_l" / "train" / "gallery", ids=ids)
    no_val = prepare_ames_data(cfg.replace(val=""), is_main=True, barrier=lambda: None)
    assert no_val.val is None
