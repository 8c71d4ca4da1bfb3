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


def test_fusion_weights_and_start_shrink_are_checked_and_reach_the_mixer():
    from asymfuse.cloud.train.aff_setup import mixer_kwargs

    cfg = TrainConfig(gallery_features=("gem_lite1", "sift"), fusion_weights=[1, 0.5], start_shrink=0.1)
    assert cfg.fusion_weights == (1, 0.5)
    assert mixer_kwargs(cfg)["anchor_weights"] == (1, 0.5) and mixer_kwargs(cfg)["anchor_shrink"] == 0.1
    concat = cfg.replace(mixer="concat")
    assert mixer_kwargs(concat) == {"whiten": True, "input_weights": (1, 0.5), "shrink": 0.1}
    with pytest.raises(ConfigError, match="one weight per feature"):
        TrainConfig(gallery_features=("gem_lite1", "sift"), fusion_weights=(1.0,))
    with pytest.raises(ConfigError, match="finite numbers > 0"):
        TrainConfig(gallery_features=("gem_lite1", "sift"), fusion_weights=(1.0, -1.0))
    with pytest.raises(ConfigError, match="start_shrink must be >= 0"):
        TrainConfig(start_shrink=-1.0)
    with pytest.raises(ConfigError, match="mixer_start=pca"):
        TrainConfig(gallery_features=("gem_lite1", "sift"), fusion_weights=(1.0, 0.5), mixer_start="random")
