"""The AFF transformer mixer: padding/permutation invariance, batch independence, and a float64
brute-force reference (explicit matmuls + softmax + masking) built from its parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from asymfuse.cloud.models.fusion import FeatureSlot, FusionInputs, GallerySchema
from asymfuse.cloud.models.mixers import TransformerMixer, create_mixer

DIM = 32
SCHEMA = GallerySchema(slots=(FeatureSlot("g1", "global", 24), FeatureSlot("g2", "global", 16),
                              FeatureSlot("l1", "local", 8, max_local=6), FeatureSlot("l2", "local", 12, max_local=4)))


def make_inputs(n: int, *, seed: int = 0) -> FusionInputs:
    """Unit-norm features, zero at padding; sample 0 has both local sets fully padded."""
    gen = torch.Generator().manual_seed(seed)
    unit = torch.nn.functional.normalize
    globals_ = tuple(unit(torch.randn(n, s.dim, generator=gen), dim=-1) for s in SCHEMA.global_slots)
    locals_, masks = [], []
    for s in SCHEMA.local_slots:
        valid = torch.randint(1, s.max_local + 1, (n,), generator=gen)
        valid[0] = 0
        mask = torch.arange(s.max_local)[None, :] >= valid[:, None]
        locals_.append(unit(torch.randn(n, s.max_local, s.dim, generator=gen), dim=-1).masked_fill(mask[..., None], 0))
        masks.append(mask)
    return FusionInputs(globals_, tuple(locals_), tuple(masks))


def build(layers: int = 2, seed: int = 0) -> TransformerMixer:
    mixer = create_mixer("transformer", schema=SCHEMA, embed_dim=DIM, layers=layers, heads=4, seed=seed)
    assert isinstance(mixer, TransformerMixer)
    return mixer.eval()


def run(mixer: TransformerMixer, x: FusionInputs) -> torch.Tensor:
    with torch.no_grad():
        return mixer(x)


def test_extra_garbage_padding_leaves_the_output_unchanged():
    mixer, x = build(), make_inputs(5)
    gen = torch.Generator().manual_seed(1)
    locals_, masks = [], []
    for loc, m in zip(x.locals_, x.local_pads):
        b, _, d = loc.shape
        locals_.append(torch.cat([loc, 1e3 * torch.randn(b, 7, d, generator=gen)], dim=1))
        masks.append(torch.cat([m, torch.ones(b, 7, dtype=torch.bool)], dim=1))
    # also overwrite the existing padding rows with garbage
    locals_ = [torch.where(m[..., None], 1e3 * torch.randn(loc.shape, generator=gen), loc)
               for loc, m in zip(locals_, masks)]
    padded = FusionInputs(x.globals_, tuple(locals_), tuple(masks))
    torch.testing.assert_close(run(mixer, padded), run(mixer, x), atol=1e-5, rtol=0)


def test_nan_and_inf_in_padding_rows_stay_out():
    mixer, x = build(), make_inputs(4)
    poisoned = tuple(loc.masked_fill(m[..., None], v) for loc, m, v in zip(x.locals_, x.local_pads,
                                                                           (float("nan"), float("inf"))))
    out = run(mixer, FusionInputs(x.globals_, poisoned, x.local_pads))
    torch.testing.assert_close(out, run(mixer, x), atol=1e-6, rtol=0)


def test_unmasked_garbage_does_change_the_output():
    """Guard for the test above: the mask is what keeps the garbage out."""
    mixer, x = build(), make_inputs(5)
    loc = x.locals_[0].clone()
    loc[1:, -1] = 10.0
    mask = x.local_pads[0].clone()
    mask[1:, -1] = False
    changed = FusionInputs(x.globals_, (loc, x.locals_[1]), (mask, x.local_pads[1]))
    assert (run(mixer, changed)[1:] - run(mixer, x)[1:]).abs().max() > 1e-3


def test_permuting_valid_local_tokens_leaves_the_output_unchanged():
    mixer, x = build(), make_inputs(5)
    gen = torch.Generator().manual_seed(2)
    locals_, masks = [], []
    for loc, m in zip(x.locals_, x.local_pads):
        perm = torch.stack([torch.randperm(loc.shape[1], generator=gen) for _ in range(loc.shape[0])])
        locals_.append(torch.gather(loc, 1, perm[..., None].expand_as(loc)))
        masks.append(torch.gather(m, 1, perm))
    shuffled = FusionInputs(x.globals_, tuple(locals_), tuple(masks))
    assert not all(torch.equal(a, b) for a, b in zip(masks, x.local_pads))
    torch.testing.assert_close(run(mixer, shuffled), run(mixer, x), atol=1e-5, rtol=0)


def test_fully_padded_local_sets_give_finite_output():
    mixer, x = build(), make_inputs(3)
    assert all(bool(m[0].all()) for m in x.local_pads)
    out = run(mixer, x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)


def test_batch_result_equals_each_sample_alone():
    mixer, x = build(), make_inputs(6)
    whole = run(mixer, x)
    alone = torch.cat([run(mixer, x.select(slice(i, i + 1))) for i in range(6)])
    torch.testing.assert_close(whole, alone, atol=1e-5, rtol=0)


def test_gradients_flow_to_every_parameter():
    mixer = build().train()
    mixer(make_inputs(4)).sum().backward()
    missing = [n for n, p in mixer.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def reference_forward(mixer: TransformerMixer, x: FusionInputs) -> torch.Tensor:
    """Brute force in float64: per-slot projections, then per layer explicit multi-head attention
    (q k^T / sqrt(dh), padding keys set to -inf, softmax), post-LN residuals and an erf-GELU MLP."""
    p = {k: v.double() for k, v in mixer.state_dict().items()}
    heads = mixer.config()["kwargs"]["heads"]
    b, d = x.batch_size, mixer.embed_dim
    tokens = [p["fusion_token"].expand(b, 1, d)]
    tokens += [(g.double() @ p[f"global_proj.{k}.weight"].T + p[f"global_proj.{k}.bias"])[:, None]
               for k, g in enumerate(x.globals_)]
    tokens += [loc.double() @ p[f"local_proj.{k}.weight"].T + p[f"local_proj.{k}.bias"]
               for k, loc in enumerate(x.locals_)]
    z = torch.cat(tokens, dim=1)
    pad = torch.cat([torch.zeros(b, 1 + len(x.globals_), dtype=torch.bool), *x.local_pads], dim=1)

    def layer_norm(v: torch.Tensor, pre: str) -> torch.Tensor:
        mu = v.mean(-1, keepdim=True)
        var = ((v - mu) ** 2).mean(-1, keepdim=True)
        return (v - mu) / torch.sqrt(var + 1e-5) * p[pre + ".weight"] + p[pre + ".bias"]

    for i in range(len(mixer.blocks)):
        pre = f"blocks.{i}."
        qkv = z @ p[pre + "qkv.weight"].T + p[pre + "qkv.bias"]
        q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
        dh = d // heads
        out = torch.empty_like(z)
        for h in range(heads):
            cols = slice(h * dh, (h + 1) * dh)
            scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(dh)
            scores = scores.masked_fill(pad[:, None, :], float("-inf"))
            weights = torch.exp(scores - scores.max(-1, keepdim=True).values)
            weights = weights / weights.sum(-1, keepdim=True)
            out[..., cols] = weights @ v[..., cols]
        z = layer_norm(z + out @ p[pre + "proj.weight"].T + p[pre + "proj.bias"], pre + "norm1")
        hid = z @ p[pre + "fc1.weight"].T + p[pre + "fc1.bias"]
        hid = 0.5 * hid * (1.0 + torch.erf(hid / math.sqrt(2.0)))
        z = layer_norm(z + hid @ p[pre + "fc2.weight"].T + p[pre + "fc2.bias"], pre + "norm2")
    fused = z[:, 0]
    return fused / fused.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("layers", [1, 2])
def test_matches_float64_brute_force_reference(layers):
    mixer, x = build(layers=layers, seed=layers), make_inputs(5, seed=layers)
    with torch.no_grad():  # non-trivial LayerNorm affine so the reference checks their use too
        for name, prm in mixer.named_parameters():
            if "norm" in name:
                prm.add_(0.1 * torch.randn(prm.shape, generator=torch.Generator().manual_seed(len(name))))
    want = reference_forward(mixer, x)
    got = run(mixer, x)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5)


def test_reference_detects_a_wrong_mask():
    """Guard: feeding the reference no padding mask must disagree with the mixer."""
    mixer, x = build(layers=1), make_inputs(5)
    unmasked = FusionInputs(x.globals_, tuple(loc + 0.5 for loc in x.locals_),
                            tuple(torch.zeros_like(m) for m in x.local_pads))
    want = reference_forward(mixer, unmasked)
    assert (run(mixer, FusionInputs(x.globals_, unmasked.locals_, x.local_pads)) - want).abs().max() > 1e-3
