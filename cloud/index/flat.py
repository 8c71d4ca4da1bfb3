"""Exact inner-product search with faiss ``IndexFlatIP``.

Names follow faiss: ``xq`` ``(nq, d)`` queries, ``xb`` ``(nb, d)`` database (gallery), ``k``
results per query, ``D`` ``(nq, k)`` float32 inner products (decreasing along each row), ``I``
``(nq, k)`` int64 gallery indices. For unit-norm vectors the inner product is the cosine
similarity; nothing here normalises.

Two rules that faiss leaves open are fixed here:

- **k > nb** is clipped: ``D`` and ``I`` have ``min(k, nb)`` columns, never faiss's -1 padding.
- **Ties** (exactly equal scores, as faiss computes them) are ordered by increasing gallery
  index, also at the k-th place: if several gallery vectors tie for the last slot, the lowest
  indices are returned. (Raw faiss may list tied results in any order.)

Inputs must be 2-D, finite and of the same ``d``; they are converted to C-contiguous float32.
faiss's thread count is left at its default.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from asymfuse.edge.errors import ConfigError, CorruptDataError, ShapeError, missing_dependency
from asymfuse.edge.fileio import atomic_path


def _faiss() -> ModuleType:
    try:
        import faiss
    except ImportError as exc:
        raise missing_dependency("faiss-cpu", "cloud") from exc
    return faiss


def as_float32_matrix(x: object, name: str) -> np.ndarray:
    """Validate a vector batch and return it as C-contiguous ``(n, d)`` float32.

    Raises:
        ShapeError: not 2-D, ``d == 0``, not numeric, or contains NaN/inf.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ShapeError(f"{name} must be 2-D (n, d), got shape {arr.shape}; reshape a single vector "
                         f"with {name}[None, :]")
    if arr.shape[1] == 0:
        raise ShapeError(f"{name} has d=0 columns; vectors need at least one dimension")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise ShapeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ShapeError(f"{name} contains NaN or inf (or values beyond float32 range); fix the "
                         "features (e.g. a zero vector divided by its norm) before searching")
    return arr


def as_index_vectors(x: object, *, dim: int, name: str) -> np.ndarray:
    """:func:`as_float32_matrix` for an index of width ``dim``; an empty ``(0, dim)`` batch is allowed.

    Raises:
        ShapeError: as :func:`as_float32_matrix`, or a width other than ``dim``.
    """
    arr = np.asarray(x)
    if arr.ndim == 2 and arr.shape[0] == 0 and arr.shape[1] == dim:
        return np.zeros((0, dim), dtype=np.float32)
    arr = as_float32_matrix(arr, name)
    if arr.shape[1] != dim:
        raise ShapeError(f"{name} have dim {arr.shape[1]} but the index has dim {dim}; use vectors "
                         "of the index's embedding space")
    return arr


def _check_k(k: object) -> int:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"k={k!r} must be a positive int (number of results per query)")
    return int(k)


def _sort_ties(D: np.ndarray, I: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order each row by decreasing D, then increasing I."""
    order = np.lexsort((I, -D), axis=-1)
    return np.take_along_axis(D, order, axis=1), np.take_along_axis(I, order, axis=1)


def _search_index(index: Any, xq: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (``k <= ntotal``) with the tie rule of the module docstring."""
    nb = int(index.ntotal)
    kk = min(k + 1, nb)
    D, I = _sort_ties(*index.search(xq, kk))
    if kk > k:
        # Rows where the k-th and (k+1)-th scores tie may have dropped a lower index: search
        # those rows deeper until the whole tie group at the k-th score is inside the result.
        todo = np.flatnonzero(D[:, k - 1] == D[:, k])
        while todo.size:
            kk = min(2 * kk, nb)
            D2, I2 = _sort_ties(*index.search(xq[todo], kk))
            done = np.full(todo.size, kk == nb) | (D2[:, kk - 1] < D2[:, k - 1])
            D[todo[done], :k] = D2[done, :k]
            I[todo[done], :k] = I2[done, :k]
            todo = todo[~done]
    return np.ascontiguousarray(D[:, :k]), np.ascontiguousarray(I[:, :k])


class FlatIndex:
    """An exact inner-product index (faiss ``IndexFlatIP``) with close() and save/load.

    Use as a context manager, or call :meth:`close` to free the vectors.

    Raises (constructor):
        ConfigError: ``d`` is not a positive int.
        MissingDependencyError: faiss is not installed.
    """

    def __init__(self, d: int) -> None:
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1:
            raise ConfigError(f"d={d!r} must be a positive int (the vector dimension)")
        self._index: Any = _faiss().IndexFlatIP(int(d))

    def _live(self) -> Any:
        if self._index is None:
            raise ConfigError("this FlatIndex is closed; build a new one or FlatIndex.load(path)")
        return self._index

    @property
    def d(self) -> int:
        """Vector dimension."""
        return int(self._live().d)

    @property
    def ntotal(self) -> int:
        """Number of vectors added so far."""
        return int(self._live().ntotal)

    def add(self, xb: np.ndarray) -> None:
        """Append ``xb`` ``(n, d)`` (float32 or convertible, finite) after the current vectors.

        Raises:
            ShapeError: wrong rank, ``d`` mismatch, or NaN/inf.
            ConfigError: the index is closed.
        """
        index = self._live()
        xb = as_float32_matrix(xb, "xb")
        if xb.shape[1] != index.d:
            raise ShapeError(f"xb has d={xb.shape[1]} but the index has d={index.d}; use vectors "
                             "of the same embedding model")
        index.add(xb)

    def search(self, xq: np.ndarray, *, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` by inner product.

        Args:
            xq: ``(nq, d)`` queries (float32 or convertible, finite); ``nq`` may be 0.
            k: results per query; clipped to ``ntotal``.

        Returns:
            ``(D, I)``: ``(nq, min(k, ntotal))`` float32 scores, decreasing along rows, and int64
            gallery indices (ties by increasing index).

        Raises:
            ShapeError: wrong rank, ``d`` mismatch, or NaN/inf.
            ConfigError: ``k`` < 1, the index is empty, or it is closed.
        """
        index = self._live()
        k = _check_k(k)
        xq = as_float32_matrix(xq, "xq")
        if xq.shape[1] != index.d:
            raise ShapeError(f"xq has d={xq.shape[1]} but the index has d={index.d}; use vectors "
                             "of the same embedding model")
        if index.ntotal == 0:
            raise ConfigError("the index is empty; add() gallery vectors before searching")
        return _search_index(index, xq, min(k, int(index.ntotal)))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index with ``faiss.write_index``, atomically (temp file, fsync, rename).

        Raises:
            ConfigError: the folder does not exist, or the index is closed.
            CorruptDataError: faiss failed to write.
        """
        index = self._live()
        path = Path(path)
        if not path.parent.is_dir():
            raise ConfigError(f"cannot save to {str(path)!r}: folder {str(path.parent)!r} does not exist")
        with atomic_path(path) as tmp:
            try:
                _faiss().write_index(index, str(tmp))
            except RuntimeError as exc:
                raise CorruptDataError(f"faiss could not write {str(path)!r}: {exc}") from exc

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FlatIndex:
        """Read an index written by :meth:`save`.

        Raises:
            CorruptDataError: the file is missing, unreadable, or not an inner-product flat index.
            MissingDependencyError: faiss is not installed.
        """
        faiss = _faiss()
        path = Path(path)
        if not path.is_file():
            raise CorruptDataError(f"no index file at {str(path)!r}; build one and FlatIndex.save() it")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise CorruptDataError(f"{str(path)!r} is not a readable faiss index ({exc}); "
                                   "rebuild it") from exc
        if not isinstance(index, faiss.IndexFlat) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise CorruptDataError(f"{str(path)!r} holds a {type(index).__name__} (metric "
                                   f"{index.metric_type}), not an IndexFlatIP; rebuild it with FlatIndex")
        obj = cls.__new__(cls)
        obj._index = index
        return obj

    def close(self) -> None:
        """Free the vectors. Safe to call twice; any later use raises ConfigError."""
        self._index = None

    def __enter__(self) -> FlatIndex:
        self._live()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()



def search(xq: np.ndarray, xb: np.ndarray, *, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product search of ``xq`` against ``xb`` (one-shot FlatIndex).

    Args:
        xq: ``(nq, d)`` queries; ``nq`` may be 0.
        xb: ``(nb, d)`` gallery, ``nb >= 1``.
        k: results per query; clipped to ``nb``.

    Returns:
        ``(D, I)``: ``(nq, min(k, nb))`` float32 scores, decreasing along rows, and int64
        gallery indices; ties by increasing gallery index (see module docstring).

    Raises:
        ShapeError: not 2-D, NaN/inf, empty ``xb``, or ``xq`` and ``xb`` differ in ``d``.
        ConfigError: ``k`` < 1.
        MissingDependencyError: faiss is not installed.
    """
    k = _check_k(k)
    xq = as_float32_matrix(xq, "xq")
    xb = as_float32_matrix(xb, "xb")
    if xq.shape[1] != xb.shape[1]:
        raise ShapeError(f"xq has d={xq.shape[1]} but xb has d={xb.shape[1]}; queries and gallery must "
                         "come from the same embedding space")
    if xb.shape[0] == 0:
        raise ShapeError("xb is empty (nb=0); add at least one gallery vector")
    with FlatIndex(xb.shape[1]) as index:
        index.add(xb)
        return index.search(xq, k=k)
