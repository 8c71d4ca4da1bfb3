"""The searcher's core, without gRPC: global top-k from an :class:`Index`, then AMES re-ranking.

:class:`Searcher` is what the gRPC servicer calls and what ``bench serve`` times in-process.
A query is a ``(d,)`` vector of the served embedding space, optionally with ``(L, local_dim)``
local descriptors. With locals and AMES enabled, the first ``top_m`` global results are re-ranked
by :func:`~asymfuse.cloud.ames.rerank.rerank` with the checkpoint's λ/γ; gallery locals come from
the packed binary store (or, on the Milvus backend, the descriptor collection, fetched per query),
found by each item's ``key`` metadata (the store's image id). Items with no packed locals keep their
global score.

torch is imported only when AMES is served, so a global-only searcher starts in about a second.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from asymfuse.cloud.index.base import Index
from asymfuse.cloud.index.index_meta import KEY_FIELD
from asymfuse.cloud.index.omp import omp_threads
from asymfuse.edge.errors import AsymfuseError, ConfigError, ShapeError
from asymfuse.edge.wire import Hit



class SpaceMismatchError(AsymfuseError, ValueError):
    """A client's embedding space differs from the served one (maps to FAILED_PRECONDITION)."""


@dataclass(frozen=True)
class SearchResult:
    """Ranked hits (best first), how many AMES re-scored, and the server-side time."""

    hits: list[Hit]
    num_reranked: int
    latency_ms: float


class CandidateLocals:
    """:class:`~asymfuse.cloud.ames.sources.GalleryLocals` over one query's candidates: item ``i`` is
    packed-store row ``rows[i]``, or has no descriptors when ``rows[i] < 0``."""

    def __init__(self, packed: Any, rows: np.ndarray) -> None:
        self._packed = packed
        self._rows = rows

    def __len__(self) -> int:
        return int(self._rows.size)

    def counts(self, indices: np.ndarray) -> np.ndarray:
        rows = self._rows[np.asarray(indices, dtype=np.int64)]
        counts = np.zeros(rows.size, dtype=np.int64)
        known = rows >= 0
        if known.any():
            counts[known] = self._packed.counts(rows[known])
        return counts

    def tokens(self, model: Any, indices: np.ndarray, *, length: int, device: Any) -> tuple[Any, Any]:
        import torch

        rows = self._rows[np.asarray(indices, dtype=np.int64)]
        tok, pad = self._packed.tokens(model, np.maximum(rows, 0), length=length, device=device)
        missing = torch.from_numpy(rows < 0).to(pad.device)
        return tok, pad | missing[:, None]


@runtime_checkable
class KeyedLocals(Protocol):
    """Gallery locals fetched per query by image key (the Milvus descriptor collection,
    :class:`~asymfuse.cloud.index.milvus_locals.MilvusLocals`)."""

    def for_keys(self, keys: Sequence[str]) -> tuple[Any, np.ndarray]:
        """``(GalleryLocals source, rows)``: ``rows[i]`` indexes key ``i`` in the source, -1 when it has none."""
        ...


@dataclass
class Reranker:
    """AMES in the searcher: the model, its gallery locals, a scorer and the default options.

    ``packed`` is a local store addressed by row (the packed store, or a :class:`ResidentGallery`
    over it; ``key_rows`` maps image keys to rows) or a :class:`KeyedLocals` that fetches the
    candidates' codes per query (the Milvus descriptor collection).
    """

    model: Any
    scorer: Any
    packed: Any
    options: Any  # RerankOptions
    key_rows: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.key_rows and not isinstance(self.packed, KeyedLocals):
            self.key_rows = {key: row for row, key in enumerate(self.packed.ids)}

    @property
    def local_dim(self) -> int:
        return int(self.model.cfg.local_dim)

    def rows(self, metadata: Sequence[dict[str, str]]) -> np.ndarray:
        return np.array([self.key_rows.get(m.get(KEY_FIELD, ""), -1) for m in metadata], dtype=np.int64)

    def candidates(self, metadata: Sequence[dict[str, str]]) -> CandidateLocals:
        """The gallery locals of one query's candidates (in ``metadata`` order)."""
        if isinstance(self.packed, KeyedLocals):
            source, rows = self.packed.for_keys([m.get(KEY_FIELD, "") for m in metadata])
            return CandidateLocals(source, rows)
        return CandidateLocals(self.packed, self.rows(metadata))

    def close(self) -> None:
        """Release the gallery locals (a memory map or a Milvus connection)."""
        close = getattr(self.packed, "close", None)
        if callable(close):
            close()


class Searcher:
    """See the module docstring.

    Args:
        index: the vector index.
        embedding_space_id: the served space; requests naming another one are refused.
        model_spec: the query side's ModelSpec as a dict (reported by GetInfo), or None.
        reranker: AMES, or None (global search only).
        max_k, default_k: result limits.
        search_threads: OpenMP threads of one faiss search, set around that call only (None: the
            thread's current count). torch's count on the same thread is left as it was.
    """

    def __init__(self, *, index: Index, embedding_space_id: str, model_spec: dict[str, Any] | None = None,
                 reranker: Reranker | None = None, max_k: int = 1000, default_k: int = 10,
                 search_threads: int | None = None) -> None:
        if not 1 <= default_k <= max_k:
            raise ConfigError(f"need 1 <= default_k ({default_k}) <= max_k ({max_k})")
        self.index = index
        self.embedding_space_id = embedding_space_id
        self.model_spec = model_spec
        self.reranker = reranker
        self.max_k = max_k
        self.default_k = default_k
        self.search_threads = search_threads

    def check_space(self, client_space: str) -> None:
        """Raises SpaceMismatchError unless ``client_space`` is the served space."""
        if client_space != self.embedding_space_id:
            raise SpaceMismatchError(
                f"the client's embedding space {client_space!r} is not the searcher's {self.embedding_space_id!r}: "
                "update the phone's query model to the one this gallery was indexed for (GetInfo returns its "
                "ModelSpec), or re-index the gallery for the new query model")

    def check_k(self, k: int) -> int:
        k = self.default_k if k == 0 else k
        if not 1 <= k <= self.max_k:
            raise ShapeError(f"k={k} is out of range; ask for 1..{self.max_k} results")
        return k

    def search(self, query: np.ndarray, *, k: int = 0, locals_: np.ndarray | None = None,
               pad: np.ndarray | None = None, rerank_top_m: int = 0, use_rerank: bool = True,
               filter_field: str = "", filter_values: Sequence[str] = ()) -> SearchResult:
        """One query: ``query`` ``(d,)``; ``locals_`` ``(L, local_dim)`` and ``pad`` ``(L,)`` (True = padding)."""
        start = time.perf_counter()
        k = self.check_k(k)
        reranking = use_rerank and self.reranker is not None and locals_ is not None and locals_.shape[0] > 0
        options = self.reranker.options if self.reranker is not None else None
        top_m = 0
        if reranking:
            top_m = options.top_m if rerank_top_m == 0 else rerank_top_m
            if not 1 <= top_m <= self.max_k:
                raise ShapeError(f"rerank_top_m={top_m} is out of range; use 1..{self.max_k}")
        depth = max(k, top_m)
        with omp_threads(self.search_threads):
            D, I = self.index.search(np.asarray(query, dtype=np.float32)[None, :], k=depth,
                                     filter_field=filter_field, filter_values=filter_values)
        keep = I[0] >= 0
        ids, scores = I[0][keep], D[0][keep].astype(np.float64)
        meta = self.index.metadata(ids.tolist())
        num = 0
        final_scores = scores
        if reranking and ids.size:
            from asymfuse.cloud.ames.options import RerankOptions  # torch: only where AMES is served
            from asymfuse.cloud.ames.rerank import rerank

            gallery = self.reranker.candidates(meta)
            opts = RerankOptions(top_m=top_m, lam=options.lam, gamma=options.gamma, lq=options.lq, lx=options.lx)
            # items without packed locals keep their global score; no warning per request (and no
            # warnings.catch_warnings, whose filter swap races between the server's threads)
            result = rerank(locals_, np.arange(ids.size), scores, options=opts, scorer=self.reranker.scorer,
                            gallery=gallery, q_pad=pad, warn=False)
            order = result.ids
            ids, meta, g = ids[order], [meta[i] for i in order], scores[order]
            final_scores, num = result.scores, result.num_reranked
            scores = g
        hits = [Hit(int(i), float(s), float(gs), n < num, m)
                for n, (i, s, gs, m) in enumerate(zip(ids[:k], final_scores[:k], scores[:k], meta[:k]))]
        return SearchResult(hits, min(num, k) if num else 0, (time.perf_counter() - start) * 1e3)
