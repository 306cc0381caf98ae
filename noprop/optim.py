"""The optimizers and the learning-rate schedule of a run (Table 3), apart from the training loop
(trainer.py) that steps them: bench.py builds the same optimizers for its timings."""

from __future__ import annotations

import math

import torch

from .config import Config


def make_optimizer(params, cfg: Config) -> torch.optim.Optimizer:
    """Table 3's optimizer (AdamW or Adam), or SGD with momentum 0.9 (not in the paper; its updates
    are linear in the gradient, where Adam's first step is its sign, so runs that differ by float
    rounding stay close: the data-parallel equivalence tests use it). fused: one kernel for the
    whole update, about 10x faster than the per-tensor loop on CPU (3.2 ms -> 0.3 ms a DT block
    step); see match_layout for what it asks of a resume."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, fused=True)
    opt_class = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return opt_class(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)


def match_layout(opt: torch.optim.Optimizer) -> None:
    """Give each loaded optimizer state tensor its parameter's memory layout. A checkpoint stores
    tensors contiguous, but a channels_last conv weight's moments must be channels_last too: the
    fused Adam kernel walks parameter, gradient and moments as flat memory, so a layout mismatch
    would pair the wrong elements (found by the resume-equals-uninterrupted test)."""
    for p, st in opt.state.items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


def lr_at(cfg: Config, progress: float) -> float:
    """The learning rate after `progress` epochs (a float) of cfg.epochs."""
    if cfg.lr_schedule == "cosine":
        return cfg.lr * (1 + math.cos(math.pi * min(progress / max(cfg.epochs, 1), 1.0))) / 2
    return cfg.lr
