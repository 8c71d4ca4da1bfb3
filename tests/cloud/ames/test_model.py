"""AMES model: the batched forward equals the one-pair-at-a-time reference, the fp16 storage
emulation, and strict loading of state dicts written under the published key names."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asymfuse.cloud.ames.checkpoint import load_ames
from asymfuse.cloud.ames.model import AMES, create_ames
from asymfuse.cloud.ames.reference import reference_scores
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError

D_IN = 24


def spread(model: AMES, *, std: float = 0.08, seed: int = 0) -> AMES:
    """Perturb every parameter but the binary ``W`` so that logits vary between pairs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith(".W"):
                p.add_(torch.randn(p.shape, generator=gen) * std)
        model.classifier.weight.mul_(10.0)  # a wider logit range
    return model.eval()


def random_pairs(rng: np.random.Generator, *, b: int, lq: int, lx: int, d: int = D_IN):
    """A query with padding holes and ``b`` gallery sets with varied counts (one empty-ish, one full)."""
    q = torch.from_numpy(rng.standard_normal((lq, d)).astype(np.float32))
    q_pad = torch.from_numpy(rng.random(lq) < 0.3)
    q_pad[0] = False
    x = torch.from_numpy(rng.standard_normal((b, lx, d)).astype(np.float32))
    x_pad = torch.from_numpy(rng.random((b, lx)) < rng.random((b, 1)))
    x_pad[0] = False
    x_pad[1, 1:] = True
    return q, q_pad, x, x_pad


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_forward_equals_the_reference(binary, seed):
    model = spread(create_ames(local_dim=D_IN, binary=binary, seed=seed), seed=seed)
    q, q_pad, x, x_pad = random_pairs(np.random.default_rng(seed), b=7, lq=9 + seed, lx=11)
    ref = reference_scores(model, q, q_pad, x, x_pad)
    assert ref.std() > 0.05  # the weights make pairs differ, so the comparison has teeth
    with torch.inference_mode():
        fast = model(q[None].expand(7, -1, -1), q_pad[None].expand(7, -1), x, x_pad)
    torch.testing.assert_close(fast, ref, atol=1e-4, rtol=0)


def test_forward_ignores_padding_values_and_extra_slots():
    model = spread(create_ames(local_dim=D_IN, seed=3))
    q, q_pad, x, x_pad = random_pairs(np.random.default_rng(3), b=5, lq=8, lx=10)
    qb, qpb = q[None].expand(5, -1, -1), q_pad[None].expand(5, -1)
    with torch.inference_mode():
        base = model(qb, qpb, x, x_pad)
        junk = x.masked_fill(x_pad[..., None], float("nan"))
        extra = torch.cat([junk, torch.full((5, 6, D_IN), 7.0)], dim=1)
        extra_pad = torch.cat([x_pad, torch.ones(5, 6, dtype=torch.bool)], dim=1)
        padded = model(qb, qpb, extra, extra_pad)
    torch.testing.assert_close(padded, base, atol=1e-5, rtol=0)


def test_fp_model_rounds_gallery_tokens_through_fp16_in_eval_only():
    model = spread(create_ames(local_dim=D_IN, seed=4))
    x = torch.randn(3, 6, D_IN)
    pad = torch.zeros(3, 6, dtype=torch.bool)

    def representable(t: torch.Tensor) -> bool:
        return bool(torch.equal(t, t.half().float()))

    with torch.no_grad():
        assert representable(model.project(x, pad, gallery=True))
        assert not representable(model.project(x, pad, gallery=False))
        model.train()
        assert not representable(model.project(x, pad, gallery=True))
        binary = create_ames(local_dim=D_IN, binary=True, seed=4).eval()
        assert not representable(binary.project(x, pad, gallery=True))  # binary: bits, no fp16 emulation


def test_project_rejects_a_wrong_descriptor_dimension():
    model = create_ames(local_dim=D_IN, seed=0).eval()
    with pytest.raises(ShapeError, match="local feature"):
        model.project(torch.randn(1, 4, D_IN + 1), torch.zeros(1, 4, dtype=torch.bool), gallery=True)


# ---------------------------------------------------------------------- published key names


def _layer_shapes(i: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for attn in ("self_attn", "cross_attn"):
        out[f"decoder.layers.{i}.{attn}.in_proj_weight"] = (384, 128)
        out[f"decoder.layers.{i}.{attn}.in_proj_bias"] = (384,)
        out[f"decoder.layers.{i}.{attn}.out_proj.weight"] = (128, 128)
        out[f"decoder.layers.{i}.{attn}.out_proj.bias"] = (128,)
    out[f"decoder.layers.{i}.linear1.weight"] = (1024, 128)
    out[f"decoder.layers.{i}.linear1.bias"] = (1024,)
    out[f"decoder.layers.{i}.linear2.weight"] = (128, 1024)
    out[f"decoder.layers.{i}.linear2.bias"] = (128,)
    for norm in ("norm1", "norm2", "norm3"):
        out[f"decoder.layers.{i}.{norm}.weight"] = (128,)
        out[f"decoder.layers.{i}.{norm}.bias"] = (128,)
    return out


def published_shapes(*, binary: bool, d_in: int = D_IN) -> dict[str, tuple[int, ...]]:
    """The published AMES state dict (PAPERS.md §3), written out by hand: dim 128, FFN 1024, 5 layers."""
    shapes: dict[str, tuple[int, ...]] = {"mtc_token": (128,)}
    if binary:
        shapes.update({"remap_local.0.W": (d_in, 128), "remap_local.1.weight": (128, 128),
                       "remap_local.1.bias": (128,), "remap_local.2.weight": (128,), "remap_local.2.bias": (128,)})
    else:
        shapes.update({"remap_local.0.weight": (128, d_in), "remap_local.0.bias": (128,),
                       "remap_local.1.weight": (128,), "remap_local.1.bias": (128,)})
    for i in range(5):
        shapes.update(_layer_shapes(i))
    shapes.update({"classifier.weight": (1, 128), "classifier.bias": (1,)})
    return shapes


def published_state(*, binary: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: 0.05 * torch.randn(shape, generator=gen) for k, shape in published_shapes(binary=binary).items()}


@pytest.mark.parametrize("binary", [False, True])
def test_model_has_exactly_the_published_keys_and_shapes(binary):
    model = create_ames(local_dim=D_IN, binary=binary)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == published_shapes(binary=binary)


@pytest.mark.parametrize("binary", [False, True])
def test_published_state_dict_loads_strictly(tmp_path, binary):
    state = published_state(binary=binary, seed=int(binary))
    path = tmp_path / "ames.pt"
    torch.save({"state": state}, path)
    model, info = load_ames(path, variant="binary" if binary else "fp", local_dim=D_IN)
    assert not model.training
    assert info.config.binary is binary and info.config.local_dim == D_IN and info.config.layers == 5
    assert info.local_feature is None
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)


def test_load_errors_name_missing_and_unexpected_keys(tmp_path):
    state = published_state(binary=False)
    del state["decoder.layers.3.norm2.bias"]
    state["decoder.layers.3.norm2.extra"] = torch.zeros(128)
    path = tmp_path / "broken.pt"
    torch.save({"state": state}, path)
    with pytest.raises(CorruptDataError) as err:
        load_ames(path)
    assert "decoder.layers.3.norm2.bias" in str(err.value) and "decoder.layers.3.norm2.extra" in str(err.value)


def test_load_rejects_the_other_variant_and_a_dimension_mismatch(tmp_path):
    path = tmp_path / "binary.pt"
    torch.save({"state": published_state(binary=True)}, path)
    with pytest.raises(ConfigError, match="binary"):
        load_ames(path, variant="fp")
    with pytest.raises(ConfigError, match=f"{D_IN}-d"):
        load_ames(path, local_dim=D_IN + 8)
    fp_path = tmp_path / "fp.pt"
    torch.save({"state": published_state(binary=False)}, fp_path)
    with pytest.raises(ConfigError, match="fp"):
        load_ames(fp_path, variant="binary")
