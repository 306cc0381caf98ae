"""The paper's networks (v1 Fig. 6 = v2 Fig. 5), read from the rendered figure (spec section 3).

Unpadded ("valid") 3x3 convolutions and floor max-pooling: that is what reproduces the paper's
parameter counts (Table 5): one MNIST DT block with one-hot embeddings has 919,946 parameters.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import noise


class Dropout(nn.Module):
    """Inverted dropout (same function as nn.Dropout) with cheaper random numbers on CPU.

    Profiling a DT block step on CPU showed a third of its time in ``bernoulli_``, which draws one
    32-bit number per element. Here one 64-bit draw gives four 16-bit lanes: an element is dropped
    when its lane falls below round(p * 2^16), so the drop probability is p quantised to a multiple
    of 1/65536 (0.2 -> 13107/65536 = 0.199997). The mask is laid out with the input's strides
    (channels_last stays channels_last) and comes from torch's default generator, so
    ``torch.manual_seed`` makes it reproducible as before (and noise.sharded makes a data-parallel
    rank draw its slice of the global batch's mask). On CUDA nn.functional.dropout is used."""

    LANES = 1 << 16

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(p * self.LANES) - self.LANES // 2  # in int16 units: lanes are signed

    def keep_mask(self, x: torch.Tensor) -> torch.Tensor:
        lanes = noise.int16_lanes(x.numel(), x.device)
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()
        return lanes.as_strided(x.shape, x.stride()) >= self.threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or torch.compiler.is_compiling():  # inductor fuses its own mask
            return nn.functional.dropout(x, self.p, True)
        # one multiply by a scaled mask in x's dtype: a third faster than x * bool_mask * scale,
        # which converts the mask in both passes (profiled on CPU, fp32 and bf16)
        return x * self.keep_mask(x).to(x.dtype).mul_(1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvPath(nn.Module):
    """conv32 -> ReLU -> pool -> drop -> conv64 -> ReLU -> drop -> conv128 -> ReLU -> pool -> drop
    -> flatten -> FC256 -> (BatchNorm | ReLU).

    The DT block ends in BatchNorm with no ReLU after it; the CT/FM net has no BatchNorm and
    ends in ReLU (``batchnorm=False``).

    Each max-pool runs before its ReLU: ReLU is monotone, so max(relu(x)) = relu(max(x)) and the
    function and its gradient are the paper's, but the ReLU and its backward then touch a quarter
    of the elements (+13-16% block-samples/s on CPU, fp32 and bf16). The module indices, hence the
    state_dict keys, are those of the paper's order (a test checks both)."""

    def __init__(self, image_shape: tuple[int, int, int], width: int = 256, dropout: float = 0.2,
                 batchnorm: bool = True):
        super().__init__()
        c, h, w = image_shape
        self.image_shape = tuple(image_shape)
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 3), nn.MaxPool2d(2), nn.ReLU(), Dropout(dropout),
            nn.Conv2d(32, 64, 3), nn.ReLU(), Dropout(dropout),
            nn.Conv2d(64, 128, 3), nn.MaxPool2d(2), nn.ReLU(), Dropout(dropout),
            nn.Flatten(),
        )
        # valid conv: -2; pool: floor(/2).  MNIST: 28->26->13->11->9->4 (flatten 2048);
        # CIFAR: 32->30->15->13->11->5 (flatten 3200)
        h = ((h - 2) // 2 - 4) // 2
        w = ((w - 2) // 2 - 4) // 2
        if h < 1 or w < 1:
            raise ValueError(f"images of shape {image_shape} are too small for the paper's conv path "
                             "(at least 14x14 is needed)")
        self.flat_features = 128 * h * w
        self.fc = nn.Linear(self.flat_features, width)
        self.out = nn.BatchNorm1d(width) if batchnorm else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.fc(self.features(x)))


class LabelPath(nn.Module):
    """DT label path: h = ReLU(BN(FC(z))); g = BN(FC(ReLU(BN(FC(h))))); return h + g
    (a skip connection, no activation after the add)."""

    def __init__(self, dim: int, width: int = 256):
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(dim, width), nn.BatchNorm1d(width), nn.ReLU())
        self.res = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width), nn.ReLU(),
                                 nn.Linear(width, width), nn.BatchNorm1d(width))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.inp(z)
        return h + self.res(h)


class DTBlock(nn.Module):
    """One NoProp-DT block u_hat_theta_t(z_{t-1}, x): returns the m class logits. The caller
    forms u_hat = softmax(logits) @ W_Embed (a convex combination of class embeddings).

    With a prototype embedding (d = C*H*W) the noisy label is reshaped to image shape and
    processed by a conv path of its own ("the noised label and the image are processed in the
    same way"; separate weights, which is what matches the paper's 1.40M for MNIST)."""

    def __init__(self, image_shape: tuple[int, int, int], embed_dim: int, num_classes: int,
                 prototype: bool = False, dropout: float = 0.2):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.prototype = prototype
        self.image_path = ConvPath(image_shape, dropout=dropout)
        if prototype:
            c, h, w = image_shape
            if embed_dim != c * h * w:
                raise ValueError(f"a prototype block needs embed_dim = C*H*W = {c * h * w}, got {embed_dim}")
            self.label_path = ConvPath(image_shape, dropout=dropout)
        else:
            self.label_path = LabelPath(embed_dim)
        self.fuse = nn.Sequential(
            nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU(),
            nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, z: torch.Tensor, x: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """features: image_path(x), where the caller has it (inference shares it across runs)."""
        if features is None:
            features = self.image_path(x)
        if self.prototype:
            z = z.reshape(len(z), *self.image_shape)
            if x.is_contiguous(memory_format=torch.channels_last):
                z = z.contiguous(memory_format=torch.channels_last)
        return self.fuse(torch.cat([features, self.label_path(z)], dim=1))


def sinusoidal_embedding(t: torch.Tensor, dim: int = 64, scale: float = 1000.0) -> torch.Tensor:
    """The 64-dim positional embedding of t ("pos emb (64)" in Fig. 6): sin and cos of scale*t at
    dim/2 geometric frequencies, as in Transformer/DDPM. t in [0, 1] is scaled by 1000 (our choice;
    the paper does not say) so that the fastest frequency resolves the 1000-step grid."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = scale * t.float()[:, None] * freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class TimeNet(nn.Module):
    """The NoProp-CT / NoProp-FM network u_hat_theta(z_t, x, t) (Fig. 6, right); no BatchNorm.

    image: ConvPath ending FC256 -> ReLU;  label: FC256 -> ReLU (or a conv path for prototypes);
    time: pos emb (64) -> FC256 -> ReLU;  fusion: concat (768) -> FC256 -> ReLU -> FC128 -> ReLU
    -> FC(m) logits. One MNIST one-hot network has 867,722 parameters (the paper's 0.87M)."""

    def __init__(self, image_shape: tuple[int, int, int], embed_dim: int, num_classes: int,
                 prototype: bool = False, dropout: float = 0.2, time_dim: int = 64):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.prototype = prototype
        self.time_dim = time_dim
        self.image_path = ConvPath(image_shape, dropout=dropout, batchnorm=False)
        if prototype:
            c, h, w = image_shape
            if embed_dim != c * h * w:
                raise ValueError(f"a prototype network needs embed_dim = C*H*W = {c * h * w}, got {embed_dim}")
            self.label_path = ConvPath(image_shape, dropout=dropout, batchnorm=False)
        else:
            self.label_path = nn.Sequential(nn.Linear(embed_dim, 256), nn.ReLU())
        self.time_path = nn.Sequential(nn.Linear(time_dim, 256), nn.ReLU())
        self.fuse = nn.Sequential(nn.Linear(768, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                                  nn.Linear(128, num_classes))

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """The image path alone. It does not depend on z or t, so inference computes it once per
        image and reuses it at every one of the N steps (in eval mode dropout is off, so this is
        exact); N = 1000 then costs 1000 small MLP evaluations instead of 1000 conv passes."""
        return self.image_path(x)

    def forward(self, z: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
                features: torch.Tensor | None = None) -> torch.Tensor:
        """features: image_features(x), when the caller has it already."""
        if features is None:
            features = self.image_path(x)
        if self.prototype:
            z = z.reshape(len(z), *self.image_shape)
            if x is not None and x.is_contiguous(memory_format=torch.channels_last):
                z = z.contiguous(memory_format=torch.channels_last)
        if t.ndim == 0:
            t = t.expand(len(z))
        temb = sinusoidal_embedding(t, self.time_dim).to(features.dtype)
        return self.fuse(torch.cat([features, self.label_path(z), self.time_path(temb)], dim=1))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
