"""Class embeddings: one-hot, learned (orthogonal init) and prototype (median-distance init)."""

import pytest
import torch

from noprop.embedding import ClassEmbedding, prototype_init


def test_one_hot_is_fixed_identity():
    e = ClassEmbedding("one-hot", 10)
    assert torch.equal(e.weight, torch.eye(10))
    assert not e.trainable and list(e.parameters()) == []
    assert e.dim == 10
    assert torch.equal(e(torch.tensor([3])), torch.eye(10)[3:4])


def test_learned_is_orthogonal_and_trainable():
    torch.manual_seed(0)
    e = ClassEmbedding("learned", 10)
    assert e.dim == 20 and e.trainable
    torch.testing.assert_close(e.weight @ e.weight.T, torch.eye(10), atol=1e-5, rtol=0)
    # more classes than dimensions: orthogonal rows are impossible, so N(0, 1/d) rows, full rank
    e2 = ClassEmbedding("learned", 300, dim=20)
    assert e2.trainable
    assert abs(e2.weight.std().item() - 20 ** -0.5) < 0.1 * 20 ** -0.5
    assert torch.linalg.matrix_rank(e2.weight) == 20
    assert (e2.weight @ e2.weight.T - torch.eye(300)).abs().max() > 0.5  # not (and cannot be) orthonormal


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown embedding"):
        ClassEmbedding("sparse", 10)


def brute_force_prototype(images, labels, m):
    rows = []
    for c in range(m):
        members = images[labels == c].reshape(int((labels == c).sum()), -1).double()
        best, best_med = None, float("inf")
        for i in range(len(members)):
            others = torch.cat([members[:i], members[i + 1:]])
            d = (others - members[i]).norm(dim=1)
            med = d.sort().values[(len(d) - 1) // 2].item()  # lower median
            if med < best_med:
                best, best_med = members[i], med
        rows.append(best.float())
    return torch.stack(rows)


def test_prototype_init_picks_smallest_median_distance():
    torch.manual_seed(0)
    images = torch.randn(90, 1, 4, 4)
    labels = torch.arange(90) % 3
    got = prototype_init(images, labels, 3, chunk=7)  # small chunks exercise the chunked path
    torch.testing.assert_close(got, brute_force_prototype(images, labels, 3))


def test_prototype_init_finds_the_central_image():
    # one class: four corners of a square and its centre; the centre is nearest to the others
    pts = torch.tensor([[0., 0.], [2., 0.], [0., 2.], [2., 2.], [1., 1.]]).reshape(5, 1, 1, 2)
    got = prototype_init(pts, torch.zeros(5, dtype=torch.long), 1)
    torch.testing.assert_close(got, torch.tensor([[1., 1.]]))


def test_prototype_init_needs_every_class():
    with pytest.raises(ValueError, match="class 2"):
        prototype_init(torch.randn(4, 1, 2, 2), torch.tensor([0, 1, 0, 1]), 3)
