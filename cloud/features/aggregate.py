"""Aggregate local descriptor sets into one global vector (VLAD), so local features such as SIFT
can be searched with a flat index and fused with global ones."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from asymfuse.edge.errors import ConfigError, ShapeError, missing_dependency


def _faiss():  # type: ignore[no-untyped-def]
    try:
        import faiss
    except ModuleNotFoundError as exc:
        raise missing_dependency("faiss-cpu", "cloud") from exc
    return faiss


@dataclass(frozen=True)
class VladCodebook:
    """``centroids``: ``(k, d)`` float32 visual words learnt by k-means."""

    centroids: np.ndarray

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        """Output dimension ``k * d``."""
        return int(self.centroids.size)


def train_vlad_codebook(descriptors: np.ndarray, *, k: int = 16, seed: int = 0,
                        niter: int = 20) -> VladCodebook:
    """k-means (faiss) over training descriptors.

    Args:
        descriptors: ``(n, d)`` float32 (valid descriptors only, no padding rows).

    Raises:
        ShapeError: not 2-D, NaN, or fewer descriptors than ``k``.
    """
    x = np.ascontiguousarray(descriptors, dtype=np.float32)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ShapeError(f"codebook training needs finite (n, d) descriptors, got {x.shape}")
    if len(x) < k:
        raise ShapeError(f"{len(x)} descriptors cannot train {k} words; extract more images or lower k")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    km = _faiss().Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False)
    km.train(x)
    return VladCodebook(np.asarray(km.centroids, np.float32))


def vlad(descriptors: np.ndarray, mask: np.ndarray, codebook: VladCodebook) -> np.ndarray:
    """VLAD with intra-normalisation, signed square root and L2 normalisation.

    Args:
        descriptors: ``(B, L, d)`` float32. mask: ``(B, L)`` bool, True = padding.

    Returns:
        ``(B, k*d)`` float32, unit-norm (all-zero for an image with no descriptors).
    """
    if descriptors.ndim != 3 or descriptors.shape[2] * codebook.k != codebook.dim:
        raise ShapeError(f"descriptors {descriptors.shape} do not match the codebook "
                         f"({codebook.k} words of dim {codebook.centroids.shape[1]})")
    b, L, d = descriptors.shape
    flat = np.ascontiguousarray(descriptors.reshape(-1, d), dtype=np.float32)
    index = _faiss().IndexFlatL2(d)
    index.add(codebook.centroids)
    _, assign = index.search(flat, 1)
    assign = assign.reshape(b, L)
    out = np.zeros((b, codebook.k, d), np.float32)
    valid = ~mask
    for word in range(codebook.k):
        sel = (assign == word) & valid                       # (B, L)
        resid = descriptors - codebook.centroids[word]       # (B, L, d)
        out[:, word] = (resid * sel[..., None]).sum(axis=1)
    out /= np.maximum(np.linalg.norm(out, axis=2, keepdims=True), 1e-12)
    out = out.reshape(b, -1)
    out = np.sign(out) * np.sqrt(np.abs(out))
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)
