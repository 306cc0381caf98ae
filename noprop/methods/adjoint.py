"""The paper's adjoint baseline (spec section 1.4): a neural ODE dz/dt = v(z, x, t) on t in [0, 1],
v = logits @ W_Embed from the CT/FM network, z_0 ~ N(0, I), a linear head on z_1, cross-entropy,
gradients by the adjoint sensitivity method (Chen et al. 2018) through torchdiffeq with fixed Euler
steps (paper: 1000).

The image path does not depend on z or t, so it runs once per batch: its output (the image features)
enters the ODE as a constant, and torchdiffeq returns the adjoint gradient for it beside the field's
parameters (it is passed in adjoint_params), from where ordinary autograd carries it into the conv
path. This gives the same gradient as recomputing the conv path at every step, at the cost of the
small MLP per step, and lets the network keep the paper's dropout (one mask per batch, fixed over
the solve: a mask drawn afresh at each step would differ between the forward and the backward solve
and spoil the gradient).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..embedding import ClassEmbedding
from ..method import ChainStep, Loss, register_method
from ..nets import TimeNet
from ..ode import integrate
from ..options import Option
from .time_conditioned import TimeConditioned


class _Field(nn.Module):
    """dz/dt = net(z, features, t) @ W_Embed for one batch's image features (torchdiffeq's func
    signature)."""

    def __init__(self, net: TimeNet, embed: ClassEmbedding, features: torch.Tensor):
        super().__init__()
        self.net, self.embed, self.features = net, embed, features

    def forward(self, t, z):
        # .to(z.dtype): the adjoint's backward solve runs outside any autocast region, where
        # bf16 features from a bf16 forward would meet fp32 weights
        return self.embed.span(self.net(z, None, t.reshape(()), self.features.to(z.dtype)))

    def ode_parameters(self) -> tuple[torch.Tensor, ...]:
        """What the field depends on besides z: every parameter outside the image path, and the
        image features (their gradient flows on into the image path by ordinary autograd)."""
        image = {id(p) for p in self.net.image_path.parameters()}
        return tuple(p for p in self.parameters() if id(p) not in image) + (self.features,)


@register_method
class Adjoint(TimeConditioned):
    name = "adjoint"
    display_name = "Adjoint"
    listing_order = 5
    defaults = {"optimizer": "adamw"}
    options = {
        "steps": Option(int, 1000, "Euler steps of the ODE, in training and inference (the paper: 1000)",
                        check=lambda v: v >= 1, rule="must be an integer >= 1"),
        "solver": Option(str, "euler", "the ODE's solver (fixed Euler steps, as trained)", choices=("euler",)),
    }

    def __init__(self, image_shape, embedding: ClassEmbedding, steps: int = 1000, dropout: float = 0.2):
        super().__init__(image_shape, embedding, steps, dropout=dropout)
        self.head = nn.Linear(embedding.dim, self.num_classes)

    @classmethod
    def from_config(cls, cfg, image_shape, num_classes, embedding):
        return cls(image_shape, embedding, steps=cfg.steps)

    def loss(self, x, y, blocks=None) -> Loss:
        try:
            from torchdiffeq import odeint_adjoint
        except ImportError as e:  # an optional dependency: say how to get it
            raise ImportError("the adjoint baseline needs torchdiffeq: pip install 'noprop[adjoint]'") from e
        z0 = self.embed.sample_z0(len(x), device=x.device)
        field = _Field(self.net, self.embed, self.net.image_features(x))
        ts = torch.tensor([0.0, 1.0], device=x.device)
        z1 = odeint_adjoint(field, z0, ts, method="euler", options={"step_size": 1.0 / self.steps},
                            adjoint_params=field.ode_parameters())[-1]
        ce = F.cross_entropy(self.head(z1), y)
        return Loss(ce, {"ce": ce})

    @torch.no_grad()
    def chain(self, x, noise: bool = True, generator=None, steps: int | None = None,
              solver: str | None = None, features: torch.Tensor | None = None) -> Iterator[ChainStep]:
        z0 = self.embed.sample_z0(len(x), generator, x.device)
        field = _Field(self.net, self.embed, self.image_features(x) if features is None else features)
        for k, z in enumerate(integrate(field, z0, steps or self.steps, self.solver, trajectory=True), 1):
            yield ChainStep(k, z)

    def classify(self, z_1: torch.Tensor) -> torch.Tensor:
        return self.head(z_1)
