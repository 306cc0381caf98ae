"""An epoch's passes over the data, as the trainer (trainer.py) runs them: which blocks each pass
trains, the RNG state each starts from, and each one's share of a time budget.

Every block pass starts from RNG state derived from (seed, epoch, block) alone, so a resumed run
draws the same data order and noise as an uninterrupted one, and a block trains identically on
whichever process owns it.

A time budget (cfg.minutes) in paper order is divided among the epoch's block passes: each pass may
take the budget left over the passes left, so a budget shorter than an epoch still trains every
block, in Algorithm 1's order, on its share of the images. In a parallel run rank 0's clock decides
for every rank.
"""

from __future__ import annotations

import time

import torch

from .config import Config
from .parallel import Dist, gather, owned_blocks

BUDGET_CHECK_EVERY = 8  # steps between the ranks' checks of a pass's share of a time budget


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2 ** 63)


def block_seed(seed: int, epoch: int, block: int) -> int:
    return (epoch_seed(seed, epoch) * 1_009 + block) % (2 ** 63)


def plan(order: str, num_blocks: int, d: Dist, owned: list[int]) -> list[list[int] | None]:
    """The epoch's passes over the data, as the block(s) this rank trains in each (None: idle
    while other groups train). Paper order: one pass per block (per round of blocks across the
    groups); otherwise one pass training every owned block (all) or a random one (random)."""
    if order == "paper":
        rounds = len(owned_blocks(num_blocks, d.groups, 0))
        return [[owned[i]] if i < len(owned) else None for i in range(rounds)]
    return [owned]


def seed_pass(cfg: Config, d: Dist, num_blocks: int, epoch: int, blocks: list[int] | None) -> torch.Generator:
    """Seed the pass's noise and return its data-order generator. Paper order: from (seed, epoch,
    block); other orders: from (seed, epoch), with noise of its own per block group. Data shards
    of a group draw the same noise in deterministic mode (each keeps its slice) and their own
    otherwise."""
    if cfg.order == "paper":
        s = block_seed(cfg.seed, epoch, blocks[0] if blocks else 0)
        order_seed = s
    else:
        order_seed = epoch_seed(cfg.seed, epoch)
        s = block_seed(cfg.seed, epoch, num_blocks + 1 + d.group) if d.groups > 1 else order_seed
    if d.shards > 1 and not cfg.deterministic:
        s = (s * 7_919 + 1 + d.shard) % (2 ** 63)
    torch.manual_seed(s)
    return torch.Generator().manual_seed(order_seed)


class TimeBudget:
    """cfg.minutes from the moment it is made (None: no budget)."""

    def __init__(self, minutes: float | None, d: Dist):
        self.minutes, self.d, self.started = minutes, d, time.perf_counter()

    def pass_deadline(self, passes_left: int) -> float:
        """When the pass starting now must end: now plus its share of the budget left."""
        now = time.perf_counter()
        return now + max(0.0, self.started + 60 * self.minutes - now) / passes_left

    def past(self, deadline: float, step: int) -> bool:
        """Whether a pass's deadline is past, after at least one step of it. Ranks step together, so
        rank 0's clock decides for every rank, asked every BUDGET_CHECK_EVERY steps (a collective)."""
        if not self.d.active:
            return time.perf_counter() >= deadline
        if (step + 1) % BUDGET_CHECK_EVERY:
            return False
        return bool(gather(self.d, time.perf_counter() >= deadline)[0])

    def spent(self) -> bool:
        """Whether the time budget is spent; rank 0's clock decides for every rank."""
        if self.minutes is None:
            return False
        spent = time.perf_counter() - self.started >= 60 * self.minutes
        if self.d.active:
            spent = bool(gather(self.d, spent)[0])
        return spent
