"""How parallel training lays blocks and data shards over workers: pure functions, no processes
(the real multi-process runs are in test_parallel.py, marked slow)."""

import pytest

from noprop.parallel import choose_groups, owned_blocks


@pytest.mark.parametrize("T,world", [(10, 1), (10, 2), (10, 3), (10, 4), (4, 4), (7, 3)])
def test_owned_blocks_partition(T, world):
    parts = [owned_blocks(T, world, r) for r in range(world)]
    assert sum(parts, []) == list(range(1, T + 1))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert all(p == list(range(p[0], p[-1] + 1)) for p in parts)


@pytest.mark.parametrize("blocks,world,groups", [
    (10, 1, 1), (10, 2, 2), (10, 4, 2), (10, 5, 5), (10, 3, 1), (10, 8, 2), (4, 4, 4), (1, 4, 1), (1, 2, 1)])
def test_block_groups_chosen_for_balance_then_fewest_shards(blocks, world, groups):
    """NoProp-DT's 10 blocks on 4 workers: 2 groups x 2 shards (4 groups would leave two of them
    idle a third of the time); a one-network method (1 block): all data shards."""
    assert choose_groups(blocks, world) == groups
