"""Scoped faiss threads: set for the body, restored after (also torch's count on this thread)."""

from __future__ import annotations

import faiss
import pytest
import torch

from asymfuse.cloud.index.omp import omp_threads
from asymfuse.edge.errors import ConfigError


def test_omp_threads_sets_and_restores_even_on_error():
    before = (faiss.omp_get_max_threads(), torch.get_num_threads())
    with omp_threads(1):
        assert faiss.omp_get_max_threads() == 1
    assert (faiss.omp_get_max_threads(), torch.get_num_threads()) == before
    with pytest.raises(RuntimeError), omp_threads(1):
        raise RuntimeError("boom")
    assert (faiss.omp_get_max_threads(), torch.get_num_threads()) == before
    with omp_threads(None):
        assert faiss.omp_get_max_threads() == before[0]
    with pytest.raises(ConfigError, match=">= 1"), omp_threads(0):
        pass
