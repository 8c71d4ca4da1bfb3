"""Process heap tuning for the CPU forward passes of the ``asymfuse`` commands (glibc only).

glibc serves every allocation above its mmap threshold (128 KiB, raised dynamically to at most
32 MiB) with a fresh ``mmap`` and returns it with ``munmap`` on free. A CNN forward pass on CPU
allocates activations of tens to hundreds of MiB per layer, so each batch maps, page-faults (the
kernel zeroes every page) and unmaps them again. Measured on 2 cores (gem_lite1 on 96 crop views):
7.3 s wall with 4.4 s of system time, against 5.3 s and 0.6 s with both thresholds at 1-2 GiB.

:func:`tune_heap` raises glibc's mmap and trim thresholds with ``mallopt`` so that freed blocks stay
in the heap and are reused. The cost is resident memory: up to ``trim_threshold`` bytes of freed
heap stay mapped instead of going back to the operating system.

It changes nothing when the process runs on another C library (musl, macOS, Windows), when the user
already chose glibc's malloc settings (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
``GLIBC_TUNABLES``), or when ``ASYMFUSE_HEAP_TUNING=off``. The CLI calls it once at start; library
code never does.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from asymfuse.edge.errors import ConfigError

ENV_SWITCH = "ASYMFUSE_HEAP_TUNING"
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
THRESHOLD = 1 << 30  # bytes; above the largest activation of the shipped extractors, below 2 GiB (a C int)
M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3


@dataclass(frozen=True)
class HeapTuning:
    """What :func:`tune_heap` did: ``applied`` and, when it did nothing, the ``reason``."""

    applied: bool
    reason: str = ""


def tune_heap(*, mmap_threshold: int = THRESHOLD, trim_threshold: int = THRESHOLD,
              environ: Mapping[str, str] | None = None) -> HeapTuning:
    """Raise glibc's mmap and trim thresholds of this process (see the module docstring).

    Args:
        mmap_threshold: allocations of at least this many bytes still get their own mapping.
        trim_threshold: free heap above this many bytes at the top is returned to the system.
        environ: the environment to read the switches from (default ``os.environ``).

    Returns:
        :class:`HeapTuning`; ``applied`` is False with a reason when it was skipped.

    Raises:
        ConfigError: a threshold outside ``[0, 2**31 - 1]``, or an unknown ``ASYMFUSE_HEAP_TUNING``.
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
            raise ConfigError(f"{name} must be an int of bytes in [0, 2**31 - 1], got {value!r}")
    env = os.environ if environ is None else environ
    switch = env.get(ENV_SWITCH, "on").strip().lower()
    if switch not in ("on", "off", "1", "0"):
        raise ConfigError(f"{ENV_SWITCH}={env[ENV_SWITCH]!r}: use 'on' (the default) or 'off'")
    if switch in ("off", "0"):
        return HeapTuning(False, f"{ENV_SWITCH}={env[ENV_SWITCH]}")
    chosen = [name for name in USER_SETTINGS if name in env]
    if chosen:
        return HeapTuning(False, f"the environment sets {', '.join(chosen)}")
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return HeapTuning(False, "not glibc")
    if not (mallopt(M_MMAP_THRESHOLD, mmap_threshold) and mallopt(M_TRIM_THRESHOLD, trim_threshold)):
        return HeapTuning(False, "glibc refused the thresholds")
    return HeapTuning(True)


def _glibc_mallopt():  # -> ctypes function or None
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc exports it; musl has a mallopt that ignores these
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return mallopt
