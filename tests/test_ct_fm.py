"""NoProp-CT, NoProp-FM and the baselines: closed forms, solvers on known solutions, shapes and
parameter counts, and gradients where they must (and must not) flow."""

import math

import pytest
import torch

from noprop.embedding import ClassEmbedding
from noprop.methods.adjoint import Adjoint
from noprop.methods.backprop import Backprop
from noprop.methods.ct import NoPropCT
from noprop.methods.fm import NoPropFM
from noprop.nets import TimeNet, count_parameters, sinusoidal_embedding
from noprop.ode import integrate
from noprop.schedule import LearnedSchedule

SHAPE = (1, 16, 16)


# --- learned schedule --------------------------------------------------------------------------
def test_learned_schedule_monotone_with_endpoints():
    s = LearnedSchedule(gamma_0=-5.0, gamma_1=5.0)
    t = torch.linspace(0, 1, 1001)
    with torch.no_grad():
        g, ab = s.gamma(t), s.alpha_bar(t)
        assert g[0].item() == pytest.approx(5.0, abs=1e-5) and g[-1].item() == pytest.approx(-5.0, abs=1e-5)
        assert (g[1:] < g[:-1]).all(), "gamma must decrease in t"
        assert (ab[1:] > ab[:-1]).all(), "alpha_bar must rise in t (t = 1 is clean)"
        torch.testing.assert_close(ab, torch.sigmoid(-g))
        torch.testing.assert_close(s.snr(t), torch.exp(-g))
        gb, _ = s.gamma_bar(t)
        assert gb[0].abs() < 1e-6 and (gb[-1] - 1).abs() < 1e-6


def test_learned_schedule_snr_derivative_matches_finite_differences_and_is_positive():
    torch.manual_seed(0)
    s = LearnedSchedule()
    with torch.no_grad():  # perturb the positive-weight net: still monotone
        for p in (s.w1_raw, s.b1, s.w2_raw):
            p.add_(torch.randn_like(p))
        s.gamma_0.fill_(-3.0)
        s.gap_raw.fill_(2.0)
    t = torch.linspace(0.01, 0.99, 99, dtype=torch.float64)
    s = s.double()
    h = 1e-6
    with torch.no_grad():
        fd = (s.snr(t + h) - s.snr(t - h)) / (2 * h)
        d = s.snr_derivative(t)
    torch.testing.assert_close(d, fd, rtol=1e-5, atol=1e-8)
    assert (d > 0).all()
    # the endpoints stay ordered whatever the gap parameter does
    assert (s.gamma_1 > s.gamma_0).item()


def test_learned_schedule_refuses_reversed_endpoints():
    with pytest.raises(ValueError, match="gamma_1"):
        LearnedSchedule(gamma_0=5.0, gamma_1=-5.0)


def test_schedule_gets_gradient_from_the_ct_loss():
    torch.manual_seed(0)
    m = NoPropCT(SHAPE, ClassEmbedding("one-hot", 10), steps=4)
    m.loss(torch.randn(8, *SHAPE), torch.randint(0, 10, (8,))).total.backward()
    for n, p in m.schedule.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert m.schedule.gamma_0.grad.abs() > 0


def test_ct_loss_terms():
    torch.manual_seed(0)
    m = NoPropCT(SHAPE, ClassEmbedding("one-hot", 10), eta=1.0, steps=4)
    x, y = torch.randn(8, *SHAPE), torch.randint(0, 10, (8,))
    torch.manual_seed(1)
    loss = m.loss(x, y)
    torch.manual_seed(1)  # recompute by hand with the same draws
    u = torch.eye(10)[y]
    ab = m.schedule.alpha_bar(torch.tensor([0.0, 1.0]))
    z1 = ab[1].sqrt() * u + (1 - ab[1]).sqrt() * torch.randn_like(u)
    ce = torch.nn.functional.cross_entropy(m.head(z1), y)
    kl = 0.5 * (ab[0] * 1.0 - 10 * ab[0] - 10 * torch.log(1 - ab[0]))
    t = torch.rand(8)
    abt = m.schedule.alpha_bar(t)[:, None]
    zt = abt.sqrt() * u + (1 - abt).sqrt() * torch.randn_like(u)
    sq = (m.net(zt, x, t).softmax(-1) - u).pow(2).sum(-1)
    l2 = (m.schedule.snr_derivative(t) * sq).mean()
    torch.testing.assert_close(loss.total, ce + kl + 0.5 * l2)


# --- networks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,dim,m,proto,expect,paper", [
    ((1, 28, 28), 10, 10, False, 867_722, 0.87e6),    # MNIST one-hot: the paper's 0.87M
    ((1, 28, 28), 20, 10, False, 870_282, 0.87e6),
    ((1, 28, 28), 784, 10, True, 1_482_122, 1.48e6),
    ((3, 32, 32), 10, 10, False, 1_163_210, 1.16e6),   # CIFAR-10 one-hot
    ((3, 32, 32), 100, 100, False, 1_197_860, 1.20e6),  # CIFAR-100 one-hot
    ((3, 32, 32), 3072, 100, True, 2_084_708, 2.08e6),
])
def test_time_net_parameter_counts(shape, dim, m, proto, expect, paper):
    n = count_parameters(TimeNet(shape, dim, m, prototype=proto))
    assert n == expect and round(n, -4) == paper


def test_time_net_has_no_batchnorm_and_uses_time():
    net = TimeNet(SHAPE, 10, 10).eval()
    assert not any(isinstance(mod, torch.nn.BatchNorm1d) for mod in net.modules())
    z, x = torch.randn(4, 10), torch.randn(4, *SHAPE)
    assert not torch.allclose(net(z, x, torch.zeros(4)), net(z, x, torch.full((4,), 0.5)))
    e = sinusoidal_embedding(torch.tensor([0.0, 0.3]))
    assert e.shape == (2, 64) and torch.allclose(e[0, 32:], torch.ones(32))  # cos(0) = 1


# --- ODE solvers -----------------------------------------------------------------------------------
def test_solvers_on_a_known_solution():
    """dz/dt = -z + t has z(t) = t - 1 + (z0 + 1) e^{-t}. Euler is first order, Heun second."""
    z0 = torch.tensor([2.0], dtype=torch.float64)
    exact = (1 - 1 + 3 * math.exp(-1))

    def f(t, z):
        return -z + t

    errs = {s: [abs(integrate(f, z0, n, s).item() - exact) for n in (50, 100)] for s in ("euler", "heun")}
    assert errs["euler"][1] < 1e-2 and errs["heun"][1] < 1e-4
    assert errs["euler"][0] / errs["euler"][1] == pytest.approx(2, rel=0.1)
    assert errs["heun"][0] / errs["heun"][1] == pytest.approx(4, rel=0.1)
    with pytest.raises(ValueError, match="solver"):
        integrate(f, z0, 10, "rk45")


# --- FM ----------------------------------------------------------------------------------------------
def test_fm_loss_and_anchor():
    torch.manual_seed(0)
    x, y = torch.randn(6, *SHAPE), torch.randint(0, 10, (6,))
    hot = NoPropFM(SHAPE, ClassEmbedding("one-hot", 10), steps=4)
    torch.manual_seed(2)
    loss = hot.loss(x, y)
    assert set(loss.parts) == {"fm"}, "fixed one-hot embeddings: no CE term"
    assert hot.head is None, "and no head for a CE term to train"
    torch.manual_seed(2)
    u = torch.eye(10)[y]
    z0 = torch.randn_like(u)
    t = torch.rand(6)
    zt = t[:, None] * u + (1 - t[:, None]) * z0
    v = hot.net(zt, x, t) @ torch.eye(10)
    torch.testing.assert_close(loss.parts["fm"], (v - (u - z0)).pow(2).sum(-1).mean())
    learned = NoPropFM(SHAPE, ClassEmbedding("learned", 10), steps=4)
    loss = learned.loss(x, y)
    assert "ce" in loss.parts
    loss.total.backward()
    assert learned.embed.weight.grad.abs().sum() > 0 and learned.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("solver,factor", [("euler", lambda a: 1 - a), ("heun", lambda a: 1 - a + a * a / 2)])
def test_fm_integrates_the_field_step_by_step_and_predicts_the_nearest_embedding(solver, factor):
    """A field that depends on z, dz/dt = k (u_c - z), whose N-step solutions are known exactly:
    z_N = u_c + (z_0 - u_c) r^N with r = 1 - kh (Euler) or 1 - kh + (kh)^2/2 (Heun), h = 1/N. One
    jump (N = 1) lands far elsewhere. Then the prediction is the embedding nearest to z_1: c."""
    c, n, k = 7, 10, 5.0
    m = NoPropFM(SHAPE, ClassEmbedding("one-hot", 10), steps=n, solver=solver)
    u_c = torch.eye(10)[c]
    m.velocity = lambda z, x, t, features=None: k * (u_c - z)
    x = torch.randn(5, *SHAPE)
    z0 = m.embed.sample_z0(5, torch.Generator().manual_seed(0))
    z1 = m.final_latent(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z1, u_c + (z0 - u_c) * factor(k / n) ** n)
    one_jump = m.final_latent(x, generator=torch.Generator().manual_seed(0), steps=1)
    torch.testing.assert_close(one_jump, u_c + (z0 - u_c) * factor(k))
    assert (z1 - one_jump).abs().max() > 1.0
    assert (m.predict(x, generator=torch.Generator().manual_seed(0)) == c).all()


# --- CT inference ------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["stochastic", "euler", "heun"])
def test_ct_inference_with_a_perfect_denoiser_reaches_the_class(solver):
    """If u_hat always equals u_c, every CT sampler must end near sqrt(ab(1)) u_c."""
    m = NoPropCT(SHAPE, ClassEmbedding("one-hot", 10), steps=200, solver=solver)
    c = 3
    m.u_hat = lambda z, x, t, features=None: (None, torch.eye(10)[c].expand_as(z))
    z1 = m.final_latent(torch.randn(64, *SHAPE), noise=True, generator=torch.Generator().manual_seed(0))
    ab1 = m.schedule.alpha_bar(torch.tensor(1.0)).item()
    assert (z1.argmax(-1) == c).all()
    torch.testing.assert_close(z1.mean(0), math.sqrt(ab1) * torch.eye(10)[c], atol=0.05, rtol=0)


# --- baselines ---------------------------------------------------------------------------------------
def test_backprop_chain_and_end_to_end_gradient():
    torch.manual_seed(0)
    m = Backprop(SHAPE, ClassEmbedding("one-hot", 10), T=3).eval()
    x = torch.randn(4, *SHAPE)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))
    for t in range(3):
        a = math.tanh(m.w[t].item())
        z = (1 - a) * z + a * m.blocks[t](z, x).softmax(-1)
    torch.testing.assert_close(m.final_latent(x, generator=g), z)
    assert torch.tanh(m.w).detach().allclose(torch.full((3,), 0.5))
    m.train()
    m.loss(x, torch.randint(0, 10, (4,))).total.backward()
    for i in range(3):  # unlike NoProp, every block gets gradient from the one CE at the end
        assert m.blocks[i].image_path.fc.weight.grad.abs().sum() > 0
    assert m.w.grad.abs().sum() > 0


@pytest.mark.parametrize("steps,tol", [(20, 0.1), (200, 0.01)])
def test_adjoint_gradient_matches_direct_backprop(steps, tol):
    """The adjoint pass solves the sensitivity ODE backwards with Euler, so its gradient differs from
    back-propagation through the same Euler steps by O(1/steps), and converges to it."""
    from torchdiffeq import odeint
    torch.manual_seed(0)
    # dropout off here: the reference below recomputes the conv path at every step
    m = Adjoint(SHAPE, ClassEmbedding("one-hot", 10), steps=steps, dropout=0.0).double()
    x, y = torch.randn(4, *SHAPE, dtype=torch.float64), torch.randint(0, 10, (4,))
    torch.manual_seed(5)
    m.loss(x, y).total.backward()
    adj = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    torch.manual_seed(5)
    z0 = torch.randn(4, 10, dtype=torch.float64)
    field = lambda t, z: m.net(z, x, t.reshape(())) @ m.embed.weight  # noqa: E731
    z1 = odeint(field, z0, torch.tensor([0.0, 1.0], dtype=torch.float64), method="euler",
                options={"step_size": 1 / steps})[-1]
    torch.nn.functional.cross_entropy(m.head(z1), y).backward()
    a = torch.cat([adj[n].flatten() for n, _ in m.named_parameters()])
    b = torch.cat([p.grad.flatten() for _, p in m.named_parameters()])
    assert (a - b).norm() / b.norm() < tol
    # the conv path, run once per batch, gets its gradient through the adjoint of its features
    conv = m.net.image_path.features[0].weight
    assert adj["net.image_path.features.0.weight"].norm() > 0
    assert (adj["net.image_path.features.0.weight"] - conv.grad).norm() / conv.grad.norm() < tol


@pytest.mark.parametrize("kind,dim", [("one-hot", None), ("learned", 20)])
def test_backprop_head_starts_as_the_embedding_decoder(kind, dim):
    """logit_c = s <z, u_c> at the start, s = 10 the learnable scale's start: at a class's own
    embedding its logit is the largest."""
    torch.manual_seed(0)
    m = Backprop(SHAPE, ClassEmbedding(kind, 10, dim))
    W = m.embed.weight.detach()
    z = torch.randn(6, W.shape[1])
    expect = torch.stack([torch.stack([(z[i] * W[c]).sum() for c in range(10)]) for i in range(6)])
    torch.testing.assert_close(m.classify(z), 10 * expect)
    assert [n for n, _ in m.named_parameters() if "scale" in n] == ["log_scale"]  # learnable
    assert torch.equal(m.classify(W).argmax(-1), torch.arange(10))
