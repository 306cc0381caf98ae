"""Class embeddings W_Embed in R^{m x d}; u_y is row y (spec section 2).

Three kinds, as in the paper:
- ``one-hot``:   W = I_m, fixed (d = m). Only with this kind are the blocks fully independent.
- ``learned``:   d = 20 by default, trainable, initialised orthogonal when m <= d, else random normal.
- ``prototype``: d = C*H*W, trainable, each row initialised to the training image of its class
                 with the smallest median Euclidean distance to the other images of that class.
                 Distances are taken on the normalised images the network sees (the paper does
                 not say which pixels; this keeps u_y on the same scale as the noise).
"""

from __future__ import annotations

import torch
from torch import nn

from .device import randn

KINDS = ("one-hot", "learned", "prototype")


class ClassEmbedding(nn.Module):
    def __init__(self, kind: str, num_classes: int, dim: int | None = None,
                 init: torch.Tensor | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown embedding {kind!r}; choose one of {', '.join(KINDS)}")
        self.kind = kind
        self.num_classes = num_classes
        if kind == "one-hot":
            self.register_buffer("weight", torch.eye(num_classes))
        elif kind == "learned":
            dim = 20 if dim is None else dim
            w = torch.empty(num_classes, dim)
            if num_classes <= dim:
                nn.init.orthogonal_(w)  # orthonormal rows
            else:
                nn.init.normal_(w, std=dim ** -0.5)
            self.weight = nn.Parameter(w)
        else:
            if dim is None:
                raise ValueError("a prototype embedding needs dim = C*H*W of the images")
            w = torch.randn(num_classes, dim) if init is None else init.reshape(num_classes, dim).clone()
            self.weight = nn.Parameter(w.float())
        self.dim = self.weight.shape[1]

    @property
    def trainable(self) -> bool:
        return isinstance(self.weight, nn.Parameter)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """u_y for a batch of integer labels."""
        return self.weight[y]

    def sample_z0(self, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        """z_0 ~ N(0, I) in the embedding space: where every method's inference starts."""
        return randn((n, self.dim), generator, device or self.weight.device, self.weight.dtype)

    def mix(self, logits: torch.Tensor) -> torch.Tensor:
        """softmax(logits) @ W: the DT/CT/backprop block output u_hat, a convex combination of
        class embeddings. Computed in W's dtype (fp32 under bf16 autocast)."""
        return logits.to(self.weight.dtype).softmax(-1) @ self.weight

    def span(self, logits: torch.Tensor) -> torch.Tensor:
        """logits @ W: the FM / adjoint field, unrestricted within the span of the embeddings."""
        return logits.to(self.weight.dtype) @ self.weight

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the class embedding nearest (Euclidean) to each row of z."""
        return torch.cdist(z.float(), self.weight.float()).argmin(-1)


@torch.no_grad()
def prototype_init(images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   chunk: int = 2048) -> torch.Tensor:
    """For each class, the image with the smallest median distance to all other images of that
    class (the paper's prototype initialisation). Returns [m, C*H*W]."""
    flat = images.reshape(len(images), -1).float()
    rows = []
    for c in range(num_classes):
        members = flat[labels == c]
        if len(members) == 0:
            raise ValueError(f"class {c} has no training images: cannot initialise its prototype")
        n = len(members)
        # lower median of the n-1 distances to the *other* images: the self-distance is set to
        # +inf so it sorts last, and the k-th smallest with k = (n-2)//2 + 1 is that median.
        k = max((n - 2) // 2 + 1, 1)
        medians = []
        for start in range(0, n, chunk):
            d = torch.cdist(members[start:start + chunk], members)
            idx = torch.arange(start, min(start + chunk, n))
            d[idx - start, idx] = float("inf")
            medians.append(d.kthvalue(k, dim=1).values)
        rows.append(members[torch.cat(medians).argmin()])
    return torch.stack(rows)
