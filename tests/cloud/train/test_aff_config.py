"""TrainConfig validation and dict round trip."""

from __future__ import annotations

import pytest

from asymfuse.cloud.train.aff_config import SCHEMES, TrainConfig, config_from_dict
from asymfuse.cloud.train.schedule import lr_factor
from asymfuse.edge.errors import ConfigError


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_builds_and_round_trips(scheme):
    kw = {"gallery_features": ("gem_lite2",)} if scheme in ("bct", "reg", "lce", "csd") else {}
    cfg = TrainConfig(scheme=scheme, **kw)
    assert config_from_dict(cfg.to_dict()) == cfg
    assert cfg.trains_query == (scheme != "mixer_only")
    assert cfg.trains_mixer == (scheme in ("joint", "two_stage", "mixer_only"))


@pytest.mark.parametrize("bad, match", [
    ({"scheme": "nope"}, "scheme='nope' is not supported"),
    ({"alpha": 1.5}, "alpha must lie in"),
    ({"embed_dim": 100, "mixer_heads": 8}, "divisible"),
    ({"scheme": "two_stage", "epochs": 4, "stage1_epochs": 4}, "stage1_epochs"),
    ({"precision": "fp16"}, "needs a CUDA device"),
    ({"batch_size": 0}, "positive int"),
])
def test_bad_values_name_the_fix(bad, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**bad)


def test_replace_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown training config keys"):
        TrainConfig().replace(lr_max=1.0)


def test_differences_lists_changed_fields():
    assert TrainConfig().differences(TrainConfig(lr=0.1)) == {"lr": (1e-3, 0.1)}


def test_linear_and_cosine_schedules_by_hand():
    assert lr_factor("linear", step=0, total=10) == 1.0
    assert lr_factor("linear", step=5, total=10) == 0.5
    assert lr_factor("cosine", step=5, total=10) == pytest.approx(0.5)
    assert lr_factor("linear", step=0, total=10, warmup=2) == 0.5
    assert lr_factor("constant", step=9, total=10) == 1.0
