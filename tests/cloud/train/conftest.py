"""Shared fixture of the training tests: one small real-photo benchmark per test session."""

from __future__ import annotations

import pytest

from asymfuse.cloud.data.benchmark import BenchmarkConfig, build_benchmark


@pytest.fixture(scope="session")
def bench(tmp_path_factory):
    """A 6-photo benchmark (3 views per instance, 128 px): real images, built in a few seconds."""
    config = BenchmarkConfig(seed=3, photos=("astronaut", "camera", "chelsea", "coffee", "coins", "rocket"),
                             n_views=3, image_max_side=128, distractors_per_split=2, multiview_distractors=2)
    return build_benchmark(tmp_path_factory.getbasetemp() / "aff-small-bench", config=config)


def kill_in_epoch(cmd: list[str], run, *, epoch: int, timeout_s: float = 300):
    """Start ``cmd`` (a training CLI writing ``run/metrics.jsonl``), SIGKILL it as soon as a step record of
    0-based ``epoch`` appears, and return the finished process (its stderr still readable)."""
    import json
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            log = run / "metrics.jsonl"
            lines = [json.loads(x) for x in (log.read_text().splitlines() if log.is_file() else []) if x.strip()]
            if any(r.get("epoch") == epoch and "step" in r for r in lines):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    finally:
        proc.wait(timeout=60)
    return proc
