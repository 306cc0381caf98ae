"""The Method interface's defaults, and what a method says of itself instead of being named by the
code around it (the bench's block count, the keys an old checkpoint may hold)."""

import pytest
import torch

from noprop import models
from noprop.config import Config, ConfigError
from noprop.embedding import ClassEmbedding
from noprop.method import ChainStep, Method
from noprop.methods import get_method, method_names
from noprop.methods.fm import NoPropFM


class _Fixed(Method):
    """Logits fixed per class: z is the score vector itself."""
    name = "fixed-test"

    def __init__(self):
        super().__init__()
        self.num_classes = 3
        self.w = torch.nn.Parameter(torch.tensor([0.0, 2.0, 1.0]))

    def classify(self, z):
        return z


class _Neither(_Fixed):
    pass


class _OnlyLatent(_Fixed):
    def final_latent(self, x, noise=True, generator=None, steps=None, solver=None, features=None):
        return self.w.expand(len(x), 3)


class _OnlyChain(_Fixed):
    def chain(self, x, noise=True, generator=None, steps=None, solver=None):
        yield ChainStep(1, torch.zeros(len(x), 3))
        yield ChainStep(2, self.w.expand(len(x), 3))


def test_a_method_with_neither_final_latent_nor_chain_says_which_to_define():
    m, x = _Neither(), torch.zeros(2, 1, 4, 4)
    with pytest.raises(NotImplementedError, match="_Neither must define final_latent or chain"):
        m.predict(x)
    with pytest.raises(NotImplementedError, match="must define chain or final_latent"):
        m.chain(x)


def test_either_of_final_latent_and_chain_gives_the_other():
    x = torch.zeros(2, 1, 4, 4)
    steps = list(_OnlyLatent().chain(x))
    assert [s.t for s in steps] == [1] and steps[0].z.tolist() == [[0.0, 2.0, 1.0]] * 2
    assert _OnlyChain().final_latent(x).tolist() == [[0.0, 2.0, 1.0]] * 2  # the chain's last step
    assert _OnlyChain().predict(x).tolist() == [1, 1] == _OnlyLatent().predict(x).tolist()


def test_network_blocks_count_the_blocks_a_method_holds_and_blocks_for_those_trained_apart():
    counts = {}
    for name in ("dt", "backprop", "ct", "fm", "adjoint", "cnn"):
        cfg = Config(method=name, **({"T": 4} if name in ("dt", "backprop") else {})).validate()
        cls = get_method(name)
        counts[name] = (cls.network_blocks(cfg), cls.blocks_for(cfg))
    assert counts == {"dt": (4, 4), "backprop": (4, 1), "ct": (1, 1), "fm": (1, 1), "adjoint": (1, 1),
                      "cnn": (1, 1)}


def test_an_unknown_method_names_the_registered_ones():
    assert method_names()[:3] == ["dt", "ct", "fm"]
    with pytest.raises(ConfigError, match="unknown method 'nope'; choose one of dt, ct, fm"):
        get_method("nope")


def test_old_checkpoint_keys_are_dropped_by_the_method_that_dropped_them():
    """Before 0.2 FM kept a head with a fixed embedding (nothing trained it), and DT its schedule as
    buffers: such a state dict still loads, while a key nobody knows is still refused."""
    fm = models.build(Config(method="fm", steps=2), (1, 14, 14), 3)
    assert fm.head is None
    old = {**fm.state_dict(), "head.weight": torch.zeros(3, 3), "head.bias": torch.zeros(3)}
    assert set(models.legacy_keys(old, fm)) == set(fm.state_dict())
    fm.load_state_dict(models.legacy_keys(old, fm))

    learned = NoPropFM((1, 14, 14), ClassEmbedding("learned", 3, 4), steps=2)
    assert not learned.is_legacy_key("head.weight")  # it has a head: its keys are its own
    dt = models.build(Config(method="dt", T=2), (1, 14, 14), 3)
    old = {**dt.state_dict(), "alpha_bar": torch.zeros(3), "head.extra": torch.zeros(1)}
    assert set(models.legacy_keys(old, dt)) == set(dt.state_dict()) | {"head.extra"}
    with pytest.raises(RuntimeError, match="head.extra"):
        dt.load_state_dict(models.legacy_keys(old, dt))
