"""The paper's baselines on the same networks (spec section 1.4), trained end to end.

Backprop (DT): the T blocks of NoProp-DT chained as
    z_0 ~ N(0, I),  z_t = (1 - alpha_t) z_{t-1} + alpha_t u_hat_t(z_{t-1}, x),  alpha_t = tanh(w_t)
and trained by cross-entropy of the linear head on z_T, through the whole chain. w_t starts at
atanh(0.5) (alpha_t = 0.5; the paper does not give the init).

Adjoint (CT): a neural ODE dz/dt = v(z, x, t) on t in [0, 1], v = logits @ W_Embed from the CT/FM
network, z_0 ~ N(0, I), a linear head on z_1, cross-entropy, gradients by the adjoint sensitivity
method (Chen et al. 2018) through torchdiffeq with fixed Euler steps (paper: 1000). Dropout is off in
this network: the adjoint pass recomputes the field backwards in time, and fresh dropout masks there
would make the gradient wrong.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .embedding import ClassEmbedding
from .nets import DTBlock, TimeNet
from .ode import integrate


class Backprop(nn.Module):
    def __init__(self, image_shape, embedding: ClassEmbedding, T: int = 10, dropout: float = 0.2):
        super().__init__()
        self.T = T
        self.num_classes = embedding.num_classes
        self.embed = embedding
        proto = embedding.kind == "prototype"
        self.blocks = nn.ModuleList(DTBlock(image_shape, embedding.dim, self.num_classes, prototype=proto,
                                            dropout=dropout) for _ in range(T))
        self.w = nn.Parameter(torch.full((T,), math.atanh(0.5)))
        self.head = nn.Linear(embedding.dim, self.num_classes)

    def final_latent(self, x, noise: bool = True, generator=None, **_) -> torch.Tensor:
        z = self.embed.noise(len(x), generator, x.device)
        alpha = torch.tanh(self.w)
        for t, block in enumerate(self.blocks):
            u_hat = self.embed.mix(block(z, x))
            z = (1 - alpha[t]) * z + alpha[t] * u_hat
        return z

    def loss(self, x, y) -> dict[str, torch.Tensor]:
        ce = F.cross_entropy(self.head(self.final_latent(x)), y)
        return {"loss": ce, "ce": ce}

    @torch.no_grad()
    def predict(self, x, noise: bool = True, generator=None, **kw) -> torch.Tensor:
        return self.head(self.final_latent(x, generator=generator)).argmax(-1)


class _Field(nn.Module):
    """dz/dt = net(z, x, t) @ W_Embed for one batch of images (torchdiffeq's func signature)."""

    def __init__(self, net: TimeNet, embed: ClassEmbedding, x: torch.Tensor):
        super().__init__()
        self.net, self.embed, self.x = net, embed, x

    def forward(self, t, z):
        return self.embed.span(self.net(z, self.x, t.reshape(())))


class Adjoint(nn.Module):
    def __init__(self, image_shape, embedding: ClassEmbedding, steps: int = 1000):
        super().__init__()
        self.steps = steps
        self.num_classes = embedding.num_classes
        self.embed = embedding
        self.net = TimeNet(image_shape, embedding.dim, self.num_classes,
                           prototype=embedding.kind == "prototype", dropout=0.0)
        self.head = nn.Linear(embedding.dim, self.num_classes)

    def loss(self, x, y) -> dict[str, torch.Tensor]:
        try:
            from torchdiffeq import odeint_adjoint
        except ImportError as e:  # an optional dependency: say how to get it
            raise ImportError("the adjoint baseline needs torchdiffeq: pip install 'noprop[adjoint]'") from e
        z0 = self.embed.noise(len(x), device=x.device)
        field = _Field(self.net, self.embed, x)
        ts = torch.tensor([0.0, 1.0], device=x.device)
        z1 = odeint_adjoint(field, z0, ts, method="euler", options={"step_size": 1.0 / self.steps},
                            adjoint_params=tuple(field.parameters()))[-1]
        ce = F.cross_entropy(self.head(z1), y)
        return {"loss": ce, "ce": ce}

    @torch.no_grad()
    def final_latent(self, x, noise: bool = True, generator=None, steps: int | None = None, **_):
        z0 = self.embed.noise(len(x), generator, x.device)
        field = _Field(self.net, self.embed, x)
        return integrate(field, z0, steps or self.steps, "euler")

    @torch.no_grad()
    def predict(self, x, noise: bool = True, generator=None, **kw) -> torch.Tensor:
        return self.head(self.final_latent(x, generator=generator, **kw)).argmax(-1)
