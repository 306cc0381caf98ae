"""NoProp-DT: the loss of Eq. 8/61 term by term, gradient isolation between blocks, and the
inference rule of Eq. 3 (which never sees a label)."""

import math

import pytest
import torch
import torch.nn.functional as F

from noprop.data import Split
from noprop.embedding import ClassEmbedding
from noprop.evaluation import predict
from noprop.methods.dt import NoPropDT
from noprop.schedule import CosineSchedule

SHAPE = (1, 16, 16)


def small_model(kind="one-hot", T=4, head="linear", seed=0, head_init="bayes"):
    torch.manual_seed(seed)
    dim = 256 if kind == "prototype" else None
    return NoPropDT(SHAPE, ClassEmbedding(kind, 10, dim), T=T, eta=0.1, head=head, head_init=head_init)


def batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_loss_weights_are_T_half_eta_snr_delta():
    m = small_model(T=4)
    s = CosineSchedule(4)
    weights = torch.tensor(m.l2_weight, dtype=torch.float64)
    torch.testing.assert_close(weights, 4 / 2 * 0.1 * (s.snr[1:] - s.snr[:-1]))
    assert (weights > 0).all()


def test_reversed_schedule_refused_by_the_model():
    class Reversed(CosineSchedule):
        def __init__(self, T):
            super().__init__(T)
            self.alpha_bar = self.alpha_bar.flip(0)
    with pytest.raises(ValueError, match="reversed"):
        NoPropDT(SHAPE, ClassEmbedding("one-hot", 10), T=4, schedule=Reversed(4))


def test_block_loss_is_the_sum_of_its_three_terms():
    m = small_model().train()
    x, y = batch()
    torch.manual_seed(5)
    loss = m.block_loss(2, x, y)
    torch.manual_seed(5)  # the same noise draws, recomputed by hand
    u = m.embed(y)
    ab = m.alpha_bar
    z_T = math.sqrt(ab[-1]) * u + math.sqrt(1 - ab[-1]) * torch.randn_like(u)
    ce = F.cross_entropy(m.head(z_T), y)
    kl = 0.5 * (ab[0] * u.pow(2).sum(-1) - 10 * ab[0] - 10 * math.log(1 - ab[0])).mean()
    z1 = math.sqrt(ab[1]) * u + math.sqrt(1 - ab[1]) * torch.randn_like(u)
    u_hat = m.blocks[1](z1, x).softmax(-1) @ m.embed.weight
    l2 = (u_hat - u).pow(2).sum(-1).mean()
    torch.testing.assert_close(loss.parts["ce"], ce)
    torch.testing.assert_close(loss.parts["kl"], kl)
    torch.testing.assert_close(loss.parts["l2"], l2)
    torch.testing.assert_close(loss.total, ce + kl + m.l2_weight[1] * l2)


def grads(model):
    return {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("kind", ["one-hot", "learned", "prototype"])
def test_no_gradient_crosses_blocks(kind):
    # a random head: the Bayes start can saturate the softmax for well-separated prototype rows, where
    # CE's gradient is (correctly) zero; this test is about where gradient flows, not about the start
    m = small_model(kind, head_init="random").train()
    x, y = batch()
    m.block_loss(3, x, y).total.backward()
    g = grads(m)
    for n, v in g.items():
        if n.startswith("blocks."):
            own = n.startswith("blocks.2.")
            assert (v is not None and v.abs().sum() > 0) == own, n
    assert g["head.weight"].abs().sum() > 0
    if kind != "one-hot":
        assert g["embed.weight"].abs().sum() > 0


def test_cross_entropy_trains_only_head_and_embedding():
    m = small_model("learned").train()
    _, y = batch()
    ce, kl = m.shared_loss(y)
    (ce + kl).backward()
    for n, p in m.named_parameters():
        if n.startswith("blocks."):
            assert p.grad is None, n
    assert m.head.weight.grad.abs().sum() > 0 and m.embed.weight.grad.abs().sum() > 0


def test_all_blocks_sum_gives_each_block_its_own_gradient():
    """The 'all' order sums the blocks' weighted L2 terms (loss()'s block_part); each block must
    receive exactly the gradient of its own term (eval mode: no dropout, so the two computations
    are comparable)."""
    m = small_model().eval()
    x, y = batch()
    torch.manual_seed(3)
    m.loss(x, y).block_part.backward()
    together = {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    torch.manual_seed(3)
    m.shared_loss(y)  # loss() draws the CE term's z_T first: consume the same numbers
    for t in range(1, 5):
        m.zero_grad()
        (m.l2_weight[t - 1] * m.denoise_loss(t, x, y)).backward()
        for n, p in m.named_parameters():
            if n.startswith(f"blocks.{t - 1}."):
                torch.testing.assert_close(p.grad, together[n])


def test_chain_follows_equation_3():
    m = small_model().eval()
    x, _ = batch()
    steps = list(m.chain(x, noise=True, generator=torch.Generator().manual_seed(7)))
    coef_a, coef_b, coef_c = m.schedule.posterior_coefficients()
    g = torch.Generator().manual_seed(7)
    z = torch.randn(len(x), 10, generator=g)
    with torch.no_grad():
        for t in range(1, 5):
            u_hat = m.blocks[t - 1](z, x).softmax(-1) @ m.embed.weight
            eps = torch.randn(z.shape, generator=g)
            z = coef_a[t - 1].item() * u_hat + coef_b[t - 1].item() * z + coef_c[t - 1].sqrt().item() * eps
            torch.testing.assert_close(steps[t - 1].z, z)
    # the noise-free option drops only the sqrt(c_t) eps term
    g = torch.Generator().manual_seed(7)
    z = torch.randn(len(x), 10, generator=g)
    with torch.no_grad():
        for t in range(1, 5):
            z = coef_a[t - 1].item() * (m.blocks[t - 1](z, x).softmax(-1) @ m.embed.weight) + coef_b[t - 1].item() * z
    last = list(m.chain(x, noise=False, generator=torch.Generator().manual_seed(7)))[-1].z
    torch.testing.assert_close(last, z)


def test_the_evaluation_adds_nothing_to_the_models_own_chain():
    """The same images and the same seeded noise give the same predictions as model.predict, batch
    by batch (that no label reaches the model: test_label_leak.py)."""
    m = small_model().eval()  # as the evaluation sets it
    x, y = batch(40)
    split = Split(x, y)
    kw = dict(seed=3, batch_size=16, channels_last=False)
    g = torch.Generator().manual_seed(3)
    own = torch.cat([m.predict(x[i:i + 16], generator=g) for i in range(0, 40, 16)])
    assert torch.equal(predict(m, split, **kw), own)
    # and the noise matters: another seed changes some predictions of this untrained chain's z_T
    z3 = m.final_latent(x, generator=torch.Generator().manual_seed(3))
    z4 = m.final_latent(x, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(z3, z4)


def test_posterior_head():
    m = small_model("learned", head="posterior")
    z = torch.randn(5, m.embed.dim)
    logits = m.classify(z)
    y_tilde = m.head(z).softmax(-1) @ m.embed.weight
    expect = -((y_tilde[:, None, :] - m.embed.weight[None]) ** 2).sum(-1) / 2
    torch.testing.assert_close(logits, expect, rtol=1e-4, atol=1e-5)
