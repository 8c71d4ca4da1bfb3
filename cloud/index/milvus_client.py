"""Talking to Milvus: the lazy ``pymilvus`` import, connecting with a deadline, error translation, and
the ``asymfuse.*`` collection properties that hold an index's :class:`IndexMeta` and build state.

Connection problems (refused, unresolvable, timed out) become
:class:`~asymfuse.cloud.index.base.IndexUnavailableError` (the service answers UNAVAILABLE, so a
client behind a load balancer retries); other server errors pass through unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from asymfuse.cloud.index.base import IndexUnavailableError
from asymfuse.cloud.index.index_meta import IndexMeta
from asymfuse.cloud.index.milvus_config import MilvusTarget
from asymfuse.edge.errors import ConfigError, CorruptDataError, missing_dependency

META_PROPERTY = "asymfuse.meta"
STATE_PROPERTY = "asymfuse.state"
LOADING, READY = "loading", "ready"
_UNAVAILABLE_HINTS = ("fail connecting", "unavailable", "deadline", "timeout", "timed out", "connection refused",
                      "retry run out", "failed to connect", "name resolution")


def pymilvus() -> ModuleType:
    """The ``pymilvus`` module.

    Raises:
        MissingDependencyError: pymilvus is not installed (names the ``milvus`` extra).
    """
    try:
        import pymilvus as module
    except ImportError as exc:
        raise missing_dependency("pymilvus", "milvus") from exc
    return module


def _unavailable(target: MilvusTarget, what: str, exc: BaseException) -> IndexUnavailableError:
    detail = getattr(exc, "message", "") or str(exc)
    return IndexUnavailableError(
        f"Milvus at {target.uri} is unreachable ({what}: {detail}; deadline {target.timeout_s:g} s); start it "
        "(deploy/docker-compose.yml), fix the URI or --token, or raise the timeout")


def _is_unavailable(exc: BaseException) -> bool:
    import grpc

    mod = pymilvus()
    if isinstance(exc, (mod.exceptions.ConnectError, mod.exceptions.MilvusUnavailableException, TimeoutError,
                        ConnectionError)):
        return True
    if isinstance(exc, grpc.RpcError):
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    text = (getattr(exc, "message", "") or str(exc)).lower()
    return isinstance(exc, mod.MilvusException) and any(h in text for h in _UNAVAILABLE_HINTS)


@contextmanager
def translated(target: MilvusTarget, what: str) -> Iterator[None]:
    """Re-raise connection failures inside as :class:`IndexUnavailableError` naming ``what`` and the server."""
    try:
        yield
    except IndexUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - only connection failures are translated; the rest re-raise
        if _is_unavailable(exc):
            raise _unavailable(target, what, exc) from exc
        raise


def connect(target: MilvusTarget) -> Any:
    """A ``MilvusClient`` for ``target`` (fails within ``target.timeout_s`` when the server is unreachable).

    Raises:
        MissingDependencyError: no pymilvus.
        IndexUnavailableError: the server cannot be reached or refuses the token.
    """
    mod = pymilvus()
    try:
        return mod.MilvusClient(uri=target.uri, token=target.token or "", timeout=target.timeout_s)
    except Exception as exc:  # noqa: BLE001 - every connect failure gets the same actionable message
        raise _unavailable(target, "connect", exc) from exc


def collection_properties(client: Any, target: MilvusTarget, name: str) -> dict[str, str] | None:
    """The properties of collection ``name`` (None when it does not exist)."""
    with translated(target, f"describe {name}"):
        if not client.has_collection(name, timeout=target.timeout_s):
            return None
        info = client.describe_collection(name, timeout=target.timeout_s)
    return {str(k): str(v) for k, v in (info.get("properties") or {}).items()}


def read_meta(client: Any, target: MilvusTarget, name: str) -> tuple[IndexMeta, str] | None:
    """``(meta, state)`` recorded on collection ``name``; None when the collection does not exist.

    Raises:
        ConfigError: the collection exists but was not made by asymfuse.
        CorruptDataError: its meta property does not decode.
    """
    props = collection_properties(client, target, name)
    if props is None:
        return None
    if META_PROPERTY not in props:
        raise ConfigError(f"collection {name!r} on {target.uri} was not built by asymfuse (no {META_PROPERTY} "
                          "property); choose another collection name, or drop it and run `asymfuse index build "
                          "--backend milvus`")
    try:
        data = json.loads(props[META_PROPERTY])
    except ValueError as exc:
        raise CorruptDataError(f"the {META_PROPERTY} property of collection {name!r} does not decode ({exc}); "
                               "rebuild the collection") from exc
    return IndexMeta.from_dict(data, where=f"collection {name!r} ({META_PROPERTY})"), props.get(STATE_PROPERTY, "")


def write_meta(client: Any, target: MilvusTarget, name: str, meta: IndexMeta, *, state: str) -> None:
    """Record ``meta`` and the build ``state`` (``loading`` / ``ready``) on collection ``name``."""
    props = {META_PROPERTY: json.dumps(meta.to_dict(), sort_keys=True), STATE_PROPERTY: state}
    with translated(target, f"record the meta of {name}"):
        client.alter_collection_properties(name, properties=props, timeout=target.timeout_s)


def flushed_rows(client: Any, target: MilvusTarget) -> int:
    """Rows in collection ``target.collection`` after a flush (a build in progress: the loaded prefix)."""
    with translated(target, f"flush {target.collection}"):
        client.flush(target.collection, timeout=None)
        return int(client.get_collection_stats(target.collection, timeout=target.timeout_s)["row_count"])
