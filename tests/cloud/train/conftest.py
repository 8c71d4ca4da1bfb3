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
