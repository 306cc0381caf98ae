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

from ..embedding import ClassEmbedding
from ..method import ChainStep, Loss, Method, register_method
from ..nets import DTBlock
from ..options import Option


@register_method
class Backprop(Method):
    name = "backprop"
    display_name = "Backprop"
    listing_order = 4
    defaults = {"optimizer": "adamw"}
    options = {
        "T": Option(int, 10, "number of chained blocks", check=lambda v: v >= 1, rule="must be an integer >= 1"),
        "head_init": Option(str, "decoder", "the head's start: the class-embedding decoder, or random",
                            choices=("decoder", "random")),
        "logit_scale": Option(float, 10.0, "start of the head's learnable logit scale", check=lambda v: v > 0,
                              rule="must be > 0"),
    }

    def __init__(self, image_shape, embedding: ClassEmbedding, T: int = 10, dropout: float = 0.2,
                 head_init: str = "decoder", logit_scale: float = 10.0):
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
        # on MNIST after 7 epochs. And the decoder's logits are multiplied by a learnable scale
        # exp(log_scale), started at `logit_scale`: z_T is a mixture of softmax outputs, so <z, u_c>
        # spans about 1 and the cross-entropy could not fall (1.52 after an epoch on Fashion-MNIST)
        # before Adam's lr-sized steps had grown the head's weights tenfold. The paper gives
        # neither; both are chosen on validation (docs/choices.md).
        if head_init not in ("decoder", "random"):
            raise ValueError(f"unknown head init {head_init!r}; choose decoder or random")
        if head_init == "decoder":
            with torch.no_grad():
                self.head.weight.copy_(embedding.weight.detach())
                self.head.bias.zero_()
        if logit_scale <= 0:
            raise ValueError(f"logit_scale must be > 0, got {logit_scale}")
        self.log_scale = nn.Parameter(torch.tensor(math.log(logit_scale)))

    @classmethod
    def from_config(cls, cfg, image_shape, num_classes, embedding):
        return cls(image_shape, embedding, T=cfg.T, head_init=cfg.head_init, logit_scale=cfg.logit_scale)

    @classmethod
    def network_blocks(cls, cfg) -> int:
        """Its T chained blocks, all updated by every step (it trains as one block)."""
        return cfg.T

    def image_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each block's image path on x (it does not depend on z): shared by every inference run."""
        return [block.image_path(x) for block in self.blocks]

    def chain(self, x, noise: bool = True, generator=None, steps=None, solver=None,
              features=None) -> Iterator[ChainStep]:
        z = self.embed.sample_z0(len(x), generator, x.device)
        alpha = torch.tanh(self.w)
        for t, block in enumerate(self.blocks, 1):
            logits = block(z, x, None if features is None else features[t - 1])
            z = (1 - alpha[t - 1]) * z + alpha[t - 1] * self.embed.mix(logits)
            yield ChainStep(t, z, logits)

    def final_latent(self, x, noise: bool = True, generator=None, steps=None, solver=None,
                     features=None) -> torch.Tensor:
        """z_T; with gradient when called in training (the chain is back-propagated end to end)."""
        z = None
        for step in self.chain(x, noise, generator, features=features):
            z = step.z
        return z

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        return self.log_scale.exp() * self.head(z)

    def loss(self, x, y, blocks=None) -> Loss:
        ce = F.cross_entropy(self.classify(self.final_latent(x)), y)
        return Loss(ce, {"ce": ce})
