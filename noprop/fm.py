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

import torch
import torch.nn.functional as F
from torch import nn

from .embedding import ClassEmbedding
from .nets import TimeNet
from .ode import SOLVERS, integrate


class NoPropFM(nn.Module):
    def __init__(self, image_shape, embedding: ClassEmbedding, steps: int = 1000, solver: str = "euler",
                 sigma: float = 0.0, dropout: float = 0.2):
        super().__init__()
        if solver not in SOLVERS:
            raise ValueError(f"unknown FM solver {solver!r}; choose one of {', '.join(SOLVERS)}")
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.steps, self.solver, self.sigma = steps, solver, sigma
        self.num_classes = embedding.num_classes
        self.embed = embedding
        self.net = TimeNet(image_shape, embedding.dim, self.num_classes,
                           prototype=embedding.kind == "prototype", dropout=dropout)
        self.head = nn.Linear(embedding.dim, self.num_classes)  # used only by the anchor CE

    def velocity(self, z, x, t, features=None) -> torch.Tensor:
        return self.embed.span(self.net(z, x, t, features))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        u = self.embed(y)
        z0 = torch.randn_like(u)
        t = torch.rand(len(y), device=x.device)
        z_t = t[:, None] * u + (1 - t[:, None]) * z0
        if self.sigma > 0:
            z_t = z_t + self.sigma * torch.randn_like(u)
        v = self.velocity(z_t, x, t)
        fm = (v - (u - z0)).pow(2).sum(-1).mean()
        out = {"loss": fm, "fm": fm}
        if self.embed.trainable:
            z1_tilde = z_t + (1 - t[:, None]) * v
            ce = F.cross_entropy(self.head(z1_tilde), y)
            out.update(loss=fm + ce, ce=ce)
        return out

    @torch.no_grad()
    def final_latent(self, x, noise: bool = True, generator=None, steps: int | None = None,
                     solver: str | None = None) -> torch.Tensor:
        """z_1 from z_0 ~ N(0, I). The flow is deterministic given z_0; `noise` is accepted for a
        common interface and has nothing further to drop."""
        z0 = self.embed.noise(len(x), generator, x.device)
        feats = self.net.image_features(x)  # once per image, reused at every step
        return integrate(lambda t, z: self.velocity(z, x, t, feats), z0, steps or self.steps, solver or self.solver)

    @torch.no_grad()
    def predict(self, x, noise: bool = True, generator=None, **kw) -> torch.Tensor:
        return self.embed.nearest(self.final_latent(x, noise, generator, **kw))
