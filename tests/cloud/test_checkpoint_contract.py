"""Checkpoint I/O contract: save_x(obj, path) / load_x(path) -> (obj, XInfo); CorruptDataError names the fix."""

from __future__ import annotations

import pytest
import torch

from asymfuse.cloud.ames.checkpoint import AMESInfo, load_ames, save_ames
from asymfuse.cloud.ames.model import create_ames
from asymfuse.cloud.models.checkpoint import QueryNetInfo, load_query_net, save_query_net
from asymfuse.cloud.models.fusion import FeatureSlot, GallerySchema
from asymfuse.cloud.models.mixers import MixerInfo, create_mixer, load_mixer, save_mixer
from asymfuse.cloud.models.query_net import create_query_net
from asymfuse.edge.errors import CorruptDataError


def _query_net():
    net = create_query_net("shufflenet_v2_x1_0", embed_dim=8, input_size=64)
    return net, lambda obj, path: save_query_net(obj, path), load_query_net, QueryNetInfo


def _mixer():
    schema = GallerySchema((FeatureSlot("g", "global", 6),))
    mixer = create_mixer("mlp", schema=schema, embed_dim=4)
    return mixer, lambda obj, path: save_mixer(obj, path, embedding_space_id="es-test"), load_mixer, MixerInfo


def _ames():
    return create_ames(local_dim=8, binary=True, layers=1), save_ames, load_ames, AMESInfo


KINDS = {"query_net": _query_net, "mixer": _mixer, "ames": _ames}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_save_then_load_returns_the_object_and_its_info(kind, tmp_path):
    obj, save, load, info_type = KINDS[kind]()
    save(obj, tmp_path / "x.pt")
    back, info = load(tmp_path / "x.pt")
    assert isinstance(info, info_type)
    want, got = obj.state_dict(), back.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k].cpu(), got[k].cpu()) for k in want)
    assert not back.training


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_missing_or_unreadable_files_raise_corrupt_data_naming_the_fix(kind, tmp_path):
    _, _, load, _ = KINDS[kind]()
    with pytest.raises(CorruptDataError, match="does not exist; .*(train|pass)"):
        load(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00not a torch file")
    with pytest.raises(CorruptDataError, match="unreadable"):
        load(tmp_path / "junk.pt")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_files_load_with_weights_only(kind, tmp_path):
    obj, save, _, _ = KINDS[kind]()
    save(obj, tmp_path / "x.pt")
    torch.load(tmp_path / "x.pt", weights_only=True)  # raises if anything but tensors and plain data is inside
