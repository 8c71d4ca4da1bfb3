"""The CLI's glibc heap tuning: large blocks come from the heap, not from fresh mappings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from asymfuse.cloud.cli.heap import ENV_SWITCH, tune_heap
from asymfuse.edge.errors import ConfigError

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc on Linux only")

# mallinfo2: hblkhd = bytes in mmapped blocks, arena = bytes of the main heap
PROBE = r"""
import ctypes, json, sys
import numpy as np
from asymfuse.cloud.cli.heap import tune_heap

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
tuning = tune_heap() if sys.argv[1] == "tune" else None
before = libc.mallinfo2().hblkhd
block = np.ones(300 * 2**20, dtype=np.uint8)  # 300 MiB: above glibc's largest dynamic mmap threshold
during = libc.mallinfo2().hblkhd
print(json.dumps({"applied": None if tuning is None else tuning.applied, "mapped": during - before}))
"""


def _probe(mode: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", ENV_SWITCH))}
    proc = subprocess.run([sys.executable, "-c", PROBE, mode], env={**environ, **env}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@glibc_only
def test_a_large_block_is_mapped_by_default_and_taken_from_the_heap_after_tuning() -> None:
    default = _probe("keep")
    assert default["mapped"] >= 300 * 2**20  # the reference: glibc maps it on its own
    tuned = _probe("tune")
    assert tuned["applied"] is True
    assert tuned["mapped"] < 2**20


@glibc_only
def test_the_switch_and_the_users_own_malloc_settings_turn_it_off() -> None:
    off = _probe("tune", **{ENV_SWITCH: "off"})
    assert off["applied"] is False and off["mapped"] >= 300 * 2**20
    assert tune_heap(environ={ENV_SWITCH: "off"}).reason == f"{ENV_SWITCH}=off"
    kept = tune_heap(environ={"MALLOC_TRIM_THRESHOLD_": "0"})
    assert not kept.applied and "MALLOC_TRIM_THRESHOLD_" in kept.reason


def test_bad_switches_and_thresholds_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="'on'.*'off'"):
        tune_heap(environ={ENV_SWITCH: "maybe"})
    for bad in (-1, 2**31, 1.5, True):
        with pytest.raises(ConfigError, match="mmap_threshold"):
            tune_heap(mmap_threshold=bad, environ={})


@glibc_only
def test_the_cli_tunes_its_heap_and_reports_it_at_debug_level() -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", ENV_SWITCH))}
    proc = subprocess.run([sys.executable, "-m", "asymfuse.cloud.cli.main", "-v", "models"], env=environ,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "heap tuning: applied" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "asymfuse.cloud.cli.main", "models"],
                          env={**environ, ENV_SWITCH: "nope"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and ENV_SWITCH in proc.stderr
