"""The class-margin input weights of the PCA start, against a pairwise brute force and on a real run."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from asymfuse.cloud.models.fusion import FusionInputs
from asymfuse.cloud.train.aff_config import TrainConfig
from asymfuse.cloud.train.fusion_weighting import MARGIN_FLOOR, class_margin, margin_weights
from asymfuse.edge.errors import ConfigError


def _brute_margin(x: np.ndarray, labels: np.ndarray) -> float:
    """Every ordered pair (i != j), one by one."""
    xc = x - x.mean(axis=0)
    xc = xc / np.linalg.norm(xc, axis=1, keepdims=True)
    same, diff = [], []
    for i, j in itertools.permutations(range(len(x)), 2):
        (same if labels[i] == labels[j] else diff).append(float(xc[i] @ xc[j]))
    return float(np.mean(same) - np.mean(diff))


def test_margin_equals_the_pairwise_definition():
    rng = np.random.default_rng(0)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    x = rng.standard_normal((4, 7))[labels] + 0.7 * rng.standard_normal((10, 7)) + 5.0  # a shared offset
    assert class_margin(x, labels) == pytest.approx(_brute_margin(x, labels), abs=1e-12)
    # a hand case: two classes of two identical rows each, opposite after centring -> 1 - (-1)
    assert class_margin(np.array([[1.0, 0], [1, 0], [0, 1], [0, 1]]), np.array([0, 0, 1, 1])) == pytest.approx(2.0)


def _inputs(*globals_: np.ndarray) -> FusionInputs:
    return FusionInputs(globals_=tuple(torch.from_numpy(g.astype(np.float32)) for g in globals_), locals_=(),
                        local_pads=())


def test_an_input_without_class_signal_gets_the_floor_and_fixed_weights_multiply():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(20), 5)
    good = rng.standard_normal((20, 16))[labels] + 0.5 * rng.standard_normal((100, 16))
    weak = rng.standard_normal((20, 16))[labels] + 3.0 * rng.standard_normal((100, 16))
    noise = rng.standard_normal((100, 32))
    weights, margins = margin_weights(_inputs(good, weak, noise), labels)
    assert weights[0] == 1.0 and MARGIN_FLOOR < weights[1] < 0.5 and weights[2] == MARGIN_FLOOR, (weights, margins)
    assert abs(margins[2]) < 0.05 < margins[1] < margins[0]
    fixed, _ = margin_weights(_inputs(good, weak, noise), labels, fixed=(1.0, 0.5, 2.0))
    assert fixed == pytest.approx((1.0, 0.5 * weights[1], 2.0 * MARGIN_FLOOR))


@pytest.mark.parametrize("labels", [np.arange(6), np.zeros(6, dtype=int)])
def test_labels_without_pairs_are_refused(labels):
    with pytest.raises(ConfigError, match="fusion_weighting=fixed"):
        class_margin(np.random.default_rng(0).standard_normal((6, 3)), labels)


def test_inputs_that_do_not_separate_the_classes_are_refused():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(3), 2)
    # each class's rows are opposite: every same-class cosine is negative
    x = np.concatenate([[v, -v] for v in rng.standard_normal((3, 4))])
    with pytest.raises(ConfigError, match="no gallery input separates"):
        margin_weights(_inputs(x), labels)


def test_config_checks_the_choice():
    assert TrainConfig(fusion_weighting="margin").fusion_weighting == "margin"
    with pytest.raises(ConfigError, match="fusion_weighting"):
        TrainConfig(fusion_weighting="auto")
