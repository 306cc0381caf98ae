"""Honest evaluation: inference sees only images; every number is a mean over inference runs.

Protocol (paper, Table 1): accuracy is averaged over seeds x inference runs and reported as
mean +- standard error. An inference run differs from another only in its noise (z_0 and the
per-step eps), drawn from a generator seeded by the run index.

Three inference rules, all reported side by side by ``rules_accuracy``:
- ``stochastic``: the paper's rule (Eq. 3 with its sqrt(c_t) eps; the ODE from a random z_0 for FM);
- ``no-noise``: the same chain without the eps term (deterministic given z_0);
- ``ensemble-K``: K stochastic chains per image, the class probabilities softmax(classify(z)) averaged.
"""

from __future__ import annotations

import math

import torch

from . import device
from .data import Split
from .method import Method


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


def default_autocast(model: Method) -> torch.dtype | None:
    """Inference in the precision the run trained in (bf16 autocast where it trained so)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    dev = next(model.parameters()).device
    return device.eval_dtype(device.resolve_precision(cfg.precision, dev))


def batches_of_images(x: torch.Tensor, batch_size: int, channels_last: bool, dev):
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev)
        yield xb.contiguous(memory_format=torch.channels_last) if channels_last else xb


@torch.no_grad()
def predict_proba(model: Method, images: torch.Tensor | Split, noise: bool = True, seed: int = 0,
                  ensemble: int = 1, batch_size: int | None = None, channels_last: bool | None = None,
                  autocast_dtype="auto", steps: int | None = None, solver: str | None = None) -> torch.Tensor:
    """Class probabilities for every image, averaged over `ensemble` chains per image. Takes images
    only: labels never enter."""
    if ensemble < 1:
        raise ValueError(f"ensemble must be >= 1, got {ensemble}")
    x = images.x if isinstance(images, Split) else images
    cfg = getattr(model, "config", None)
    batch_size = batch_size or (cfg.eval_batch_size if cfg else 1000)
    channels_last = (cfg.channels_last if cfg else False) if channels_last is None else channels_last
    dtype = default_autocast(model) if autocast_dtype == "auto" else autocast_dtype
    model.eval()
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)  # on the CPU: the same noise on every device
    out = []
    for xb in batches_of_images(x, batch_size, channels_last, dev):
        total = 0
        for _ in range(ensemble):
            with torch.autocast(dev.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                logits = model.predict_logits(xb, noise=noise, generator=gen, steps=steps, solver=solver)
            total = total + logits.float().softmax(-1)
        out.append((total / ensemble).cpu())
    return torch.cat(out)


def predict(model: Method, images: torch.Tensor | Split, noise: bool = True, seed: int = 0, **kw) -> torch.Tensor:
    """Predicted labels (see predict_proba for the options). With ensemble=1 this is the argmax of
    one chain's scores: the method's own predict()."""
    return predict_proba(model, images, noise, seed, **kw).argmax(-1)


def accuracy_runs(model: Method, split: Split, runs: int = 5, noise: bool = True, seed: int = 0,
                  **kw) -> list[float]:
    """Accuracy (%) of each of `runs` inference runs (seeds seed, seed+1, ...)."""
    return [100.0 * (predict(model, split, noise, seed + r, **kw) == split.y).float().mean().item()
            for r in range(runs)]


RULES = ("stochastic", "no-noise", "ensemble")


def rules_accuracy(model: Method, split: Split, runs: int = 5, ensemble: int = 10, seed: int = 0,
                   rules=RULES, **kw) -> dict[str, dict]:
    """Every inference rule on one split: {rule: {"runs": [...], "mean": m, "se": s}}; the
    ensemble rule's key names its K (e.g. "ensemble-10"). Methods without noise (cnn) give the same
    number under every rule."""
    out = {}
    for rule in rules:
        if rule == "ensemble":
            accs = accuracy_runs(model, split, runs, True, seed, ensemble=ensemble, **kw)
            key = f"ensemble-{ensemble}"
        else:
            accs = accuracy_runs(model, split, runs, rule == "stochastic", seed, **kw)
            key = rule
        m, se = mean_se(accs)
        out[key] = {"runs": accs, "mean": m, "se": se}
    return out
