"""Process-group plumbing: the torchrun environment, and the one-process no-ops."""

from __future__ import annotations

import pytest
import torch

from asymfuse.cloud.distributed import (
    DistEnv,
    all_gather_objects,
    barrier,
    broadcast_object,
    dist_env_from_environ,
    launched_by_torchrun,
    process_group,
)
from asymfuse.edge.errors import ConfigError


def test_environment_of_torchrun_and_of_a_plain_run():
    assert dist_env_from_environ({}) == DistEnv() and not launched_by_torchrun({})
    env = dist_env_from_environ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.local_rank, env.is_main, env.distributed) == (3, 4, 1, False, True)
    assert launched_by_torchrun({"RANK": "0", "WORLD_SIZE": "1"})  # torchrun with one process
    with pytest.raises(ConfigError, match="launch with torchrun"):
        dist_env_from_environ({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="inconsistent"):
        dist_env_from_environ({"RANK": "2", "WORLD_SIZE": "2"})


def test_one_process_needs_no_group_and_a_bad_timeout_is_refused():
    env = DistEnv()
    with process_group(env, torch.device("cpu"), timeout_s=5) as got:
        assert got is env
        barrier(env, timeout_s=1)
        assert broadcast_object({"a": 1}, env) == {"a": 1} and all_gather_objects(7, env) == [7]
    with pytest.raises(ConfigError, match="timeout must be > 0"), process_group(env, torch.device("cpu"), timeout_s=0):
        pass
