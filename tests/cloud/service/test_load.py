"""Load test on 127.0.0.1: concurrent clients for a bounded time; throughput, p50/p99, zero errors."""

from __future__ import annotations

import threading
import time

import numpy as np

from .conftest import DIM, client, unit_vectors

CLIENTS, SECONDS = 8, 3.0


def test_concurrent_clients_get_no_errors_while_writes_go_on(served, gallery):
    _, port = served
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
    errors: list[BaseException] = []
    wrong: list[int] = []
    stop = time.monotonic() + SECONDS
    queries = unit_vectors(64, DIM, seed=21)
    want = np.argsort(-(queries @ gallery.T), axis=1)[:, 0]

    def reader(slot: int) -> None:
        try:
            with client(port) as c:
                i = slot
                while time.monotonic() < stop:
                    t0 = time.perf_counter()
                    hits = c.search(queries[i % 64], k=10)
                    latencies[slot].append((time.perf_counter() - t0) * 1e3)
                    if hits[0].id != want[i % 64] and hits[0].id < 50_000:  # writes add ids >= 50_000
                        wrong.append(i)
                    i += CLIENTS
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def writer_thread() -> None:
        try:
            with client(port) as c:
                n = 0
                while time.monotonic() < stop:
                    c.upsert([50_000 + n], unit_vectors(1, DIM, seed=n))
                    n += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(CLIENTS)]
    threads.append(threading.Thread(target=writer_thread))
    for t in threads:
        t.start()
    for t in threads:
        t.join(SECONDS + 30)
    assert not errors, errors[:3]
    assert not wrong
    lat = np.concatenate([np.asarray(x) for x in latencies])
    p50, p99 = np.percentile(lat, [50, 99])
    print(f"load: {CLIENTS} clients + 1 writer, {lat.size / SECONDS:.0f} searches/s, p50 {p50:.2f} ms, "
          f"p99 {p99:.2f} ms, 0 errors")
    assert lat.size > CLIENTS  # every client got answers
