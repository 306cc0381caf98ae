"""The schedule, q-sampling, posterior coefficients, KL and loss weights against closed forms."""

import math

import pytest
import torch

from noprop.schedule import CosineSchedule, kl_to_standard_normal, q_sample, validate_alpha_bar


@pytest.mark.parametrize("T", [1, 2, 10, 37])
def test_alpha_bar_closed_form_and_convention(T):
    s = CosineSchedule(T, eps=0.01)
    t = torch.arange(T + 1, dtype=torch.float64)
    expect = 0.01 + 0.98 * torch.cos(math.pi / 2 * (1 - t / T)) ** 2
    torch.testing.assert_close(s.alpha_bar, expect)
    # paper convention: z_0 noisiest, z_T cleanest, both ends strictly inside (0, 1)
    assert s.alpha_bar[0] == pytest.approx(0.01) and s.alpha_bar[-1] == pytest.approx(0.99)
    assert (s.alpha_bar[1:] > s.alpha_bar[:-1]).all()
    assert (s.snr_delta > 0).all(), "every SNR(t) - SNR(t-1) must be positive"


def test_alpha_bar_is_product_of_alphas():
    s = CosineSchedule(10)
    al = s.alpha
    for t in range(11):
        assert al[t:].prod().item() == pytest.approx(s.alpha_bar[t].item(), rel=1e-12)
    assert ((al > 0) & (al <= 1)).all()


def test_reversed_or_flat_schedules_are_refused():
    s = CosineSchedule(10)
    with pytest.raises(ValueError, match="reversed"):
        validate_alpha_bar(s.alpha_bar.flip(0))  # the DDPM-style template of pitfall 1
    with pytest.raises(ValueError, match="reversed"):
        validate_alpha_bar(torch.full((11,), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="inside"):
        validate_alpha_bar(torch.linspace(0, 1, 11, dtype=torch.float64))
    for bad in (0, -1):
        with pytest.raises(ValueError, match="T"):
            CosineSchedule(bad)


def test_posterior_coefficients_closed_form():
    s = CosineSchedule(10)
    a, b, c = s.posterior_coefficients()
    ab, al = s.alpha_bar, s.alpha
    for t in range(1, 11):
        assert a[t - 1] == pytest.approx((ab[t].sqrt() * (1 - al[t - 1]) / (1 - ab[t - 1])).item(), rel=1e-12)
        assert b[t - 1] == pytest.approx((al[t - 1].sqrt() * (1 - ab[t]) / (1 - ab[t - 1])).item(), rel=1e-12)
        assert c[t - 1] == pytest.approx(((1 - ab[t]) * (1 - al[t - 1]) / (1 - ab[t - 1])).item(), rel=1e-12)


def test_posterior_coefficients_by_gaussian_conditioning():
    """Independent derivation: build the joint of (z_t, z_{t-1}) given y from the forward
    process z_{t-1} = sqrt(alpha_{t-1}) z_t + sqrt(1 - alpha_{t-1}) e and condition on z_{t-1}."""
    s = CosineSchedule(10)
    a, b, c = s.posterior_coefficients()
    ab, al = s.alpha_bar, s.alpha
    for t in range(1, 11):
        var_t = 1 - ab[t]                                  # Var(z_t | y)
        var_prev = al[t - 1] * var_t + (1 - al[t - 1])     # Var(z_{t-1} | y)
        cov = al[t - 1].sqrt() * var_t                     # Cov(z_t, z_{t-1} | y)
        gain = cov / var_prev
        # E[z_t | z_{t-1}, y] = sqrt(ab_t) u + gain (z_{t-1} - sqrt(ab_{t-1}) u)
        assert var_prev.item() == pytest.approx(1 - ab[t - 1].item(), rel=1e-12)
        assert b[t - 1].item() == pytest.approx(gain.item(), rel=1e-10)
        assert a[t - 1].item() == pytest.approx((ab[t].sqrt() - gain * ab[t - 1].sqrt()).item(), rel=1e-10)
        assert c[t - 1].item() == pytest.approx((var_t - gain * cov).item(), rel=1e-10)
    # marginal consistency: a_t u + b_t z_{t-1} with z_{t-1} ~ q(z_{t-1}|y) has q(z_t|y)'s moments
    torch.testing.assert_close(a + b * ab[:-1].sqrt(), ab[1:].sqrt())
    torch.testing.assert_close(c + b ** 2 * (1 - ab[:-1]), 1 - ab[1:])


def test_q_sample_moments_keep_the_sqrt():
    """Pitfall 2: the mean is sqrt(alpha_bar) u_y, not alpha_bar u_y."""
    torch.manual_seed(0)
    u = torch.tensor([1.0, -2.0, 0.5, 0.0])
    for ab in (0.2, 0.5, 0.9):
        z = q_sample(u.expand(200_000, 4), ab)
        mean, var = z.mean(0), z.var(0)
        torch.testing.assert_close(mean, math.sqrt(ab) * u, atol=0.01, rtol=0)
        torch.testing.assert_close(var, torch.full((4,), 1 - ab), atol=0.01, rtol=0)
        # a dropped sqrt would put the mean at ab * u: far outside the tolerance above
        assert (mean - ab * u).abs().max() > 0.05


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    u = torch.randn(5, 7)
    ab0 = 0.03
    q = torch.distributions.Normal(math.sqrt(ab0) * u, math.sqrt(1 - ab0))
    p = torch.distributions.Normal(torch.zeros_like(u), torch.ones_like(u))
    expect = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(kl_to_standard_normal(u, ab0), expect, rtol=1e-5, atol=1e-6)
