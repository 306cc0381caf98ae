"""NoProp-CT (spec section 1.2): one time-conditioned network, a learned noise schedule, t in [0, 1]
with t = 1 the clean end.

    loss (Eq. 9 / Alg. 2)  CE(head(z_1), y) + KL(q(z_0|y) || N(0,I))
                           + (eta / 2) SNR'(t) ||u_hat(z_t, x, t) - u_y||^2,   t ~ U(0, 1) per example,
                           z_t ~ q(z_t | y) = N(sqrt(ab(t)) u_y, (1 - ab(t)) I)
    u_hat                  softmax(logits) @ W_Embed, as in DT

Inference over N steps (paper: 1000), three samplers (``solver``):
- ``stochastic`` (default): the DT update of Eq. 3 on the grid t_k = k/N, with a_k, b_k, c_k from the
  same formulas and alpha_{k-1} = ab(t_{k-1}) / ab(t_k), u_hat evaluated at (z_{t_{k-1}}, x, t_{k-1}).
  It is the paper's "simulate the diffusion process" read literally, the rule the model was trained
  to serve (the DT posterior), so it is the default.
- ``euler`` / ``heun``: the probability-flow (DDIM) ODE of the same marginals,
      dz/dt = (d sqrt(ab)/dt) u_hat + (d sqrt(1 - ab)/dt) eps_hat,
      eps_hat = (z - sqrt(ab) u_hat) / sqrt(1 - ab),
  deterministic given z_0.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .. import noise as training_noise
from ..embedding import ClassEmbedding
from ..method import ChainStep, Loss, register_method
from ..ode import integrate
from ..options import Option
from ..schedule import LearnedSchedule, kl_to_standard_normal, q_sample
from .time_conditioned import TimeConditioned

CT_SOLVERS = ("stochastic", "euler", "heun")


@register_method
class NoPropCT(TimeConditioned):
    name = "ct"
    display_name = "NoProp-CT"
    listing_order = 2
    defaults = {"optimizer": "adam"}
    options = {
        "eta": Option(float, 1.0, "weight of the L2 term (Eq. 9; the paper's 1)", check=lambda v: v > 0,
                      rule="must be > 0"),
        "steps": Option(int, 1000, "inference steps (the paper: 1000)", check=lambda v: v >= 1,
                        rule="must be an integer >= 1"),
        "solver": Option(str, "stochastic", "inference: Eq. 3 on the grid (stochastic), or the "
                         "probability-flow ODE (euler, heun)", choices=CT_SOLVERS),
    }

    def __init__(self, image_shape, embedding: ClassEmbedding, eta: float = 1.0, steps: int = 1000,
                 solver: str = "stochastic", schedule: LearnedSchedule | None = None, dropout: float = 0.2):
        super().__init__(image_shape, embedding, steps, solver, dropout)
        self.eta = eta
        self.schedule = schedule or LearnedSchedule()
        self.head = nn.Linear(embedding.dim, self.num_classes)

    @classmethod
    def from_config(cls, cfg, image_shape, num_classes, embedding):
        return cls(image_shape, embedding, eta=cfg.eta, steps=cfg.steps, solver=cfg.solver)

    def u_hat(self, z, x, t, features=None):
        logits = self.net(z, x, t, features)
        return logits, self.embed.mix(logits)

    def classify(self, z_1: torch.Tensor) -> torch.Tensor:
        return self.head(z_1)

    def loss(self, x: torch.Tensor, y: torch.Tensor, blocks=None) -> Loss:
        """The per-minibatch loss of Alg. 2."""
        u = self.embed(y)
        one = torch.ones(1, device=x.device)
        ab_ends = self.schedule.alpha_bar(torch.cat([0 * one, one]))
        z_1 = q_sample(u, ab_ends[1])
        ce = F.cross_entropy(self.classify(z_1), y)
        kl = kl_to_standard_normal(u, ab_ends[0]).mean()
        t = training_noise.rand(len(y), x.device)
        z_t = q_sample(u, self.schedule.alpha_bar(t)[:, None])
        _, u_hat = self.u_hat(z_t, x, t)
        sq = (u_hat - u).pow(2).sum(-1)
        l2 = (self.schedule.snr_derivative(t) * sq).mean()
        return Loss(ce + kl + self.eta / 2 * l2, {"ce": ce, "kl": kl, "l2": sq.mean()})

    @torch.no_grad()
    def chain(self, x: torch.Tensor, noise: bool = True, generator=None, steps: int | None = None,
              solver: str | None = None, features: torch.Tensor | None = None) -> Iterator[ChainStep]:
        """z at each of the N steps from z_0 ~ N(0, I) (the logits are those of the step's u_hat)."""
        steps, solver = steps or self.steps, solver or self.solver
        z = self.embed.sample_z0(len(x), generator, x.device)
        feats = self.image_features(x) if features is None else features  # once per image, every step
        if solver == "stochastic":
            grid = self.schedule.discretize(steps)
            for k in range(1, steps + 1):
                t = torch.tensor((k - 1) / steps, device=x.device)
                logits, u_hat = self.u_hat(z, x, t, feats)
                z = grid.step(k, u_hat, z, noise, generator)  # Eq. 3 on the grid t_k = k / N
                yield ChainStep(k, z, logits)
            return

        def velocity(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            tt = t.reshape(1).to(x.device)
            with torch.enable_grad():  # d ab / dt of the learned schedule, by autograd in t
                tt = tt.detach().requires_grad_(True)
                ab_t = self.schedule.alpha_bar(tt)
                (dab,) = torch.autograd.grad(ab_t.sum(), tt)
            ab_t, dab = ab_t.detach().clamp(1e-6, 1 - 1e-6), dab.detach()
            _, u_hat = self.u_hat(z, x, t, feats)
            eps_hat = (z - ab_t.sqrt() * u_hat) / (1 - ab_t).sqrt()
            return dab / (2 * ab_t.sqrt()) * u_hat - dab / (2 * (1 - ab_t).sqrt()) * eps_hat

        for k, z_k in enumerate(integrate(velocity, z, steps, solver, trajectory=True), 1):
            yield ChainStep(k, z_k)
