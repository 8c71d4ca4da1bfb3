"""The searcher's ``Index`` interface: what a vector backend must do to serve ``asymfuse serve``.

:class:`~asymfuse.cloud.index.durable.DurableIndex` (faiss + write-ahead log) and
:class:`~asymfuse.cloud.index.milvus_index.MilvusIndex` (a Milvus collection) implement it. Ids are
the user's int64 ids; scores are inner products (cosine for unit-norm vectors); result rows are
padded with id -1 / score -inf.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from asymfuse.edge.errors import AsymfuseError


class IndexUnavailableError(AsymfuseError, ConnectionError):
    """A remote index backend (Milvus) cannot be reached or timed out (maps to UNAVAILABLE: retry, or
    check the server)."""


@runtime_checkable
class Index(Protocol):
    """A mutable, durable vector index (see the module docstring)."""

    @property
    def dim(self) -> int: ...

    @property
    def size(self) -> int: ...

    def search(self, xq: object, *, k: int, filter_field: str = "", filter_values: Sequence[str] = ()
               ) -> tuple[np.ndarray, np.ndarray]:
        """``xq`` ``(nq, dim)`` -> ``(D (nq, k) float32, I (nq, k) int64)``."""
        ...

    def upsert(self, ids: object, vectors: object, metadata: Sequence[Mapping[str, str]] | None = None) -> int:
        """Insert or replace durably; returns a sequence number (durable when it returns)."""
        ...

    def delete(self, ids: object) -> int:
        """Remove durably, all or nothing (UnknownIdError for an unknown id); returns a sequence number."""
        ...

    def metadata(self, ids: Sequence[int]) -> list[dict[str, str]]: ...

    def snapshot(self) -> None: ...

    def close(self, *, snapshot: bool = True) -> None: ...
