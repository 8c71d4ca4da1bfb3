"""Fast batched AMES scoring: one query (or many) against many gallery items, no loop over pairs.

:class:`AMESScorer` projects each query once, groups the (query, candidate) pairs into buckets of
similar descriptor counts (rounded up to ``bucket``) so little padding is computed, and runs each
bucket in chunks of about ``max_tokens_per_chunk`` tokens (small chunks keep activations in cache),
under ``torch.inference_mode`` with the model in eval mode.

The forward pass (:func:`block_logits`) computes what :meth:`AMES.forward_tokens` computes, with
less work:

1. **Attention by blocks.** With the tokens ordered ``[q_1..q_Lq; t; x_1..x_Lx]``, every key set
   AMES allows is one contiguous slice:

   ============  =====================  ======================
   rows          within-image keys      across-image keys
   ============  =====================  ======================
   query         ``[q; t]``             ``[t; x]``
   matching t    all                    all
   gallery       ``[t; x]``             ``[q; t]``
   ============  =====================  ======================

   so each attention is three ``scaled_dot_product_attention`` calls on slices with a boolean
   key-padding mask ``(B, 1, 1, K)`` (None when nothing is padded): the blocked part of the
   ``T x T`` scores is never computed and no ``(B, 1, T, T)`` mask is built.
2. **The query's layer-1 self-attention once.** In the first within-image attention the query
   rows see only ``[q; t]`` with ``t`` still the learnt token, so that part is the same for every
   candidate (:class:`QueryState`, computed once per query).
3. **Only the matching token in the last block's second half.** The classifier reads ``t`` alone,
   so the last across-image attention and FFN run for that one row.

The logits equal :func:`asymfuse.cloud.ames.reference.reference_scores` up to float rounding (the
tests hold them to 1e-4).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from asymfuse.cloud.ames.model import AMES, AMESDecoderLayer
from asymfuse.cloud.ames.sources import GalleryLocals, check_indices, check_length
from asymfuse.cloud.device import resolve_device
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError

DEFAULT_BUCKET = 16
DEFAULT_MAX_TOKENS = 2048  # per chunk: fastest of 1024..8192 on CPU (1-2 threads) for Lq, Lx in 50..600

KeyMasks = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]
QueryInput = tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor | None]


# ------------------------------------------------------------------------------ block forward
def _key_masks(q_pad: torch.Tensor, x_pad: torch.Tensor) -> KeyMasks:
    """Boolean keep-masks ``(B, 1, 1, K)`` (True = may attend) for keys ``[q; t]``, ``[t; x]``
    and ``[q; t; x]``; None where no key in the slice is padding."""
    q_any, x_any = bool(q_pad.any()), bool(x_pad.any())
    one = torch.ones(x_pad.shape[0], 1, dtype=torch.bool, device=x_pad.device)
    qt = torch.cat([~q_pad, one], dim=1)[:, None, None] if q_any else None
    tx = torch.cat([one, ~x_pad], dim=1)[:, None, None] if x_any else None
    every = torch.cat([~q_pad, one, ~x_pad], dim=1)[:, None, None] if q_any or x_any else None
    return qt, tx, every


def _layers(model: AMES) -> list[AMESDecoderLayer]:
    return list(model.decoder.layers)  # type: ignore[arg-type]


def _heads(x: torch.Tensor, parts: int, h: int) -> torch.Tensor:
    """``(B, T, parts * d)`` projections -> ``(parts, B, h, T, d / h)`` (a view)."""
    b, t, width = x.shape
    return x.view(b, t, parts, h, width // (parts * h)).permute(2, 0, 3, 1, 4)


def _merge(outs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Attention outputs ``(B, h, T_i, d / h)`` -> ``(B, sum T_i, d)``, rows in the given order."""
    b, h, _, dh = outs[0].shape
    return torch.cat([o.transpose(1, 2) for o in outs], dim=1).reshape(b, -1, h * dh)


def _block_attend(mha: nn.MultiheadAttention, x: torch.Tensor, lq: int, masks: KeyMasks, *,
                  within: bool) -> torch.Tensor:
    """Within- or across-image attention of tokens ``[q; t; x]`` ``(B, T, d)`` with ``mha``'s weights."""
    q, k, v = _heads(F.linear(x, mha.in_proj_weight, mha.in_proj_bias), 3, mha.num_heads)
    return mha.out_proj(block_sdpa(q, k, v, lq, masks, within=within))


def block_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lq: int, masks: KeyMasks, *,
               within: bool) -> torch.Tensor:
    """The three SDPA calls of one block attention (module docstring, point 1): heads ``(B, h, T, d / h)``
    of tokens ``[q; t; x]`` -> merged outputs ``(B, T, d)`` before the output projection."""
    t = q.shape[2]
    m_qt, m_tx, m_all = masks
    qt, tx = slice(0, lq + 1), slice(lq, t)
    q_keys, x_keys, q_mask, x_mask = (qt, tx, m_qt, m_tx) if within else (tx, qt, m_tx, m_qt)
    sdpa = F.scaled_dot_product_attention
    o_q = sdpa(q[:, :, :lq], k[:, :, q_keys], v[:, :, q_keys], attn_mask=q_mask)
    o_t = sdpa(q[:, :, lq:lq + 1], k, v, attn_mask=m_all)
    o_x = sdpa(q[:, :, lq + 1:], k[:, :, x_keys], v[:, :, x_keys], attn_mask=x_mask)
    return _merge([o_q, o_t, o_x])


def _ffn(layer: AMESDecoderLayer, tok: torch.Tensor, *, gelu: bool) -> torch.Tensor:
    hidden = layer.linear1(tok)
    hidden = F.gelu(hidden) if gelu else F.relu(hidden, inplace=not torch.is_grad_enabled())
    return layer.norm3(tok + layer.linear2(hidden))


@dataclass(frozen=True)
class QueryState:
    """What layer 1 computes for the query rows before they meet any gallery token.

    In the first within-image attention the query rows see only ``[q; t]`` and ``t`` is still the
    learnt ``mtc_token``, so that sublayer's query output is the same for every candidate; it is
    computed once per query (:func:`query_state`) and shared by all its pairs.

    Attributes:
        tokens: ``(n, Lq, d)`` query rows after the first within-image sublayer (post norm1).
        k, v: ``(n, heads, Lq, d / heads)`` the query rows' keys and values in that sublayer.
        pad: ``(n, Lq)`` bool, True = padding.
    """

    tokens: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    pad: torch.Tensor

    def take(self, rows: torch.Tensor, length: int) -> QueryState:
        """Rows ``rows`` (indices), first ``length`` slots."""
        return QueryState(self.tokens[rows, :length], self.k[rows, :, :length], self.v[rows, :, :length],
                          self.pad[rows, :length])

    def expand(self, b: int) -> QueryState:
        """A batch of 1 broadcast to ``b`` (a view)."""
        if self.tokens.shape[0] == b:
            return self
        return QueryState(self.tokens.expand(b, -1, -1), self.k.expand(b, -1, -1, -1), self.v.expand(b, -1, -1, -1),
                          self.pad.expand(b, -1))


def query_state(model: AMES, q_tok: torch.Tensor, q_pad: torch.Tensor) -> QueryState:
    """Layer-1 within-image attention of the query rows: ``q_tok`` ``(n, Lq, d)``, ``q_pad`` ``(n, Lq)``."""
    layer = _layers(model)[0]
    mha = layer.self_attn
    n, lq, d = q_tok.shape
    x = torch.cat([q_tok, model.mtc_token.to(q_tok.dtype).expand(n, 1, d)], dim=1)
    q, k, v = _heads(F.linear(x, mha.in_proj_weight, mha.in_proj_bias), 3, mha.num_heads)
    one = torch.ones(n, 1, dtype=torch.bool, device=q_pad.device)
    mask = torch.cat([~q_pad, one], dim=1)[:, None, None] if bool(q_pad.any()) else None
    out = F.scaled_dot_product_attention(q[:, :, :lq], k, v, attn_mask=mask)
    tokens = layer.norm1(q_tok + mha.out_proj(_merge([out])))
    return QueryState(tokens, k[:, :, :lq], v[:, :, :lq], q_pad)


def _first_within_gallery(model: AMES, state: QueryState, x_tok: torch.Tensor, masks: KeyMasks) -> torch.Tensor:
    """Layer-1 within-image attention of rows ``[t; x]`` -> ``(B, 1 + Lx, d)`` after norm1."""
    layer = _layers(model)[0]
    mha = layer.self_attn
    b, _, d = x_tok.shape
    x = torch.cat([model.mtc_token.to(x_tok.dtype).expand(b, 1, d), x_tok], dim=1)
    q, k, v = _heads(F.linear(x, mha.in_proj_weight, mha.in_proj_bias), 3, mha.num_heads)
    _, m_tx, m_all = masks
    o_t = F.scaled_dot_product_attention(q[:, :, :1], torch.cat([state.k, k], dim=2), torch.cat([state.v, v], dim=2),
                                         attn_mask=m_all)
    o_x = F.scaled_dot_product_attention(q[:, :, 1:], k, v, attn_mask=m_tx)
    return layer.norm1(x + mha.out_proj(_merge([o_t, o_x])))


def _last_across(layer: AMESDecoderLayer, tok: torch.Tensor, lq: int, masks: KeyMasks, *,
                 gelu: bool) -> torch.Tensor:
    """The last block after its within-image sublayer, for the matching token only (the classifier
    reads nothing else): its across-image attention over all keys, then the FFN. -> ``(B, 1, d)``."""
    mha = layer.cross_attn
    d = tok.shape[2]
    w, bias = mha.in_proj_weight, mha.in_proj_bias
    k, v = _heads(F.linear(tok, w[d:], bias[d:]), 2, mha.num_heads)
    row = tok[:, lq:lq + 1]
    q = _heads(F.linear(row, w[:d], bias[:d]), 1, mha.num_heads)[0]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=masks[2])
    row = layer.norm2(row + mha.out_proj(_merge([out])))
    return _ffn(layer, row, gelu=gelu)


def logits_from_state(model: AMES, state: QueryState, x_tok: torch.Tensor, x_pad: torch.Tensor) -> torch.Tensor:
    """Logits ``(B,)`` of a :class:`QueryState` (batch ``B`` or 1) against ``x_tok`` ``(B, Lx, d)``,
    ``x_pad`` ``(B, Lx)`` bool: the rest of layer 1, then layers 2..N, by blocks; the last block's
    across-image attention and FFN run for the matching token only."""
    b = x_tok.shape[0]
    state = state.expand(b)
    lq = state.tokens.shape[1]
    masks = _key_masks(state.pad, x_pad)
    gelu = model.cfg.activation == "gelu"
    layers = _layers(model)
    tok = torch.cat([state.tokens, _first_within_gallery(model, state, x_tok, masks)], dim=1)
    for i, layer in enumerate(layers):
        if i:
            tok = layer.norm1(tok + _block_attend(layer.self_attn, tok, lq, masks, within=True))
        if i < len(layers) - 1:
            tok = layer.norm2(tok + _block_attend(layer.cross_attn, tok, lq, masks, within=False))
            tok = _ffn(layer, tok, gelu=gelu)
    return model.classifier(_last_across(layers[-1], tok, lq, masks, gelu=gelu)).view(-1)


def block_logits(model: AMES, q_tok: torch.Tensor, q_pad: torch.Tensor, x_tok: torch.Tensor,
                 x_pad: torch.Tensor) -> torch.Tensor:
    """Logits of ``B`` pairs of projected tokens, attention split by blocks (module docstring).

    Same inputs and result as :meth:`AMES.forward_tokens`: ``q_tok`` ``(B or 1, Lq, d)``,
    ``q_pad`` ``(B or 1, Lq)`` bool (True = padding), ``x_tok`` ``(B, Lx, d)``, ``x_pad``
    ``(B, Lx)`` bool, with ``Lq, Lx >= 1``; returns logits ``(B,)``. A query batch of 1 runs its
    gallery-independent part of layer 1 once. Differentiable; the scorer runs it under
    ``torch.inference_mode``.
    """
    return logits_from_state(model, query_state(model, q_tok, q_pad), x_tok, x_pad)


# ------------------------------------------------------------------------------------ scorer
@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block, the caller's mode restored after (safe mid-training)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class AMESScorer:
    """Batched AMES logits of (query, gallery item) pairs.

    Args:
        model: an :class:`AMES` (fp or binary). It is moved to ``device`` if it lives elsewhere
            (``nn.Module.to``, in place); it runs in eval mode and its mode is restored after.
        device: where to compute (None: the model's device).
        bucket: candidate (and query) descriptor counts are rounded up to multiples of this to
            form batches; larger buckets mean fewer, more padded batches.
        max_tokens_per_chunk: about this many tokens (pairs x (1 + Lq + Lx)) per forward call.

    Raises:
        ConfigError: not an AMES model, a bad bucket/chunk size, or an unusable device.
    """

    def __init__(self, model: AMES, *, device: str | torch.device | None = None, bucket: int = DEFAULT_BUCKET,
                 max_tokens_per_chunk: int = DEFAULT_MAX_TOKENS) -> None:
        if not isinstance(model, AMES):
            raise ConfigError(f"AMESScorer needs an AMES model, got {type(model).__name__}; build one with "
                              "create_ames or load_ames")
        self._bucket = check_length(bucket, "bucket")
        self._max_tokens = check_length(max_tokens_per_chunk, "max_tokens_per_chunk")
        self._device = _model_device(model) if device is None else resolve_device(device)
        if _model_device(model) != self._device:
            model.to(self._device)
        self._model = model

    @property
    def model(self) -> AMES:
        return self._model

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def bucket(self) -> int:
        return self._bucket

    @property
    def max_tokens_per_chunk(self) -> int:
        return self._max_tokens

    def score(self, q_desc: np.ndarray | torch.Tensor, q_pad: np.ndarray | torch.Tensor | None,
              gallery: GalleryLocals, indices: Sequence[int] | np.ndarray, *, lq: int | None = None,
              lx: int | None = None) -> np.ndarray:
        """Logits of one query against gallery items ``indices``.

        Args:
            q_desc: ``(Lq, local_dim)`` float query descriptors (any norm); q_pad: ``(Lq,)`` bool,
                True = padding (None: all valid). Values in padding slots are ignored.
            gallery: the candidates' local descriptors.
            indices: ``(n,)`` item indices into ``gallery`` (any order, repeats allowed).
            lq, lx: keep only the first ``lq`` query / ``lx`` gallery valid descriptors (None: all).

        Returns:
            ``(n,)`` float32 logits in ``indices`` order (similarity is ``sigmoid(gamma * logit)``).

        Raises:
            ShapeError: descriptor dimension other than the model's ``local_dim``, bad shapes, or
                a query with no valid descriptor (:func:`~asymfuse.cloud.ames.rerank.rerank`
                keeps the global order for those).
            CorruptDataError: NaN/inf in a valid query slot.
            ConfigError: bad indices, ``lq`` or ``lx``.
        """
        return self.score_many([(q_desc, q_pad)], gallery, [indices], lq=lq, lx=lx)[0]

    def score_many(self, queries: Sequence[QueryInput], gallery: GalleryLocals,
                   candidate_lists: Sequence[Sequence[int] | np.ndarray], *, lq: int | None = None,
                   lx: int | None = None) -> list[np.ndarray]:
        """Logits of many queries, each against its own candidates, batched across queries.

        Args:
            queries: ``nq`` pairs ``(desc (Lq_i, local_dim), pad (Lq_i,) bool or None)``.
            candidate_lists: ``nq`` arrays of item indices into ``gallery``.
            lq, lx: as in :meth:`score`.

        Returns:
            ``nq`` float32 arrays, ``out[i][j]`` the logit of query ``i`` and ``candidate_lists[i][j]``.

        Raises:
            ShapeError, CorruptDataError, ConfigError: as :meth:`score` (naming the query);
            ConfigError also when ``queries`` and ``candidate_lists`` differ in length.
        """
        if len(queries) != len(candidate_lists):
            raise ConfigError(f"{len(queries)} queries but {len(candidate_lists)} candidate lists; give one "
                              "list of gallery indices per query")
        lq = None if lq is None else check_length(lq, "lq")
        lx = None if lx is None else check_length(lx, "lx")
        cands = [check_indices(c, len(gallery), what="the gallery") for c in candidate_lists]
        sizes = [c.size for c in cands]
        if not queries:
            return []
        model = self._model
        with torch.inference_mode(), _eval_mode(model):
            state, q_len = self._query_states(queries, lq)
            qi = np.repeat(np.arange(len(queries)), sizes)
            xi = np.concatenate(cands)
            x_len = gallery.counts(xi).astype(np.int64) if xi.size else np.zeros(0, np.int64)
            if lx is not None:
                x_len = np.minimum(x_len, lx)
            logits = self._score_pairs(state, q_len, qi, gallery, xi, x_len)
        return np.split(logits, np.cumsum(sizes)[:-1])

    # -- internals
    def _query_states(self, queries: Sequence[QueryInput], lq: int | None) -> tuple[QueryState, np.ndarray]:
        """Each query projected once (valid slots first, padded to the longest) and its layer-1
        :class:`QueryState`; plus the ``(nq,)`` query lengths."""
        valid = [_valid_query(desc, pad, self._model.cfg.local_dim, i) for i, (desc, pad) in enumerate(queries)]
        valid = [v[:lq] if lq is not None else v for v in valid]
        q_len = np.array([len(v) for v in valid], dtype=np.int64)
        batch = np.zeros((len(valid), int(q_len.max()), valid[0].shape[1]), dtype=np.float32)
        for i, v in enumerate(valid):
            batch[i, :len(v)] = v
        pad = torch.from_numpy(np.arange(batch.shape[1])[None, :] >= q_len[:, None]).to(self._device)
        desc = torch.from_numpy(batch).to(device=self._device, dtype=self._model.mtc_token.dtype)
        tokens = self._model.project(desc, pad, gallery=False)
        return query_state(self._model, tokens, pad), q_len

    def _score_pairs(self, state: QueryState, q_len: np.ndarray, qi: np.ndarray, gallery: GalleryLocals,
                     xi: np.ndarray, x_len: np.ndarray) -> np.ndarray:
        """Logits of pairs ``(qi[p], xi[p])``: buckets of (query, gallery) length, then chunks."""
        out = np.empty(qi.size, dtype=np.float32)
        ql = q_len[qi]
        buckets = np.stack([-(-ql // self._bucket), -(-x_len // self._bucket)], axis=1)  # ceil division
        _, group = np.unique(buckets, axis=0, return_inverse=True)
        for g in range(int(group.max(initial=-1)) + 1):
            members = np.flatnonzero(group.reshape(-1) == g)
            lq_b, lx_b = int(ql[members].max()), max(1, int(x_len[members].max()))
            per_chunk = max(1, self._max_tokens // (1 + lq_b + lx_b))
            for start in range(0, members.size, per_chunk):
                sel = members[start:start + per_chunk]
                out[sel] = self._forward_chunk(state, qi[sel], gallery, xi[sel], lq_b, lx_b)
        return out

    def _forward_chunk(self, state: QueryState, qi: np.ndarray, gallery: GalleryLocals, xi: np.ndarray,
                       lq_b: int, lx_b: int) -> np.ndarray:
        dev = self._device
        x_tok, x_pad = gallery.tokens(self._model, xi, length=lx_b, device=dev)
        x_pad = x_pad.to(dev)
        x_tok = x_tok.to(dev).masked_fill(x_pad[..., None], 0.0)  # nothing in a padding slot can leak
        rows = qi[:1] if (qi == qi[0]).all() else qi  # one query: a batch of 1, broadcast
        chunk_state = state.take(torch.from_numpy(rows).to(dev), lq_b)
        return logits_from_state(self._model, chunk_state, x_tok, x_pad).float().cpu().numpy()


def _valid_query(desc: np.ndarray | torch.Tensor, pad: np.ndarray | torch.Tensor | None, local_dim: int,
                 i: int) -> np.ndarray:
    """The valid slots ``(k, d)`` float32 of one query, in order; checks shape, finiteness, k >= 1."""
    d = desc.detach().cpu().numpy() if isinstance(desc, torch.Tensor) else np.asarray(desc)
    if d.ndim != 2 or d.shape[1] != local_dim:
        raise ShapeError(f"query {i}: local descriptors must be (Lq, {local_dim}) for this AMES checkpoint, got "
                         f"{d.shape}; extract them with the local feature the checkpoint was trained on")
    p = np.zeros(d.shape[0], dtype=bool) if pad is None else (
        pad.detach().cpu().numpy() if isinstance(pad, torch.Tensor) else np.asarray(pad))
    if p.shape != (d.shape[0],) or p.dtype != np.bool_:
        raise ShapeError(f"query {i}: mask must be bool ({d.shape[0]},) (True = padding), got {p.dtype} {p.shape}")
    v = d[~p].astype(np.float32, copy=False)
    if v.shape[0] == 0:
        raise ShapeError(f"query {i} has no valid local descriptors; AMES cannot score an empty set "
                         "(rerank() keeps the global order for such a query)")
    if not np.isfinite(v).all():
        raise CorruptDataError(f"query {i} has NaN/inf in local descriptor slot(s) "
                               f"{np.flatnonzero(~np.isfinite(v).all(axis=1)).tolist()[:5]} (among its valid "
                               "slots); re-extract its local features")
    return v
