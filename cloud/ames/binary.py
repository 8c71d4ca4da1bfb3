"""Binary local descriptors for AMES: the ITQ projection (trained by faiss) and sign-bit packing.

A binary AMES stores a gallery descriptor ``x`` as the ``bits`` signs of ``normalize(x) @ W``
(``W``: ``(d_in, bits)``). Bit convention, shared with :class:`asymfuse.cloud.ames.model.Binarize`:
bit ``j`` is 1 (sign +1) where ``(normalize(x) @ W)[j] >= 0``, else 0 (sign -1).

Packing is ``np.packbits(axis=-1)``, most significant bit first: bit ``j`` lands in byte ``j // 8``
under the mask ``0x80 >> (j % 8)``. 128 bits are 16 bytes.

``W`` comes from faiss's ITQ (:class:`faiss.ITQTransform`: PCA, then the rotation that minimises
the quantisation error ``||sign(z) - z||^2``), trained on ``[X; -X]`` so the training mean is zero
and ``W`` needs no bias. When ``d_in < bits`` (e.g. the 120-d ``local_lite2`` descriptors), the
inputs are zero-padded to ``bits`` dimensions and ``W`` keeps the first ``d_in`` rows.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np
import torch

from asymfuse.cloud.ames.model import AMES
from asymfuse.edge.errors import ConfigError, ShapeError, missing_dependency

DEFAULT_BITS = 128
DEFAULT_MAX_TRAIN = 100_000
ITQ_ITERATIONS = 50

# (256, 8) float32: the +-1 signs of every byte value, MSB first (np.packbits order). Read-only.
_BYTE_SIGNS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float32) * 2.0 - 1.0
_BYTE_SIGNS.flags.writeable = False


def _faiss() -> ModuleType:
    try:
        import faiss
    except ImportError as exc:
        raise missing_dependency("faiss-cpu", "cloud") from exc
    return faiss


# ------------------------------------------------------------------------------------ ITQ


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or bits < 8 or bits % 8:
        raise ConfigError(f"bits must be a positive multiple of 8 (they are packed into bytes), got {bits!r}; "
                          "the published AMES uses 128")


def _unit_rows(descriptors: Any, what: str = "descriptors") -> np.ndarray:
    """Validate ``(n, d)`` finite descriptors; return the non-zero rows, L2-normalised, float64."""
    x = np.asarray(descriptors)
    if x.ndim != 2 or x.shape[1] == 0 or not np.issubdtype(x.dtype, np.floating):
        raise ShapeError(f"{what} must be a 2-D float array (n, d), got {x.dtype} {x.shape}; "
                         "flatten local sets to (n, d) and drop padding slots first")
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        raise ShapeError(f"{what} contain NaN or inf; fix the local features (re-extract them) first")
    norms = np.linalg.norm(x, axis=1)
    keep = norms > 0
    if not keep.any():
        raise ShapeError(f"{what} hold no non-zero rows ({x.shape[0]} rows); pass the valid descriptors, "
                         "not padding")
    return x[keep] / norms[keep, None]


def _training_matrix(descriptors: Any, *, bits: int, seed: int, max_train: int) -> tuple[np.ndarray, int]:
    """``[X; -X]`` float32 (zero mean), zero-padded to ``bits`` columns when ``d_in < bits``."""
    if not isinstance(max_train, int) or max_train < 1:
        raise ConfigError(f"max_train must be a positive int, got {max_train!r}")
    x = _unit_rows(descriptors)
    if x.shape[0] > max_train:
        rows = np.random.default_rng(seed).choice(x.shape[0], size=max_train, replace=False)
        x = x[np.sort(rows)]
    d_in = x.shape[1]
    width = max(d_in, bits)
    both = np.zeros((2 * x.shape[0], width), dtype=np.float32)
    both[: x.shape[0], :d_in] = x
    both[x.shape[0]:, :d_in] = -x
    return both, d_in


def fit_itq_transform(descriptors: Any, *, bits: int = DEFAULT_BITS, seed: int = 0,
                      max_train: int = DEFAULT_MAX_TRAIN, iterations: int = ITQ_ITERATIONS) -> Any:
    """Train a ``faiss.ITQTransform(max(d_in, bits), bits, do_pca=True)`` on ``[X; -X]``.

    Args:
        descriptors: ``(n, d_in)`` float local descriptors (any norm; zero rows are ignored).
            They are L2-normalised, subsampled to ``max_train`` rows (seeded), negated and
            stacked, and zero-padded to ``bits`` columns if ``d_in < bits``.
        seed: the subsample and the ITQ random initial rotation.
        iterations: ITQ iterations (0 leaves the random initial rotation: the baseline).

    Returns:
        The trained faiss transform; its inputs must be zero-padded the same way
        (:func:`projection_from_transform` turns it into ``W``).

    Raises:
        ConfigError: bad ``bits``/``max_train``/``iterations``.
        ShapeError: not ``(n, d)`` floats, NaN/inf, or no non-zero row.
        MissingDependencyError: faiss is not installed.
    """
    _check_bits(bits)
    if not isinstance(iterations, int) or iterations < 0:
        raise ConfigError(f"iterations must be an int >= 0, got {iterations!r}")
    both, _ = _training_matrix(descriptors, bits=bits, seed=seed, max_train=max_train)
    faiss = _faiss()
    transform = faiss.ITQTransform(both.shape[1], bits, True)
    # faiss subsamples above max_train_per_dim * d rows; that would break the +-x pairing.
    transform.max_train_per_dim = math.ceil(both.shape[0] / both.shape[1]) + 1
    transform.itq.max_iter = iterations
    transform.itq.seed = int(seed) % (2 ** 31)
    transform.train(both)
    return transform


def projection_from_transform(transform: Any, *, d_in: int) -> np.ndarray:
    """The ``(d_in, bits)`` float32 ``W`` of a trained :func:`fit_itq_transform`.

    faiss applies ``A @ normalize(x_padded - mean)`` with ``A`` = ``pca_then_itq.A``
    ``(bits, d_pad)``; the mean is zero (training on ``[X; -X]``) and the positive
    normalisation does not change signs, so ``sign(normalize(x) @ W)`` with ``W = A.T[:d_in]``
    gives faiss's own codes.

    Raises:
        ConfigError: the transform is untrained or ``d_in`` does not fit it.
    """
    faiss = _faiss()
    if not transform.is_trained:
        raise ConfigError("the ITQ transform is not trained; build it with fit_itq_transform")
    d_pad, bits = int(transform.d_in), int(transform.d_out)
    if not isinstance(d_in, int) or not 1 <= d_in <= d_pad or (d_in < d_pad and d_pad != bits):
        raise ConfigError(f"d_in={d_in!r} does not fit an ITQ transform of input dimension {d_pad}")
    a = faiss.vector_to_array(transform.pca_then_itq.A).reshape(bits, d_pad)
    return np.ascontiguousarray(a.T[:d_in], dtype=np.float32)


def itq_projection(descriptors: Any, *, bits: int = DEFAULT_BITS, seed: int = 0,
                   max_train: int = DEFAULT_MAX_TRAIN) -> np.ndarray:
    """ITQ projection ``W`` ``(d_in, bits)`` float32: codes are ``sign(normalize(x) @ W)``.

    Args:
        descriptors: ``(n, d_in)`` float training descriptors (zero rows are ignored).

    Raises:
        ConfigError, ShapeError, MissingDependencyError: as :func:`fit_itq_transform`.
    """
    d_in = np.asarray(descriptors).shape[-1] if np.ndim(descriptors) == 2 else 0
    transform = fit_itq_transform(descriptors, bits=bits, seed=seed, max_train=max_train)
    return projection_from_transform(transform, d_in=d_in)


def random_rotation_projection(descriptors: Any, *, bits: int = DEFAULT_BITS, seed: int = 0,
                               max_train: int = DEFAULT_MAX_TRAIN) -> np.ndarray:
    """Baseline ``W`` ``(d_in, bits)`` float32: the same PCA as ITQ, then a random rotation.

    The rotation is ITQ's own seeded starting point, so ``itq_projection(..., seed=s)`` starts
    from ``random_rotation_projection(..., seed=s)`` and only lowers its training error.

    Raises:
        ConfigError, ShapeError, MissingDependencyError: as :func:`fit_itq_transform`.
    """
    d_in = np.asarray(descriptors).shape[-1] if np.ndim(descriptors) == 2 else 0
    transform = fit_itq_transform(descriptors, bits=bits, seed=seed, max_train=max_train, iterations=0)
    return projection_from_transform(transform, d_in=d_in)


def quantization_error(descriptors: Any, W: np.ndarray) -> float:
    """Mean over rows of ``||sign(z) - z||^2`` with ``z = normalize(x) @ W`` (sign(0) = +1).

    Args:
        descriptors: ``(n, d_in)`` float; rows are L2-normalised, zero rows ignored.
        W: ``(d_in, bits)`` projection.

    Raises:
        ShapeError: bad shapes, NaN/inf, or no non-zero row.
    """
    w = np.asarray(W, dtype=np.float64)
    x = _unit_rows(descriptors)
    if w.ndim != 2 or w.shape[0] != x.shape[1]:
        raise ShapeError(f"W must be (d_in={x.shape[1]}, bits), got {w.shape}")
    z = x @ w
    return float(np.mean(np.sum((np.where(z >= 0, 1.0, -1.0) - z) ** 2, axis=1)))


def init_binary_projection(model: AMES, descriptors: Any, *, seed: int = 0,
                           max_train: int = DEFAULT_MAX_TRAIN) -> None:
    """Set a binary AMES's ``remap_local[0].W`` to the ITQ projection of ``descriptors``.

    Args:
        descriptors: ``(n, local_dim)`` float training descriptors (valid slots only; zero
            rows are ignored).

    Raises:
        ConfigError: the model is full-precision (it has no ``W``), or bad options.
        ShapeError: the descriptor dimension is not the model's ``local_dim``, NaN/inf, no rows.
    """
    if not model.cfg.binary:
        raise ConfigError("init_binary_projection needs a binary AMES (create_ames(..., binary=True)); "
                          "a full-precision model has no sign projection W")
    d = np.shape(descriptors)
    if len(d) != 2 or d[1] != model.cfg.local_dim:
        raise ShapeError(f"ITQ training descriptors must be (n, {model.cfg.local_dim}) for this model, got {d}; "
                         "use the local feature the model is built for")
    w = itq_projection(descriptors, bits=model.cfg.model_dim, seed=seed, max_train=max_train)
    param = model.remap_local[0].W
    with torch.no_grad():
        param.copy_(torch.from_numpy(w).to(device=param.device, dtype=param.dtype))


# ---------------------------------------------------------------------------------- packing


def pack_signs(bits: np.ndarray) -> np.ndarray:
    """Pack sign bits: bool ``(..., B)`` (True = +1) -> uint8 ``(..., B // 8)``, MSB first.

    Raises:
        ShapeError: not bool, or ``B`` is not a positive multiple of 8.
    """
    arr = np.asarray(bits)
    if arr.dtype != np.bool_ or arr.ndim < 1 or arr.shape[-1] == 0 or arr.shape[-1] % 8:
        raise ShapeError(f"pack_signs needs a bool array (..., B) with B a multiple of 8, got {arr.dtype} "
                         f"{arr.shape}; compute bits as (x @ W) >= 0")
    return np.packbits(arr, axis=-1)


def _check_packed(shape: tuple[int, ...], dtype_ok: bool, dtype: object) -> None:
    if not dtype_ok or len(shape) < 1:
        raise ShapeError(f"packed sign codes must be uint8 (..., nbytes), got {dtype} {shape}; "
                         "pack them with pack_signs")


def unpack_signs(packed: np.ndarray) -> np.ndarray:
    """uint8 ``(..., nbytes)`` -> float32 ``(..., 8 * nbytes)`` of +-1 (inverse of :func:`pack_signs`).

    Raises:
        ShapeError: not uint8 or 0-D.
    """
    arr = np.asarray(packed)
    _check_packed(arr.shape, arr.dtype == np.uint8, arr.dtype)
    return np.unpackbits(arr, axis=-1).astype(np.float32) * 2.0 - 1.0


def unpack_signs_torch(packed: torch.Tensor) -> torch.Tensor:
    """uint8 tensor ``(..., nbytes)`` -> float32 ``(..., 8 * nbytes)`` of +-1, on ``packed``'s device.

    One gather in a ``(256, 8)`` table of byte signs; equals :func:`unpack_signs`.

    Raises:
        ShapeError: not a uint8 tensor, or 0-D.
    """
    if not isinstance(packed, torch.Tensor):
        raise ShapeError(f"unpack_signs_torch needs a torch.Tensor, got {type(packed).__name__}; "
                         "use unpack_signs for NumPy arrays")
    _check_packed(tuple(packed.shape), packed.dtype == torch.uint8, packed.dtype)
    table = torch.tensor(_BYTE_SIGNS, device=packed.device)
    return table[packed.long()].flatten(-2)
