"""Honest evaluation: inference sees only images; every number is a mean over inference runs.

Protocol (paper, Table 1): accuracy is averaged over seeds x inference runs and reported as
mean +- standard error. An inference run differs from another only in its noise (z_0 and the
per-step eps), drawn from a generator seeded by the run index.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .data import Split
from .device import randn
from .dt import NoPropDT
from .schedule import q_sample


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); 0 for a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    m = sum(values) / n
    if n == 1:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def _eval_batches(split: Split, batch_size: int, channels_last: bool, device=None):
    for i in range(0, len(split), batch_size):
        x = split.x[i:i + batch_size].to(device or "cpu")
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x


@torch.no_grad()
def predict(model: nn.Module, split: Split, noise: bool = True, seed: int = 0,
            batch_size: int = 1000, channels_last: bool = True, autocast_dtype=None,
            **predict_kw) -> torch.Tensor:
    """Predicted labels for every image of a split. Takes the images only: labels never enter.
    predict_kw (steps, solver) go to the model's own predict (CT, FM, adjoint)."""
    model.eval()
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)  # on the CPU: the same noise on every device
    preds = []
    for x in _eval_batches(split, batch_size, channels_last, dev):
        with torch.autocast(dev.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            preds.append(model.predict(x, noise=noise, generator=gen, **predict_kw).cpu())
    return torch.cat(preds)


def accuracy_runs(model: nn.Module, split: Split, runs: int = 5, noise: bool = True, seed: int = 0,
                  **kw) -> list[float]:
    """Accuracy (%) of each of `runs` inference runs (seeds seed, seed+1, ...)."""
    return [100.0 * (predict(model, split, noise, seed + r, **kw) == split.y).float().mean().item()
            for r in range(runs)]


@torch.no_grad()
def block_diagnostics(model: NoPropDT, split: Split, seed: int = 0, batch_size: int = 1000,
                      channels_last: bool = True) -> dict[str, list[float]]:
    """Three views of a trained chain, in % accuracy per step t = 1..T:

    - ``block``: block t alone, fed z_{t-1} ~ q(z_{t-1} | y) at its own noise level (this builds
      its input from the label, as in training: a diagnostic, not an inference);
    - ``chain``: argmax of block t's logits when the chain runs from z_0 ~ N(0, I) on images only;
    - ``head``: the output head applied to z_t along that chain (trained for z_T; the last entry
      is the model's prediction).
    """
    model.eval()
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    T = model.T
    block, chain, head = torch.zeros(T), torch.zeros(T), torch.zeros(T)
    for i, x in enumerate(_eval_batches(split, batch_size, channels_last, dev)):
        y = split.y[i * batch_size:(i + 1) * batch_size].to(dev)
        u = model.embed(y)
        for t in range(1, T + 1):
            z_prev = q_sample(u, model.alpha_bar[t - 1], randn(u.shape, gen, dev))
            logits, _ = model.u_hat(t, z_prev, x)
            block[t - 1] += (logits.argmax(-1) == y).sum().cpu()
        for t, z, logits in model.chain(x, noise=True, generator=gen):
            chain[t - 1] += (logits.argmax(-1) == y).sum().cpu()
            head[t - 1] += (model.classify(z).argmax(-1) == y).sum().cpu()
    n = len(split)
    return {k: (100.0 * v / n).tolist() for k, v in (("block", block), ("chain", chain), ("head", head))}
