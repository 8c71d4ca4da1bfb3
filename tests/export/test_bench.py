"""``asymfuse.export.bench``: batch-1 latency of runners, torch modules and callables, thread control."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch import nn

from asymfuse.edge.errors import ConfigError, ShapeError
from asymfuse.edge.spec import ModelSpec
from asymfuse.export.bench import time_runner, time_threads


def tiny_onnx(path) -> ModelSpec:
    """A real ONNX file (global average pool of an 8x8 image) carrying a ModelSpec, as exporters write it."""
    import onnx
    from onnx import TensorProto, helper

    spec = ModelSpec(arch="tiny", embed_dim=3, input_size=(8, 8), embedding_space_id="es-test")
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["embedding"])], "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    entry = model.metadata_props.add()
    entry.key, entry.value = "asymfuse.model_spec", spec.to_json()
    onnx.save(model, str(path))
    return spec


class ThreadProbe(nn.Module):
    """Records torch's intra-op thread count and grad mode at every call."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.seen: list[tuple[int, bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.get_num_threads(), torch.is_grad_enabled(), self.training))
        return self.lin(x.mean(dim=(2, 3)))


def test_real_onnx_runner_one_fresh_runner_per_thread_count(tmp_path):
    from asymfuse.edge.runtimes.ort import load_runner

    spec = tiny_onnx(tmp_path / "tiny.onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    made = []

    def make(n):
        runner = load_runner(tmp_path / "tiny.onnx", num_threads=n)
        made.append((n, runner))
        return runner

    stats = time_threads(make, x, threads=(1, 2), warmup=2, runs=7)
    assert list(stats) == [1, 2] and [n for n, _ in made] == [1, 2]
    assert [r.session.get_session_options().intra_op_num_threads for _, r in made] == [1, 2]
    assert made[0][1].model_spec == spec
    np.testing.assert_allclose(made[0][1].run(x), x.mean(axis=(2, 3)), rtol=1e-5)  # it really ran the model
    for s in stats.values():
        assert 0 < s["min_ms"] <= s["p50_ms"] <= s["p90_ms"] and s["runs"] == 7 and s["warmup"] == 2
    with pytest.raises(ConfigError, match="create the runner with its thread count"):
        time_runner(made[0][1], x, num_threads=2)


def test_torch_module_runs_eval_no_grad_with_the_thread_count_and_restores_state():
    probe = ThreadProbe().train()
    before = torch.get_num_threads()
    x = np.ones((1, 3, 4, 4), np.float32)
    stats = time_threads(lambda n: probe, x, threads=(1, 2), warmup=1, runs=3, torch_threads=True)
    assert set(stats) == {1, 2}
    assert [s[0] for s in probe.seen] == [1] * 4 + [2] * 4  # warm-up + timed calls, per thread count
    assert not any(grad or training for _, grad, training in probe.seen)
    assert probe.training and torch.get_num_threads() == before
    probe.seen.clear()
    time_runner(probe, x, warmup=0, runs=2)  # no num_threads: torch's current setting is kept
    assert [s[0] for s in probe.seen] == [before, before]


def test_callable_timing_measures_wall_time():
    calls = []

    def slow(x):
        calls.append(x.shape)
        time.sleep(0.004)

    stats = time_runner(slow, np.zeros((1, 3, 2, 2), np.float32), warmup=1, runs=5)
    assert len(calls) == 6 and calls[0] == (1, 3, 2, 2)
    assert stats["p50_ms"] >= 4.0 and stats["p90_ms"] >= stats["p50_ms"]


@pytest.mark.parametrize("kwargs", [{"runs": 0}, {"warmup": -1}, {"runs": 2.5}, {"num_threads": 0}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ConfigError):
        time_runner(ThreadProbe(), np.zeros((1, 3, 2, 2), np.float32), **kwargs)


def test_bad_inputs_are_refused():
    with pytest.raises(ShapeError):
        time_runner(lambda x: x, np.zeros((3, 2, 2), np.float32))
    with pytest.raises(ShapeError):
        time_runner(lambda x: x, np.full((1, 3, 2, 2), np.nan, np.float32))
    with pytest.raises(ConfigError, match="cannot time"):
        time_runner(42, np.zeros((1, 3, 2, 2), np.float32))
    with pytest.raises(ConfigError, match="torch modules only"):
        time_runner(lambda x: x, np.zeros((1, 3, 2, 2), np.float32), num_threads=1)
    with pytest.raises(ConfigError):
        time_threads(lambda n: (lambda x: x), np.zeros((1, 3, 2, 2), np.float32), threads=())
