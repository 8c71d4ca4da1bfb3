"""An untrained local re-ranker: the number of mutual nearest neighbours between two descriptor sets.

The cheap baseline every learned re-ranker is measured against. For a query set ``Q`` (``L_q``
descriptors) and a gallery set ``X`` (``L_x``), a pair ``(i, j)`` is a mutual nearest neighbour
when ``x_j`` is the most similar gallery descriptor of ``q_i`` and ``q_i`` the most similar query
descriptor of ``x_j`` (cosine; padding excluded). The "logit" of the pair of images is that count
divided by :data:`COUNT_SCALE`, so :func:`asymfuse.cloud.ames.ensemble.combine` blends it with the
global score exactly as it blends AMES logits (``sigmoid(gamma * count / 4)``; λ/γ are chosen on
val the same way).

:class:`MutualNNScorer` has the call signature of
:meth:`asymfuse.cloud.ames.scorer.AMESScorer.score_many`, so
:func:`asymfuse.cloud.ames.evaluate.evaluate_ames` runs it in place of AMES. It reads float
descriptors (:class:`asymfuse.cloud.ames.sources.ArrayLocals`), not packed binary ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from asymfuse.cloud.ames.sources import ArrayLocals
from asymfuse.edge.errors import ConfigError, ShapeError

COUNT_SCALE = 4.0  # mutual neighbours per unit of logit


def mutual_nn_counts(query: np.ndarray, query_pad: np.ndarray, gallery: np.ndarray,
                     gallery_pad: np.ndarray) -> np.ndarray:
    """Mutual nearest neighbours of one query set against ``m`` gallery sets.

    Args:
        query: ``(L_q, d)`` float descriptors (any norm: rows are L2-normalised here).
        query_pad: ``(L_q,)`` bool, True = padding.
        gallery: ``(m, L_x, d)`` float descriptors. gallery_pad: ``(m, L_x)`` bool, True = padding.

    Returns:
        ``(m,)`` int64 counts (0 when either side has no valid descriptor).

    Raises:
        ShapeError: shapes that do not fit together.
    """
    q, qp = np.asarray(query, dtype=np.float32), np.asarray(query_pad, dtype=bool)
    x, xp = np.asarray(gallery, dtype=np.float32), np.asarray(gallery_pad, dtype=bool)
    if q.ndim != 2 or qp.shape != q.shape[:1] or x.ndim != 3 or xp.shape != x.shape[:2] or x.shape[2] != q.shape[1]:
        raise ShapeError(f"need query (L_q, d) with pad (L_q,), gallery (m, L_x, d) with pad (m, L_x); got "
                         f"{q.shape}, {qp.shape}, {x.shape}, {xp.shape}")
    m = x.shape[0]
    if m == 0 or q.shape[0] == 0 or x.shape[1] == 0:
        return np.zeros(m, dtype=np.int64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    x = x / np.maximum(np.linalg.norm(x, axis=2, keepdims=True), 1e-12)
    sim = np.einsum("qd,mxd->mqx", q, x)
    sim[:, qp, :] = -np.inf
    sim = np.where(xp[:, None, :], -np.inf, sim)
    best_x = sim.argmax(axis=2)  # (m, L_q): each query descriptor's nearest gallery descriptor
    best_q = sim.argmax(axis=1)  # (m, L_x): each gallery descriptor's nearest query descriptor
    back = np.take_along_axis(best_q, best_x, axis=1)  # (m, L_q)
    valid = np.isfinite(sim.max(axis=2))  # a valid query descriptor with at least one valid gallery one
    return ((back == np.arange(q.shape[0])[None, :]) & valid).sum(axis=1).astype(np.int64)


class MutualNNScorer:
    """Mutual-nearest-neighbour counts as re-ranking logits; see the module docstring."""

    def score_many(self, queries: Sequence[tuple[np.ndarray, np.ndarray | None]], gallery: ArrayLocals,
                   candidate_lists: Sequence[Sequence[int] | np.ndarray], *, lq: int | None = None,
                   lx: int | None = None) -> list[np.ndarray]:
        """``nq`` float32 arrays: ``out[i][j]`` = mutual neighbours of query ``i`` and gallery item
        ``candidate_lists[i][j]`` over their first ``lq`` / ``lx`` descriptors, divided by :data:`COUNT_SCALE`.

        Raises:
            ConfigError: ``queries`` and ``candidate_lists`` differ in length, or ``gallery`` is not
                float descriptors.
            ShapeError: as :func:`mutual_nn_counts`.
        """
        if len(queries) != len(candidate_lists):
            raise ConfigError(f"{len(queries)} queries but {len(candidate_lists)} candidate lists; give one "
                              "list of gallery indices per query")
        if not isinstance(gallery, ArrayLocals):
            raise ConfigError(f"the mutual-NN baseline reads float descriptors (ArrayLocals), got "
                              f"{type(gallery).__name__}; pass the gallery's float local store")
        out = []
        for (desc, pad), cands in zip(queries, candidate_lists):
            desc = np.asarray(desc)
            pad = np.zeros(desc.shape[0], dtype=bool) if pad is None else np.asarray(pad, dtype=bool)
            if lq is not None:
                desc, pad = desc[:lq], pad[:lq]
            gd, gp = gallery.descriptors(np.asarray(cands, dtype=np.int64), length=lx)
            counts = mutual_nn_counts(desc, pad, gd, gp)
            out.append((counts / COUNT_SCALE).astype(np.float32))
        return out
