"""Re-rank one query's global candidates with AMES.

The candidates are put in global order (decreasing global score, ties kept in the given order);
the first ``top_m`` are scored by AMES, combined with their global score
(:func:`~asymfuse.cloud.ames.ensemble.combine`) and re-sorted; the rest follow in global order.

Empty local sets: a query with no valid local descriptor keeps the global order, and a candidate
with none keeps its global score as its combined score (``s = g``); both with a warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from asymfuse.cloud.ames.ensemble import combine, ensemble_scores
from asymfuse.cloud.ames.options import RerankOptions
from asymfuse.cloud.ames.factory import PairScorer
from asymfuse.cloud.ames.sources import GalleryLocals, MissingLocalsWarning
from asymfuse.edge.errors import ConfigError, ShapeError

__all__ = ["RerankOptions", "RerankResult", "combine", "rerank"]


@dataclass(frozen=True)
class RerankResult:
    """Output of :func:`rerank`.

    Attributes:
        ids: ``(n,)`` int64 candidate ids, best first.
        scores: ``(n,)`` float64: the ensemble score of the first ``num_reranked`` ids, the global
            score of the rest (the tail is not comparable with the head; it always follows it).
        logits: ``(num_reranked,)`` float32 AMES logits of ``ids[:num_reranked]``; NaN where a
            side had no local descriptors (the global score stood).
        num_reranked: how many candidates AMES re-scored, ``min(top_m, n)`` (0 for an empty query).
    """

    ids: np.ndarray
    scores: np.ndarray
    logits: np.ndarray
    num_reranked: int


def _check_candidates(candidates: Sequence[int] | np.ndarray, global_scores: Sequence[float] | np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(candidates)
    g = np.asarray(global_scores)
    if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
        raise ShapeError(f"candidates must be a 1-D array of gallery indices, got {ids.dtype} {ids.shape}")
    if g.shape != ids.shape or not (g.size == 0 or np.issubdtype(g.dtype, np.number)):
        raise ShapeError(f"global_scores must be numbers of shape {ids.shape} (one per candidate), "
                         f"got {g.dtype} {g.shape}")
    g = g.astype(np.float64)
    if not np.isfinite(g).all():
        raise ShapeError("global_scores contain NaN or inf; fix the global features before re-ranking")
    return ids.astype(np.int64), g


def _query_arrays(query_locals: np.ndarray | torch.Tensor, q_pad: np.ndarray | torch.Tensor | None
                  ) -> tuple[np.ndarray, np.ndarray]:
    q = query_locals.detach().cpu().numpy() if isinstance(query_locals, torch.Tensor) else np.asarray(query_locals)
    if q_pad is None:
        return q, np.zeros(q.shape[:1], dtype=bool)
    pad = q_pad.detach().cpu().numpy() if isinstance(q_pad, torch.Tensor) else np.asarray(q_pad)
    return q, pad


def rerank(query_locals: np.ndarray | torch.Tensor, candidates: Sequence[int] | np.ndarray,
           global_scores: Sequence[float] | np.ndarray, *, options: RerankOptions, scorer: PairScorer,
           gallery: GalleryLocals, q_pad: np.ndarray | torch.Tensor | None = None, warn: bool = True) -> RerankResult:
    """Re-rank a query's global candidates with AMES (see the module docstring).

    Args:
        query_locals: ``(Lq, local_dim)`` float query descriptors (any norm), slots in detector order.
        candidates: ``(n,)`` int gallery indices into ``gallery`` (any order).
        global_scores: ``(n,)`` their global similarities.
        options: depth ``top_m``, ensemble ``lam``/``gamma`` and descriptor budgets ``lq``/``lx``
            (:meth:`RerankOptions.from_info` takes λ/γ from the checkpoint).
        scorer: the AMES scorer (an ``AMESScorer`` or any kind of
            :func:`~asymfuse.cloud.ames.factory.create_scorer`); gallery: the candidates' local descriptors.
        q_pad: ``(Lq,)`` bool, True = padding (None: all valid).
        warn: emit a :class:`MissingLocalsWarning` for an empty query or candidates (False: a server's
            per-request path, where ``warnings.catch_warnings`` would race between threads).

    Returns:
        :class:`RerankResult`.

    Raises:
        ShapeError: descriptor dimension other than the checkpoint's (the message names the fix),
            bad shapes, or NaN/inf global scores.
        CorruptDataError: NaN/inf in a valid query descriptor.
        ConfigError: ``options`` is not a :class:`RerankOptions`, or bad candidate indices.
    """
    if not isinstance(options, RerankOptions):
        raise ConfigError(f"options must be a RerankOptions, got {type(options).__name__}")
    ids, g = _check_candidates(candidates, global_scores)
    order = np.argsort(-g, kind="stable")
    ids, g = ids[order], g[order]
    m = min(options.top_m, ids.size)
    q, mask = _query_arrays(query_locals, q_pad)
    local_dim = scorer.model.cfg.local_dim
    if q.ndim != 2 or q.shape[1] != local_dim:
        raise ShapeError(f"query local descriptors must be (Lq, {local_dim}) for this AMES checkpoint, got "
                         f"{q.shape}; extract them with the local feature the checkpoint was trained on")
    if mask.shape != q.shape[:1] or mask.dtype != np.bool_:
        raise ShapeError(f"q_pad must be bool ({q.shape[0]},) (True = padding), got {mask.dtype} {mask.shape}")
    if m == 0 or not (~mask).any():
        if m and warn:
            warnings.warn("the query has no local descriptors; AMES cannot re-rank it, the global order stands",
                          MissingLocalsWarning, stacklevel=2)
        return RerankResult(ids=ids, scores=g, logits=np.zeros(0, np.float32), num_reranked=0)
    logits = scorer.score(q, mask, gallery, ids[:m], lq=options.lq, lx=options.lx)
    empty = gallery.counts(ids[:m]) == 0
    if empty.any():
        if warn:
            warnings.warn(f"{int(empty.sum())} of the top-{m} candidates have no local descriptors; their global "
                          "score stands as their re-ranking score", MissingLocalsWarning, stacklevel=2)
        logits = np.where(empty, np.float32(np.nan), logits)
    s = ensemble_scores(g[:m], logits, lam=options.lam, gamma=options.gamma)
    head = np.argsort(-s, kind="stable")
    return RerankResult(ids=np.concatenate([ids[:m][head], ids[m:]]), scores=np.concatenate([s[head], g[m:]]),
                        logits=logits[head].astype(np.float32), num_reranked=m)
