"""The fast scorer against the one-pair-at-a-time reference; order, padding and bucket invariance;
the float and packed gallery sources; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from asymfuse.cloud.ames.model import AMES, create_ames
from asymfuse.cloud.ames.reference import reference_scores
from asymfuse.cloud.ames.block_forward import block_logits
from asymfuse.cloud.ames.scorer import AMESScorer
from asymfuse.cloud.ames.sources import ArrayLocals, GalleryLocals, compact_valid
from asymfuse.cloud.features.base import LocalFeatures
from asymfuse.cloud.features.store import create_store_from_arrays
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError

D_IN, L, N = 20, 14, 12


def spread(model: AMES, *, std: float = 0.08, seed: int = 0) -> AMES:
    """Perturb every parameter but the binary ``W`` so that logits vary between pairs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith(".W"):
                p.add_(torch.randn(p.shape, generator=gen) * std)
        model.classifier.weight.mul_(10.0)
    return model.eval()


def gallery_arrays(seed: int = 0, *, n: int = N, slots: int = L) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sets with counts 0..slots, padding holes in the middle of some rows, NaN in padding."""
    rng = np.random.default_rng(seed)
    desc = rng.standard_normal((n, slots, D_IN)).astype(np.float32)
    counts = rng.integers(1, slots + 1, size=n)
    counts[0], counts[1] = 0, slots
    mask = np.arange(slots)[None, :] >= counts[:, None]
    for r in range(2, n, 3):  # holes: padding between valid slots
        mask[r] = rng.permutation(mask[r])
    desc[mask] = np.nan
    return desc, mask


def query_arrays(seed: int = 0, lq: int = 9) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 100)
    q = rng.standard_normal((lq, D_IN)).astype(np.float32)
    pad = rng.random(lq) < 0.3
    pad[0] = False
    q[pad] = np.nan
    return q, pad


def reference_for(model: AMES, q: np.ndarray, q_pad: np.ndarray, desc: np.ndarray, mask: np.ndarray,
                  indices: np.ndarray, *, lq: int | None = None, lx: int | None = None) -> np.ndarray:
    """The reference logits of ``indices`` with the first ``lq``/``lx`` valid slots kept."""
    qv = q[~q_pad][:lq]
    compact, counts = compact_valid(desc, mask)
    keep = np.minimum(counts, lx) if lx else counts
    x = torch.from_numpy(compact[indices])
    x_pad = torch.from_numpy(np.arange(desc.shape[1])[None, :] >= keep[indices][:, None])
    return reference_scores(model, torch.from_numpy(qv), torch.zeros(len(qv), dtype=torch.bool), x, x_pad).numpy()


@pytest.fixture(scope="module")
def models() -> dict[str, AMES]:
    return {"fp": spread(create_ames(local_dim=D_IN, seed=1, layers=3), seed=1),
            "binary": spread(create_ames(local_dim=D_IN, binary=True, seed=2, layers=3), seed=2)}


@pytest.mark.parametrize("variant", ["fp", "binary"])
def test_scorer_equals_the_reference(models, variant):
    model = models[variant]
    desc, mask = gallery_arrays(seed=int(variant == "binary"))
    q, q_pad = query_arrays()
    idx = np.array([3, 0, 7, 1, 11, 5, 2, 9])
    out = AMESScorer(model, bucket=4).score(q, q_pad, ArrayLocals(desc, mask), idx)
    ref = reference_for(model, q, q_pad, desc, mask, idx)
    assert out.dtype == np.float32 and out.shape == (8,)
    assert ref.std() > 0.05
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_scorer_budgets_keep_the_first_valid_descriptors(models):
    model = models["binary"]
    desc, mask = gallery_arrays(seed=5)
    q, q_pad = query_arrays(seed=5, lq=12)
    idx = np.arange(N)
    out = AMESScorer(model).score(torch.from_numpy(q), torch.from_numpy(q_pad), ArrayLocals(desc, mask), idx,
                                  lq=4, lx=5)
    np.testing.assert_allclose(out, reference_for(model, q, q_pad, desc, mask, idx, lq=4, lx=5), atol=1e-4, rtol=0)


def test_block_logits_equal_forward_tokens_with_padded_queries(models):
    model = models["fp"]
    gen = torch.Generator().manual_seed(0)
    q_tok, x_tok = torch.randn(6, 9, 128, generator=gen), torch.randn(6, 13, 128, generator=gen)
    q_pad = torch.rand(6, 9, generator=gen) < 0.4
    x_pad = torch.rand(6, 13, generator=gen) < 0.4
    q_pad[:, 0] = False
    with torch.inference_mode():
        want = model.forward_tokens(q_tok, q_pad, x_tok, x_pad)
        got = block_logits(model, q_tok, q_pad, x_tok, x_pad)
        shared = block_logits(model, q_tok[:1], q_pad[:1], x_tok, x_pad)
        want_shared = model.forward_tokens(q_tok[:1], q_pad[:1], x_tok, x_pad)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    torch.testing.assert_close(shared, want_shared, atol=1e-4, rtol=0)


def test_scores_do_not_depend_on_order_padding_or_buckets(models):
    model = models["fp"]
    desc, mask = gallery_arrays(seed=3)
    q, q_pad = query_arrays(seed=3)
    idx = np.arange(N)
    base = AMESScorer(model).score(q, q_pad, ArrayLocals(desc, mask), idx)
    perm = np.random.default_rng(0).permutation(N)
    shuffled = AMESScorer(model).score(q, q_pad, ArrayLocals(desc, mask), idx[perm])
    np.testing.assert_allclose(shuffled, base[perm], atol=1e-5, rtol=0)
    wide = np.concatenate([desc, np.full((N, 9, D_IN), np.nan, np.float32)], axis=1)
    wide_mask = np.concatenate([mask, np.ones((N, 9), bool)], axis=1)
    q_wide = np.concatenate([q, np.full((5, D_IN), 1e6, np.float32)])
    q_wide_pad = np.concatenate([q_pad, np.ones(5, bool)])
    padded = AMESScorer(model).score(q_wide, q_wide_pad, ArrayLocals(wide, wide_mask), idx)
    np.testing.assert_allclose(padded, base, atol=1e-5, rtol=0)
    for bucket, tokens in ((1, 10_000), (5, 1), (64, 64), (3, 200)):
        other = AMESScorer(model, bucket=bucket, max_tokens_per_chunk=tokens).score(q, q_pad, ArrayLocals(desc, mask),
                                                                                    idx)
        # other buckets pad to other lengths, so float32 sums run in another order: logits of
        # magnitude ~5 then differ by ~1e-5 (measured 1.05e-5 on this CPU); allow that relative noise
        np.testing.assert_allclose(other, base, atol=1e-5, rtol=1e-5)


def test_score_many_equals_one_query_at_a_time(models):
    model = models["binary"]
    desc, mask = gallery_arrays(seed=4)
    gallery = ArrayLocals(desc, mask)
    queries = [query_arrays(seed=s, lq=lq) for s, lq in ((0, 9), (1, 3), (2, 17))]
    cands = [np.array([1, 2, 3]), np.array([11, 0, 5, 5, 7]), np.arange(N)]
    scorer = AMESScorer(model, bucket=4, max_tokens_per_chunk=300)
    many = scorer.score_many(queries, gallery, cands, lx=10)
    assert [m.shape for m in many] == [(3,), (5,), (N,)]
    for (q, q_pad), c, got in zip(queries, cands, many):
        np.testing.assert_allclose(got, scorer.score(q, q_pad, gallery, c, lx=10), atol=1e-5, rtol=0)
    assert scorer.score_many([], gallery, []) == []
    assert scorer.score(*queries[0], gallery, np.zeros(0, np.int64)).shape == (0,)


def test_scorer_runs_in_eval_mode_and_restores_the_mode(models):
    model = create_ames(local_dim=D_IN, seed=9, layers=2)
    spread(model, seed=9)
    desc, mask = gallery_arrays(seed=6)
    q, q_pad = query_arrays(seed=6)
    idx = np.arange(N)
    ref = reference_for(model, q, q_pad, desc, mask, idx)
    model.train()
    out = AMESScorer(model).score(q, q_pad, ArrayLocals(desc, mask), idx)
    assert model.training
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_packed_store_and_array_locals_give_the_same_logits(tmp_path, models):
    from asymfuse.cloud.ames import packed_build
    model = models["binary"]
    desc, mask = gallery_arrays(seed=7)
    compact, counts = compact_valid(desc, mask)
    pad = np.arange(L)[None, :] >= counts[:, None]
    feats = LocalFeatures(descriptors=compact, weights=(~pad).astype(np.float32), mask=pad,
                          xy=np.zeros((N, L, 2), np.float32), scale=np.ones((N, L), np.float32))
    store = create_store_from_arrays(tmp_path / "local", ids=[f"g{i}" for i in range(N)], features=feats)
    with store, packed_build.build_packed_store(model, store, tmp_path / "packed", max_local=10) as packed:
        assert isinstance(packed, GalleryLocals)
        q, q_pad = query_arrays(seed=7)
        idx = np.array([4, 0, 1, 9, 2, 11])
        scorer = AMESScorer(model, bucket=4)
        got = scorer.score(q, q_pad, packed, idx, lx=10)
        want = scorer.score(q, q_pad, ArrayLocals(desc, mask), idx, lx=10)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------- sources


def test_array_locals_compacts_valid_slots_and_reads_stores(tmp_path):
    desc, mask = gallery_arrays(seed=8)
    locals_ = ArrayLocals(desc, mask)
    assert isinstance(locals_, GalleryLocals)
    compact, counts = compact_valid(desc, mask)
    np.testing.assert_array_equal(locals_.counts(np.arange(N)), counts)
    row = 2  # a row with holes: its valid slots, in order, come first
    got, pad = locals_.descriptors([row], length=L + 3)
    np.testing.assert_array_equal(got[0, :counts[row]], desc[row][~mask[row]])
    assert pad.shape == (1, L + 3) and pad[0].sum() == L + 3 - counts[row] and not np.isnan(got).any()
    pad_full = np.arange(L)[None, :] >= counts[:, None]
    feats = LocalFeatures(descriptors=compact, weights=np.zeros((N, L), np.float32), mask=pad_full,
                          xy=np.zeros((N, L, 2), np.float32), scale=np.ones((N, L), np.float32))
    with create_store_from_arrays(tmp_path / "s", ids=[f"i{i}" for i in range(N)], features=feats) as store:
        from_store = ArrayLocals.from_store(store, max_local=6)
    assert from_store.ids == [f"i{i}" for i in range(N)] and from_store.max_local == 6
    np.testing.assert_array_equal(from_store.counts(np.arange(N)), np.minimum(counts, 6))
    np.testing.assert_array_equal(from_store.descriptors(np.arange(N))[0], compact[:, :6])


def test_array_locals_rejects_nan_in_a_valid_slot_naming_the_item():
    desc, mask = gallery_arrays(seed=9)
    desc[4, np.flatnonzero(~mask[4])[0], 3] = np.nan
    with pytest.raises(CorruptDataError, match=r"item 4 \('g4'\)"):
        ArrayLocals(desc, mask, ids=[f"g{i}" for i in range(N)])


# ------------------------------------------------------------------------------- bad input


def test_bad_input_gets_clear_errors(models):
    model = models["fp"]
    desc, mask = gallery_arrays(seed=10)
    gallery = ArrayLocals(desc, mask)
    q, q_pad = query_arrays(seed=10)
    scorer = AMESScorer(model)
    with pytest.raises(ShapeError, match="local feature"):
        scorer.score(np.zeros((4, D_IN + 1), np.float32), None, gallery, [1])
    with pytest.raises(ShapeError, match="local feature"):
        scorer.score(q, q_pad, ArrayLocals(np.ones((3, 4, D_IN + 2), np.float32)), [1])
    bad = q.copy()
    bad[np.flatnonzero(~q_pad)[1]] = np.nan
    with pytest.raises(CorruptDataError, match="query 0"):
        scorer.score(bad, q_pad, gallery, [1])
    with pytest.raises(ShapeError, match="no valid local descriptors"):
        scorer.score(q, np.ones_like(q_pad), gallery, [1])
    with pytest.raises(ConfigError, match="out of range"):
        scorer.score(q, q_pad, gallery, [N])
    with pytest.raises(ConfigError, match="lx"):
        scorer.score(q, q_pad, gallery, [1], lx=0)
    with pytest.raises(ConfigError, match="bucket"):
        AMESScorer(model, bucket=0)
    with pytest.raises(ConfigError, match="AMES model"):
        AMESScorer(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
