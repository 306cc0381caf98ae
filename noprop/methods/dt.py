"""NoProp-DT (spec section 1.1): T blocks, each trained on its own to denoise a noisy label
embedding, conditioned on the image. No gradient crosses from one block to another.

    training input    z_{t-1} ~ q(z_{t-1} | y) = N(sqrt(ab_{t-1}) u_y, (1 - ab_{t-1}) I)   (Eq. 5-6)
    block output      u_hat_t = softmax(block_t(z_{t-1}, x)) @ W_Embed
    per-block loss    L_t = CE(head(z_T), y) + KL(q(z_0|y) || N(0,I))
                            + (T/2) eta (SNR(t) - SNR(t-1)) ||u_hat_t - u_y||^2               (Eq. 61)
                      with z_T ~ q(z_T | y): the CE term trains only the head and W_Embed.
    inference         z_0 ~ N(0, I);  z_t = a_t u_hat_t(z_{t-1}, x) + b_t z_{t-1} + sqrt(c_t) eps  (Eq. 3)
                      y_hat = argmax head(z_T)                                                   (Eq. 14)

Choices the paper leaves open, made here (and listed in docs/choices.md):
- u_y is *not* stop-gradient in the L2 term, and all samples are reparameterised, so a learned
  W_Embed gets the exact gradient of Eq. 8.
- The posterior head (Eq. 15-16) uses sigma = 1 unless told otherwise.
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
from ..schedule import CosineSchedule, DiscreteSchedule, kl_to_standard_normal, q_sample, validate_alpha_bar

HEADS = ("linear", "posterior")
HEAD_INITS = ("bayes", "random")


@register_method
class NoPropDT(Method):
    name = "dt"
    display_name = "NoProp-DT"
    listing_order = 1
    defaults = {"optimizer": "adamw"}
    options = {
        "T": Option(int, 10, "number of blocks, the steps of the chain (Eq. 3)", check=lambda v: v >= 1,
                    rule="must be an integer >= 1"),
        "eta": Option(float, 0.1, "weight of the blocks' L2 terms (Eq. 61; the paper's 0.1)",
                      check=lambda v: v > 0, rule="must be > 0"),
        "head": Option(str, "linear", "output head: linear (Eq. 14) or posterior (Eq. 15-16)", choices=HEADS),
        "posterior_sigma": Option(float, 1.0, "sigma of the posterior head (not given in the paper)",
                                  check=lambda v: v > 0, rule="must be > 0"),
        "head_init": Option(str, "bayes", "the head's start: the Bayes classifier of q(z_T|y), or random",
                            choices=HEAD_INITS),
        "schedule_eps": Option(float, 0.01, "the cosine schedule squeezed into [eps, 1 - eps] (schedule.py)",
                               check=lambda v: 0 < v < 0.5, rule="must be in (0, 0.5)"),
    }
    per_block_metrics = ("l2",)

    def __init__(self, image_shape: tuple[int, int, int], embedding: ClassEmbedding, T: int = 10,
                 eta: float = 0.1, head: str = "linear", posterior_sigma: float = 1.0,
                 schedule: DiscreteSchedule | None = None, dropout: float = 0.2, head_init: str = "bayes"):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
        if eta <= 0:
            raise ValueError(f"eta must be > 0, got {eta}")
        schedule = schedule or CosineSchedule(T)
        if schedule.T != T:
            raise ValueError(f"the schedule has T = {schedule.T} but the model T = {T}")
        validate_alpha_bar(schedule.alpha_bar)  # pitfall 1: refuse a reversed schedule however it was made
        self.T, self.eta, self.head_kind, self.posterior_sigma = T, eta, head, posterior_sigma
        self.num_classes = embedding.num_classes
        self.embed = embedding
        self.schedule = schedule
        prototype = embedding.kind == "prototype"
        self.blocks = nn.ModuleList(
            DTBlock(image_shape, embedding.dim, self.num_classes, prototype=prototype, dropout=dropout)
            for _ in range(T))
        self.head = nn.Linear(embedding.dim, self.num_classes)  # f_theta_out of Eq. 14
        self.alpha_bar = schedule.alpha_bar.tolist()
        if head_init not in HEAD_INITS:
            raise ValueError(f"unknown head init {head_init!r}; choose one of {', '.join(HEAD_INITS)}")
        if head_init == "bayes":
            self.init_head_bayes()
        # (T/2) * eta * (SNR(t) - SNR(t-1)), index t-1: the weight of block t's L2 term (Eq. 8/61)
        self.l2_weight = schedule.loss_weights(eta)

    @classmethod
    def from_config(cls, cfg, image_shape, num_classes, embedding):
        return cls(image_shape, embedding, T=cfg.T, eta=cfg.eta, head=cfg.head,
                   posterior_sigma=cfg.posterior_sigma, schedule=CosineSchedule(cfg.T, cfg.schedule_eps),
                   head_init=cfg.head_init)

    @torch.no_grad()
    def init_head_bayes(self) -> None:
        """Start the head at the Bayes classifier of the distribution its CE term is trained on:
        for z_T ~ q(z_T | y) = N(sqrt(ab_T) u_y, (1 - ab_T) I) with equal class priors,

            log p(y = c | z_T) = sqrt(ab_T) / (1 - ab_T) <z_T, u_c> - ab_T ||u_c||^2 / (2 (1 - ab_T)) + const

        so W = sqrt(ab_T) / (1 - ab_T) U and b_c = -ab_T ||u_c||^2 / (2 (1 - ab_T)). The paper does not
        give the head's initialisation. From a random start the head, trained by lr 1e-3 steps, needs
        many epochs to reach logits of this size (99.5 <z, u_c> for one-hot embeddings): after one
        epoch on 3,200 images its CE was still 2.15 and the chain's accuracy 44%, although block 1
        alone already classified 89% (issue 12). CE training continues from here as in Eq. 8."""
        ab = self.alpha_bar[-1]
        u = self.embed.weight.detach().float()
        self.head.weight.copy_(math.sqrt(ab) / (1 - ab) * u)
        self.head.bias.copy_(-ab * u.pow(2).sum(-1) / (2 * (1 - ab)))

    # --- the method interface -------------------------------------------------------------------
    @classmethod
    def blocks_for(cls, cfg) -> int:
        return cfg.T

    @property
    def num_blocks(self) -> int:
        return self.T

    def block_parameters(self, t: int) -> list[nn.Parameter]:
        return list(self.blocks[t - 1].parameters())

    def shared_parameters(self) -> list[nn.Parameter]:
        """The output head and a learned W_Embed: every block's L_t trains them (Eq. 61)."""
        return list(self.head.parameters()) + ([self.embed.weight] if self.embed.trainable else [])

    # --- pieces of the model -----------------------------------------------------------------
    def u_hat(self, t: int, z: torch.Tensor, x: torch.Tensor,
              features: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Block t (1-based): logits and u_hat = softmax(logits) @ W_Embed."""
        logits = self.blocks[t - 1](z, x, features)
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

    def loss(self, x: torch.Tensor, y: torch.Tensor, blocks: list[int] | None = None) -> Loss:
        """Eq. 61 summed over the given blocks: CE + KL + sum_t (T/2) eta (SNR(t) - SNR(t-1)) L2_t.
        For one block this is L_t; for several, each block still gets exactly the gradient of its
        own L_t (no gradient crosses blocks), while CE + KL are counted once. With a fixed W_Embed
        the L2 terms give the shared parameters (the head) no gradient, so the loss splits into
        shared_part = CE + KL and block_part = the weighted L2 terms (see Loss)."""
        blocks = list(range(1, self.T + 1)) if blocks is None else blocks
        ce, kl = self.shared_loss(y)
        l2 = torch.stack([self.denoise_loss(t, x, y) for t in blocks])
        weighted = sum(self.l2_weight[t - 1] * l2[i] for i, t in enumerate(blocks))
        split = {} if self.embed.trainable else {"shared_part": ce + kl, "block_part": weighted}
        return Loss(ce + kl + weighted, {"ce": ce, "kl": kl, "l2": l2}, **split)

    def block_loss(self, t: int, x: torch.Tensor, y: torch.Tensor) -> Loss:
        """L_t of Eq. 61 for block t (1-based), with its parts (l2 a scalar)."""
        out = self.loss(x, y, [t])
        out.parts["l2"] = out.parts["l2"][0]
        return out

    # --- inference (never sees a label) ----------------------------------------------------------
    def image_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each block's image path on x (it does not depend on z): shared by every inference run."""
        return [block.image_path(x) for block in self.blocks]

    @torch.no_grad()
    def chain(self, x: torch.Tensor, noise: bool = True, generator: torch.Generator | None = None,
              steps: int | None = None, solver: str | None = None,
              features: list[torch.Tensor] | None = None) -> Iterator[ChainStep]:
        """Run Eq. 3 from z_0 ~ N(0, I): yields z_t and block t's logits for t = 1..T.
        noise=False drops the sqrt(c_t) eps term (a deterministic option beside the paper's rule).
        features: image_features(x), where the caller has it."""
        z = self.embed.sample_z0(len(x), generator, x.device)
        for t in range(1, self.T + 1):
            logits, u_hat = self.u_hat(t, z, x, None if features is None else features[t - 1])
            z = self.schedule.step(t, u_hat, z, noise, generator)
            yield ChainStep(t, z, logits)
