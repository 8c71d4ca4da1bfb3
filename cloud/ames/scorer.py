"""Fast batched AMES scoring: one query (or many) against many gallery items, no loop over pairs.

:class:`AMESScorer` projects each query once, groups the (query, candidate) pairs into buckets of
similar descriptor counts (rounded up to ``bucket``) so little padding is computed, and runs each
bucket in chunks of about ``max_tokens_per_chunk`` tokens (small chunks keep activations in cache),
under ``torch.inference_mode`` with the model in eval mode.

The forward pass is :func:`asymfuse.cloud.ames.block_forward.block_logits`: the same logits as
:meth:`AMES.forward_tokens` with less work.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from asymfuse.cloud.ames.block_forward import QueryState, logits_from_state, query_state
from asymfuse.cloud.ames.model import AMES
from asymfuse.cloud.ames.sources import GalleryLocals, check_indices, check_length
from asymfuse.cloud.device import resolve_device
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError

DEFAULT_BUCKET = 16
DEFAULT_MAX_TOKENS = 2048  # per chunk: fastest of 1024..8192 on CPU (1-2 threads) for Lq, Lx in 50..600

QueryInput = tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor | None]


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
