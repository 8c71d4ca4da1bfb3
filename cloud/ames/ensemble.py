"""The global-local ensemble of AMES re-ranking and its grid search.

A re-ranked candidate scores ``s = lam * g + (1 - lam) * sigmoid(gamma * logit)``, with ``g``
its global similarity and ``logit`` the AMES output (PAPERS.md §3). ``lam`` and ``gamma`` are
chosen by :func:`select_ensemble` on a validation split.

Rankings here are ``(nq, m)`` rows of gallery indices (the global top-``m`` per query), and the
full rankings handed to the metrics are in the revisitop layout ``(R, nq)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from asymfuse.cloud.data.records import RetrievalDataset
from asymfuse.cloud.eval.evaluate import evaluate_ranking
from asymfuse.edge.errors import ConfigError, ShapeError

LAMS = tuple(round(0.1 * i, 1) for i in range(11))
GAMMAS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def check_weights(lam: float, gamma: float) -> tuple[float, float]:
    """Raises: ConfigError: ``lam`` outside ``[0, 1]`` or ``gamma`` not a finite positive number."""
    lam_f, gamma_f = float(lam), float(gamma)
    if not 0.0 <= lam_f <= 1.0:
        raise ConfigError(f"lam={lam!r} must lie in [0, 1] (1 = global score only, 0 = AMES only)")
    if not (np.isfinite(gamma_f) and gamma_f > 0):
        raise ConfigError(f"gamma={gamma!r} must be a finite number > 0 (the AMES logit temperature)")
    return lam_f, gamma_f


def combine(global_scores: np.ndarray, logits: np.ndarray, *, lam: float, gamma: float) -> np.ndarray:
    """``lam * g + (1 - lam) * sigmoid(gamma * logit)``, element-wise, in float64.

    Args:
        global_scores: global similarities (e.g. cosine), any shape.
        logits: AMES logits, the same shape. NaN stays NaN (see :func:`ensemble_scores`).

    Raises:
        ConfigError: bad ``lam``/``gamma``.
        ShapeError: the shapes differ.
    """
    lam, gamma = check_weights(lam, gamma)
    g = np.asarray(global_scores, dtype=np.float64)
    z = np.asarray(logits, dtype=np.float64)
    if g.shape != z.shape:
        raise ShapeError(f"global scores {g.shape} and logits {z.shape} must have the same shape")
    sigmoid = 0.5 * (1.0 + np.tanh(0.5 * gamma * z))  # overflow-free form of 1 / (1 + exp(-gamma z))
    return lam * g + (1.0 - lam) * sigmoid


def ensemble_scores(global_scores: np.ndarray, logits: np.ndarray, *, lam: float, gamma: float) -> np.ndarray:
    """:func:`combine`, except that a NaN logit (no local descriptors on one side) leaves the
    global score standing: ``s = g`` there.

    Raises:
        ConfigError, ShapeError: as :func:`combine`.
    """
    s = combine(global_scores, logits, lam=lam, gamma=gamma)
    missing = np.isnan(np.asarray(logits, dtype=np.float64))
    return np.where(missing, np.asarray(global_scores, dtype=np.float64), s)


def rerank_rows(topm: np.ndarray, global_scores: np.ndarray, logits: np.ndarray, *, lam: float,
                gamma: float) -> np.ndarray:
    """Re-sort each row of a global top-``m`` by :func:`ensemble_scores`.

    Args:
        topm: ``(nq, m)`` gallery indices, global order (best first).
        global_scores, logits: ``(nq, m)`` aligned with ``topm``.

    Returns:
        ``(nq, m)`` int64 gallery indices by decreasing ensemble score; ties keep the global order.

    Raises:
        ConfigError, ShapeError: as :func:`combine`, or ``topm`` of another shape.
    """
    s = ensemble_scores(global_scores, logits, lam=lam, gamma=gamma)
    topm = np.asarray(topm)
    if topm.shape != s.shape or topm.ndim != 2:
        raise ShapeError(f"topm {topm.shape} must be (nq, m) like the scores {s.shape}")
    order = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(topm, order, axis=1).astype(np.int64, copy=False)


def reranked_ranks(head: np.ndarray, full_ranks: np.ndarray | None) -> np.ndarray:
    """Revisitop ranks ``(R, nq)``: the re-sorted ``head`` ``(nq, m)`` then ``full_ranks[m:]`` (the
    global order of the rest); ``full_ranks=None`` gives the truncated ``(m, nq)``."""
    top = np.ascontiguousarray(head.T)
    return top if full_ranks is None else np.concatenate([top, full_ranks[head.shape[1]:]], axis=0)


def _check_grid_inputs(dataset: RetrievalDataset, topm: np.ndarray, global_scores: np.ndarray, logits: np.ndarray,
                       full_ranks: np.ndarray | None) -> None:
    shapes = {"topm": np.shape(topm), "global_scores": np.shape(global_scores), "logits": np.shape(logits)}
    if len(set(shapes.values())) != 1 or len(shapes["topm"]) != 2 or shapes["topm"][0] != dataset.nq:
        raise ShapeError(f"topm, global_scores and logits must all be (nq={dataset.nq}, m); got {shapes}")
    if full_ranks is not None:
        fr = np.asarray(full_ranks)
        m = shapes["topm"][1]
        if fr.ndim != 2 or fr.shape[1] != dataset.nq or fr.shape[0] < m:
            raise ShapeError(f"full_ranks must be revisitop (R >= {m}, nq={dataset.nq}), got {fr.shape}")
        if not np.array_equal(fr[:m].T, topm):
            raise ConfigError("topm must be the first m rows of full_ranks (transposed): pass the global "
                              "ranking the top-m came from (evaluate_ames returns both)")


def select_ensemble(*, dataset: RetrievalDataset, global_scores: np.ndarray, topm: np.ndarray, logits: np.ndarray,
                    full_ranks: np.ndarray | None = None, lams: Sequence[float] = LAMS,
                    gammas: Sequence[float] = GAMMAS, metric: str = "mAP_medium", min_gain: float = 0.0
                    ) -> tuple[float, float, list[dict[str, Any]]]:
    """Grid search of ``(lam, gamma)`` maximising ``metric`` of the re-ranked search (use the val split).

    Args:
        dataset: the split the rankings are of (its ground truth scores them).
        global_scores, topm, logits: ``(nq, m)`` global scores, gallery indices (global order) and
            AMES logits of each query's top-``m`` (NaN logit: global score stands).
        full_ranks: ``(R, nq)`` the global ranking whose first ``m`` rows are ``topm.T``; its rows
            ``m:`` follow the re-ranked head. None: rank only the top-``m``.
        lams, gammas: the grid; ``metric``: a key of :func:`evaluate_ranking`'s result.
        min_gain: points of ``metric`` the best re-ranked pair must add over ``lam = 1`` (the global
            score alone) to be chosen; below it the re-ranker is switched off (``lam = 1``). On a
            small val split a gain under its noise is no evidence that the re-ranker helps.

    Returns:
        ``(lam, gamma, grid)``: the best pair (ties: the first in grid order, ``lams`` outer) and one
        dict per grid point ``{"lam", "gamma", **metrics}``.

    Raises:
        ShapeError: inconsistent shapes. ConfigError: an empty grid, a bad weight, an unknown
        ``metric``, or ``topm`` not the head of ``full_ranks``.
    """
    if not lams or not gammas:
        raise ConfigError("the lam/gamma grid is empty; give at least one value of each")
    if isinstance(min_gain, bool) or not isinstance(min_gain, (int, float)) or not min_gain >= 0:
        raise ConfigError(f"min_gain must be a number >= 0, got {min_gain!r}")
    for lam in lams:
        for gamma in gammas:
            check_weights(lam, gamma)
    _check_grid_inputs(dataset, topm, global_scores, logits, full_ranks)
    grid: list[dict[str, Any]] = []
    for lam in lams:
        for gamma in gammas:
            head = rerank_rows(topm, global_scores, logits, lam=lam, gamma=gamma)
            metrics = evaluate_ranking(reranked_ranks(head, full_ranks), dataset)
            if metric not in metrics:
                raise ConfigError(f"metric {metric!r} is not reported for {dataset.name}; choose one of "
                                  f"{sorted(metrics)}")
            grid.append({"lam": float(lam), "gamma": float(gamma), **metrics})
    values = np.array([float(row[metric]) for row in grid])
    values = np.where(np.isnan(values), -np.inf, values)
    best = grid[int(np.argmax(values))]  # first of the ties
    off = [i for i, row in enumerate(grid) if row["lam"] == 1.0]
    if off and best["lam"] != 1.0 and values[int(np.argmax(values))] < values[off[0]] + min_gain:
        best = grid[off[0]]
    return best["lam"], best["gamma"], grid
