"""One entry point from a ranking (or from features) to a dataset's official metrics."""

from __future__ import annotations

from typing import Any

import numpy as np
from asymfuse.cloud.data.records import RetrievalDataset
from asymfuse.cloud.eval.metrics import REVISITOP_SETTINGS, evaluate_revisitop, gldv2_map_at_k, holidays_map, ukbench_ns
from asymfuse.cloud.index.flat import search
from asymfuse.edge.errors import ShapeError


def evaluate_ranking(ranks: np.ndarray, dataset: RetrievalDataset, *,
                     layout: str = "revisitop") -> dict[str, Any]:
    """Score a ranking with the protocol of ``dataset``.

    Args:
        ranks: ``(R, nq)`` gallery indices by decreasing similarity (``layout="revisitop"``) or
            ``(nq, R)`` (``layout="faiss"``); R may be < nb (a truncated ranking).

    Returns:
        A flat dict of metrics in percent, e.g. ``{"mAP_easy": .., "mAP_medium": .., "mAP_hard": ..,
        "mP@10_medium": ..}`` for revisitop, ``{"mAP@100": ..}`` for GLDv2, ``{"mAP": ..}`` for
        Holidays and ``{"N-S": ..}`` (0-4 scale) for UKBench.

    Raises:
        ShapeError: the ranking does not fit the dataset.
    """
    kw = dict(layout=layout, n_gallery=dataset.nb)
    if dataset.protocol == "revisitop":
        res = evaluate_revisitop(ranks, dataset.gnd, **kw)
        out: dict[str, Any] = {f"mAP_{s}": float(v) for s, v in res.map.items()}
        for s, vals in res.mp_at_k.items():
            out.update({f"mP@{k}_{s}": float(v) for k, v in zip(res.kappas, vals)})
        return out
    if dataset.protocol == "gldv2":
        return {"mAP@100": 100.0 * gldv2_map_at_k(ranks, dataset.gnd, **kw)}
    if dataset.protocol == "holidays":
        return {"mAP": 100.0 * holidays_map(ranks, dataset.gnd, **kw)}
    return {"N-S": ukbench_ns(ranks, dataset.gnd, **kw)}


def per_query_ap(ranks: np.ndarray, dataset: RetrievalDataset, *, metric: str) -> np.ndarray | None:
    """``(nq,)`` AP per query in percent (NaN: a query without positives) of ``metric``
    (``"mAP_easy"``, ``"mAP_medium"`` or ``"mAP_hard"``) for a revisitop ``dataset``; None for
    other protocols or metrics (their per-query values are not kept).

    Args:
        ranks: ``(R, nq)`` gallery indices by decreasing similarity (revisitop layout).
    """
    setting = metric.removeprefix("mAP_")
    if dataset.protocol != "revisitop" or setting not in REVISITOP_SETTINGS or not metric.startswith("mAP_"):
        return None
    return 100.0 * evaluate_revisitop(ranks, dataset.gnd, n_gallery=dataset.nb).details[setting].aps


def rank_features(xq: np.ndarray, xb: np.ndarray, *, k: int | None = None) -> np.ndarray:
    """Exact inner-product ranking (faiss) in revisitop layout.

    Args:
        xq: ``(nq, d)`` float32 query vectors. xb: ``(nb, d)`` float32 gallery vectors (unit-norm
            for cosine similarity).
        k: keep only the top-k (default: the full gallery).

    Returns:
        ``(k, nq)`` int64 gallery indices, best first.

    Raises:
        ShapeError: dimension mismatch or non-finite values.
    """
    if xq.ndim != 2 or xb.ndim != 2 or xq.shape[1] != xb.shape[1]:
        raise ShapeError(f"query vectors {xq.shape} and gallery vectors {xb.shape} must share d")
    _, idx = search(xq, xb, k=xb.shape[0] if k is None else k)
    return np.ascontiguousarray(idx.T.astype(np.int64))


def evaluate_aff(*, dataset: RetrievalDataset, query_vectors: np.ndarray,
                 gallery_vectors: np.ndarray) -> dict[str, Any]:
    """Rank the gallery by inner product for every query and score it with the dataset's protocol.

    Args:
        query_vectors: ``(nq, d)`` float, unit-norm for cosine similarity.
        gallery_vectors: ``(nb, d)`` float, same space and dimension.

    Returns:
        The metrics of :func:`asymfuse.cloud.eval.evaluate.evaluate_ranking`, in percent (e.g.
        ``mAP_easy``, ``mAP_medium``, ``mAP_hard``, ``mP@k_<setting>`` for revisitop).

    Raises:
        ShapeError: a matrix is not 2-D, its row count differs from the dataset's ``nq`` / ``nb``,
            the dimensions differ, or it holds NaN/inf.
    """
    xq = _check_vectors(query_vectors, rows=dataset.nq, what="query_vectors", count="nq")
    xb = _check_vectors(gallery_vectors, rows=dataset.nb, what="gallery_vectors", count="nb")
    if xq.shape[1] != xb.shape[1]:
        raise ShapeError(f"query vectors have d={xq.shape[1]} but gallery vectors d={xb.shape[1]}; both must "
                         "come from the same embedding space")
    return evaluate_ranking(rank_features(xq, xb), dataset)


def _check_vectors(x: np.ndarray, *, rows: int, what: str, count: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] != rows or arr.shape[1] < 1:
        raise ShapeError(f"{what} must be ({count}={rows}, d), got shape {arr.shape}; embed every "
                         f"{'query' if count == 'nq' else 'gallery image'} of the dataset, in dataset order")
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise ShapeError(f"{what} holds NaN, inf or non-numbers; the model producing them has diverged "
                         "or the features are corrupt")
    return np.ascontiguousarray(arr, dtype=np.float32)
