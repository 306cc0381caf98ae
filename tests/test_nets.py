"""Architecture: shapes and the paper's parameter counts (v2 Table 5)."""

import copy

import pytest
import torch

from noprop.nets import DTBlock, count_parameters


@pytest.mark.parametrize("shape,dim,m,proto,expect,paper", [
    ((1, 28, 28), 10, 10, False, 919_946, 0.92e6),     # MNIST one-hot: the paper's 0.92M
    ((1, 28, 28), 20, 10, False, 922_506, 0.92e6),     # MNIST dim 20
    ((1, 28, 28), 784, 10, True, 1_401_738, 1.40e6),   # MNIST prototype
    ((3, 32, 32), 10, 10, False, 1_215_434, 1.22e6),   # CIFAR-10 one-hot
    ((3, 32, 32), 100, 100, False, 1_250_084, 1.25e6),  # CIFAR-100 one-hot
    ((3, 32, 32), 3072, 10, True, 1_992_714, 1.99e6),  # CIFAR-10 prototype
])
def test_dt_block_parameter_counts(shape, dim, m, proto, expect, paper):
    n = count_parameters(DTBlock(shape, dim, m, prototype=proto))
    assert n == expect
    assert round(n, -4) == paper


def test_dt_block_fuses_its_image_path_and_label_path():
    """The block's logits are fuse([image_path(x), label_path(z)]), each image on its own (eval mode:
    one image alone gives its row of the batch); the image path flattens the last conv's
    128 x 4 x 4 maps (MNIST; 128 x 5 x 5 on CIFAR) in (channel, row, column) order."""
    torch.manual_seed(0)
    blk = DTBlock((1, 28, 28), 10, 10).eval()
    z, x = torch.randn(3, 10), torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        out = blk(z, x)
        feats = blk.image_path(x)
        torch.testing.assert_close(out, blk.fuse(torch.cat([feats, blk.label_path(z)], 1)))
        torch.testing.assert_close(blk(z, x, features=feats), out)
        torch.testing.assert_close(blk(z[1:2], x[1:2]), out[1:2])
        maps = blk.image_path.features[:-1](x)
        assert maps.shape == (3, 128, 4, 4) and torch.equal(blk.image_path.features(x), maps.reshape(3, -1))
        # both inputs matter: another z, or another image, changes the logits
        assert (blk(torch.randn(3, 10), x) - out).abs().min() > 0
        assert (blk(z, torch.randn(3, 1, 28, 28)) - out).abs().min() > 0
    assert DTBlock((3, 32, 32), 10, 10).image_path.fc.in_features == 128 * 5 * 5


def test_prototype_block_reads_label_as_image():
    """With a prototype embedding the noisy label is an image: z reshaped to 1 x 28 x 28 (row-major)
    goes through a conv path of its own."""
    torch.manual_seed(0)
    blk = DTBlock((1, 28, 28), 784, 10, prototype=True).eval()
    z, x = torch.randn(2, 784), torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        expect = blk.fuse(torch.cat([blk.image_path(x), blk.label_path(z.reshape(2, 1, 28, 28))], 1))
        torch.testing.assert_close(blk(z, x), expect)
        transposed = z.reshape(2, 28, 28).transpose(1, 2).reshape(2, 784)  # the same pixels, another order
        assert not torch.allclose(blk(transposed, x), expect)
    with pytest.raises(ValueError, match="C\\*H\\*W"):
        DTBlock((1, 28, 28), 20, 10, prototype=True)


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match="too small"):
        DTBlock((1, 10, 10), 10, 10)


# --- the fast dropout (nets.Dropout) must be the same function as nn.Dropout ----------------------
from noprop.nets import Dropout, TimeNet  # noqa: E402


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_dropout_drops_p_and_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = Dropout(p).train()(x)
    dropped = (y == 0).float().mean().item()
    # binomial s.e. at n = 4e5 is <= 0.0008; 5 s.e. would still catch a wrong threshold or lane
    assert abs(dropped - p) < 0.004
    values = torch.unique(y)
    assert len(values) == 2 and values[0] == 0 and values[1].item() == pytest.approx(1 / (1 - p))
    assert abs(y.mean().item() - 1.0) < 0.01


def test_dropout_lanes_are_independent_and_follow_the_layout():
    torch.manual_seed(1)
    x = torch.ones(64, 32, 13, 13).contiguous(memory_format=torch.channels_last)
    y = Dropout(0.2).train()(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    keep = (y != 0).float().reshape(-1)
    # every one of the four 16-bit lanes of a 64-bit draw drops at the same rate, not only some
    assert all(abs(1 - keep[k::4].mean().item() - 0.2) < 0.01 for k in range(4))
    # neighbours are uncorrelated (a lane reused twice would correlate them)
    a, b = keep[:-1] - keep.mean(), keep[1:] - keep.mean()
    assert abs((a * b).mean().item()) / keep.var().item() < 0.02


def test_dropout_gradient_is_the_mask_and_eval_is_identity():
    torch.manual_seed(2)
    drop = Dropout(0.2)
    x = torch.randn(1000, requires_grad=True)
    y = drop(x)
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * 1.25)
    drop.eval()
    assert drop(x) is x
    assert Dropout(0.0).train()(x) is x


def test_dropout_is_reproducible_from_the_seed_and_refuses_bad_p():
    x = torch.ones(5000)
    torch.manual_seed(3)
    a = Dropout(0.2)(x)
    torch.manual_seed(3)
    assert torch.equal(a, Dropout(0.2)(x))
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


def test_time_net_cached_image_features_give_the_same_output():
    net = TimeNet((1, 28, 28), 10, 10).eval()
    z, x, t = torch.randn(4, 10), torch.randn(4, 1, 28, 28), torch.rand(4)
    assert torch.allclose(net(z, x, t), net(z, x, t, features=net.image_features(x)), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pool_before_relu_is_the_papers_function_and_gradient(dtype):
    """The conv path pools before its ReLU (faster); against the paper's order conv -> ReLU -> pool,
    built from the same modules, outputs and every gradient agree (eval mode: no dropout; bf16
    autocast as in training)."""
    from noprop.nets import ConvPath
    torch.manual_seed(0)
    fast = ConvPath((1, 28, 28)).eval()
    f = fast.features
    assert [type(m).__name__ for m in f] == ["Conv2d", "MaxPool2d", "ReLU", "Dropout", "Conv2d", "ReLU", "Dropout",
                                             "Conv2d", "MaxPool2d", "ReLU", "Dropout", "Flatten"]
    paper = torch.nn.Sequential(f[0], f[2], f[1], f[3], f[4], f[5], f[6], f[7], f[9], f[8], f[10], f[11])
    x = torch.randn(16, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    outs, grads = [], []
    for features in (f, paper):
        fast.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = fast.out(fast.fc(features(x)))
        (y.float() * torch.linspace(-1, 1, y.shape[1])).sum().backward()
        outs.append(y.float())
        grads.append({n: p.grad.clone() for n, p in fast.named_parameters()})
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(outs[0], outs[1], **tol)
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], **tol, msg=n)
    # the parameters keep the paper's module indices: features.0 / .4 / .7 are the convolutions
    assert {n.split(".")[0] for n, _ in f.named_parameters()} == {"0", "4", "7"}


def test_sync_batchnorm_is_batchnorm_over_the_group():
    """SyncBatchNorm1d in a one-rank gloo group computes what BatchNorm1d computes: outputs, input and
    parameter gradients, running statistics (its one-pass float64 variance against torch's)."""
    import torch.distributed as dist

    from noprop.parallel import SyncBatchNorm1d
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        ref = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16))
        with torch.no_grad():
            ref[1].weight.uniform_(0.5, 1.5)
            ref[1].bias.uniform_(-1, 1)
        syn = SyncBatchNorm1d.convert(copy.deepcopy(ref), dist.group.WORLD)
        assert type(syn[1]) is SyncBatchNorm1d
        x = torch.randn(32, 8) * 3 + 5   # a mean far from zero, where a one-pass variance could lose digits
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        g = torch.randn(32, 16)
        for _ in range(3):
            ya, yb = ref(xa), syn(xb)
            (ya * g).sum().backward()
            (yb * g).sum().backward()
        torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
        for (name, pa), pb in zip(ref.named_parameters(), syn.parameters()):
            torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-4, atol=1e-5, msg=name)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(syn[1], name), getattr(ref[1], name), rtol=1e-5, atol=1e-6, msg=name)
    finally:
        dist.destroy_process_group()
