"""The ordinary network, as a reference (not in the paper): one NoProp-DT block's image path with an
MLP head, trained end to end with cross-entropy, with the same optimizer and budget as the methods it
stands beside.

    logits = FC(m)(ReLU(BN(FC128(ReLU(BN(FC256(image_path(x))))))))

It is the DT block with its label path taken away (the fusion MLP then reads the 256 image features
alone), so it answers the plain question: how does NoProp compare with the same convolutional
network trained the ordinary way? It has no latent and no noise: its "final latent" is its logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..embedding import ClassEmbedding
from ..errors import ConfigError
from ..method import Loss, Method, register_method
from ..nets import ConvPath


@register_method
class CNN(Method):
    name = "cnn"
    display_name = "CNN (not in the paper)"
    listing_order = 6
    in_paper = False
    defaults = {"optimizer": "adamw"}

    def __init__(self, image_shape, num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.num_classes = num_classes
        self.image_path = ConvPath(image_shape, dropout=dropout)
        self.mlp = nn.Sequential(nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(),
                                 nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(),
                                 nn.Linear(128, num_classes))

    @classmethod
    def from_config(cls, cfg, image_shape, num_classes, embedding: ClassEmbedding):
        return cls(image_shape, num_classes)

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.embedding != "one-hot":
            raise ConfigError(f"--embedding: the cnn reference method has no label embedding; leave it at "
                              f"one-hot (got {cfg.embedding!r})")

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """The logits themselves: with no noise, every inference run of a batch is the same."""
        return self.mlp(self.image_path(x))

    def final_latent(self, x, noise: bool = True, generator=None, steps=None, solver=None,
                     features=None) -> torch.Tensor:
        return self.image_features(x) if features is None else features

    def classify(self, logits: torch.Tensor) -> torch.Tensor:
        return logits

    def loss(self, x, y, blocks=None) -> Loss:
        ce = F.cross_entropy(self.final_latent(x), y)
        return Loss(ce, {"ce": ce})
