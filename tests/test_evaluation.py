"""The evaluation's shared image features: every inference run and rule of a batch reads the image
path once, and gets exactly the numbers it got when each run recomputed it."""

import pytest
import torch

from noprop import models
from noprop.config import Config, taken_by
from noprop.data import Split
from noprop.evaluation import Run, predict_proba_runs, rules_accuracy

METHODS = ["dt", "ct", "fm", "backprop", "adjoint", "cnn"]


def _model(method: str):
    torch.manual_seed(0)
    cfg = Config(**taken_by(method, dict(method=method, T=3, steps=4, eval_batch_size=16))).validate()
    model = models.build(cfg, (1, 28, 28), 10)
    model.config = cfg
    return model


def _split(n: int = 40) -> Split:
    g = torch.Generator().manual_seed(1)
    return Split(torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def _recomputed(model, split: Split, run: Run) -> torch.Tensor:
    """The evaluation before features were shared: one run at a time, the image path recomputed at
    every call, one generator consumed batch after batch."""
    model.eval()
    gen = torch.Generator().manual_seed(run.seed)
    out = []
    with torch.no_grad():
        for i in range(0, len(split.x), 16):
            xb = split.x[i:i + 16]
            total = sum(model.predict_logits(xb, noise=run.noise, generator=gen).float().softmax(-1)
                        for _ in range(run.ensemble))
            out.append(total / run.ensemble)
    return torch.cat(out)


@pytest.mark.parametrize("method", METHODS)
def test_shared_image_features_give_each_run_exactly_its_own_numbers(method):
    model, split = _model(method), _split()
    runs = [Run(True, 3), Run(False, 3), Run(True, 4), Run(True, 5, ensemble=2)]
    shared = predict_proba_runs(model, split, runs, autocast_dtype=None)
    for run, probs in zip(runs, shared):
        torch.testing.assert_close(probs, _recomputed(model, split, run), rtol=1e-5, atol=1e-6)
    # a run's numbers do not depend on which other runs go with it
    torch.testing.assert_close(predict_proba_runs(model, split, [runs[2]], autocast_dtype=None)[0], shared[2])


@pytest.mark.parametrize("method", METHODS)
def test_every_rule_and_run_reads_each_image_path_once_per_batch(method):
    """5 stochastic + 5 no-noise runs over 40 images in batches of 16: every conv path (each block's
    for DT and backprop, the one net's otherwise) runs 3 times (once per batch), not 30."""
    model, split = _model(method), _split()
    paths = [m for name, m in model.named_modules() if name.endswith("image_path")]
    calls = [0] * len(paths)
    for i, path in enumerate(paths):
        path.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))
    res = rules_accuracy(model, split, runs=5, rules=("stochastic", "no-noise"))
    assert len(paths) == (3 if method in ("dt", "backprop") else 1)
    assert calls == [3] * len(paths)
    assert len(res["stochastic"]["runs"]) == len(res["no-noise"]["runs"]) == 5


def test_rules_accuracy_runs_seed_plus_r_under_each_rule():
    model, split = _model("ct"), _split()
    res = rules_accuracy(model, split, runs=2, ensemble=2, seed=7, rules=("stochastic", "ensemble"),
                         autocast_dtype=None)
    probs = predict_proba_runs(model, split, [Run(True, 8), Run(True, 8, ensemble=2)], autocast_dtype=None)
    acc = [100.0 * (p.argmax(-1) == split.y).float().mean().item() for p in probs]
    assert res["stochastic"]["runs"][1] == acc[0] and res["ensemble-2"]["runs"][1] == acc[1]


def test_the_ensemble_rule_takes_its_own_run_count_in_the_same_pass():
    """final_evaluation's rules with an ensemble of K = 2 over one run, beside 3 runs of the others:
    one pass over the split (the image path once per batch), each rule its own number of runs."""
    model, split = _model("dt"), _split()
    calls = [0]
    model.blocks[0].image_path.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    res = rules_accuracy(model, split, runs=3, ensemble=2, rules=("stochastic", "no-noise", "ensemble"),
                         ensemble_runs=1)
    assert [len(res[k]["runs"]) for k in ("stochastic", "no-noise", "ensemble-2")] == [3, 3, 1]
    assert calls == [3]  # 40 images in batches of 16
    alone = rules_accuracy(model, split, runs=1, ensemble=2, rules=("ensemble",))
    assert alone["ensemble-2"]["runs"] == res["ensemble-2"]["runs"]
