"""Retrieval metrics, following the reference evaluation code of each benchmark exactly.

Rank matrices. Every metric takes ``ranks``: integer gallery indices ordered by decreasing
similarity. The default ``layout="revisitop"`` is the revisitop convention, shape ``(R, nq)``:
column ``i`` is the ranking of query ``i`` (``np.argsort(-S, axis=0)`` for ``S = xb @ xq.T``, or
:func:`asymfuse.cloud.eval.evaluate.rank_features`). ``layout="faiss"`` takes faiss's ``I``,
shape ``(nq, R)``, row ``i`` for query ``i``. ``R`` is normally the gallery size ``nb``; a
truncated ranking (``R < nb``) is allowed when ``n_gallery=nb`` is passed, and positives that
are not ranked then count as never retrieved. A column may not repeat an index.

Ground truth. ``gnd`` holds one mapping per query with ``ok`` (positives) and optionally ``junk``
(images removed from the ranking before scoring: neither positive nor negative), 0-based
gallery indices. :func:`evaluate_revisitop` instead reads revisitop's ``easy``/``hard``/``junk``.
Queries with an empty ``ok`` set are skipped by every metric (left out of the mean).

Metrics:

- :func:`compute_ap` / :func:`compute_map`: revisitop's trapezoidal AP and its mP@k.
- :func:`evaluate_revisitop`: Easy/Medium/Hard mAP and mP@k in percent.
- :func:`gldv2_map_at_k`: the GLDv2 (Kaggle) mAP@100.
- :func:`holidays_map`: INRIA Holidays mAP.
- :func:`ukbench_ns`: UKBench N-S score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from asymfuse.cloud.eval.rank_checks import LAYOUTS, check_kappas, positive_ranks
from asymfuse.edge.errors import ConfigError, ShapeError

REVISITOP_SETTINGS = ("easy", "medium", "hard")
HOLIDAYS_AP = ("trapezoid", "step")


@dataclass(frozen=True)
class MapResult:
    """Output of :func:`compute_map`; fractions in [0, 1].

    Attributes:
        map: mean AP over the ``n_valid`` queries with a non-empty ``ok`` set (NaN if none).
        aps: ``(nq,)`` float64 AP per query, NaN for skipped queries.
        mp_at_k: ``(K,)`` float64 mean precision at each kappa over the valid queries.
        p_at_k: ``(nq, K)`` float64 precision per query, NaN rows for skipped queries.
        kappas: the K cut-offs.
        n_valid: number of queries that were scored.
    """

    map: float
    aps: np.ndarray
    mp_at_k: np.ndarray
    p_at_k: np.ndarray
    kappas: tuple[int, ...]
    n_valid: int


@dataclass(frozen=True)
class RevisitopResult:
    """Output of :func:`evaluate_revisitop`, in **percent** like the official script.

    Attributes:
        map: ``{"easy": .., "medium": .., "hard": ..}`` mAP in percent (unrounded).
        mp_at_k: same keys, ``(K,)`` mP@k arrays in percent.
        kappas: the K cut-offs.
        details: same keys, the underlying :class:`MapResult` (fractions).
    """

    map: dict[str, float]
    mp_at_k: dict[str, np.ndarray]
    kappas: tuple[int, ...]
    details: dict[str, MapResult]

    def summary(self, dataset: str) -> str:
        """Two lines in the style of revisitop's ``compute_map_and_print``, rounded to 2 decimals."""
        m = {s: np.around(self.map[s], decimals=2) for s in REVISITOP_SETTINGS}
        p = {s: np.around(self.mp_at_k[s], decimals=2) for s in REVISITOP_SETTINGS}
        return (f">> {dataset}: mAP E: {m['easy']}, M: {m['medium']}, H: {m['hard']}\n"
                f">> {dataset}: mP@k{list(self.kappas)} E: {p['easy']}, M: {p['medium']}, H: {p['hard']}")


# ---- revisitop -----------------------------------------------------------------------------

def compute_ap(ranks_of_positives: Sequence[int] | np.ndarray, n_positives: int) -> float:
    """Trapezoidal average precision of one query (revisitop / Holidays reference).

    For the j-th ranked positive (0-based) at rank r (0-based, junk already removed) it adds
    ``((j / r if r > 0 else 1) + (j + 1) / (r + 1)) / 2 / n_positives``. Positives that were never
    ranked add nothing.

    Args:
        ranks_of_positives: ``(m,)`` strictly increasing non-negative ints, ``m <= n_positives``.
        n_positives: |ok|, the number of positives of the query.

    Raises:
        ConfigError: ``n_positives`` is not a positive int or is smaller than ``m``.
        ShapeError: the ranks are not a 1-D strictly increasing non-negative integer array.
    """
    r = np.asarray(ranks_of_positives)
    if r.ndim != 1 or (r.size and (not np.issubdtype(r.dtype, np.integer) or r.dtype == np.bool_)):
        raise ShapeError(f"ranks_of_positives must be a 1-D int array, got shape {r.shape} dtype {r.dtype}")
    if r.size and (r[0] < 0 or np.any(np.diff(r) <= 0)):
        raise ShapeError("ranks_of_positives must be non-negative and strictly increasing (sorted ranks)")
    n_ok = n_positives
    if not isinstance(n_ok, (int, np.integer)) or isinstance(n_ok, bool) or n_ok < max(1, r.size):
        raise ConfigError(f"n_positives={n_ok!r} must be a positive int >= the {r.size} ranked positives")
    r = r.astype(np.float64)
    j = np.arange(r.size, dtype=np.float64)
    left = np.divide(j, r, out=np.ones_like(r), where=r > 0)
    right = (j + 1.0) / (r + 1.0)
    return float(np.sum((left + right) / 2.0) / n_positives)


def _precisions_at(pos: np.ndarray, kappas: tuple[int, ...]) -> np.ndarray:
    """revisitop's mP@k term: with 1-based ranks p, k' = min(max(p), k) and P = #(p <= k') / k'."""
    if pos.size == 0:
        return np.zeros(len(kappas))
    p1 = pos + 1
    out = np.empty(len(kappas))
    for t, kappa in enumerate(kappas):
        kq = min(int(p1.max()), kappa)
        out[t] = np.count_nonzero(p1 <= kq) / kq
    return out


def compute_map(ranks: np.ndarray, gnd: Sequence[Mapping[str, object]], *,
                kappas: Sequence[int] = (1, 5, 10), layout: str = "revisitop",
                n_gallery: int | None = None) -> MapResult:
    """revisitop mAP and mP@k.

    Per query, junk images are removed from the ranking, AP is :func:`compute_ap` over the
    positives with ``n_positives = |ok|``, and P@k follows the reference exactly: with ``p`` the
    1-based adjusted ranks of the positives, ``k' = min(max(p), k)`` and ``P@k = #(p <= k') / k'``
    (a query whose positives all sit above rank k is not penalised for having fewer than k).
    A query with positives but none ranked (truncated ranks) gets AP 0 and P@k 0.

    Args:
        ranks: integer rank matrix, ``(R, nq)`` for ``layout="revisitop"`` (see module docstring).
        gnd: ``nq`` mappings with ``ok`` and optionally ``junk`` index arrays.
        kappas: cut-offs for mP@k.
        layout: ``"revisitop"`` (``(R, nq)``) or ``"faiss"`` (``(nq, R)``).
        n_gallery: gallery size when ``R < nb``; defaults to ``R``.

    Returns:
        A :class:`MapResult` (fractions); ``map`` is NaN if no query has a positive.

    Raises:
        ShapeError: ranks is not a 2-D integer array, its query count differs from ``len(gnd)``,
            an index is out of range or repeated in a column, or ``gnd`` is malformed.
        ConfigError: bad ``kappas``, ``layout`` or ``n_gallery``.
    """
    kappas = check_kappas(kappas)
    per_query = positive_ranks(ranks, gnd, layout=layout, n_gallery=n_gallery)
    aps = np.full(len(per_query), np.nan)
    prs = np.full((len(per_query), len(kappas)), np.nan)
    for i, item in enumerate(per_query):
        if item is not None:
            aps[i] = compute_ap(item[0], item[1])
            prs[i] = _precisions_at(item[0], kappas)
    n_valid = int(np.count_nonzero(~np.isnan(aps)))
    if n_valid == 0:
        return MapResult(float("nan"), aps, np.full(len(kappas), np.nan), prs, kappas, 0)
    return MapResult(float(np.nanmean(aps)), aps, np.nanmean(prs, axis=0), prs, kappas, n_valid)


def revisitop_gnd(gnd: Sequence[Mapping[str, object]], setting: str) -> list[dict[str, np.ndarray]]:
    """Turn revisitop ``easy``/``hard``/``junk`` ground truth into ``ok``/``junk`` for one setting.

    - easy: ok = easy, junk = junk + hard
    - medium: ok = easy + hard, junk = junk
    - hard: ok = hard, junk = junk + easy

    Raises:
        ConfigError: unknown ``setting``.
        ShapeError: an entry lacks easy, hard or junk.
    """
    if setting not in REVISITOP_SETTINGS:
        raise ConfigError(f"setting={setting!r} is unknown; choose one of {list(REVISITOP_SETTINGS)}")
    ok_keys, junk_keys = {"easy": (("easy",), ("junk", "hard")), "medium": (("easy", "hard"), ("junk",)),
                          "hard": (("hard",), ("junk", "easy"))}[setting]
    out = []
    for i, entry in enumerate(gnd):
        if not isinstance(entry, Mapping) or any(k not in entry for k in ("easy", "hard", "junk")):
            raise ShapeError(f"gnd[{i}] must be a mapping with easy, hard and junk index arrays "
                             "(the revisitop gnd_<name>.pkl form)")
        parts = {k: np.asarray(entry[k], dtype=np.int64).ravel() for k in ("easy", "hard", "junk")}
        out.append({"ok": np.concatenate([parts[k] for k in ok_keys]),
                    "junk": np.concatenate([parts[k] for k in junk_keys])})
    return out


def evaluate_revisitop(ranks: np.ndarray, gnd: Sequence[Mapping[str, object]], *,
                       kappas: Sequence[int] = (1, 5, 10), layout: str = "revisitop",
                       n_gallery: int | None = None) -> RevisitopResult:
    """Easy / Medium / Hard mAP and mP@k in percent, as revisitop's ``compute_map_and_print``.

    Args:
        ranks: see :func:`compute_map`.
        gnd: ``nq`` mappings with ``easy``, ``hard`` and ``junk`` (``RetrievalDataset.gnd`` of a
            revisitop dataset, or ``pickle.load(...)["gnd"]``).
        kappas, layout, n_gallery: see :func:`compute_map`.

    Returns:
        A :class:`RevisitopResult`; ``summary(name)`` prints it like the official script.

    Raises:
        ShapeError, ConfigError: as :func:`compute_map`.
    """
    details = {s: compute_map(ranks, revisitop_gnd(gnd, s), kappas=kappas, layout=layout,
                              n_gallery=n_gallery) for s in REVISITOP_SETTINGS}
    return RevisitopResult(
        map={s: 100.0 * r.map for s, r in details.items()},
        mp_at_k={s: 100.0 * r.mp_at_k for s, r in details.items()},
        kappas=details["easy"].kappas, details=details,
    )


# ---- other benchmarks ----------------------------------------------------------------------

def gldv2_map_at_k(ranks: np.ndarray, gnd: Sequence[Mapping[str, object]], *, k: int = 100,
                   layout: str = "revisitop", n_gallery: int | None = None) -> float:
    """GLDv2 retrieval mAP@k (Kaggle / DELF ``MeanAveragePrecision``), a fraction.

    Per query: ``AP@k = sum over positives at 1-based rank r <= k of P@r / min(|ok|, k)``, where
    P@r is the fraction of the first r results that are positives. Averaged over the queries
    with a non-empty ``ok`` set. (The reference skips repeated predictions; ranks here may not
    repeat an index, so that case cannot arise.) ``junk``, if given, is removed first; GLDv2
    itself has none.

    Args:
        ranks: see :func:`compute_map`; only the first ``k`` results of each query are read, so
            faiss's ``I`` from ``search(xq, xb, k=100)`` with ``layout="faiss"`` and
            ``n_gallery=nb`` is enough.
        gnd: ``nq`` mappings with ``ok`` (and optionally ``junk``).
        k: cut-off, 100 for GLDv2.

    Raises:
        ShapeError, ConfigError: as :func:`compute_map`, or ``k`` is not a positive int.
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"k={k!r} must be a positive int (100 for GLDv2)")
    aps = []
    for item in positive_ranks(ranks, gnd, layout=layout, n_gallery=n_gallery):
        if item is None:
            continue
        pos, n_ok = item
        pos = pos[pos < k].astype(np.float64)
        aps.append(float(np.sum(np.arange(1, pos.size + 1) / (pos + 1.0)) / min(n_ok, k)))
    return float(np.mean(aps)) if aps else float("nan")


def holidays_map(ranks: np.ndarray, gnd: Sequence[Mapping[str, object]], *, ap: str = "trapezoid",
                 layout: str = "revisitop", n_gallery: int | None = None) -> float:
    """INRIA Holidays mAP, a fraction.

    The query's own image is in ``junk`` (see :mod:`asymfuse.cloud.data.holidays`) and is
    removed from its ranking. Then, with ``r_j`` the 0-based rank of the j-th positive:

    - ``ap="trapezoid"`` (default): the official ``holidays_map.py`` (``score_ap_from_ranks_1``),
      identical to :func:`compute_ap`: area under the precision-recall curve by trapezoids.
    - ``ap="step"``: plain non-interpolated AP, ``sum_j (j + 1) / (r_j + 1) / |ok|`` (the mean of
      the precision at each positive), as many re-implementations report.

    Averaged over the queries with a non-empty ``ok`` set.

    Raises:
        ShapeError, ConfigError: as :func:`compute_map`, or ``ap`` is unknown.
    """
    if ap not in HOLIDAYS_AP:
        raise ConfigError(f"ap={ap!r} is unknown; choose one of {list(HOLIDAYS_AP)}")
    aps = []
    for item in positive_ranks(ranks, gnd, layout=layout, n_gallery=n_gallery):
        if item is None:
            continue
        pos, n_ok = item
        if ap == "trapezoid":
            aps.append(compute_ap(pos, n_ok))
        else:
            aps.append(float(np.sum(np.arange(1, pos.size + 1) / (pos + 1.0)) / n_ok))
    return float(np.mean(aps)) if aps else float("nan")


def ukbench_ns(ranks: np.ndarray, gnd: Sequence[Mapping[str, object]], *, layout: str = "revisitop",
               n_gallery: int | None = None) -> float:
    """UKBench N-S score: the mean number of ``ok`` images among each query's top 4, in [0, 4].

    The query itself is in the gallery and in its own ``ok`` set (official protocol). ``junk``, if
    given, is removed first (UKBench has none). Averaged over queries with a non-empty ``ok``.

    Args:
        ranks: see :func:`compute_map`; at least 4 results per query (or the whole gallery when
            it has fewer than 4 images).

    Raises:
        ShapeError: fewer than 4 ranked results, or as :func:`compute_map`.
        ConfigError: as :func:`compute_map`.
    """
    shape = np.shape(ranks)
    if layout in LAYOUTS and len(shape) == 2:
        depth = shape[0] if layout == "revisitop" else shape[1]
        if depth < 4 and n_gallery is not None and n_gallery > depth:
            raise ShapeError(f"UKBench N-S needs the top 4 of each ranking, got {depth}; search with k >= 4")
    counts = [np.count_nonzero(item[0] < 4) for item in
              positive_ranks(ranks, gnd, layout=layout, n_gallery=n_gallery) if item is not None]
    return float(np.mean(counts)) if counts else float("nan")
