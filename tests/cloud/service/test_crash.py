"""Crash test: a searcher subprocess is SIGKILLed at random moments while it takes writes, then restarted.

Every acknowledged write must be there afterwards, every write in flight at the kill must be all
there or not at all, and the item count must be exact. Snapshots run every 0.2 s, so kills also
land inside snapshot writes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from asymfuse.cloud.index.durable import DurableIndex
from asymfuse.edge.errors import RemoteError

from .conftest import API_KEY, DIM, N, client, copy_folder, unit_vectors

KILLS = 20


def start_server(folder) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "ASYMFUSE_API_KEYS": API_KEY}
    proc = subprocess.Popen([sys.executable, "-m", "asymfuse.cloud.cli.main", "serve", "--index", str(folder),
                             "--bind", "127.0.0.1:0", "--snapshot-interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if "listening on port" in line:
            return proc, int(line.rsplit(" ", 1)[1])
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise RuntimeError("the searcher did not start")


def writer(port, next_id, acked_up, acked_del, in_doubt, stop, rng):
    x = unit_vectors(4, DIM, seed=int(rng.integers(1 << 30)))
    with client(port, key=API_KEY) as c:
        while not stop.is_set():
            if acked_up and rng.random() < 0.2:
                victims = sorted(acked_up - acked_del)[:2] if len(acked_up - acked_del) >= 2 else []
                if victims:
                    op = ("delete", tuple(victims))
                    try:
                        c.delete(victims)
                        acked_del.update(victims)
                    except RemoteError:
                        in_doubt.append(op)
                        return
                    continue
            ids = [next_id[0] + i for i in range(4)]
            next_id[0] += 4
            try:
                c.upsert(ids, x)
                acked_up.update(ids)
            except RemoteError:
                in_doubt.append(("upsert", tuple(ids)))
                return


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_write(tmp_path, flat_folder):
    folder = copy_folder(flat_folder, tmp_path / "index")
    rng = np.random.default_rng(1234)
    random.seed(1234)
    acked_up: set[int] = set()
    acked_del: set[int] = set()
    in_doubt: list[tuple[str, tuple[int, ...]]] = []
    next_id = [1_000_000]
    for _ in range(KILLS):
        proc, port = start_server(folder)
        stop = threading.Event()
        t = threading.Thread(target=writer, args=(port, next_id, acked_up, acked_del, in_doubt, stop, rng))
        t.start()
        time.sleep(float(rng.uniform(0.05, 0.6)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stop.set()
        t.join(30)
        assert not t.is_alive()
    with DurableIndex.open(folder) as index:
        present = {int(i) for i in index.ids()}
        size = index.size
    doubted = {i for kind, ids in in_doubt if kind == "delete" for i in ids}  # may or may not have applied
    lost = (acked_up - acked_del - doubted) - present
    resurrected = acked_del & present
    assert not lost, f"{len(lost)} acknowledged upserts lost"
    assert not resurrected, f"{len(resurrected)} acknowledged deletes undone"
    expected = set(range(N)) | (acked_up - acked_del)
    for kind, ids in in_doubt:
        there = [i in present for i in ids]
        assert all(there) or not any(there), f"a {kind} in flight at the kill was half-applied: {ids}"
        if kind == "upsert" and all(there):
            expected |= set(ids)
        if kind == "delete" and not any(there):
            expected -= set(ids)
    assert present == expected and size == len(expected)
    print(f"crash test: {KILLS} SIGKILLs, {len(acked_up)} acknowledged upserts, {len(acked_del)} acknowledged "
          f"deletes, {len(in_doubt)} writes in flight at a kill, 0 acknowledged writes lost")


def test_sigterm_stops_gracefully_with_a_final_snapshot(tmp_path, flat_folder):
    folder = copy_folder(flat_folder, tmp_path / "index")
    proc, port = start_server(folder)
    try:
        with client(port, key=API_KEY) as c:
            c.upsert([777], unit_vectors(1, DIM, seed=5))
        assert (folder / "wal.log").stat().st_size > 0  # the write is in the log
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert (folder / "wal.log").stat().st_size == 0  # ... and in the final snapshot
    with DurableIndex.open(folder) as index:
        assert 777 in index and index.replayed == 0 and index.size == N + 1
