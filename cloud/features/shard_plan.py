"""Which rank extracts which store shard: pure functions of the item count, shard size and world size.

A job of ``N`` items is cut into shards of ``shard_size`` items in row order (the last may be
smaller), exactly the shards a single-process run writes. Shards are the unit of work and of
resume; the shards still to do are split over the ranks in contiguous blocks whose sizes differ by
at most one, so every rank computes the same plan without talking to the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from asymfuse.edge.errors import ConfigError


def shard_bounds(num_items: int, shard_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]``: the row range of each shard, in order; they tile ``[0, num_items)``.

    Raises:
        ConfigError: ``num_items < 1`` or ``shard_size < 1``.
    """
    for what, value in (("num_items", num_items), ("shard_size", shard_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{what} must be a positive int, got {value!r}")
    return [(start, min(start + shard_size, num_items)) for start in range(0, num_items, shard_size)]


def split_blocks(units: Sequence[int], world_size: int) -> list[list[int]]:
    """``units`` cut into ``world_size`` contiguous blocks, in order; block sizes differ by at most
    one and the larger blocks come first (rank ``r`` gets ``blocks[r]``, possibly empty).

    Raises:
        ConfigError: ``world_size < 1``.
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size must be a positive int, got {world_size!r}")
    base, extra = divmod(len(units), world_size)
    blocks, start = [], 0
    for rank in range(world_size):
        stop = start + base + (1 if rank < extra else 0)
        blocks.append(list(units[start:stop]))
        start = stop
    return blocks


@dataclass(frozen=True)
class ShardPlan:
    """The shards of a job and the ranks' share of them.

    ``bounds[s]`` is shard ``s``'s ``(start, stop)`` rows; ``assignment[r]`` lists the shards rank
    ``r`` extracts (ascending, disjoint across ranks, together exactly the ``todo`` shards).
    """

    num_items: int
    shard_size: int
    world_size: int
    bounds: tuple[tuple[int, int], ...]
    assignment: tuple[tuple[int, ...], ...]

    def items_of(self, rank: int) -> list[int]:
        """The rows rank ``rank`` extracts, ascending."""
        return [i for s in self.assignment[rank] for i in range(*self.bounds[s])]


def plan_shards(num_items: int, shard_size: int, world_size: int, *,
                todo: Sequence[int] | None = None) -> ShardPlan:
    """Split the shards ``todo`` (default: all) of an ``num_items``-item job over ``world_size`` ranks.

    Raises:
        ConfigError: non-positive sizes; more ranks than items; a ``todo`` shard out of range
            or repeated. (Fewer shards than ranks is fine: the ranks without one only wait.)
    """
    bounds = shard_bounds(num_items, shard_size)
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ConfigError(f"world_size must be a positive int, got {world_size!r}")
    if world_size > num_items:
        raise ConfigError(f"{world_size} processes for only {num_items} items; launch at most {num_items} "
                          "(torchrun --nnodes x --nproc_per_node), or extract this small set without torchrun")
    todo = list(range(len(bounds))) if todo is None else sorted(todo)
    if len(set(todo)) != len(todo) or any(not 0 <= s < len(bounds) for s in todo):
        raise ConfigError(f"shards to do {todo} must be distinct shard numbers in [0, {len(bounds)})")
    blocks = split_blocks(todo, world_size)
    return ShardPlan(num_items=num_items, shard_size=shard_size, world_size=world_size, bounds=tuple(bounds),
                     assignment=tuple(tuple(b) for b in blocks))
