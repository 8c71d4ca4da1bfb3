"""TrainConfig validation and dict round trip."""

from __future__ import annotations

import json

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
    from asymfuse.cloud.models.fusion import FeatureSlot, GallerySchema
    from asymfuse.cloud.train.aff_setup import mixer_kwargs

    schema = GallerySchema(slots=(FeatureSlot("gem_lite1", "global", 8), FeatureSlot("sift", "local", 4, max_local=3)))
    cfg = TrainConfig(gallery_features=("gem_lite1", "sift"), fusion_weights={"sift": 0.5}, start_shrink=0.1)
    assert cfg.fusion_weights == (("sift", 0.5),)
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg  # JSON lists come back as pairs
    kw = mixer_kwargs(cfg, schema)
    assert kw["anchor_weights"] == (1.0, 0.5) and kw["anchor_shrink"] == 0.1
    assert mixer_kwargs(cfg.replace(mixer="concat"), schema) == {"whiten": True, "input_weights": (1.0, 0.5),
                                                                  "shrink": 0.1}
    # a single-gallery baseline of the same tier: the weight of a feature it does not use is unused
    single = cfg.replace(scheme="bct", gallery_features=("gem_lite1",))
    assert mixer_kwargs(single, GallerySchema(slots=schema.slots[:1]))["anchor_weights"] == ()
    with pytest.raises(ConfigError, match="finite number > 0"):
        TrainConfig(gallery_features=("gem_lite1", "sift"), fusion_weights=(("sift", -1.0),))
    with pytest.raises(ConfigError, match="pairs"):
        TrainConfig(gallery_features=("gem_lite1", "sift"), fusion_weights=(1.0, 0.5))
    with pytest.raises(ConfigError, match="start_shrink must be >= 0"):
        TrainConfig(start_shrink=-1.0)
    # without a PCA start the options are unused (one tier config serves the MLP and random-start rows too)
    assert "anchor_weights" not in mixer_kwargs(cfg.replace(mixer_start="random"), schema)
    assert mixer_kwargs(cfg.replace(mixer="mlp"), schema) == {"hidden": 2 * cfg.embed_dim}
    with pytest.raises(ConfigError, match="gallery inputs are"):
        mixer_kwargs(cfg, GallerySchema(slots=(schema.slots[0], FeatureSlot("orb", "local", 4, max_local=3))))
