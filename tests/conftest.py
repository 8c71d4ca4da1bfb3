"""Fixtures shared across the test tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from asymfuse.cloud.cli.heap import tune_heap


def pytest_configure(config: pytest.Config) -> None:
    """The test process gets the CLI's heap tuning too (in-process forward passes: less system time)."""
    tune_heap()


@pytest.fixture
def torchrun(tmp_path: Path) -> Callable[..., list[dict[str, Any]]]:
    """``torchrun(worker_source, config_dict, nproc=2)``: run ``worker_source`` under
    ``torch.distributed.run --standalone`` with ``nproc`` ranks (gloo on CPU, 1 thread each).

    The worker gets two arguments, the config JSON path and an output folder (``tmp_path/"two"``),
    and must save ``final-<rank>.pt`` there. Returns those payloads in rank order.
    """
    def run(worker: str, config: dict[str, Any], *, nproc: int = 2) -> list[dict[str, Any]]:
        (tmp_path / "cfg.json").write_text(json.dumps(config))
        (tmp_path / "worker.py").write_text(worker)
        out = tmp_path / "two"
        out.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
        env["OMP_NUM_THREADS"] = "1"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               str(tmp_path / "worker.py"), str(tmp_path / "cfg.json"), str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return [torch.load(out / f"final-{rank}.pt", weights_only=False) for rank in range(nproc)]

    return run
