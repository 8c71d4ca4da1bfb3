"""An embedded Milvus standalone server (the ``milvus`` wheel, Milvus 2.3.5) for tests, ``bench serve``
and trying the Milvus backend on one machine.

:meth:`EmbeddedMilvus.start` unpacks the server binary into a fresh temp folder (about 450 MB: the
binaries, embedded etcd, the local object store and the message queue), starts ``milvus run
standalone`` there, and waits for its health endpoint; :meth:`EmbeddedMilvus.stop` ends the process
and deletes the folder. Measured on 2 CPU cores: 7-12 s to start, 250-480 MB resident.

Not for production: run Milvus standalone or a cluster (``deploy/docker-compose.yml``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from asymfuse.edge.errors import AsymfuseError, ConfigError, missing_dependency


FIXED_PORTS = (2379, 2380)  # the embedded etcd's client and peer ports (not configurable in the milvus wheel)


class MilvusStartError(AsymfuseError, RuntimeError):
    """The embedded Milvus server did not become healthy (the message holds its log tail)."""


class EmbeddedMilvus:
    """A running embedded server; use :meth:`start`, then :meth:`stop` (or a ``with`` block)."""

    def __init__(self, server: Any, base_dir: Path, start_s: float, own_dir: bool) -> None:
        self._server = server
        self.base_dir = base_dir
        self.start_s = start_s
        self._own_dir = own_dir

    @classmethod
    def start(cls, *, base_dir: str | os.PathLike[str] | None = None, timeout_s: float = 120.0) -> EmbeddedMilvus:
        """Start a server in ``base_dir`` (default: a new temp folder, deleted by :meth:`stop`).

        Raises:
            MissingDependencyError: the ``milvus`` wheel is not installed.
            MilvusStartError: the process exited or was not healthy within ``timeout_s``.
        """
        try:
            from milvus import MilvusServer, MilvusServerConfig
        except ImportError as exc:
            raise missing_dependency("milvus", "milvus") from exc
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s={timeout_s!r} must be positive")
        _check_ports_free()
        own = base_dir is None
        root = Path(tempfile.mkdtemp(prefix="asymfuse-milvus-")) if own else Path(base_dir)
        server = MilvusServer(MilvusServerConfig(data_dir=str(root)), wait_for_started=False)
        t0 = time.perf_counter()
        started = cls(server, root, 0.0, own)
        try:
            server.start()
            started._wait_healthy(timeout_s)
        except BaseException:
            started.stop()
            raise
        started.start_s = time.perf_counter() - t0
        return started

    def _wait_healthy(self, timeout_s: float) -> None:
        url = f"http://127.0.0.1:{self._server.webservice_port}/healthz"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            proc = self._server.server_proc
            if proc is None or proc.poll() is not None:
                raise MilvusStartError(f"the embedded Milvus exited during start-up; its log:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if b"OK" in resp.read():
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise MilvusStartError(f"the embedded Milvus was not healthy after {timeout_s:g} s; its log:\n"
                               f"{self.log_tail()}")

    @property
    def port(self) -> int:
        return int(self._server.listen_port)

    @property
    def uri(self) -> str:
        """``http://127.0.0.1:<port>`` for :class:`~asymfuse.cloud.index.milvus_config.MilvusTarget`."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        proc = self._server.server_proc
        return None if proc is None else int(proc.pid)

    def rss_bytes(self) -> int:
        """The server process's resident memory (0 when stopped)."""
        pid = self.pid
        try:
            with open(f"/proc/{pid}/status") as fh:
                kb = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
        except (OSError, StopIteration, TypeError):
            return 0
        return kb * 1024

    def log_tail(self, lines: int = 30) -> str:
        path = self.base_dir / "logs" / "milvus-stderr.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no log at {path})"

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL after 1 s) and delete the temp folder and the
        server-id file Milvus leaves in ``/tmp/milvus``. Idempotent."""
        server, self._server = self._server, _Stopped()
        if not isinstance(server, _Stopped):
            pid = None if server.server_proc is None else server.server_proc.pid
            server.stop()
            if pid is not None:
                Path(f"/tmp/milvus/server_id_{pid}").unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    Path("/tmp/milvus").rmdir()  # only when empty: other servers' files stay
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedMilvus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _check_ports_free() -> None:
    """The embedded etcd always takes ports 2379/2380, so one embedded server runs per machine.

    Raises:
        MilvusStartError: one of them is taken.
    """
    for port in FIXED_PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as etcd binds: TIME_WAIT is no conflict
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                raise MilvusStartError(f"port {port} (the embedded etcd's) is in use ({exc}): another embedded Milvus "
                                       "or an etcd runs on this machine; stop it first (one embedded server per "
                                       "machine), or use that server") from exc


class _Stopped:
    """Stands in for the server after :meth:`EmbeddedMilvus.stop`."""

    server_proc = None
    listen_port = 0
    webservice_port = 0

    def stop(self) -> None:
        """Nothing to stop."""
