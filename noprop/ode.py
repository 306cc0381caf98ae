"""Fixed-step ODE solvers on t in [0, 1] for inference (NoProp-CT's probability-flow ODE and
NoProp-FM's flow). Training-time adjoint solves use torchdiffeq instead (see backprop.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

SOLVERS = ("euler", "heun")


def integrate(f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z0: torch.Tensor, steps: int,
              solver: str = "euler", t0: float = 0.0, t1: float = 1.0, trajectory: bool = False):
    """z(t1) for dz/dt = f(t, z), z(t0) = z0, in `steps` equal steps (trajectory=True: an iterator
    over z after each step instead).

    euler: z += h f(t, z)                                   (first order, 1 evaluation per step)
    heun:  k1 = f(t, z); k2 = f(t + h, z + h k1); z += h (k1 + k2) / 2   (second order, 2 evaluations)
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    it = _steps(f, z0, steps, solver, t0, t1)
    return it if trajectory else last(it)


def last(iterator: Iterable):
    """The last item of an iterator, holding only one item at a time."""
    item = None
    for item in iterator:  # noqa: B007 (the loop keeps the last one)
        pass
    return item


def _steps(f, z0: torch.Tensor, steps: int, solver: str, t0: float, t1: float) -> Iterator[torch.Tensor]:
    h = (t1 - t0) / steps
    z = z0
    for k in range(steps):
        t = torch.tensor(t0 + k * h, device=z0.device)
        k1 = f(t, z)
        if solver == "euler":
            z = z + h * k1
        else:
            k2 = f(t + h, z + h * k1)
            z = z + h / 2 * (k1 + k2)
        yield z
