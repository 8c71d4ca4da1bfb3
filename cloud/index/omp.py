"""Scoped OpenMP thread count for one faiss call.

``faiss.omp_set_num_threads`` sets the calling thread's OpenMP ICV, and in a process that also
holds torch it changes ``torch.get_num_threads()`` in that thread too (measured: 2 -> 1). Setting it
once at server start therefore leaked into whatever ran next on the same thread (a trainer in
the same test process trained single-threaded and stopped being bit-equal to a run in a fresh
process). :func:`omp_threads` sets it around one call and puts the previous value back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from asymfuse.edge.errors import ConfigError


@contextmanager
def omp_threads(threads: int | None) -> Iterator[None]:
    """Run the body with ``threads`` OpenMP threads on this thread (None: leave the count alone)."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise ConfigError(f"faiss threads must be >= 1 (got {threads})")
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
