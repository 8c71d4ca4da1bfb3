"""FLOP and parameter counting against hand formulas and a known published figure."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from asymfuse.cloud.models.flops import count_flops, count_params, query_net_cost
from asymfuse.edge.errors import ConfigError, UnknownNameError


def test_linear_matches_hand_formula():
    h, w, out = 5, 4, 7
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * h * w, out))
    # 2 FLOPs per multiply-add, bias not counted
    assert count_flops(model, input_size=(h, w), batch=2) == 2 * 2 * (3 * h * w) * out
    assert count_params(model) == 3 * h * w * out + out


@pytest.mark.parametrize("groups,stride,padding", [(1, 1, 1), (1, 2, 0), (3, 1, 1)])
def test_conv2d_matches_hand_formula(groups, stride, padding):
    cin, cout, k, size = 6, 9, 3, 11
    model = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, groups=groups)
    out_side = (size + 2 * padding - k) // stride + 1
    expected = 2 * out_side * out_side * cout * (cin // groups) * k * k
    assert count_flops(model, input_size=size, channels=cin) == expected
    assert count_flops(model, input_size=size, channels=cin, batch=3) == 3 * expected
    assert count_params(model) == cout * (cin // groups) * k * k + cout


def test_training_flag_is_restored_and_grads_untouched():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    count_flops(model, input_size=8)
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    count_flops(model, input_size=8)
    assert not model.training


def test_mobilenet_v2_is_in_the_published_ballpark():
    # torchvision MobileNetV2: 0.30 GMACs at 224 (classifier included); the query net swaps the
    # classifier for GeM + a 1280 -> 512 whitening, so ~0.60 GFLOPs.
    cost = query_net_cost("mobilenet_v2", size=224)
    assert 0.55 < cost["gflops"] < 0.65
    assert 2.5 < cost["params_m"] < 3.2
    larger = query_net_cost("mobilenet_v2", size=448)  # every stride-2 map exactly doubles its side
    assert larger["gflops"] == pytest.approx(4 * cost["gflops"], rel=0.01)  # FLOPs scale with pixels
    assert larger["params_m"] == cost["params_m"]


def test_bad_arguments():
    model = nn.Conv2d(3, 3, 1)
    for bad in (0, (4,), (4, 0), 2.5, True):
        with pytest.raises(ConfigError):
            count_flops(model, input_size=bad)
    with pytest.raises(ConfigError):
        count_flops(model, input_size=4, batch=0)
    with pytest.raises(UnknownNameError):
        query_net_cost("resnet9000", size=64)


def test_count_is_independent_of_weights():
    a, b = nn.Linear(8, 4), nn.Linear(8, 4)
    with torch.no_grad():
        b.weight.mul_(100)
    net_a, net_b = nn.Sequential(nn.Flatten(), a), nn.Sequential(nn.Flatten(), b)
    assert count_flops(net_a, input_size=(1, 8), channels=1) == count_flops(net_b, input_size=(1, 8), channels=1)
