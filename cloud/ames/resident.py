"""Gallery tokens decoded once and kept as one tensor on the scoring device.

:class:`ResidentGallery` wraps any :class:`~asymfuse.cloud.ames.sources.GalleryLocals` (the packed
binary store, float descriptors) for one model: every item's first ``length`` tokens are projected
once into a ``(N, length, model_dim)`` tensor, so a query costs one gather instead of reading,
unpacking and projecting its candidates again (NumPy -> tensor -> ``project_signs`` on every call).
It is itself a ``GalleryLocals``, so every scorer accepts it.

Memory: ``N * length * model_dim`` elements of ``dtype`` (float32: 32 KiB per image at
``length`` = 64, ``model_dim`` = 128); pass ``dtype=torch.bfloat16`` to halve it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from asymfuse.cloud.ames.model import AMES
from asymfuse.cloud.ames.sources import GalleryLocals, check_indices, check_length
from asymfuse.cloud.device import resolve_device
from asymfuse.edge.errors import ConfigError

_DECODE_BATCH = 1024


class ResidentGallery:
    """Projected gallery tokens of ``model``, resident on ``device`` (see the module docstring).

    Args:
        gallery: the source of local descriptors (read once, in batches, here).
        model: the AMES model whose projection is cached; :meth:`tokens` refuses another one.
        length: slots kept per item (None: the longest item's count, at least 1).
        device: where the tokens live (None: the model's device; the model must be there, as
            after ``create_scorer(model, device=...)``).
        dtype: storage dtype of the tokens (None: the model's); :meth:`tokens` returns them in it.

    Raises:
        ConfigError: bad ``length``, device or model, a model on another device, or the
            source's own errors.
    """

    def __init__(self, gallery: GalleryLocals, model: AMES, *, length: int | None = None,
                 device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        if not isinstance(model, AMES):
            raise ConfigError(f"ResidentGallery needs an AMES model, got {type(model).__name__}")
        n = len(gallery)
        counts = gallery.counts(np.arange(n)).astype(np.int64) if n else np.zeros(0, np.int64)
        longest = max(1, int(counts.max(initial=0)))
        self._length = longest if length is None else check_length(length, "length")
        model_device = next(model.parameters()).device
        self._device = resolve_device(device) if device is not None else model_device
        if self._device != model_device:
            raise ConfigError(f"the model is on {model_device} but the tokens should live on {self._device}; "
                              "create the scorer first (it moves the model) or move the model there")
        self._dtype = dtype or model.mtc_token.dtype
        self._model = model
        self._counts = np.minimum(counts, self._length)
        self._tokens = torch.empty(n, self._length, model.cfg.model_dim, device=self._device, dtype=self._dtype)
        with torch.inference_mode():
            for start in range(0, n, _DECODE_BATCH):
                idx = np.arange(start, min(n, start + _DECODE_BATCH))
                tok, pad = gallery.tokens(model, idx, length=self._length, device=self._device)
                self._tokens[start:start + idx.size] = tok.masked_fill(pad[..., None], 0.0).to(self._dtype)

    def __len__(self) -> int:
        return int(self._tokens.shape[0])

    def __repr__(self) -> str:
        return (f"ResidentGallery(n={len(self)}, length={self._length}, device={self._device}, "
                f"dtype={self._dtype})")

    @property
    def length(self) -> int:
        """Slots kept per item."""
        return self._length

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def nbytes(self) -> int:
        """Bytes held by the token tensor."""
        return self._tokens.numel() * self._tokens.element_size()

    def counts(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """``(n,)`` int64 valid descriptors of items ``indices`` (at most :attr:`length`).

        Raises:
            ConfigError: bad indices.
        """
        return self._counts[check_indices(indices, len(self), what="the resident gallery")]

    def tokens(self, model: AMES, indices: Sequence[int] | np.ndarray, *, length: int,
               device: str | torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tokens (n, length, model_dim), pad (n, length) bool)`` on ``device`` (None: where
        they live), True = padding; padding slots hold zeros. A gather, no decoding.

        Raises:
            ConfigError: another model than the one cached, bad indices or ``length``.
        """
        if model is not self._model:
            raise ConfigError("this ResidentGallery holds the tokens of another AMES model; build one per model")
        idx = check_indices(indices, len(self), what="the resident gallery")
        length = check_length(length)
        keep = min(length, self._length)
        rows = torch.from_numpy(idx).to(self._device)
        tok = self._tokens.index_select(0, rows)[:, :keep]
        if length > keep:
            tok = torch.cat([tok, tok.new_zeros(idx.size, length - keep, tok.shape[2])], dim=1)
        counts = torch.from_numpy(self._counts[idx]).to(self._device)
        pad = torch.arange(length, device=self._device)[None, :] >= counts[:, None]
        dev = self._device if device is None else resolve_device(device)
        return tok.to(dev), pad.to(dev)
