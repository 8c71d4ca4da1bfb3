"""Offline evaluation of AMES re-ranking on a retrieval dataset.

:func:`evaluate_ames` runs the exact global search (:func:`asymfuse.cloud.index.flat.search`),
scores every query's global top-``m`` with AMES (batched over queries,
:meth:`AMESScorer.score_many`), re-ranks it with the ensemble and reports the dataset's metrics
(:func:`asymfuse.cloud.eval.evaluate.evaluate_ranking`) before and after. Its outputs feed
:func:`select_ensemble` (re-exported here) to pick ``lam``/``gamma`` on a val split.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from asymfuse.cloud.ames.ensemble import reranked_ranks, rerank_rows, select_ensemble
from asymfuse.cloud.ames.options import RerankOptions
from asymfuse.cloud.ames.scorer import AMESScorer
from asymfuse.cloud.ames.sources import ArrayLocals, GalleryLocals, MissingLocalsWarning
from asymfuse.cloud.data.records import RetrievalDataset
from asymfuse.cloud.eval.evaluate import evaluate_ranking
from asymfuse.cloud.index.flat import search
from asymfuse.edge.errors import ConfigError, ShapeError

__all__ = ["AMESEvaluation", "evaluate_ames", "select_ensemble"]


def _check_sizes(dataset: RetrievalDataset, xq: np.ndarray, xb: np.ndarray, query_locals: ArrayLocals,
                 gallery: GalleryLocals) -> None:
    sizes = {"xq": (np.shape(xq)[0], dataset.nq), "query_locals": (len(query_locals), dataset.nq),
             "xb": (np.shape(xb)[0], dataset.nb), "gallery": (len(gallery), dataset.nb)}
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
                      MissingLocalsWarning, stacklevel=3)
    if live.size and m:
        desc, pad = query_locals.descriptors(live, length=None if lq is None else min(lq, query_locals.max_local))
        queries = [(desc[i], pad[i]) for i in range(live.size)]
        scores = scorer.score_many(queries, gallery, [topm[i] for i in live], lq=lq, lx=lx)
        logits[live] = np.stack(scores)
    empty = gallery.counts(topm.reshape(-1)).reshape(nq, m) == 0
    if empty[live].any():
        warnings.warn(f"{int(empty[live].sum())} (query, candidate) pairs have a candidate without local "
                      "descriptors; its global score stands", MissingLocalsWarning, stacklevel=3)
    logits[empty] = np.nan
    return logits


@dataclass(frozen=True)
class AMESEvaluation:
    """What :func:`evaluate_ames` measured on one split.

    Attributes:
        global_metrics, ames_metrics: metrics of :func:`evaluate_ranking` (percent) before and
            after re-ranking.
        global_scores: ``(nq, m)`` float32 global similarities of each query's top-m.
        topm: ``(nq, m)`` int64 their gallery indices.
        logits: ``(nq, m)`` float32 AMES logits (NaN: a side had no local descriptors).
        ranks, ames_ranks: ``(nb, nq)`` int64 global and re-ranked rankings (revisitop layout).
        options: the options used, ``top_m`` clipped to ``nb``.
    """

    global_metrics: dict[str, Any]
    ames_metrics: dict[str, Any]
    global_scores: np.ndarray
    topm: np.ndarray
    logits: np.ndarray
    ranks: np.ndarray
    ames_ranks: np.ndarray
    options: RerankOptions


def evaluate_ames(*, dataset: RetrievalDataset, xq: np.ndarray, xb: np.ndarray, query_locals: ArrayLocals,
                  gallery: GalleryLocals, scorer: AMESScorer, options: RerankOptions) -> AMESEvaluation:
    """Global search, then AMES re-ranking of each query's top-``options.top_m``, with metrics of both.

    Args:
        dataset: the split (its ``nq`` queries and ``nb`` gallery images, ground truth).
        xq: ``(nq, d)`` float32 query global vectors; xb: ``(nb, d)`` gallery ones (unit-norm for
            cosine similarity).
        query_locals: the queries' float local descriptors (row ``i`` = query ``i``).
        gallery: the gallery's local descriptors (row ``j`` = gallery image ``j``), e.g. an
            :class:`ArrayLocals` or a packed binary store.
        scorer: the AMES scorer; options: depth (``top_m`` >= 1, clipped to ``nb``), λ/γ, budgets.

    Raises:
        ShapeError: sizes that do not match the dataset, descriptor dimension mismatches, NaN/inf
            global features.
        CorruptDataError: NaN/inf query local descriptors.
        ConfigError: ``options.top_m`` is 0, or ``options`` is not a :class:`RerankOptions`.
    """
    if not isinstance(options, RerankOptions):
        raise ConfigError(f"options must be a RerankOptions, got {type(options).__name__}")
    if options.top_m < 1:
        raise ConfigError("options.top_m must be >= 1 (how many global results AMES re-ranks)")
    _check_sizes(dataset, xq, xb, query_locals, gallery)
    D, I = search(xq, xb, k=dataset.nb)
    ranks = np.ascontiguousarray(I.T.astype(np.int64))
    m = min(options.top_m, dataset.nb)
    topm, global_scores = np.ascontiguousarray(I[:, :m].astype(np.int64)), np.ascontiguousarray(D[:, :m])
    logits = ames_logits(scorer=scorer, query_locals=query_locals, gallery=gallery, topm=topm, lq=options.lq,
                         lx=options.lx)
    ames_ranks = reranked_ranks(rerank_rows(topm, global_scores, logits, lam=options.lam, gamma=options.gamma), ranks)
    return AMESEvaluation(global_metrics=evaluate_ranking(ranks, dataset),
                          ames_metrics=evaluate_ranking(ames_ranks, dataset), global_scores=global_scores, topm=topm,
                          logits=logits, ranks=ranks, ames_ranks=ames_ranks, options=replace(options, top_m=m))
