"""The anchored transformer mixer: it starts as the PCA-whitened concatenation exactly, trains a
correction on top of it, needs ``fit`` first, and survives a config + state-dict round trip."""

from __future__ import annotations

import pytest
import torch

from asymfuse.cloud.models.mixers import create_mixer, mixer_from_config
from asymfuse.edge.errors import ConfigError
from tests.cloud.models.test_mixers import SCHEMA, make_inputs

DIM = 32


def anchored(seed: int = 0):
    mixer = create_mixer("transformer", schema=SCHEMA, embed_dim=DIM, layers=2, heads=4, anchor=True, seed=seed)
    mixer.fit(make_inputs(80, seed=1))
    return mixer.eval()


def test_untrained_anchored_mixer_equals_the_fitted_whitened_concatenation():
    train, x = make_inputs(80, seed=1), make_inputs(9, seed=2)
    concat = create_mixer("concat", schema=SCHEMA, embed_dim=DIM, whiten=True)
    concat.fit(train)
    with torch.no_grad():
        torch.testing.assert_close(anchored()(x), concat(x), atol=1e-6, rtol=0)


def test_anchored_mixer_differs_from_its_anchor_after_one_gradient_step():
    mixer, x = anchored().train(), make_inputs(16, seed=3)
    with torch.no_grad():
        before = mixer(x).clone()
    opt = torch.optim.SGD([p for p in mixer.parameters() if p.requires_grad], lr=0.5)
    target = torch.nn.functional.normalize(torch.randn(16, DIM, generator=torch.Generator().manual_seed(0)), dim=-1)
    loss = -(mixer(x) * target).sum()
    loss.backward()
    assert mixer.out_proj.weight.grad.abs().sum() > 0  # the correction gets a gradient from the start
    opt.step()
    with torch.no_grad():
        assert (mixer(x) - before).abs().max() > 1e-4


def test_anchored_mixer_refuses_forward_before_fit():
    mixer = create_mixer("transformer", schema=SCHEMA, embed_dim=DIM, layers=2, heads=4, anchor=True)
    with pytest.raises(ConfigError, match="fit"):
        mixer(make_inputs(3))


def test_anchored_mixer_round_trips_through_config_and_state_dict():
    mixer, x = anchored(), make_inputs(5, seed=4)
    cfg = mixer.config()
    assert cfg["kwargs"]["anchor"] is True
    rebuilt = mixer_from_config(cfg)
    rebuilt.load_state_dict(mixer.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), mixer(x), atol=0, rtol=0)


def test_plain_mixer_config_has_no_anchor_key_and_bad_anchor_is_refused():
    plain = create_mixer("transformer", schema=SCHEMA, embed_dim=DIM, layers=2, heads=4)
    assert "anchor" not in plain.config()["kwargs"] and plain.anchor is None
    with pytest.raises(ConfigError, match="anchor"):
        create_mixer("transformer", schema=SCHEMA, embed_dim=DIM, layers=2, heads=4, anchor="yes")
    wide = create_mixer("transformer", schema=SCHEMA, embed_dim=DIM, layers=2, heads=4, anchor=True)
    with pytest.raises(ConfigError, match="dim"):
        wide.fit(make_inputs(10, seed=5))  # 10 rows cannot whiten to 32 dims


def test_anchor_weights_and_shrink_reach_the_anchor_and_round_trip():
    train, x = make_inputs(80, seed=1), make_inputs(9, seed=2)
    kw = {"input_weights": (1.0, 0.5, 1.0, 0.5), "shrink": 0.1}
    concat = create_mixer("concat", schema=SCHEMA, embed_dim=DIM, whiten=True, **kw)
    concat.fit(train)
    mixer = create_mixer("transformer", schema=SCHEMA, embed_dim=DIM, layers=2, heads=4, anchor=True,
                         anchor_weights=kw["input_weights"], anchor_shrink=kw["shrink"])
    mixer.fit(train)
    mixer.eval()
    with torch.no_grad():
        torch.testing.assert_close(mixer(x), concat(x), atol=1e-6, rtol=0)
        rebuilt = mixer_from_config(mixer.config())
        rebuilt.load_state_dict(mixer.state_dict())
        torch.testing.assert_close(rebuilt.eval()(x), mixer(x), atol=0, rtol=0)
    with pytest.raises(ConfigError, match="need anchor=True"):
        create_mixer("transformer", schema=SCHEMA, embed_dim=DIM, anchor_shrink=0.1)
