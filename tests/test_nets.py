"""Architecture: shapes and the paper's parameter counts (v2 Table 5)."""

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


def test_dt_block_shapes_and_flatten():
    blk = DTBlock((1, 28, 28), 10, 10).eval()
    assert blk.image_path.flat_features == 128 * 4 * 4
    out = blk(torch.randn(3, 10), torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert DTBlock((3, 32, 32), 10, 10).image_path.flat_features == 128 * 5 * 5


def test_prototype_block_reads_label_as_image():
    blk = DTBlock((1, 28, 28), 784, 10, prototype=True).eval()
    assert blk(torch.randn(2, 784), torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="C\\*H\\*W"):
        DTBlock((1, 28, 28), 20, 10, prototype=True)


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match="too small"):
        DTBlock((1, 10, 10), 10, 10)
