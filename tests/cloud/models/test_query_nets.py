"""Registry sweep and behaviour of the query nets (AFF query side)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata

from asymfuse.cloud.models import (
    QUERY_NETS,
    create_query_net,
    gem,
    load_efficientnet_lite,
    load_query_net,
    save_query_net,
)
from asymfuse.edge.errors import ConfigError, CorruptDataError, UnknownNameError
from asymfuse.edge.preprocess import preprocess
from asymfuse.edge.spec import ModelSpec

EXPECTED_TRUNK_CHANNELS = {"mobilenet_v2": 1280, "shufflenet_v2_x1_0": 1024, "efficientnet_b0": 1280,
                           "efficientnet_lite0": 1280}


def test_registry_lists_the_four_papers_archs():
    assert set(QUERY_NETS.names()) == set(EXPECTED_TRUNK_CHANNELS)


@pytest.mark.parametrize("name", sorted(EXPECTED_TRUNK_CHANNELS))
def test_every_query_net_builds_and_embeds(name):
    net = create_query_net(name, embed_dim=64, input_size=160).eval()
    x = torch.randn(3, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = net.forward_features(x)
        y = net(x)
        y_head = net.forward_head(feats)
    assert feats.shape[:2] == (3, EXPECTED_TRUNK_CHANNELS[name])
    assert feats.shape[-1] == 5  # stride 32
    assert y.shape == (3, 64) and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(y, y_head)
    assert float(net.pool.p.detach()[0]) == pytest.approx(3.0)
    assert net.pool.p.requires_grad
    spec = net.spec
    assert spec.arch == name and spec.embed_dim == 64 and spec.input_size == (160, 160)
    assert spec.pooling == "gem" and spec.embedding_space_id.startswith("es-")


def test_lite0_bundled_imagenet_weights_classify_real_photos():
    net = load_efficientnet_lite("efficientnet_lite0", pretrained=True, image_size=224).eval()
    q = create_query_net("efficientnet_lite0", pretrained=True, embed_dim=32)
    spec = q.spec  # the spec is the single source of preprocessing
    x = torch.from_numpy(preprocess([skdata.chelsea(), skdata.coffee()], spec))
    with torch.no_grad():
        top5 = net(x).topk(5, dim=-1).indices.numpy()
    cats = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert top5[0][0] in cats, top5[0]
    assert top5[1][0] in {967, 968}, top5[1]  # espresso, cup
    # The query net's trunk holds exactly those (strictly loaded) weights.
    ref = {k: v for k, v in net.state_dict().items() if not k.startswith("_fc")}
    trunk = q.trunk.body.state_dict()
    assert set(ref) == set(trunk)
    for k in ref:
        torch.testing.assert_close(trunk[k], ref[k], rtol=0, atol=0)


def test_pretrained_without_bundled_weights_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="weights_path"):
        create_query_net("mobilenet_v2", pretrained=True)
    # A user-supplied torchvision state dict loads strictly.
    from asymfuse.cloud.compat import import_torchvision
    tv = import_torchvision()
    ref = tv.models.mobilenet_v2(weights=None)
    torch.save(ref.state_dict(), tmp_path / "mnv2.pth")
    net = create_query_net("mobilenet_v2", pretrained=True, weights_path=tmp_path / "mnv2.pth")
    torch.testing.assert_close(net.trunk.body[0][0].weight, ref.features[0][0].weight)
    torch.save({"bogus": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match="Missing key"):
        create_query_net("mobilenet_v2", weights_path=tmp_path / "bad.pth")


def test_unknown_arch_lists_choices():
    with pytest.raises(UnknownNameError, match="mobilenet_v2"):
        create_query_net("resnet9000")


def test_space_id_follows_the_weights():
    a = create_query_net("efficientnet_lite0", pretrained=True, seed=1)
    b = create_query_net("efficientnet_lite0", pretrained=True, seed=1)
    c = create_query_net("efficientnet_lite0", pretrained=True, seed=2)
    assert a.spec.embedding_space_id == b.spec.embedding_space_id
    assert a.spec.embedding_space_id != c.spec.embedding_space_id
    d = create_query_net("efficientnet_lite0", embedding_space_id="es-fromtraining")
    assert d.spec.embedding_space_id == "es-fromtraining"


def test_gem_reduces_to_average_and_respects_the_valid_mask():
    x = torch.rand(2, 4, 5, 6) + 0.1
    torch.testing.assert_close(gem(x, 1.0), x.mean(dim=(-2, -1)))
    valid = torch.zeros(2, 5, 6, dtype=torch.bool)
    valid[0, :3, :4] = True
    valid[1, :5, :2] = True
    got = gem(x, 3.0, valid=valid)
    ref0 = x[0, :, :3, :4].pow(3).mean(dim=(-2, -1)).pow(1 / 3)
    ref1 = x[1, :, :5, :2].pow(3).mean(dim=(-2, -1)).pow(1 / 3)
    torch.testing.assert_close(got, torch.stack([ref0, ref1]))


def test_checkpoint_roundtrip_keeps_weights_and_spec(tmp_path):
    net = create_query_net("shufflenet_v2_x1_0", embed_dim=32, input_size=128).eval()
    path = save_query_net(net, tmp_path / "q.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.pt"]  # no temp file left
    back, info = load_query_net(path)
    assert info.model_spec == net.spec
    assert back.spec == net.spec
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(back(x), net(x))


def test_checkpoint_without_spec_is_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(CorruptDataError, match="no ModelSpec"):
        load_query_net(tmp_path / "plain.pt")


def test_save_into_missing_folder_fails_cleanly(tmp_path):
    net = create_query_net("shufflenet_v2_x1_0", embed_dim=8)
    with pytest.raises(ConfigError, match="not writable"):
        save_query_net(net, tmp_path / "nope" / "q.pt")


def test_spec_from_checkpoint_is_a_model_spec(tmp_path):
    net = create_query_net("efficientnet_lite0", embed_dim=16)
    save_query_net(net, tmp_path / "q.pt")
    from asymfuse.cloud.models.checkpoint import read_query_net_spec
    spec = read_query_net_spec(tmp_path / "q.pt")
    assert isinstance(spec, ModelSpec) and spec.mean == (0.5, 0.5, 0.5)
    back, _ = load_query_net(tmp_path / "q.pt")
    assert np.isclose(float(back.pool.p.detach()[0]), 3.0)


def test_missing_or_mismatched_checkpoint_names_the_fix(tmp_path):
    with pytest.raises(CorruptDataError, match="does not exist; train one"):
        load_query_net(tmp_path / "absent.pt")
    net = create_query_net("shufflenet_v2_x1_0", embed_dim=8)
    state = dict(net.state_dict())
    state.pop(next(iter(state)))
    torch.save({"spec": net.spec.to_json(), "state_dict": state}, tmp_path / "bad.pt")
    with pytest.raises(CorruptDataError, match="do not fit a shufflenet_v2_x1_0"):
        load_query_net(tmp_path / "bad.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptDataError, match="unreadable"):
        load_query_net(tmp_path / "junk.pt")


@pytest.mark.parametrize("pooling", ["gem", "gem_l2", "gem_sqrt_l2"])
def test_pooling_variants_match_a_hand_computed_reference_and_survive_a_checkpoint(pooling, tmp_path):
    net = create_query_net("mobilenet_v2", embed_dim=16, input_size=64, pooling=pooling, seed=1).eval()
    feats = torch.rand(3, 1280, 2, 2) * torch.tensor([1.0, 5.0, 0.2]).view(3, 1, 1, 1)
    ref = feats.clamp_min(1e-6).pow(3).mean(dim=(-2, -1)).pow(1 / 3)
    if pooling == "gem_sqrt_l2":
        ref = ref.sqrt()
    if pooling != "gem":
        ref = ref / ref.norm(dim=1, keepdim=True)
    with torch.no_grad():
        torch.testing.assert_close(net.pooled(feats), ref)
        if pooling != "gem":  # the input's scale is gone before the head
            torch.testing.assert_close(net.pooled(feats * 7.0), ref, rtol=1e-5, atol=1e-6)
    back, info = load_query_net(save_query_net(net, tmp_path / "q.pt"))
    assert info.model_spec.pooling == pooling
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back(x), net(x))
