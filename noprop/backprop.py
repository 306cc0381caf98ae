"""The paper's backprop baseline (spec section 1.4): the T blocks of NoProp-DT chained and trained
end to end on the same network.

    z_0 ~ N(0, I),   z_t = (1 - alpha_t) z_{t-1} + alpha_t u_hat_t(z_{t-1}, x),   alpha_t = tanh(w_t)

trained by cross-entropy of the linear head on z_T, through the whole chain. w_t starts at atanh(0.5)
(alpha_t = 0.5; the paper does not give the init).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .embedding import ClassEmbedding
from .method import ChainStep, Method, register_method
from .nets import DTBlock


@register_method
class Backprop(Method):
    name = "backprop"
    display_name = "Backprop"
    listing_order = 4
    defaults = {"optimizer": "adamw"}

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
        # The head starts as the class-embedding decoder, logit_c = <z, u_c> (the identity for
        # one-hot), not at random. With a random head the blocks, trained only through it, sent
        # whole classes to one softmax vertex of z_T, where nothing separates them again: 70.7%
        # on MNIST after 7 epochs. The paper does not give this initialisation.
        with torch.no_grad():
            self.head.weight.copy_(embedding.weight.detach())
            self.head.bias.zero_()

    @classmethod
    def from_config(cls, cfg, image_shape, num_classes, embedding):
        return cls(image_shape, embedding, T=cfg.T)

    def chain(self, x, noise: bool = True, generator=None, steps=None, solver=None) -> Iterator[ChainStep]:
        z = self.embed.noise(len(x), generator, x.device)
        alpha = torch.tanh(self.w)
        for t, block in enumerate(self.blocks, 1):
            logits = block(z, x)
            z = (1 - alpha[t - 1]) * z + alpha[t - 1] * self.embed.mix(logits)
            yield ChainStep(t, z, logits)

    def final_latent(self, x, noise: bool = True, generator=None, steps=None, solver=None) -> torch.Tensor:
        """z_T; with gradient when called in training (the chain is back-propagated end to end)."""
        z = None
        for step in self.chain(x, noise, generator):
            z = step.z
        return z

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(z)

    def loss(self, x, y, blocks=None) -> dict[str, torch.Tensor]:
        ce = F.cross_entropy(self.classify(self.final_latent(x)), y)
        return {"loss": ce, "ce": ce}
