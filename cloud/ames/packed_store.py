"""The binary AMES gallery store: each image's top-L local descriptors as packed sign bits.

One folder, written to a temp folder beside it and renamed into place:

- ``ames_store.json``: the manifest: ``format`` ``"asymfuse-ames-packed"``, ``version`` 1,
  ``num_items``, ``max_local`` (L), ``bits``, ``bytes_per_descriptor`` (``bits // 8``),
  ``projection_sha256`` (sha256 of the model's ``W`` as float32 bytes), ``local_feature`` and
  ``extractor_id`` (from the source feature store), and ``files``: name, bytes and sha256 of each file.
- ``ids.json``: the ``N`` item ids, in the source store's row order.
- ``codes.npy``: uint8 ``(N, L, bits // 8)``, ``pack_signs(normalize(x) @ W >= 0)``
  (:mod:`asymfuse.cloud.ames.binary`); an image's valid descriptors are compacted to the front,
  keeping the source order (detector score), truncated to L; the remaining slots are zero.
- ``counts.npy``: int32 ``(N,)``, valid descriptors per image (``<= L``).

At L = 48 and 128 bits an image takes 768 bytes of codes.
:func:`~asymfuse.cloud.ames.packed_build.build_packed_store` writes it; :class:`PackedLocalStore`
serves the codes to the scorer as tokens (the ``GalleryLocals`` protocol of
:mod:`asymfuse.cloud.ames.sources`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asymfuse.cloud.ames.binary import unpack_signs_torch
from asymfuse.cloud.ames.model import AMES
from asymfuse.cloud.ames.packed_format import (
    FILES,
    REBUILD,
    check_file,
    check_sizes,
    load_ids,
    load_npy,
    read_manifest,
)
from asymfuse.cloud.device import resolve_device
from asymfuse.edge.errors import ConfigError, CorruptDataError



def projection_digest(model: AMES) -> str:
    """sha256 hex digest of a binary model's ``W`` as C-ordered float32 bytes.

    Raises:
        ConfigError: the model is full-precision.
    """
    _require_binary(model, "a packed local store")
    w = model.remap_local[0].W.detach().to("cpu", torch.float32).contiguous().numpy()
    return hashlib.sha256(w.tobytes()).hexdigest()


def _require_binary(model: AMES, what: str) -> None:
    if not isinstance(model, AMES) or not model.cfg.binary:
        raise ConfigError(f"{what} needs a binary AMES (binary=True); this model is full-precision: "
                          "use a binary checkpoint, or score float descriptors with ArrayLocals")


def codes_to_tokens(model: AMES, codes: np.ndarray, counts: np.ndarray, *, length: int,
                    device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Gallery tokens from packed codes (the body of :meth:`PackedLocalStore.tokens`, shared with
    stores that fetch codes per query, e.g. :mod:`asymfuse.cloud.index.milvus_locals`).

    Args:
        codes: uint8 ``(n, L, bits // 8)``, valid slots first; counts: ``(n,)`` valid slots per item.
        length: slots returned per item (the first ``min(count, length)`` valid ones, then padding).

    Returns:
        ``(tokens (n, length, model_dim), pad (n, length) bool)`` on ``device`` (see :meth:`PackedLocalStore.tokens`).
    """
    keep = min(length, codes.shape[1])
    padded = np.zeros((codes.shape[0], length, codes.shape[2]), dtype=np.uint8)
    padded[:, :keep] = codes[:, :keep]
    dev = resolve_device(device)
    pad = torch.from_numpy(np.arange(length)[None, :] >= np.asarray(counts)[:, None]).to(dev)
    signs = unpack_signs_torch(torch.from_numpy(padded).to(dev)).masked_fill(pad[..., None], 1.0)
    dtype = model.remap_local[1].weight.dtype
    return model.project_signs(signs.to(dtype)), pad


class PackedLocalStore:
    """Read-only packed binary gallery (see the module docstring); codes are memory-mapped.

    Implements the ``GalleryLocals`` protocol: ``len()``, :meth:`counts`, :meth:`tokens`.
    Open with :meth:`open`; :meth:`close` or use it as a context manager.
    """

    def __init__(self, root: Path, manifest: dict[str, Any], ids: list[str], codes: np.ndarray,
                 counts: np.ndarray) -> None:
        self._root, self._manifest, self._ids = root, manifest, ids
        self._codes: np.ndarray | None = codes
        self._counts = counts
        self._checked_digest: str | None = None

    @classmethod
    def open(cls, root: str | os.PathLike[str], *, model: AMES | None = None, verify: bool = True
             ) -> PackedLocalStore:
        """Open the store in ``root``.

        Args:
            model: if given, check that it is the binary model (same ``W``) the codes were built with.
            verify: check every file's sha256 (``False``: sizes only).

        Raises:
            ConfigError: ``root`` is not a packed store; ``model`` is full-precision or has another ``W``.
            CorruptDataError: bad manifest; a file missing, truncated, failing its checksum or out of
                range; codes/counts/ids sizes that disagree ("size does not match its index").
        """
        path = Path(root)
        manifest = read_manifest(path)
        ids = load_ids(path)
        counts = load_npy(path, "counts", mmap=False)
        codes = load_npy(path, "codes", mmap=True)
        check_sizes(path, manifest, ids, codes, counts)
        for key in FILES:
            check_file(path, manifest, key, check_sha=verify)
        store = cls(path, manifest, ids, codes, counts.astype(np.int64))
        if model is not None:
            store.check_model(model)
        return store

    # -- metadata
    @property
    def root(self) -> Path:
        return self._root

    @property
    def ids(self) -> list[str]:
        """The ``N`` item ids in row order (a copy)."""
        return list(self._ids)

    @property
    def max_local(self) -> int:
        """L, descriptor slots per image."""
        return int(self._manifest["max_local"])

    @property
    def bits(self) -> int:
        return int(self._manifest["bits"])

    @property
    def bytes_per_descriptor(self) -> int:
        return int(self._manifest["bytes_per_descriptor"])

    @property
    def projection_sha256(self) -> str:
        return str(self._manifest["projection_sha256"])

    @property
    def local_feature(self) -> str | None:
        return self._manifest.get("local_feature")

    @property
    def extractor_id(self) -> str | None:
        return self._manifest.get("extractor_id")

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (f"PackedLocalStore(root={str(self._root)!r}, n={len(self)}, max_local={self.max_local}, "
                f"bits={self.bits})")

    def bytes_per_image(self, l: int | None = None) -> int:  # noqa: E741 - the paper's L
        """Code bytes per image for ``min(l, max_local)`` descriptors (``l=None``: ``max_local``).

        Raises:
            ConfigError: ``l`` is not a positive int.
        """
        if l is not None and (not isinstance(l, int) or isinstance(l, bool) or l < 1):
            raise ConfigError(f"l must be a positive int or None, got {l!r}")
        return min(self.max_local if l is None else l, self.max_local) * self.bytes_per_descriptor

    # -- checks
    def check_model(self, model: AMES) -> None:
        """Raises: ConfigError: ``model`` is full-precision or its ``W`` is not the one the codes were built with."""
        _require_binary(model, "a packed local store")
        if model.cfg.model_dim != self.bits:
            raise ConfigError(f"packed store {self._root} holds {self.bits}-bit codes but the model has "
                              f"{model.cfg.model_dim} bits; {REBUILD} and this model")
        digest = projection_digest(model)
        if digest != self.projection_sha256:
            raise ConfigError(f"packed store {self._root} was built with another projection W (sha256 "
                              f"{self.projection_sha256[:12]}..., this model's is {digest[:12]}...); use the "
                              f"checkpoint it was built with, or {REBUILD} and this model")

    def check_index(self, index: Sequence[str] | int) -> None:
        """Check that the store lines up with a global index of ``index`` items (a count or its ids).

        Raises:
            CorruptDataError: the sizes (or ids) differ.
        """
        n = index if isinstance(index, int) else len(index)
        if n != len(self) or (not isinstance(index, int) and list(index) != self._ids):
            raise CorruptDataError(f"packed store {self._root} holds {len(self)} items, which does not match its "
                                   f"index ({n} items{'' if n != len(self) else ', other ids'}); {REBUILD} "
                                   "the index was built from")

    # -- data
    def counts(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """``(n,)`` int64 valid descriptors of items ``indices``.

        Raises:
            ConfigError: bad indices or a closed store.
        """
        return self._counts[self._check_indices(indices)]

    def get(self, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes uint8 ``(n, max_local, bytes_per_descriptor)`` (a copy) and counts ``(n,)`` int64.

        Raises:
            ConfigError: bad indices or a closed store.
        """
        idx = self._check_indices(indices)
        return np.array(self._open_codes()[idx]), self._counts[idx]

    def tokens(self, model: AMES, indices: Sequence[int] | np.ndarray, *, length: int,
               device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Gallery tokens of items ``indices``: codes unpacked, then ``model.project_signs``.

        Args:
            length: slots returned per item: the first ``min(count, length)`` valid ones, then padding.

        Returns:
            ``(tokens (n, length, model_dim), pad (n, length) bool, True = padding)`` on ``device``.
            Padding slots hold the token of an all-+1 code, the one ``model.project`` gives a
            zeroed (padding) descriptor, so both paths agree slot for slot.

        Raises:
            ConfigError: fp model, another ``W``, bad ``length``/indices, or a closed store.
        """
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise ConfigError(f"length must be a positive int, got {length!r}")
        self._check_model_cached(model)
        codes, counts = self.get(indices)
        return codes_to_tokens(model, codes, counts, length=length, device=device)

    def close(self) -> None:
        """Drop the memory map (arrays already returned stay valid). Idempotent."""
        self._codes = None

    def __enter__(self) -> PackedLocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals
    def _check_model_cached(self, model: AMES) -> None:
        _require_binary(model, "PackedLocalStore.tokens")
        digest = projection_digest(model)
        if digest != self._checked_digest:
            self.check_model(model)
            self._checked_digest = digest

    def _open_codes(self) -> np.ndarray:
        if self._codes is None:
            raise ConfigError(f"packed store {self._root} is closed; open it again with PackedLocalStore.open")
        return self._codes

    def _check_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        self._open_codes()
        idx = np.asarray(indices)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
            raise ConfigError(f"indices must be a 1-D sequence of ints, got {idx.dtype} with shape {idx.shape}")
        idx = idx.astype(np.int64)
        bad = idx[(idx < 0) | (idx >= len(self))]
        if bad.size:
            raise ConfigError(f"index {int(bad[0])} is out of range for a packed store of {len(self)} items; "
                              f"use indices in [0, {len(self)})")
        return idx
