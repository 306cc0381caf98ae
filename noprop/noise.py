"""Where training draws its random numbers (q-samples, t ~ U(0, 1), z_0, dropout masks).

In a data-parallel run the global batch of B images is split into D shards of B/D, one per rank.
Drawn naively, each rank's noise would differ from what one process training on the whole batch
draws, so results would depend on the number of workers. Under ``sharded(index, count)`` (which the
trainer enters in deterministic mode) every draw is made for the whole global batch, from the same
seeded generator on every rank of the group, and each rank keeps its own slice: rank i's examples
then get exactly the noise one process gives examples i*B/D..(i+1)*B/D, and 2 ranks with batch B
train like 1 rank with batch 2B. Outside that context (count 1) these are plain torch draws.

The batch dimension must be the first (outermost in memory) dimension of every draw, as it is for
activations in both NCHW and channels_last layouts.
"""

from __future__ import annotations

import contextlib

import torch

_shard = [0, 1]  # (index, count) of this rank's slice of the global batch


@contextlib.contextmanager
def sharded(index: int, count: int):
    old = list(_shard)
    _shard[:] = [index, count]
    try:
        yield
    finally:
        _shard[:] = old


def _slice(full: torch.Tensor, local: int) -> torch.Tensor:
    i = _shard[0]
    return full[i * local:(i + 1) * local]


def randn(shape, device=None, dtype=None) -> torch.Tensor:
    """N(0, I) of the given (local) shape, first dimension the batch."""
    shape = tuple(shape)
    count = _shard[1]
    if count == 1:
        return torch.randn(shape, device=device, dtype=dtype)
    return _slice(torch.randn((shape[0] * count, *shape[1:]), device=device, dtype=dtype), shape[0])


def randn_like(t: torch.Tensor) -> torch.Tensor:
    return randn(t.shape, t.device, t.dtype)


def rand(n: int, device=None) -> torch.Tensor:
    """U(0, 1) per example."""
    count = _shard[1]
    if count == 1:
        return torch.rand(n, device=device)
    return _slice(torch.rand(n * count, device=device), n)


def int16_lanes(n: int, device=None) -> torch.Tensor:
    """n uniformly random int16 values (four per 64-bit draw), for dropout masks of n elements."""
    count = _shard[1]
    words = torch.empty((n * count + 3) // 4, dtype=torch.int64, device=device).random_(-2 ** 63, None)
    return _slice(words.view(torch.int16)[:n * count], n)
