"""What NoProp-CT, NoProp-FM and the adjoint baseline share: one time-conditioned network (TimeNet,
Fig. 6) that reads z, the image and t, and an inference that runs `steps` steps of one of the
method's solvers (its "solver" option) from z_0 ~ N(0, I)."""

from __future__ import annotations

import torch

from ..embedding import ClassEmbedding
from ..method import Method
from ..nets import TimeNet


class TimeConditioned(Method):
    """The base of the one-network methods conditioned on t; each declares its "steps" and "solver"
    options (the solver's choices and default) and adds its own head, schedule or options in its
    constructor."""

    def __init__(self, image_shape, embedding: ClassEmbedding, steps: int = 1000, solver: str | None = None,
                 dropout: float = 0.2):
        super().__init__()
        declared = self.options["solver"]
        solver = solver or declared.default
        if solver not in declared.choices:
            raise ValueError(f"unknown {self.display_name} solver {solver!r}; choose one of "
                             f"{', '.join(declared.choices)}")
        self.steps, self.solver = steps, solver
        self.num_classes = embedding.num_classes
        self.embed = embedding
        self.net = TimeNet(image_shape, embedding.dim, self.num_classes,
                           prototype=embedding.kind == "prototype", dropout=dropout)

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """The net's image path on x (it depends on neither z nor t): shared by every run and step."""
        return self.net.image_features(x)
