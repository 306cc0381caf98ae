"""Noise schedules, kept apart from the networks (as in diffusers' schedulers).

Paper convention (the reverse of DDPM, spec section 0): time runs from noise to label.
z_0 ~ N(0, I) is the noisiest latent, z_T the cleanest. The schedule holds T+1 factors
alpha_0..alpha_T and

    alpha_bar_t = prod_{s=t}^{T} alpha_s                    (so alpha_bar rises with t)
    SNR(t)      = alpha_bar_t / (1 - alpha_bar_t)             (rises with t; finite at t = 0)

Everything a DT block needs from the schedule lives here: the marginal q(z_t | y) (Eq. 5-6),
the posterior coefficients a_t, b_t, c_t of q(z_t | z_{t-1}, y) (Eq. 7) and the loss weights
SNR(t) - SNR(t-1) of Eq. 8.
"""

from __future__ import annotations

import math

import torch

from . import noise
from .device import randn


class DiscreteSchedule:
    """A schedule on a grid t = 0..T, given by alpha_bar_0 < ... < alpha_bar_T, and the one place
    where the posterior step of Eq. 3 is written (diffusers-style ``step``). NoProp-DT uses it on
    its T blocks (CosineSchedule); NoProp-CT on the N-step grid of its learned schedule
    (LearnedSchedule.discretize)."""

    def __init__(self, alpha_bar: torch.Tensor):
        alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float64).detach().cpu()
        validate_alpha_bar(alpha_bar)
        self.alpha_bar = alpha_bar
        self.T = len(alpha_bar) - 1
        a, b, c = posterior_coefficients(alpha_bar)
        # plain floats: the same numbers on every device and under any autocast
        self._a, self._b, self._sqrt_c = a.tolist(), b.tolist(), c.sqrt().tolist()

    # --- derived quantities, all float64 vectors indexed by t ---------------------------------
    @property
    def alpha(self) -> torch.Tensor:
        """alpha_t with alpha_bar_t = prod_{s>=t} alpha_s: alpha_T = alpha_bar_T and
        alpha_t = alpha_bar_t / alpha_bar_{t+1} for t < T."""
        ab = self.alpha_bar
        return torch.cat([ab[:-1] / ab[1:], ab[-1:]])

    @property
    def snr(self) -> torch.Tensor:
        return self.alpha_bar / (1 - self.alpha_bar)

    @property
    def snr_delta(self) -> torch.Tensor:
        """SNR(t) - SNR(t-1) for t = 1..T, index 0 <-> t = 1. Positive for every t."""
        return self.snr[1:] - self.snr[:-1]

    def loss_weights(self, eta: float) -> list[float]:
        """(T/2) eta (SNR(t) - SNR(t-1)) for t = 1..T (index 0 <-> t = 1): the weight of block
        t's L2 term in Eq. 8 / Eq. 61."""
        return (self.T / 2 * eta * self.snr_delta).tolist()

    def posterior_coefficients(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """a_t, b_t, c_t for t = 1..T (index 0 <-> t = 1); see posterior_coefficients()."""
        return posterior_coefficients(self.alpha_bar)

    def step(self, t: int, u_hat: torch.Tensor, z: torch.Tensor, noise: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """z_t from z_{t-1} (t = 1..T), Eq. 3:

            z_t = a_t u_hat + b_t z_{t-1} + sqrt(c_t) eps,   eps ~ N(0, I)

        the mean and variance of p(z_t | z_{t-1}, x) (Eq. 7) with the denoiser's u_hat in place of
        u_y. noise=False drops the sqrt(c_t) eps term: a deterministic option beside the paper's
        rule, never its replacement. With a (CPU) generator eps is drawn on the CPU and moved, so a
        seeded inference run draws the same numbers on every device."""
        z = self._a[t - 1] * u_hat + self._b[t - 1] * z
        if noise:
            z = z + self._sqrt_c[t - 1] * randn(z.shape, generator, z.device, z.dtype)
        return z


class CosineSchedule(DiscreteSchedule):
    """The fixed cosine schedule of NoProp-DT.

    The paper says only "a fixed cosine noise schedule". Our choice (documented in docs/choices.md):

        alpha_bar_t = eps + (1 - 2 eps) * cos^2( (pi / 2) * (1 - t / T) ),   t = 0..T

    i.e. the cosine schedule of Nichol & Dhariwal with the time axis flipped to the paper's
    convention, squeezed affinely into [eps, 1 - eps]. The squeeze keeps both ends honest:
    alpha_bar_0 = eps > 0 (z_0 is almost pure noise, SNR(0) finite, the KL term is defined)
    and alpha_bar_T = 1 - eps < 1 (z_T keeps a little noise, so SNR(T) and the last block's
    loss weight stay finite). eps = 0.01 gives SNR(T) = 99 and SNR(0) = 0.0101.
    """

    def __init__(self, T: int, eps: float = 0.01):
        if not isinstance(T, int) or T < 1:
            raise ValueError(f"T (the number of blocks) must be an integer >= 1, got {T!r}")
        if not 0.0 < eps < 0.5:
            raise ValueError(f"schedule eps must lie in (0, 0.5), got {eps!r}")
        self.eps = eps
        t = torch.arange(T + 1, dtype=torch.float64)
        super().__init__(eps + (1 - 2 * eps) * torch.cos(math.pi / 2 * (1 - t / T)) ** 2)


def posterior_coefficients(alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """a_t, b_t, c_t on a grid alpha_bar_0..alpha_bar_T (index 0 <-> t = 1), spec section 1.1 / Eq. 7:

        q(z_t | z_{t-1}, y) = N(a_t u_y + b_t z_{t-1}, c_t I)
        a_t = sqrt(ab_t) (1 - alpha_{t-1}) / (1 - ab_{t-1})
        b_t = sqrt(alpha_{t-1}) (1 - ab_t) / (1 - ab_{t-1})
        c_t = (1 - ab_t) (1 - alpha_{t-1}) / (1 - ab_{t-1})
    with alpha_{t-1} = ab_{t-1} / ab_t. NoProp-CT uses the same formulas on its time grid.
    """
    ab_t, ab_prev = alpha_bar[1:], alpha_bar[:-1]
    al_prev = ab_prev / ab_t
    a = ab_t.sqrt() * (1 - al_prev) / (1 - ab_prev)
    b = al_prev.sqrt() * (1 - ab_t) / (1 - ab_prev)
    c = (1 - ab_t) * (1 - al_prev) / (1 - ab_prev)
    return a, b, c


def validate_alpha_bar(alpha_bar: torch.Tensor) -> None:
    """Refuse a schedule in the wrong convention (pitfall 1: a reversed schedule makes the
    SNR weights negative and trains the last block on pure noise)."""
    if alpha_bar.ndim != 1 or len(alpha_bar) < 2:
        raise ValueError("alpha_bar must be a vector alpha_bar_0..alpha_bar_T with T >= 1")
    if not ((alpha_bar > 0) & (alpha_bar < 1)).all():
        raise ValueError("alpha_bar must lie strictly inside (0, 1) so every SNR is finite")
    if not (alpha_bar[1:] > alpha_bar[:-1]).all():
        raise ValueError(
            "alpha_bar must rise with t (paper convention: z_0 is noise, z_T is the cleanest "
            "latent); this schedule is reversed or flat, so some SNR(t) - SNR(t-1) <= 0")


def q_sample(u_y: torch.Tensor, alpha_bar_t: torch.Tensor | float,
             eps: torch.Tensor | None = None) -> torch.Tensor:
    """z_t ~ q(z_t | y) = N(sqrt(alpha_bar_t) u_y, (1 - alpha_bar_t) I)   (marginal of Eq. 5-6).

    alpha_bar_t is a float or a tensor broadcastable against u_y (one value per example)."""
    alpha_bar_t = torch.as_tensor(alpha_bar_t, dtype=u_y.dtype, device=u_y.device)
    if eps is None:
        eps = noise.randn_like(u_y)
    return alpha_bar_t.sqrt() * u_y + (1 - alpha_bar_t).sqrt() * eps


def kl_to_standard_normal(u_y: torch.Tensor, alpha_bar_0: torch.Tensor | float) -> torch.Tensor:
    """KL( q(z_0|y) || N(0, I) ) per example, for q(z_0|y) = N(sqrt(ab_0) u_y, (1 - ab_0) I):

        KL = 1/2 [ ab_0 ||u_y||^2 - d ab_0 - d ln(1 - ab_0) ]        (the KL term of Eq. 8)

    alpha_bar_0 may be a tensor that carries gradient (NoProp-CT's learned schedule)."""
    d = u_y.shape[-1]
    ab0 = torch.as_tensor(alpha_bar_0, dtype=u_y.dtype, device=u_y.device)
    return 0.5 * (ab0 * u_y.pow(2).sum(-1) - d * ab0 - d * torch.log1p(-ab0))


class LearnedSchedule(torch.nn.Module):
    """The learned noise schedule of NoProp-CT (App. B, after VDM), t in [0, 1], t = 1 clean:

        gamma_tilde(t) = sum_j w2_j sigmoid(w1_j t + b1_j)    (w1, w2 > 0 via softplus: increasing)
        gamma_bar(t)   = (gamma_tilde(t) - gamma_tilde(0)) / (gamma_tilde(1) - gamma_tilde(0))  in [0, 1]
        gamma(t)       = gamma_0 + (gamma_1 - gamma_0) (1 - gamma_bar(t))   (decreasing in t)
        SNR(t)         = exp(-gamma(t)),   alpha_bar(t) = sigmoid(-gamma(t))
        SNR'(t)        = (gamma_1 - gamma_0) gamma_bar'(t) exp(-gamma(t))  >= 0

    Choices the paper leaves open: 16 hidden units with a sigmoid; positivity by softplus; the
    endpoints start at gamma_0 = -5 (alpha_bar(1) = 0.9933, SNR 148) and gamma_1 = 5 (alpha_bar(0) =
    0.0067) -- VDM's [-13.3, 5] gives SNR weights near 6e5 at t = 1, which a softmax-bounded u_hat
    does not need. gamma_1 is parameterised as gamma_0 + softplus(gap) so that training can move
    both endpoints but never reverse the schedule.
    """

    def __init__(self, gamma_0: float = -5.0, gamma_1: float = 5.0, hidden: int = 16):
        super().__init__()
        if not gamma_1 > gamma_0:
            raise ValueError(f"gamma_1 ({gamma_1}) must exceed gamma_0 ({gamma_0}) so SNR rises with t")
        self.gamma_0 = torch.nn.Parameter(torch.tensor(float(gamma_0)))
        gap = gamma_1 - gamma_0
        self.gap_raw = torch.nn.Parameter(torch.tensor(gap + math.log(-math.expm1(-gap))))  # softplus^-1
        g = torch.Generator().manual_seed(0)  # the schedule's init does not depend on the run's seed
        self.w1_raw = torch.nn.Parameter(torch.randn(hidden, generator=g))
        self.b1 = torch.nn.Parameter(torch.randn(hidden, generator=g))
        self.w2_raw = torch.nn.Parameter(torch.randn(hidden, generator=g))

    @property
    def gamma_1(self) -> torch.Tensor:
        return self.gamma_0 + torch.nn.functional.softplus(self.gap_raw)

    def _gamma_tilde(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gamma_tilde(t) and its derivative, for t of any shape."""
        w1 = torch.nn.functional.softplus(self.w1_raw)
        w2 = torch.nn.functional.softplus(self.w2_raw)
        h = torch.sigmoid(t[..., None] * w1 + self.b1)
        return (h * w2).sum(-1), (h * (1 - h) * w1 * w2).sum(-1)

    def gamma_bar(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, dg = self._gamma_tilde(t)
        ends = self._gamma_tilde(torch.tensor([0.0, 1.0], dtype=t.dtype, device=t.device))[0]
        span = ends[1] - ends[0]
        return (g - ends[0]) / span, dg / span

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        gb, _ = self.gamma_bar(t)
        return self.gamma_0 + (self.gamma_1 - self.gamma_0) * (1 - gb)

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(-self.gamma(t))

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        return torch.exp(-self.gamma(t))

    @torch.no_grad()
    def discretize(self, steps: int) -> DiscreteSchedule:
        """The schedule on the grid t_k = k / steps (k = 0..steps), in float64 (near t = 1 the
        grid's a, b, c divide small differences of alpha_bar). NoProp-CT's stochastic sampler is
        the DT step of Eq. 3 on this grid, with alpha_{k-1} = ab(t_{k-1}) / ab(t_k)."""
        params = {n: p.detach().double() for n, p in self.named_parameters()}
        grid = torch.linspace(0, 1, steps + 1, dtype=torch.float64, device=self.gamma_0.device)
        return DiscreteSchedule(torch.func.functional_call(self, params, (grid,)))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar(t)."""
        return self.alpha_bar(t)

    def snr_derivative(self, t: torch.Tensor) -> torch.Tensor:
        gb, dgb = self.gamma_bar(t)
        gamma = self.gamma_0 + (self.gamma_1 - self.gamma_0) * (1 - gb)
        return (self.gamma_1 - self.gamma_0) * dgb * torch.exp(-gamma)
