"""Shard plan: disjoint, covering, balanced and deterministic for many (items, shard size, ranks)."""

from __future__ import annotations

import itertools

import pytest

from asymfuse.cloud.features.shard_plan import plan_shards, shard_bounds, split_blocks
from asymfuse.edge.errors import ConfigError


@pytest.mark.parametrize("n,shard_size,world", [
    (n, s, w) for n, s, w in itertools.product((1, 2, 7, 64, 255, 256, 257, 1000), (1, 3, 256), (1, 2, 3, 8))
    if w <= n])
def test_every_item_goes_to_exactly_one_rank(n, shard_size, world):
    plan = plan_shards(n, shard_size, world)
    rows = [plan.items_of(r) for r in range(world)]
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(n))                                # disjoint and covering
    assert all(r == sorted(r) for r in rows)
    counts = [len(a) for a in plan.assignment]
    assert max(counts) - min(counts) <= 1                         # shards balanced to within one
    assert plan == plan_shards(n, shard_size, world)              # deterministic
    # the shards are those of a single-process store: full shards, the last may be smaller
    assert [b - a for a, b in plan.bounds[:-1]] == [shard_size] * (len(plan.bounds) - 1)
    assert plan.bounds[-1][1] == n


def test_contiguous_blocks_in_rank_order():
    assert split_blocks(list(range(10)), 3) == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert split_blocks([1, 5], 4) == [[1], [5], [], []]          # more ranks than shards: some idle
    assert plan_shards(10, 4, 2).assignment == ((0, 1), (2,))


def test_resume_splits_only_the_shards_left():
    plan = plan_shards(100, 10, 3, todo=[9, 2, 5, 7])
    assert plan.assignment == ((2, 5), (7,), (9,))
    assert sorted(i for r in range(3) for i in plan.items_of(r)) == [
        i for s in (2, 5, 7, 9) for i in range(10 * s, 10 * s + 10)]
    assert plan_shards(100, 10, 3, todo=[]).assignment == ((), (), ())


def test_bad_plans_are_explained():
    with pytest.raises(ConfigError, match="8 processes for only 3 items; launch at most 3"):
        plan_shards(3, 256, 8)
    for bad in ((0, 4, 1), (5, 0, 1), (5, 4, 0), (5, True, 1)):
        with pytest.raises(ConfigError, match="positive int"):
            plan_shards(*bad)
    with pytest.raises(ConfigError, match="distinct shard numbers"):
        plan_shards(10, 4, 2, todo=[0, 0])
    with pytest.raises(ConfigError, match="distinct shard numbers"):
        plan_shards(10, 4, 2, todo=[3])
    assert shard_bounds(5, 2) == [(0, 2), (2, 4), (4, 5)]
