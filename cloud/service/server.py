"""``create_server(config) -> (server, port)`` and ``serve(config)`` (``asymfuse serve``).

:func:`create_server` binds and starts nothing but the port, so tests bind ``127.0.0.1:0`` and read
the chosen port; :func:`serve` runs until SIGTERM / SIGINT, then stops gracefully: new RPCs are
refused, running ones get ``grace`` seconds, and the index writes a final snapshot.

Besides ``asymfuse.v1.Searcher`` the server exposes the standard gRPC **health** service
(``grpc.health.v1.Health``: SERVING while up, NOT_SERVING while stopping) and **reflection**, so
``grpc_health_probe`` and ``grpcurl`` work without the ``.proto``.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from asymfuse.cloud.service.config import ServerConfig
from asymfuse.cloud.service.loader import open_searcher
from asymfuse.cloud.service.searcher import Searcher
from asymfuse.cloud.service.servicer import SERVICE, SearcherService
from asymfuse.edge.errors import ConfigError

LOG = logging.getLogger("asymfuse.service")


class SearchServer:
    """A started gRPC server with its searcher and snapshot thread; :meth:`stop` shuts all down."""

    def __init__(self, server: grpc.Server, searcher: Searcher, health_servicer: health.HealthServicer,
                 config: ServerConfig) -> None:
        self.grpc_server = server
        self.searcher = searcher
        self.config = config
        self._health = health_servicer
        self._stop = threading.Event()
        self._stopped = False
        self._snapshots = threading.Thread(target=self._snapshot_loop, name="asymfuse-snapshots", daemon=True)
        self._snapshots.start()

    def _snapshot_loop(self) -> None:
        interval = self.config.snapshot_interval_s
        if interval <= 0:
            return
        while not self._stop.wait(interval):
            index = self.searcher.index
            try:
                if getattr(index, "wal_bytes", lambda: 1)():
                    index.snapshot()
            except Exception:  # noqa: BLE001 - a failed snapshot leaves the log as it was; keep serving
                LOG.exception("periodic snapshot failed; the write-ahead log still holds every write")

    def stop(self, grace: float | None = 5.0) -> None:
        """Refuse new RPCs, let running ones finish within ``grace`` s, snapshot and close the index."""
        if self._stopped:
            return
        self._stopped = True
        self._health.enter_graceful_shutdown()
        self._stop.set()
        self.grpc_server.stop(grace).wait()
        self._snapshots.join()
        self.searcher.index.close(snapshot=True)
        if self.searcher.reranker is not None:
            self.searcher.reranker.close()
        LOG.info("searcher stopped; final snapshot written")

    def wait(self) -> None:
        self.grpc_server.wait_for_termination()


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None:
        return None
    try:
        key = Path(config.tls_key).read_bytes()
        cert = Path(config.tls_cert).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS key or certificate ({exc}); pass PEM files") from exc
    return grpc.ssl_server_credentials([(key, cert)])


def create_server(config: ServerConfig, *, searcher: Searcher | None = None) -> tuple[SearchServer, int]:
    """Open the index (unless ``searcher`` is given), bind ``config.bind`` and start serving.

    Returns:
        ``(server, port)``: the port actually bound (the free one chosen for port 0).

    Raises:
        ConfigError: the address cannot be bound or the TLS files are unreadable.
        CorruptDataError: the index folder is damaged.
    """
    searcher = searcher if searcher is not None else open_searcher(config)
    options = [("grpc.max_receive_message_length", config.max_message_bytes),
               ("grpc.max_send_message_length", config.max_message_bytes),
               ("grpc.so_reuseport", 0)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="asymfuse-rpc"),
                         options=options)
    server.add_generic_rpc_handlers((SearcherService(searcher, config).generic_handler(),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    creds = _credentials(config)
    try:
        port = server.add_secure_port(config.bind, creds) if creds else server.add_insecure_port(config.bind)
    except RuntimeError as exc:
        port = 0
        LOG.debug("bind failed: %s", exc)
    if port == 0:
        raise ConfigError(f"cannot bind {config.bind!r} (in use or not a local address); choose another --bind")
    server.start()
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    LOG.info("searcher on %s (%s), %d items, dim %d, AMES %s", f"{config.bind.rsplit(':', 1)[0]}:{port}",
             "TLS" if creds else "plaintext", searcher.index.size, searcher.index.dim,
             "on" if searcher.reranker is not None else "off")
    return SearchServer(server, searcher, health_servicer, config), port


def serve(config: ServerConfig, *, grace: float = 10.0, ready: threading.Event | None = None) -> int:
    """Serve until SIGTERM / SIGINT, then stop gracefully (final snapshot). Returns the exit code."""
    server, port = create_server(config)
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        LOG.info("signal %d: stopping (grace %.0fs)", signum, grace)
        done.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    print(f"asymfuse searcher listening on port {port}", flush=True)
    if ready is not None:
        ready.set()
    try:
        done.wait()
    finally:
        server.stop(grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
