"""NoProp-FM (spec section 1.3): flow matching from noise to the label embedding.

    path (Eq. 10)        z_t = t u_y + (1 - t) z_0 + sigma eps,   z_0 ~ N(0, I), t ~ U(0, 1) per example
    target field         u_y - z_0
    network output       v = logits @ W_Embed ("unrestricted weights": any direction in the span)
    loss (Eq. 11)        ||v(z_t, x, t) - (u_y - z_0)||^2
    anchor (Eq. 12-13)   with a learned W_Embed: + CE(head(z~_1), y), z~_1 = z_t + (1 - t) v,
                         which keeps the embeddings from collapsing. One-hot (fixed): no CE term.
    inference            integrate dz/dt = v from z_0 ~ N(0, I), t: 0 -> 1 (Euler or Heun, N steps);
                         predict the class embedding nearest to z_1 (the head is not used).

sigma, not given in the paper, defaults to 0 (``--fm-sigma``): the straight path whose target
field u_y - z_0 is exact.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .. import noise as training_noise
from ..embedding import ClassEmbedding
from ..method import ChainStep, Loss, register_method
from ..ode import SOLVERS, integrate
from ..options import Option
from .time_conditioned import TimeConditioned


@register_method
class NoPropFM(TimeConditioned):
    name = "fm"
    display_name = "NoProp-FM"
    listing_order = 3
    defaults = {"optimizer": "adam"}
    options = {
        "steps": Option(int, 1000, "inference steps of the flow (the paper: 1000)", check=lambda v: v >= 1,
                        rule="must be an integer >= 1"),
        "solver": Option(str, "euler", "the flow's ODE solver", choices=SOLVERS),
        "fm_sigma": Option(float, 0.0, "sigma of the path's noise (Eq. 10; not given in the paper)",
                           check=lambda v: v >= 0, rule="must be >= 0"),
    }

    def __init__(self, image_shape, embedding: ClassEmbedding, steps: int = 1000, solver: str = "euler",
                 sigma: float = 0.0, dropout: float = 0.2):
        super().__init__(image_shape, embedding, steps, solver, dropout)
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma = sigma
        # the anchor CE's head (Eq. 12-13) exists only with a learned W_Embed: with a fixed one
        # the paper has no CE term, and a head nothing trains would only be dead weight
        self.head = nn.Linear(embedding.dim, self.num_classes) if embedding.trainable else None

    @classmethod
    def from_config(cls, cfg, image_shape, num_classes, embedding):
        return cls(image_shape, embedding, steps=cfg.steps, solver=cfg.solver, sigma=cfg.fm_sigma)

    def is_legacy_key(self, key: str) -> bool:
        """Checkpoints before version 0.2 held the head with a fixed embedding too, untrained."""
        return key.startswith("head.") and self.head is None

    def velocity(self, z, x, t, features=None) -> torch.Tensor:
        return self.embed.span(self.net(z, x, t, features))

    def loss(self, x: torch.Tensor, y: torch.Tensor, blocks=None) -> Loss:
        u = self.embed(y)
        z0 = training_noise.randn_like(u)
        t = training_noise.rand(len(y), x.device)
        z_t = t[:, None] * u + (1 - t[:, None]) * z0
        if self.sigma > 0:
            z_t = z_t + self.sigma * training_noise.randn_like(u)
        v = self.velocity(z_t, x, t)
        fm = (v - (u - z0)).pow(2).sum(-1).mean()
        if self.head is None:
            return Loss(fm, {"fm": fm})
        z1_tilde = z_t + (1 - t[:, None]) * v
        ce = F.cross_entropy(self.head(z1_tilde), y)
        return Loss(fm + ce, {"fm": fm, "ce": ce})

    @torch.no_grad()
    def chain(self, x, noise: bool = True, generator=None, steps: int | None = None,
              solver: str | None = None, features: torch.Tensor | None = None) -> Iterator[ChainStep]:
        """z at each step of the flow from z_0 ~ N(0, I). The flow is deterministic given z_0:
        `noise` has nothing further to drop."""
        z0 = self.embed.sample_z0(len(x), generator, x.device)
        feats = self.image_features(x) if features is None else features  # once per image, every step
        flow = integrate(lambda t, z: self.velocity(z, x, t, feats), z0, steps or self.steps,
                         solver or self.solver, trajectory=True)
        for k, z in enumerate(flow, 1):
            yield ChainStep(k, z)

    def classify(self, z_1: torch.Tensor) -> torch.Tensor:
        """The prediction is the class embedding nearest to z_1 (Euclidean; the head is not used at
        test time): scores -||z_1 - u_c||^2 / 2, whose argmax is that class."""
        return -0.5 * torch.cdist(z_1.float(), self.embed.weight.float()).pow(2)
