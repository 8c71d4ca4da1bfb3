"""Bench tiers, overrides and the no-training row helpers (single features, pooling, failure rows)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from asymfuse.cloud.bench.aff_bench import _run_row
from asymfuse.cloud.bench.aff_bench_config import DEFAULT_QUERY_ARCHS, QUICK_QUERY_ARCHS, QUICK_TRAIN, AFFBenchConfig
from asymfuse.cloud.bench.aff_rows import RowOutcome, clean_history, single_vectors
from asymfuse.cloud.features.base import GlobalFeatures, LocalFeatures
from asymfuse.cloud.features.gallery_table import load_gallery_table
from asymfuse.cloud.features.store import create_store_from_arrays
from asymfuse.edge.errors import ConfigError, UnknownNameError


def test_tiers_share_one_base_config_and_differ_where_documented():
    quick, default = AFFBenchConfig.quick(), AFFBenchConfig.default()
    assert quick.tier == "quick" and default.tier == "default"
    assert quick.query_archs == QUICK_QUERY_ARCHS and default.query_archs == DEFAULT_QUERY_ARCHS
    for key, value in QUICK_TRAIN.items():
        assert getattr(quick.train, key) == value, key
    diff = quick.train.differences(default.train)
    assert set(diff) == {"gallery_features", "epochs", "stage1_epochs"}
    assert 0 < default.train.stage1_epochs < default.train.epochs  # the two-stage row is valid
    with pytest.raises(UnknownNameError):
        AFFBenchConfig.preset("slow")


def test_overrides_route_to_bench_or_training_and_reject_unknown_keys():
    cfg = AFFBenchConfig.quick().with_overrides({"epochs": 4, "embed_dim": 64, "query_archs": "mobilenet_v2",
                                                 "blocks": ["asymmetric", "symmetric"], "device": "cpu"})
    assert cfg.train.epochs == 4 and cfg.train.stage1_epochs == 2 and cfg.train.embed_dim == 64
    assert cfg.query_archs == ("mobilenet_v2",)
    assert cfg.blocks == ("symmetric", "asymmetric")  # table order
    assert cfg.features_dir == "" and cfg.with_overrides({"features_dir": "demo/features"}).features_dir == \
        "demo/features"  # another run's feature cache
    with pytest.raises(ConfigError, match="features_dir"):
        AFFBenchConfig.quick(features_dir=3)
    with pytest.raises(ConfigError, match="bogus"):
        cfg.with_overrides({"bogus": 1})
    with pytest.raises(ConfigError):
        cfg.with_overrides({"blocks": ["everything"]})
    with pytest.raises(ConfigError):
        cfg.with_overrides({"query_archs": ["resnet9000"]})
    with pytest.raises(ConfigError):
        cfg.with_overrides({"embed_dim": 30})  # not divisible by mixer_heads


def test_single_vectors_mean_pool_local_sets_and_normalise_globals(tmp_path: Path):
    rng = np.random.default_rng(0)
    g = rng.standard_normal((3, 5)).astype(np.float32)
    desc = rng.standard_normal((3, 4, 6)).astype(np.float32)
    mask = np.array([[False, False, True, True], [False, True, True, True], [False] * 4])
    desc[mask] = 0.0
    local = LocalFeatures(descriptors=desc, weights=(~mask).astype(np.float32), mask=mask,
                          xy=np.zeros((3, 4, 2), np.float32), scale=np.ones((3, 4), np.float32))
    ids = ["a", "b", "c"]
    create_store_from_arrays(tmp_path / "glob", ids=ids, features=GlobalFeatures(g)).close()
    create_store_from_arrays(tmp_path / "loc", ids=ids, features=local).close()
    xg = single_vectors(load_gallery_table([tmp_path / "glob"], ids=ids, local_tokens=4))
    np.testing.assert_allclose(xg, g / np.linalg.norm(g, axis=1, keepdims=True), atol=1e-6)
    xl = single_vectors(load_gallery_table([tmp_path / "loc"], ids=ids, local_tokens=4))
    expect = np.stack([desc[i][~mask[i]].mean(axis=0) for i in range(3)])
    np.testing.assert_allclose(xl, expect / np.linalg.norm(expect, axis=1, keepdims=True), atol=1e-5)


def test_a_failing_row_is_reported_and_a_good_row_keeps_its_metrics():
    def boom() -> RowOutcome:
        raise ValueError("stores | disagree\non dim")

    bad = _run_row("asymmetric", "bct", "setting", boom, {})
    assert bad.status.startswith("failed: ValueError: stores / disagree on dim")
    assert bad.mAP_medium is None and bad.runtime_s is not None
    good = _run_row("query archs", "mobilenet_v2", "s",
                    lambda: RowOutcome({"mAP_medium": 50.0, "mAP_hard": 20.0, "mAP_easy": 70.0},
                                       history=clean_history([{"epoch": 1, "loss": 2.0, "step_losses": [1.0]}])),
                    {"gflops": 0.1, "mode": "asymmetric", "query_arch": "mobilenet_v2"})
    assert good.ok and good.mAP_medium == 50.0 and good.metrics["mAP_easy"] == 70.0
    assert good.history == ({"epoch": 1, "loss": 2.0},) and good.gflops == 0.1
