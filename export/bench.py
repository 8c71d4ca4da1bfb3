"""Batch-1 latency of exported artifacts and of the torch model they came from.

:func:`time_runner` times anything that maps a ``(B, 3, H, W)`` float32 NCHW batch to vectors:
an edge runtime runner (:mod:`asymfuse.edge.runtimes`, e.g. from
:data:`asymfuse.export.registry.RUNNERS`; its ``.run``, the code the phone runs), a torch module (eager, under
``torch.inference_mode``) or a plain callable. Thread control belongs to the caller's choice of
target: artifacts get their thread count when their runner is created (make one runner per
count, see :func:`time_threads`); torch eager modules run under ``torch.set_num_threads(n)`` when
``num_threads`` is given, restored afterwards.

Figures are wall-clock milliseconds per call (``time.perf_counter``) after ``warmup`` untimed
calls: ``p50_ms`` (median) and ``p90_ms``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from asymfuse.edge.errors import ConfigError, ShapeError


def time_runner(target: Any, x: np.ndarray, *, warmup: int = 3, runs: int = 20,
                num_threads: int | None = None) -> dict[str, float]:
    """Median and 90th-percentile wall ms of ``target`` on the batch ``x``.

    Args:
        target: an object with ``.run(x) -> (B, D)`` (an artifact runner), a ``torch.nn.Module``
            (run eagerly on a tensor copy of ``x`` under ``torch.inference_mode``, in eval mode) or
            any callable taking ``x``.
        x: ``(B, 3, H, W)`` float32 NCHW preprocessed images (B = 1 for the latency tables).
        warmup: untimed calls first (caches, lazy initialisation, allocator).
        runs: timed calls.
        num_threads: torch intra-op threads for a torch module (restored afterwards). Runners
            take their thread count when created; passing it here for one is an error.

    Returns:
        ``{"p50_ms", "p90_ms", "mean_ms", "min_ms", "runs", "warmup"}``.

    Raises:
        ConfigError: bad ``warmup`` / ``runs`` / ``num_threads``, or ``num_threads`` for a non-torch target.
        ShapeError: ``x`` is not a finite 4-D float array.
    """
    for name, value, low in (("warmup", warmup, 0), ("runs", runs, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an int >= {low}, got {value!r}")
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                    or num_threads < 1):
        raise ConfigError(f"num_threads must be a positive int or None, got {num_threads!r}")
    arr = np.asarray(x)
    if arr.ndim != 4 or not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all():
        raise ShapeError(f"x must be a finite (B, 3, H, W) float array, got {arr.dtype} {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    call, scope = _as_call(target, arr, num_threads=num_threads)
    times = []
    with scope():
        for _ in range(warmup):
            call()
        for _ in range(runs):
            t0 = time.perf_counter()
            call()
            times.append((time.perf_counter() - t0) * 1e3)
    ms = np.asarray(times)
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "runs": runs, "warmup": warmup}


def time_threads(make_target: Callable[[int], Any], x: np.ndarray, *, threads: Sequence[int] = (1, 2),
                 warmup: int = 3, runs: int = 20, torch_threads: bool = False) -> dict[int, dict[str, float]]:
    """:func:`time_runner` once per thread count, with a fresh target for each.

    Args:
        make_target: ``n -> target``; for artifacts e.g.
            ``lambda n: asymfuse.edge.runtimes.load_runner(path, num_threads=n)``, for
            torch ``lambda n: model`` together with ``torch_threads=True``.
        threads: thread counts, each >= 1.
        torch_threads: also set ``torch.set_num_threads(n)`` while timing (torch eager targets).

    Returns:
        ``{n: time_runner(...)}`` in the order of ``threads``.

    Raises:
        ConfigError, ShapeError: as :func:`time_runner`; an empty or bad ``threads``.
    """
    if not threads or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in threads):
        raise ConfigError(f"threads must be a non-empty list of positive ints, got {list(threads)!r}")
    return {n: time_runner(make_target(n), x, warmup=warmup, runs=runs, num_threads=n if torch_threads else None)
            for n in threads}


def _as_call(target: Any, x: np.ndarray, *, num_threads: int | None) -> tuple[Callable[[], Any], Any]:
    run = getattr(target, "run", None)
    if callable(run) and not _is_torch_module(target):
        if num_threads is not None:
            raise ConfigError("num_threads applies to torch modules only; create the runner with its thread "
                              "count instead (e.g. load_runner(path, num_threads=n))")
        return (lambda: run(x)), _nothing
    if _is_torch_module(target):
        import torch

        tensor = torch.from_numpy(x.copy())

        @contextmanager
        def scope() -> Iterator[None]:
            before, was_training = torch.get_num_threads(), target.training
            if num_threads is not None:
                torch.set_num_threads(num_threads)
            target.eval()
            try:
                with torch.inference_mode():
                    yield
            finally:
                target.train(was_training)
                torch.set_num_threads(before)

        return (lambda: target(tensor)), scope
    if callable(target):
        if num_threads is not None:
            raise ConfigError("num_threads applies to torch modules only; a plain callable sets its own threads")
        return (lambda: target(x)), _nothing
    raise ConfigError(f"cannot time a {type(target).__name__}: pass a runner (with .run), a torch module or a "
                      "callable")


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _is_torch_module(obj: Any) -> bool:
    import sys

    torch = sys.modules.get("torch")  # no torch import for runner-only callers
    return torch is not None and isinstance(obj, torch.nn.Module)
