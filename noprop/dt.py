"""NoProp-DT (spec section 1.1): T blocks, each trained on its own to denoise a noisy label
embedding, conditioned on the image. No gradient crosses from one block to another.

    training input    z_{t-1} ~ q(z_{t-1} | y) = N(sqrt(ab_{t-1}) u_y, (1 - ab_{t-1}) I)   (Eq. 5-6)
    block output      u_hat_t = softmax(block_t(z_{t-1}, x)) @ W_Embed
    per-block loss    L_t = CE(head(z_T), y) + KL(q(z_0|y) || N(0,I))
                            + (T/2) eta (SNR(t) - SNR(t-1)) ||u_hat_t - u_y||^2               (Eq. 61)
                      with z_T ~ q(z_T | y): the CE term trains only the head and W_Embed.
    inference         z_0 ~ N(0, I);  z_t = a_t u_hat_t(z_{t-1}, x) + b_t z_{t-1} + sqrt(c_t) eps  (Eq. 3)
                      y_hat = argmax head(z_T)                                                   (Eq. 14)

Choices the paper leaves open, made here (and listed in the README):
- u_y is *not* stop-gradient in the L2 term, and all samples are reparameterised, so a learned
  W_Embed gets the exact gradient of Eq. 8.
- The posterior head (Eq. 15-16) uses sigma = 1 unless told otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .device import randn
from .embedding import ClassEmbedding
from .nets import DTBlock
from .schedule import CosineSchedule, kl_to_standard_normal, q_sample, validate_alpha_bar

HEADS = ("linear", "posterior")


class NoPropDT(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], embedding: ClassEmbedding, T: int = 10,
                 eta: float = 0.1, head: str = "linear", posterior_sigma: float = 1.0,
                 schedule: CosineSchedule | None = None, dropout: float = 0.2):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
        if eta <= 0:
            raise ValueError(f"eta must be > 0, got {eta}")
        schedule = schedule or CosineSchedule(T)
        if schedule.T != T:
            raise ValueError(f"the schedule has T = {schedule.T} but the model T = {T}")
        validate_alpha_bar(schedule.alpha_bar)
        self.T, self.eta, self.head_kind, self.posterior_sigma = T, eta, head, posterior_sigma
        self.num_classes = embedding.num_classes
        self.embed = embedding
        prototype = embedding.kind == "prototype"
        self.blocks = nn.ModuleList(
            DTBlock(image_shape, embedding.dim, self.num_classes, prototype=prototype, dropout=dropout)
            for _ in range(T))
        self.head = nn.Linear(embedding.dim, self.num_classes)  # f_theta_out of Eq. 14
        a, b, c = schedule.posterior_coefficients()
        # float32 copies of the schedule for the forward pass (computed in float64 above)
        self.register_buffer("alpha_bar", schedule.alpha_bar.float())
        self.register_buffer("coef_a", a.float())
        self.register_buffer("coef_b", b.float())
        self.register_buffer("coef_c", c.float())
        # (T/2) * eta * (SNR(t) - SNR(t-1)), index t-1: the weight of block t's L2 term (Eq. 8/61)
        self.register_buffer("l2_weight", (T / 2 * eta * schedule.snr_delta).float())

    # --- pieces of the model -----------------------------------------------------------------
    def u_hat(self, t: int, z: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Block t (1-based): logits and u_hat = softmax(logits) @ W_Embed."""
        logits = self.blocks[t - 1](z, x)
        return logits, self.embed.mix(logits)

    def classify(self, z_T: torch.Tensor) -> torch.Tensor:
        """Logits of p_hat_theta_out(y | z_T): linear + softmax (Eq. 14), or the 'posterior'
        head (Eq. 15-16): y~ = softmax(f(z_T)) @ W, logit_c = -||y~ - u_c||^2 / (2 sigma^2)."""
        logits = self.head(z_T)
        if self.head_kind == "linear":
            return logits
        y_tilde = logits.softmax(-1) @ self.embed.weight
        return -torch.cdist(y_tilde, self.embed.weight).pow(2) / (2 * self.posterior_sigma ** 2)

    # --- the loss of Eq. 8 / Eq. 61 ------------------------------------------------------------
    def shared_loss(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """CE on z_T ~ q(z_T|y) and KL(q(z_0|y) || N(0,I)), batch means. These train only the
        head and a learned W_Embed."""
        u = self.embed(y)
        z_T = q_sample(u, self.alpha_bar[-1])
        ce = F.cross_entropy(self.classify(z_T), y)
        kl = kl_to_standard_normal(u, self.alpha_bar[0]).mean()
        return ce, kl

    def denoise_loss(self, t: int, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Unweighted ||u_hat_t(z_{t-1}, x) - u_y||^2, batch mean, with z_{t-1} ~ q(z_{t-1}|y)."""
        u = self.embed(y)
        z_prev = q_sample(u, self.alpha_bar[t - 1])
        _, u_hat = self.u_hat(t, z_prev, x)
        return (u_hat - u).pow(2).sum(-1).mean()

    def block_loss(self, t: int, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """L_t of Eq. 61 for block t (1-based), with its parts."""
        ce, kl = self.shared_loss(y)
        l2 = self.denoise_loss(t, x, y)
        return {"loss": ce + kl + self.l2_weight[t - 1] * l2, "ce": ce, "kl": kl, "l2": l2}

    # --- inference (never sees a label) ----------------------------------------------------------
    @torch.no_grad()
    def chain(self, x: torch.Tensor, noise: bool = True, generator: torch.Generator | None = None):
        """Run Eq. 3 from z_0 ~ N(0, I). Yields (t, z_t, block logits) for t = 1..T.
        noise=False drops the sqrt(c_t) eps term (a deterministic option beside the paper's rule)."""
        z = self.embed.noise(len(x), generator, x.device)
        for t in range(1, self.T + 1):
            logits, u_hat = self.u_hat(t, z, x)
            z = self.coef_a[t - 1] * u_hat + self.coef_b[t - 1] * z
            if noise:
                eps = randn(z.shape, generator, x.device)
                z = z + self.coef_c[t - 1].sqrt() * eps
            yield t, z, logits

    @torch.no_grad()
    def predict(self, x: torch.Tensor, noise: bool = True,
                generator: torch.Generator | None = None) -> torch.Tensor:
        for _, z, _ in self.chain(x, noise, generator):
            pass
        return self.classify(z).argmax(-1)
