"""``SearchClient``: a small gRPC client of the asymfuse searcher (torch-free; cloud and phone use it).

It sends the client's ``embedding_space_id`` with every request, an API key as
``authorization: Bearer <key>`` metadata, and a deadline on every call. Transient UNAVAILABLE
answers are retried with exponential backoff (``retries`` times); every other status is raised at
once: FAILED_PRECONDITION (another embedding space) as
:class:`~asymfuse.edge.errors.IncompatibleModelError`, the rest as
:class:`~asymfuse.edge.errors.RemoteError` carrying the status name. Retries never outlive the
call's deadline: a server at a wrong address fails within ``timeout_s``.

With ``check_on_connect`` the client asks GetInfo once when it is created and refuses a searcher
that serves another embedding space before any query is sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from asymfuse.edge.errors import ConfigError, IncompatibleModelError, RemoteError, missing_dependency
from asymfuse.edge.wire import Hit, pack_locals, pack_vector


def _grpc() -> Any:
    try:
        import grpc
    except ImportError as exc:
        raise missing_dependency("grpcio", "edge") from exc
    return grpc


@dataclass(frozen=True)
class ClientConfig:
    """How to reach the searcher.

    Attributes:
        target: ``host:port``.
        embedding_space_id: the space of the vectors this client sends (its query model's).
        api_key: sent as ``authorization: Bearer <key>`` (needed for writes).
        tls: use TLS; ``root_certificates`` (PEM bytes) trusts a given CA, None the system roots.
        timeout_s: deadline of each call; retries: extra attempts on UNAVAILABLE; backoff_s: first wait.
        half: send vectors as float16 (half the bytes).
        check_on_connect: call GetInfo when the client is created and raise IncompatibleModelError
            when the searcher serves another embedding space.
        options: extra gRPC channel options.
    """

    target: str
    embedding_space_id: str
    api_key: str | None = None
    tls: bool = False
    root_certificates: bytes | None = None
    timeout_s: float = 10.0
    retries: int = 3
    backoff_s: float = 0.1
    half: bool = False
    options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    check_on_connect: bool = False

    def __post_init__(self) -> None:
        if not self.target or ":" not in self.target:
            raise ConfigError(f"target={self.target!r} must be host:port")
        if self.timeout_s <= 0 or self.retries < 0 or self.backoff_s < 0:
            raise ConfigError("timeout_s must be > 0, retries and backoff_s >= 0")


class SearchClient:
    """See the module docstring. Use as a context manager or call :meth:`close`.

    Raises:
        IncompatibleModelError: (with ``check_on_connect``) the searcher serves another space.
        RemoteError: (with ``check_on_connect``) the searcher cannot be reached within the deadline.
    """

    def __init__(self, config: ClientConfig) -> None:
        grpc = _grpc()
        from asymfuse.proto import searcher_pb2, searcher_pb2_grpc

        self.config = config
        self._pb = searcher_pb2
        if config.tls:
            creds = grpc.ssl_channel_credentials(root_certificates=config.root_certificates)
            self._channel = grpc.secure_channel(config.target, creds, options=list(config.options))
        else:
            self._channel = grpc.insecure_channel(config.target, options=list(config.options))
        self._stub = searcher_pb2_grpc.SearcherStub(self._channel)
        self._metadata = (("authorization", f"Bearer {config.api_key}"),) if config.api_key else ()
        if config.check_on_connect:
            try:
                self.check_space()
            except BaseException:
                self._channel.close()
                raise

    # ------------------------------------------------------------------ plumbing
    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        grpc = _grpc()
        deadline = time.monotonic() + self.config.timeout_s
        wait = self.config.backoff_s
        for attempt in range(self.config.retries + 1):
            try:
                return method(request, timeout=max(deadline - time.monotonic(), 1e-3), metadata=self._metadata)
            except grpc.RpcError as exc:
                retry = exc.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.config.retries
                if retry and time.monotonic() + wait < deadline:
                    time.sleep(wait)
                    wait *= 2
                    continue
                raise self._translate(exc) from exc
        raise AssertionError("unreachable")

    def _translate(self, exc: Any) -> Exception:
        grpc = _grpc()
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.FAILED_PRECONDITION:
            server = ""
            if "searcher's '" in details:
                server = details.split("searcher's '", 1)[1].split("'", 1)[0]
            return IncompatibleModelError(details, server_space=server, client_space=self.config.embedding_space_id)
        return RemoteError(f"{code.name}: {details}", code=code.name)

    def _request(self, vector: np.ndarray, *, k: int, locals_: np.ndarray | None, pad: np.ndarray | None,
                 rerank: bool, rerank_top_m: int, filter_: tuple[str, Sequence[str]] | None,
                 request_id: str = "") -> Any:
        pb = self._pb
        options = pb.SearchOptions(k=k, rerank_top_m=rerank_top_m, disable_rerank=not rerank)
        if filter_ is not None:
            options.filter.field = filter_[0]
            options.filter.values.extend(filter_[1])
        req = pb.SearchRequest(embedding_space_id=self.config.embedding_space_id,
                               query=pack_vector(vector, half=self.config.half), options=options, request_id=request_id)
        if locals_ is not None:
            req.locals.CopyFrom(pack_locals(locals_, pad, half=self.config.half))
        return req

    @staticmethod
    def _hits(response: Any) -> list[Hit]:
        return [Hit(h.id, h.score, h.global_score, h.reranked, dict(h.metadata)) for h in response.hits]

    # ------------------------------------------------------------------ API
    def search(self, vector: np.ndarray, k: int = 10, *, locals_: np.ndarray | None = None,
               pad: np.ndarray | None = None, rerank: bool = True, rerank_top_m: int = 0,
               filter_: tuple[str, Sequence[str]] | None = None) -> list[Hit]:
        """Top-``k`` gallery hits (best first) of a ``(d,)`` float32 unit-norm query.

        ``locals_`` ``(L, local_dim)`` with ``pad`` ``(L,)`` (True = padding) enables AMES re-ranking
        of the top ``rerank_top_m`` (0: the server's default); ``filter_`` = ``(field, values)``.

        Raises:
            IncompatibleModelError: the searcher serves another embedding space.
            RemoteError: any other refusal (the status name is in ``code``).
        """
        req = self._request(vector, k=k, locals_=locals_, pad=pad, rerank=rerank, rerank_top_m=rerank_top_m,
                            filter_=filter_)
        return self._hits(self._call(self._stub.Search, req))

    def search_batch(self, vectors: np.ndarray, k: int = 10) -> list[list[Hit]]:
        """One list of hits per row of ``vectors`` ``(n, d)`` (global search).

        Raises:
            IncompatibleModelError, RemoteError: as :meth:`search`.
        """
        pb = self._pb
        reqs = [self._request(v, k=k, locals_=None, pad=None, rerank=False, rerank_top_m=0, filter_=None)
                for v in np.asarray(vectors)]
        response = self._call(self._stub.SearchBatch, pb.SearchBatchRequest(requests=reqs))
        return [self._hits(r) for r in response.responses]

    def search_stream(self, queries: Iterable[np.ndarray | tuple[np.ndarray, np.ndarray | None, np.ndarray | None]],
                      k: int = 10, *, rerank: bool = True, stream_timeout_s: float | None = None
                      ) -> Iterator[list[Hit]]:
        """Stream queries (e.g. one per camera frame) over one call; yields each one's hits in order.

        A query is a ``(d,)`` vector or ``(vector, locals_, pad)``. The whole stream has one deadline,
        ``stream_timeout_s`` (None: no deadline; a camera stream is open-ended).

        Raises:
            IncompatibleModelError, RemoteError: as :meth:`search`.
        """
        grpc = _grpc()

        def requests() -> Iterator[Any]:
            for i, query in enumerate(queries):
                vector, locals_, pad = query if isinstance(query, tuple) else (query, None, None)
                yield self._request(vector, k=k, locals_=locals_, pad=pad, rerank=rerank, rerank_top_m=0,
                                    filter_=None, request_id=str(i))

        try:
            for response in self._stub.SearchStream(requests(), timeout=stream_timeout_s, metadata=self._metadata):
                yield self._hits(response)
        except grpc.RpcError as exc:
            raise self._translate(exc) from exc

    def upsert(self, ids: Sequence[int], vectors: np.ndarray, metadata: Sequence[Mapping[str, str]] | None = None
               ) -> int:
        """Insert or replace items (needs an API key); returns the write's log sequence number."""
        pb = self._pb
        meta = metadata if metadata is not None else [{}] * len(ids)
        items = [pb.Item(id=int(i), vector=pack_vector(v, half=self.config.half), metadata=dict(m))
                 for i, v, m in zip(ids, np.asarray(vectors), meta)]
        req = pb.UpsertRequest(embedding_space_id=self.config.embedding_space_id, items=items)
        return int(self._call(self._stub.Upsert, req).sequence)

    def delete(self, ids: Sequence[int]) -> int:
        """Remove items (needs an API key); returns the write's log sequence number."""
        req = self._pb.DeleteRequest(embedding_space_id=self.config.embedding_space_id, ids=[int(i) for i in ids])
        return int(self._call(self._stub.Delete, req).sequence)

    def info(self) -> dict[str, Any]:
        """GetInfo as a dict (``model_spec`` decoded from JSON)."""
        r = self._call(self._stub.GetInfo, self._pb.GetInfoRequest())
        return {"size": r.size, "dim": r.dim, "metric": r.metric, "embedding_space_id": r.embedding_space_id,
                "model_spec": json.loads(r.model_spec_json) if r.model_spec_json else None,
                "ames_enabled": r.ames_enabled, "ames_local_dim": r.ames_local_dim, "factory": r.factory,
                "max_k": r.max_k, "max_batch": r.max_batch, "default_k": r.default_k,
                "default_rerank_top_m": r.default_rerank_top_m}

    def check_space(self) -> dict[str, Any]:
        """GetInfo, then refuse a searcher of another embedding space; returns the info.

        Raises:
            IncompatibleModelError: the searcher's space is not this client's.
            RemoteError: the searcher cannot be reached.
        """
        info = self.info()
        if info["embedding_space_id"] != self.config.embedding_space_id:
            server = info["embedding_space_id"]
            raise IncompatibleModelError(
                f"the searcher serves embedding space {server!r} but this client's model is in "
                f"{self.config.embedding_space_id!r}: update the query model to the one the gallery was indexed "
                "for (GetInfo's model_spec names it), or re-index the gallery for this model",
                server_space=server, client_space=self.config.embedding_space_id)
        return info

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SearchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
