"""Offline evaluation of AMES re-ranking on a retrieval dataset.

:func:`evaluate_ames` runs the exact global search (:func:`asymfuse.cloud.index.flat.search`),
scores every query's global top-``m`` with AMES (batched over queries,
:meth:`AMESScorer.score_many`), re-ranks it with the ensemble and reports the dataset's metrics
(:func:`asymfuse.cloud.eval.evaluate.evaluate_ranking`) before and after. Its outputs feed
:func:`select_ensemble` (re-exported here) to pick ``lam``/``gamma`` on a val split.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from asymfuse.cloud.ames.ensemble import check_weights, reranked_ranks, rerank_rows, select_ensemble
from asymfuse.cloud.ames.scorer import AMESScorer
from asymfuse.cloud.ames.sources import ArrayLocals, GalleryLocals
from asymfuse.cloud.data.records import RetrievalDataset
from asymfuse.cloud.eval.evaluate import evaluate_ranking
from asymfuse.cloud.index.flat import search
from asymfuse.edge.errors import ConfigError, ShapeError

__all__ = ["evaluate_ames", "select_ensemble"]


def _check_sizes(dataset: RetrievalDataset, global_q: np.ndarray, global_x: np.ndarray, query_locals: ArrayLocals,
                 gallery: GalleryLocals) -> None:
    sizes = {"global_q": (np.shape(global_q)[0], dataset.nq), "query_locals": (len(query_locals), dataset.nq),
             "global_x": (np.shape(global_x)[0], dataset.nb), "gallery": (len(gallery), dataset.nb)}
    bad = {k: v[0] for k, v in sizes.items() if v[0] != v[1]}
    if bad:
        raise ShapeError(f"{bad} do not match {dataset.name} ({dataset.nq} queries, {dataset.nb} gallery images); "
                         "compute the features of this split")


def ames_logits(*, scorer: AMESScorer, query_locals: ArrayLocals, gallery: GalleryLocals, topm: np.ndarray,
                lq: int | None = None, lx: int | None = None) -> np.ndarray:
    """AMES logits ``(nq, m)`` float32 of every query against its row of ``topm`` ``(nq, m)``.

    NaN where the query or the candidate has no local descriptors (a warning says how many).

    Raises:
        ShapeError, CorruptDataError, ConfigError: as :meth:`AMESScorer.score_many`.
    """
    nq, m = topm.shape
    logits = np.full((nq, m), np.nan, dtype=np.float32)
    q_counts = query_locals.counts(np.arange(nq))
    live = np.flatnonzero(q_counts > 0)
    if live.size < nq:
        warnings.warn(f"{nq - live.size} of {nq} queries have no local descriptors; their global order stands",
                      stacklevel=3)
    if live.size and m:
        desc, pad = query_locals.descriptors(live, length=None if lq is None else min(lq, query_locals.max_local))
        queries = [(desc[i], pad[i]) for i in range(live.size)]
        scores = scorer.score_many(queries, gallery, [topm[i] for i in live], lq=lq, lx=lx)
        logits[live] = np.stack(scores)
    empty = gallery.counts(topm.reshape(-1)).reshape(nq, m) == 0
    if empty[live].any():
        warnings.warn(f"{int(empty[live].sum())} (query, candidate) pairs have a candidate without local "
                      "descriptors; its global score stands", stacklevel=3)
    logits[empty] = np.nan
    return logits


def evaluate_ames(*, dataset: RetrievalDataset, global_q: np.ndarray, global_x: np.ndarray,
                  query_locals: ArrayLocals, gallery: GalleryLocals, scorer: AMESScorer, top_m: int = 100,
                  lam: float, gamma: float, lq: int | None = None, lx: int | None = None) -> dict[str, Any]:
    """Global search, then AMES re-ranking of each query's top-``top_m``, with metrics of both.

    Args:
        dataset: the split (its ``nq`` queries and ``nb`` gallery images, ground truth).
        global_q: ``(nq, D)`` float32 query global descriptors; global_x: ``(nb, D)`` gallery
            ones (unit-norm for cosine similarity).
        query_locals: the queries' float local descriptors (row ``i`` = query ``i``).
        gallery: the gallery's local descriptors (row ``j`` = gallery image ``j``), e.g. an
            :class:`ArrayLocals` or a packed binary store.
        scorer: the AMES scorer; top_m: re-ranking depth (clipped to ``nb``).
        lam, gamma: ensemble weights; lq, lx: descriptor budgets (None: all).

    Returns:
        ``{"global": metrics, "ames": metrics, "global_scores": (nq, m) float32, "topm": (nq, m)
        int64, "logits": (nq, m) float32 (NaN: no local descriptors), "ranks": (nb, nq) int64
        global ranking (revisitop layout), "ames_ranks": (nb, nq) int64 re-ranked, "lam", "gamma",
        "top_m": m}``; metrics as :func:`evaluate_ranking` (percent).

    Raises:
        ShapeError: sizes that do not match the dataset, descriptor dimension mismatches, NaN/inf
            global features.
        CorruptDataError: NaN/inf query local descriptors.
        ConfigError: bad ``top_m``, ``lam``, ``gamma``, ``lq`` or ``lx``.
    """
    if not isinstance(top_m, (int, np.integer)) or isinstance(top_m, bool) or top_m < 1:
        raise ConfigError(f"top_m={top_m!r} must be a positive int (how many global results AMES re-ranks)")
    lam, gamma = check_weights(lam, gamma)
    _check_sizes(dataset, global_q, global_x, query_locals, gallery)
    D, I = search(global_q, global_x, k=dataset.nb)
    ranks = np.ascontiguousarray(I.T.astype(np.int64))
    m = min(int(top_m), dataset.nb)
    topm, global_scores = np.ascontiguousarray(I[:, :m].astype(np.int64)), np.ascontiguousarray(D[:, :m])
    logits = ames_logits(scorer=scorer, query_locals=query_locals, gallery=gallery, topm=topm, lq=lq, lx=lx)
    ames_ranks = reranked_ranks(rerank_rows(topm, global_scores, logits, lam=lam, gamma=gamma), ranks)
    return {"global": evaluate_ranking(ranks, dataset), "ames": evaluate_ranking(ames_ranks, dataset),
            "global_scores": global_scores, "topm": topm, "logits": logits, "ranks": ranks, "ames_ranks": ames_ranks,
            "lam": lam, "gamma": gamma, "top_m": m}
