"""Input checks shared by the retrieval metrics: rank matrices, ground-truth index sets, k values.

The conventions (``layout``, ``n_gallery``, ``ok``/``junk``) are those of
:mod:`asymfuse.cloud.eval.metrics`; every check raises :class:`ShapeError` or :class:`ConfigError`
with the fix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from asymfuse.edge.errors import ConfigError, ShapeError

LAYOUTS = ("revisitop", "faiss")


def rank_matrix(ranks: object, nq: int, *, layout: str, n_gallery: int | None) -> tuple[np.ndarray, int]:
    """Validate ``ranks`` and return it as ``(R, nq)`` int64 plus the gallery size."""
    if layout not in LAYOUTS:
        raise ConfigError(f"layout={layout!r} is unknown; use 'revisitop' for (nb, nq) ranks or "
                          "'faiss' for faiss's (nq, k) I")
    arr = np.asarray(ranks)
    if arr.ndim != 2:
        raise ShapeError(f"ranks must be 2-D, got shape {arr.shape}; revisitop ranks are (nb, nq)")
    if not np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_:
        nan = " and contains NaN" if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any() else ""
        raise ShapeError(f"ranks must hold integer gallery indices, got dtype {arr.dtype}{nan}; pass "
                         "the argsort of the similarities (e.g. np.argsort(-S, axis=0)), not the scores")
    if layout == "faiss":
        arr = arr.T
    if arr.shape[1] != nq:
        raise ShapeError(f"ranks has shape {np.asarray(ranks).shape}, i.e. {arr.shape[1]} queries with "
                         f"layout={layout!r}, but gnd has {nq} entries; revisitop ranks are (nb, nq), "
                         "pass layout='faiss' for faiss's (nq, k) I")
    if arr.shape[0] == 0:
        raise ShapeError("ranks ranks no gallery image (0 rows); rank at least one image per query")
    nb = arr.shape[0] if n_gallery is None else n_gallery
    if not isinstance(nb, (int, np.integer)) or isinstance(nb, bool) or nb < arr.shape[0]:
        raise ConfigError(f"n_gallery={n_gallery!r} must be an int >= the {arr.shape[0]} ranked images")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and (arr.min() < 0 or arr.max() >= nb):
        raise ShapeError(f"ranks has indices in [{arr.min()}, {arr.max()}] but the gallery has {nb} images; "
                         "drop faiss's -1 padding (search with k <= nb) or pass the right n_gallery")
    ordered = np.sort(arr, axis=0)
    if arr.shape[0] > 1 and np.any(ordered[1:] == ordered[:-1]):
        raise ShapeError("a query's ranking lists the same gallery index twice; each column must be a "
                         "ranking of distinct gallery images")
    return arr, int(nb)


def index_set(entry: Mapping[str, object], key: str, i: int, nb: int) -> np.ndarray:
    raw = np.asarray(entry.get(key, []) if key == "junk" else entry[key])
    if raw.size == 0:
        return np.empty(0, dtype=np.int64)
    if not np.issubdtype(raw.dtype, np.integer) or raw.dtype == np.bool_:
        raise ShapeError(f"gnd[{i}][{key!r}] must hold integer gallery indices, got dtype {raw.dtype}")
    out = raw.ravel().astype(np.int64)
    if out.min() < 0 or out.max() >= nb:
        raise ShapeError(f"gnd[{i}][{key!r}] has indices in [{out.min()}, {out.max()}] but the gallery "
                         f"has {nb} images; pass n_gallery= when ranks is truncated")
    return out


def ok_junk(gnd: Sequence[Mapping[str, object]], nb: int) -> list[tuple[np.ndarray, np.ndarray]]:
    sets = []
    for i, entry in enumerate(gnd):
        if not isinstance(entry, Mapping) or "ok" not in entry:
            raise ShapeError(f"gnd[{i}] must be a mapping with an 'ok' index array (and optionally "
                             "'junk'); for revisitop easy/hard/junk use evaluate_revisitop")
        sets.append((index_set(entry, "ok", i, nb), index_set(entry, "junk", i, nb)))
    return sets


def check_kappas(kappas: Sequence[int]) -> tuple[int, ...]:
    out = tuple(kappas)
    if any(not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1 for k in out):
        raise ConfigError(f"kappas={list(out)!r} must be positive ints, e.g. (1, 5, 10)")
    return tuple(int(k) for k in out)


def positive_ranks(ranks: object, gnd: Sequence[Mapping[str, object]], *, layout: str,
                    n_gallery: int | None) -> list[tuple[np.ndarray, int] | None]:
    """Per query: (0-based ranks of the ranked positives after junk removal, ascending; |ok|), or
    None for a query with an empty ``ok`` set."""
    if isinstance(gnd, Mapping) or not isinstance(gnd, Sequence):
        raise ShapeError("gnd must be a sequence with one mapping per query")
    arr, nb = rank_matrix(ranks, len(gnd), layout=layout, n_gallery=n_gallery)
    is_ok = np.zeros(nb, dtype=bool)
    is_junk = np.zeros(nb, dtype=bool)
    out: list[tuple[np.ndarray, int] | None] = []
    for i, (ok, junk) in enumerate(ok_junk(gnd, nb)):
        n_ok = int(ok.size)
        if np.unique(ok).size != n_ok:
            raise ShapeError(f"gnd[{i}]['ok'] lists a gallery index twice; each positive must appear once")
        if np.intersect1d(ok, junk).size:
            raise ShapeError(f"gnd[{i}] has indices in both 'ok' and 'junk'; an image is either a "
                             "positive or ignored, not both")
        if n_ok == 0:
            out.append(None)
            continue
        col = arr[:, i]
        is_ok[ok] = True
        is_junk[junk] = True
        pos = np.flatnonzero(is_ok[col])
        junk_pos = np.flatnonzero(is_junk[col])
        is_ok[ok] = False
        is_junk[junk] = False
        # A positive moves up by the number of junk images ranked strictly before it.
        out.append((pos - np.searchsorted(junk_pos, pos, side="left"), n_ok))
    return out
