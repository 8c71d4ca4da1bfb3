"""The ``asymfuse.v1.Searcher`` gRPC service: requests in, :class:`Searcher` calls, status codes out.

Every RPC goes through one wrapper (:func:`_rpc`) that checks the API key, decodes, maps errors to
status codes and logs ``method, status, milliseconds`` (never the key):

================================  ===========================================================
status                            when
================================  ===========================================================
INVALID_ARGUMENT                  wrong dim, NaN/inf, k out of range, an empty batch, bytes that
                                  are not the message (or vectors of the wrong byte count)
FAILED_PRECONDITION               the request's ``embedding_space_id`` is not the served one
NOT_FOUND                         Delete of an unknown id (nothing is deleted)
UNAVAILABLE                       the index backend (Milvus) cannot be reached; retry (maybe on
                                  another replica)
RESOURCE_EXHAUSTED                a batch above ``max_batch`` (oversize messages: gRPC itself)
UNAUTHENTICATED                   a write (or, with ``auth_reads``, any call) without a valid key
INTERNAL                          anything unexpected (logged with its traceback; the server lives)
================================  ===========================================================

Handlers are registered by hand (not with the generated ``add_SearcherServicer_to_server``) so that
a request whose bytes do not parse gets INVALID_ARGUMENT instead of gRPC's generic INTERNAL.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
import hmac
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from asymfuse.cloud.index.base import IndexUnavailableError
from asymfuse.cloud.index.index_config import UnknownIdError
from asymfuse.cloud.service.config import ServerConfig
from asymfuse.cloud.service.searcher import SearchResult, Searcher, SpaceMismatchError
from asymfuse.edge.errors import AsymfuseError, ConfigError, ShapeError
from asymfuse.edge.wire import unpack_locals, unpack_vector
from asymfuse.proto import searcher_pb2 as pb

LOG = logging.getLogger("asymfuse.service")
SERVICE = "asymfuse.v1.Searcher"
WRITES = frozenset({"Upsert", "Delete"})


class TooLargeError(AsymfuseError, ValueError):
    """A request above a configured limit (maps to RESOURCE_EXHAUSTED)."""


class _Malformed:
    """What the deserializer returns for bytes that are not the expected message."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _safe_parser(message: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as exc:  # protobuf raises all three
            return _Malformed(exc)
    return parse


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The documented status code of an error (see the module docstring)."""
    if isinstance(exc, SpaceMismatchError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, UnknownIdError):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(exc, IndexUnavailableError):
        return grpc.StatusCode.UNAVAILABLE
    if isinstance(exc, TooLargeError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(exc, (ShapeError, ConfigError)):
        return grpc.StatusCode.INVALID_ARGUMENT
    return grpc.StatusCode.INTERNAL


def _bearer(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer "):]
    return None


class SearcherService:
    """Handlers of the ``Searcher`` service over one :class:`Searcher`."""

    def __init__(self, searcher: Searcher, config: ServerConfig) -> None:
        self.searcher = searcher
        self.config = config

    # ------------------------------------------------------------------ plumbing
    def _authorised(self, method: str, context: grpc.ServicerContext) -> bool:
        if method not in WRITES and not self.config.auth_reads:
            return True
        key = _bearer(context)
        return key is not None and any(hmac.compare_digest(key.encode(), k.encode()) for k in self.config.api_keys)

    def _fail(self, method: str, context: grpc.ServicerContext, exc: BaseException) -> None:
        code = status_of(exc)
        if code == grpc.StatusCode.INTERNAL:
            LOG.exception("%s failed unexpectedly", method)
            context.abort(code, f"internal error in {method}: {type(exc).__name__}; see the server log")
        if code == grpc.StatusCode.UNAVAILABLE:  # the backend's address stays in the server log
            LOG.warning("%s: %s", method, exc)
            context.abort(code, f"{method}: the searcher's index backend is unavailable; retry shortly")
        context.abort(code, str(exc))

    def _check_request(self, method: str, request: Any, context: grpc.ServicerContext) -> None:
        if not self._authorised(method, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"{method} needs a valid API key in metadata 'authorization: Bearer <key>'")
        if isinstance(request, _Malformed):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"the request is not a valid {method} message ({request.error}); use searcher.proto")

    # ------------------------------------------------------------------ conversions
    def _one(self, request: Any) -> SearchResult:
        s = self.searcher
        s.check_space(request.embedding_space_id)
        query = unpack_vector(request.query, dim=s.index.dim)
        opts = request.options
        locals_ = pad = None
        if request.HasField("locals") and request.locals.count:
            if s.reranker is None:
                if not opts.disable_rerank and opts.rerank_top_m:
                    raise ConfigError("rerank_top_m was set but this searcher has no AMES; drop it or serve an "
                                      "index built with --ames")
            else:
                locals_, pad = unpack_locals(request.locals, dim=s.reranker.local_dim)
        if opts.HasField("filter") and opts.filter.field and not opts.filter.values:
            raise ShapeError("the filter names a field but no values; send at least one value")
        return s.search(query, k=opts.k, locals_=locals_, pad=pad, rerank_top_m=opts.rerank_top_m,
                        use_rerank=not opts.disable_rerank, filter_field=opts.filter.field,
                        filter_values=list(opts.filter.values))

    @staticmethod
    def _response(result: SearchResult, request_id: str) -> Any:
        hits = [pb.Hit(id=h.id, score=h.score, global_score=h.global_score, reranked=h.reranked,
                       metadata=h.metadata) for h in result.hits]
        return pb.SearchResponse(hits=hits, request_id=request_id, num_reranked=result.num_reranked,
                                 latency_ms=result.latency_ms)

    # ------------------------------------------------------------------ RPCs
    def Search(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802 - gRPC names
        return self._response(self._one(request), request.request_id)

    def SearchBatch(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        n = len(request.requests)
        if n == 0:
            raise ShapeError("the batch is empty; send at least one SearchRequest")
        if n > self.config.max_batch:
            raise TooLargeError(f"{n} queries exceed max_batch={self.config.max_batch}; split the batch")
        return pb.SearchBatchResponse(responses=[self._response(self._one(r), r.request_id) for r in request.requests])

    def SearchStream(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802
        for request in requests:
            if isinstance(request, _Malformed):
                self._check_request("SearchStream", request, context)
            yield self._response(self._one(request), request.request_id)

    def Upsert(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        s = self.searcher
        s.check_space(request.embedding_space_id)
        n = len(request.items)
        if n == 0:
            raise ShapeError("the upsert is empty; send at least one Item")
        if n > self.config.max_batch:
            raise TooLargeError(f"{n} items exceed max_batch={self.config.max_batch}; split the upsert")
        ids = np.array([item.id for item in request.items], dtype=np.int64)
        vectors = np.stack([unpack_vector(item.vector, dim=s.index.dim, what=f"item {item.id}")
                            for item in request.items])
        metadata = [dict(item.metadata) for item in request.items]
        seq = s.index.upsert(ids, vectors, metadata)
        return pb.UpsertResponse(upserted=n, size=s.index.size, sequence=seq)

    def Delete(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        s = self.searcher
        s.check_space(request.embedding_space_id)
        if not request.ids:
            raise ShapeError("the delete is empty; send at least one id")
        if len(request.ids) > self.config.max_batch:
            raise TooLargeError(f"{len(request.ids)} ids exceed max_batch={self.config.max_batch}; split the delete")
        seq = s.index.delete(np.array(request.ids, dtype=np.int64))
        return pb.DeleteResponse(deleted=len(request.ids), size=s.index.size, sequence=seq)

    def GetInfo(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        import json

        s = self.searcher
        r = s.reranker
        return pb.GetInfoResponse(
            size=s.index.size, dim=s.index.dim, metric="ip", embedding_space_id=s.embedding_space_id,
            model_spec_json=json.dumps(s.model_spec, sort_keys=True) if s.model_spec else "",
            ames_enabled=r is not None, ames_local_dim=r.local_dim if r is not None else 0,
            factory=getattr(s.index, "config", None).factory if hasattr(s.index, "config") else "",
            max_k=s.max_k, max_batch=self.config.max_batch, default_k=s.default_k,
            default_rerank_top_m=r.options.top_m if r is not None else 0)

    # ------------------------------------------------------------------ registration
    def generic_handler(self) -> grpc.GenericRpcHandler:
        """All six methods, each wrapped by :func:`_rpc`."""
        methods = pb.DESCRIPTOR.services_by_name["Searcher"].methods_by_name
        handlers = {}
        for name, desc in methods.items():
            req = getattr(pb, desc.input_type.name)
            resp = getattr(pb, desc.output_type.name)
            impl = getattr(self, name)
            if desc.client_streaming and desc.server_streaming:
                handlers[name] = grpc.stream_stream_rpc_method_handler(
                    _rpc_stream(self, name, impl), request_deserializer=_safe_parser(req),
                    response_serializer=resp.SerializeToString)
            else:
                handlers[name] = grpc.unary_unary_rpc_method_handler(
                    _rpc(self, name, impl), request_deserializer=_safe_parser(req),
                    response_serializer=resp.SerializeToString)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _log(method: str, code: grpc.StatusCode, start: float) -> None:
    LOG.info("%s %s %.2fms", method, code.name, (time.perf_counter() - start) * 1e3)


@contextmanager
def _guard(service: SearcherService, method: str, context: grpc.ServicerContext) -> Iterator[None]:
    """Map an error raised inside to its status (an abort passes through) and log method, status, ms."""
    start = time.perf_counter()
    code = grpc.StatusCode.OK
    try:
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - every error becomes a status (see status_of)
            if _is_abort(exc, context):
                raise
            service._fail(method, context, exc)
    except BaseException:
        code = context.code() if isinstance(context.code(), grpc.StatusCode) else grpc.StatusCode.UNKNOWN
        raise
    finally:
        _log(method, code, start)


def _rpc(service: SearcherService, method: str, impl: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    @functools.wraps(impl)
    def handler(request: Any, context: grpc.ServicerContext) -> Any:
        with _guard(service, method, context):
            service._check_request(method, request, context)
            return impl(request, context)
    return handler


def _rpc_stream(service: SearcherService, method: str, impl: Callable[[Any, Any], Iterator[Any]]
                ) -> Callable[[Any, Any], Iterator[Any]]:
    def handler(requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        with _guard(service, method, context):
            service._check_request(method, None, context)
            yield from impl(requests, context)
    return handler


def _is_abort(exc: BaseException, context: grpc.ServicerContext) -> bool:
    """context.abort() raises a plain Exception after setting the code; let it through."""
    code = context.code()
    return isinstance(code, grpc.StatusCode) and code != grpc.StatusCode.OK and type(exc) is Exception
