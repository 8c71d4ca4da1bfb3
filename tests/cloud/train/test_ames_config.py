"""AMESTrainConfig: defaults, validation, unknown keys, round trips."""

from __future__ import annotations

import pytest
from asymfuse.cloud.train.ames_config import RESUME_SAFE_FIELDS, AMESTrainConfig, config_from_dict
from asymfuse.edge.errors import ConfigError


def test_defaults_follow_the_paper():
    cfg = AMESTrainConfig()
    assert (cfg.lr, cfg.weight_decay, cfg.beta, cfg.schedule) == (2e-4, 5e-4, 10.0, "cosine")
    assert (cfg.model_dim, cfg.heads, cfg.layers, cfg.ffn_dim) == (128, 2, 5, 1024)
    assert cfg.data_source == "benchmark" and cfg.local_feature == "local_lite2" and cfg.global_feature == "gem_lite1"
    assert cfg.universal == () and not cfg.distill and cfg.max_length == 64


def test_unknown_key_is_refused_with_the_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown AMES training config keys \['epoch'\].*'epochs'"):
        config_from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="mapping"):
        config_from_dict(["lq", 3])  # type: ignore[arg-type]


def test_round_trip_and_universal_from_a_list():
    cfg = config_from_dict({"universal": [10, 400], "binary": True, "lq": 50})
    assert cfg.universal == (10, 400) and cfg.max_length == 399
    assert cfg.to_dict()["universal"] == [10, 400]
    assert config_from_dict(cfg.to_dict()) == cfg
    assert cfg.replace(universal=None).universal == ()
    teacher = cfg.replace(distill_teacher="t.pt", teacher_lq=600, teacher_lx=500)
    assert teacher.distill and teacher.max_length == 600
    assert cfg.model_kwargs()["binary"] is True
    assert cfg.val_global == "gem_lite1" and cfg.replace(val_global_feature="fused").val_global == "fused"


@pytest.mark.parametrize("changes, match", [
    ({"universal": [400, 10]}, "1 <= lo < hi"),
    ({"universal": [10]}, "two ints"),
    ({"universal": "10-400"}, "universal must be a list"),
    ({"lq": 0}, "lq must be a positive int"),
    ({"pos_fraction": 1.5}, r"pos_fraction must lie in \[0, 1\]"),
    ({"lr": 0}, "lr must be > 0"),
    ({"beta": -1}, "beta must be a number >= 0"),
    ({"binary": True, "model_dim": 20, "heads": 2}, "multiple of 8"),
    ({"model_dim": 30, "heads": 4}, "divisible by heads"),
    ({"schedule": "step"}, "schedule='step' is not supported"),
    ({"precision": "fp16"}, "needs a CUDA device"),
    ({"global_feature": "", "global_store": ""}, "global_feature or global_store"),
    ({"binary": "yes"}, "binary must be true or false"),
    ({"warmup_steps": -1}, "warmup_steps must be an int >= 0"),
])
def test_bad_values_are_refused(changes, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(changes)


def test_resume_safe_fields_exist():
    names = set(AMESTrainConfig().to_dict())
    assert set(RESUME_SAFE_FIELDS) <= names
    assert "seed" not in RESUME_SAFE_FIELDS and "lr" not in RESUME_SAFE_FIELDS
