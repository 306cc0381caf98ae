"""Checkpoints (safe, atomic, round-trip), resume, the divergence guard and the run folder."""

import copy
import json
import math
import os
import pickle
import time

import pytest
import torch

from noprop import checkpoint, device
from noprop.checkpoint import CheckpointError
from noprop.config import Config, ConfigError, taken_by
from noprop.data import load_mnist, subset
from noprop.method import Loss
from noprop.models import load
from noprop.optim import lr_at
from noprop.runfolder import BEST, LAST, METRICS, RunDirError
from noprop.trainer import DivergenceError, Trainer


@pytest.fixture(scope="session")
def mnist():
    return load_mnist(val_size=5000, split_seed=0)


def tiny(mnist, n=256, nval=64):
    d = copy.copy(mnist)
    d.train, d.val = subset(mnist.train, n), subset(mnist.val, nval)
    return d


def tiny_cfg(**kw):
    base = dict(T=2, epochs=1, batch_size=32, order="all", train_subset=256, val_subset=64)
    base.update(kw)
    return Config(**taken_by(base.get("method", "dt"), base))  # T=2 where the method takes it


def test_pack_round_trip(tmp_path):
    state = {"a": torch.arange(3), "n": {0: {"step": torch.tensor(2.0), "m": torch.ones(2)}},
             "lst": [1, 2.5, "x", None, True], "s": "text"}
    checkpoint.save(tmp_path / "c.safetensors", state)
    back = checkpoint.load(tmp_path / "c.safetensors")
    assert torch.equal(back["a"], state["a"]) and back["lst"] == state["lst"] and back["s"] == "text"
    assert list(back["n"]) == [0] and torch.equal(back["n"][0]["m"], torch.ones(2))


def test_loading_a_pickle_never_executes_it(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="not a noprop checkpoint"):
        checkpoint.load(evil)
    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path / "evil.pt")
    assert not marker.exists()


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "f.safetensors"
    checkpoint.save(p, {"v": torch.tensor([1.0])})

    def boom(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        checkpoint.save(p, {"v": torch.tensor([2.0])})
    monkeypatch.undo()
    assert checkpoint.load(p)["v"].item() == 1.0
    assert [f.name for f in tmp_path.iterdir()] == ["f.safetensors"]  # no temporary left


def test_checkpoint_round_trip_and_resume_equals_uninterrupted(tmp_path, mnist):
    data = tiny(mnist)
    straight = Trainer(tiny_cfg(epochs=2), data, tmp_path / "a", quiet=True)
    straight.fit(log=None)
    half = Trainer(tiny_cfg(epochs=1), data, tmp_path / "b", quiet=True)
    half.fit(log=None)
    resumed = Trainer(tiny_cfg(epochs=2), data, tmp_path / "b", quiet=True)
    resumed.fit(resume=True, log=None)
    assert resumed.epoch == 2
    for (n, p), (_, q) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(p, q), n
    # the checkpoint reloads into an identical model, and the log holds one line per epoch
    model = load(tmp_path / "b" / LAST)
    for (n, p), (_, q) in zip(model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(p, q), n
    assert model.checkpoint_metadata["epoch"] == 2 and model.config.epochs == 2
    assert len((tmp_path / "b" / METRICS).read_text().splitlines()) == 2
    assert (tmp_path / "b" / BEST).exists()


def test_resume_completes_a_save_cut_short_after_the_train_state(tmp_path, mnist):
    """A kill between the train state's write (the commit point) and the files derived from it
    leaves last/best/metrics one save behind, or absent after the first save: the resume writes
    them again from the state, so the folder ends as an uninterrupted run's."""
    from noprop.runfolder import STATE
    data = tiny(mnist)
    straight = Trainer(tiny_cfg(epochs=2), data, tmp_path / "a", quiet=True)
    straight.fit(log=None)
    b = tmp_path / "b"
    Trainer(tiny_cfg(epochs=2), data, b, quiet=True).fit(log=None, stop=lambda history: True)  # 1 epoch
    behind = {f: (b / f).read_bytes() for f in (LAST, BEST, METRICS)}
    Trainer(tiny_cfg(epochs=2), data, b, quiet=True).fit(resume=True, log=None)
    for f, content in behind.items():  # the second save wrote its state, then the kill came
        (b / f).write_bytes(content)
    assert checkpoint.load(b / STATE)["epoch"] == 2 and load(b / LAST).checkpoint_metadata["epoch"] == 1
    Trainer(tiny_cfg(epochs=2), data, b, quiet=True).fit(resume=True, log=None)
    for folder in (tmp_path / "a", b):
        model = load(folder / LAST)
        assert model.checkpoint_metadata["epoch"] == 2
        for (n, p), (_, q) in zip(model.state_dict().items(), straight.model.state_dict().items()):
            assert torch.equal(p, q), n
    assert (b / METRICS).read_text().count("\n") == 2
    assert load(b / BEST).checkpoint_metadata["epoch"] == load(tmp_path / "a" / BEST).checkpoint_metadata["epoch"]
    # killed inside the first save: the state alone is enough to continue
    c = tmp_path / "c"
    Trainer(tiny_cfg(epochs=2), data, c, quiet=True).fit(log=None, stop=lambda history: True)
    for f in (LAST, BEST, METRICS):
        (c / f).unlink()
    Trainer(tiny_cfg(epochs=2), data, c, quiet=True).fit(resume=True, log=None)
    model = load(c / LAST)
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), straight.model.state_dict().values()))
    assert (c / METRICS).read_text().count("\n") == 2


def test_existing_run_is_not_overwritten(tmp_path, mnist):
    data = tiny(mnist)
    Trainer(tiny_cfg(), data, tmp_path / "r", quiet=True).fit(log=None)
    before = (tmp_path / "r" / LAST).read_bytes()
    with pytest.raises(RunDirError, match="already holds a run"):
        Trainer(tiny_cfg(), data, tmp_path / "r", quiet=True).fit(log=None)
    with pytest.raises(RunDirError, match="different settings.*lr"):
        Trainer(tiny_cfg(lr=0.1, epochs=2), data, tmp_path / "r", quiet=True).fit(resume=True, log=None)
    assert (tmp_path / "r" / LAST).read_bytes() == before


def test_nan_loss_stops_with_block_and_step_and_keeps_checkpoint(tmp_path, mnist, monkeypatch):
    data = tiny(mnist)
    tr = Trainer(tiny_cfg(order="paper", epochs=2), data, tmp_path / "r", quiet=True)
    tr.cfg.epochs = 1
    tr.fit(log=None)
    before = (tmp_path / "r" / LAST).read_bytes()
    tr.cfg.epochs = 2
    real = tr.model.denoise_loss

    def poisoned(t, x, y):
        out = real(t, x, y)
        return out * float("nan") if t == 2 else out
    monkeypatch.setattr(tr.model, "denoise_loss", poisoned)
    with pytest.raises(DivergenceError, match="block 2, step 0"):
        tr.fit(resume=True, log=None)
    assert (tmp_path / "r" / LAST).read_bytes() == before


def test_a_loss_given_as_the_older_dict_reads_as_the_same_loss():
    """A method of one's own written before Loss returns {"loss": total, parts..., optionally
    "shared_part" and "block_part"}: the trainer reads it through Loss.of, parts in their order."""
    ce, kl, l2 = torch.tensor(1.0), torch.tensor(2.0), torch.tensor([3.0, 4.0])
    loss = Loss.of({"loss": ce + kl + l2.sum(), "ce": ce, "kl": kl, "l2": l2,
                    "shared_part": ce + kl, "block_part": l2.sum()})
    assert list(loss.logged()) == ["loss", "ce", "kl", "l2"] and float(loss.total) == 10.0
    assert (float(loss.shared_part), float(loss.block_part)) == (3.0, 7.0)
    assert Loss.of(loss) is loss
    with pytest.raises(ValueError, match="both shared_part and block_part"):
        Loss(ce, {"ce": ce}, shared_part=ce)


def test_unwritable_output_folder_is_named(tmp_path, mnist):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            # root ignores permission bits: use a path under a regular file instead
            target = tmp_path / "file"
            target.write_text("")
            target = target / "run"
        else:
            target = ro / "run"
        with pytest.raises(RunDirError, match="cannot write"):
            Trainer(tiny_cfg(), tiny(mnist), target, quiet=True).fit(log=None)
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("field,value,option", [
    ("T", 0, "--T"), ("lr", -1.0, "--lr"), ("order", "sideways", "--order"),
    ("embedding", "sparse", "--embedding"), ("batch_size", 1, "--batch-size"), ("eta", 0, "--eta"),
])
def test_bad_config_names_the_option(field, value, option):
    with pytest.raises(ConfigError, match=option):
        Config(**{field: value}).validate()


@pytest.mark.parametrize("embedding,head,order", [
    ("learned", "posterior", "random"), ("prototype", "linear", "paper"), ("one-hot", "linear", "random"),
])
def test_every_embedding_head_and_order_trains_and_reloads(tmp_path, mnist, embedding, head, order):
    from noprop.evaluation import predict
    cfg = tiny_cfg(embedding=embedding, head=head, order=order)
    tr = Trainer(cfg, tiny(mnist), tmp_path / "r", quiet=True)
    tr.fit(log=None)
    assert all(torch.isfinite(torch.tensor(v)) for v in tr.history[-1]["l2_per_block"])
    if embedding == "prototype":  # rows start as training images of their class, then move
        assert tr.model.embed.weight.shape == (10, 784)
    model = load(tmp_path / "r" / LAST)
    val = tiny(mnist).val
    assert torch.equal(predict(model, val, seed=2), predict(tr.model, val, seed=2))


def test_cosine_lr_schedule_closed_form_and_applied(tmp_path, mnist):
    tr = Trainer(tiny_cfg(epochs=2, lr=1e-3, lr_schedule="cosine"), tiny(mnist), tmp_path / "run", quiet=True)
    assert lr_at(tr.cfg, 0) == pytest.approx(1e-3)
    assert lr_at(tr.cfg, 1) == pytest.approx(0.5e-3)            # half-way through 2 epochs: lr / 2
    assert lr_at(tr.cfg, 0.5) == pytest.approx(1e-3 * (1 + 2 ** -0.5) / 2)
    assert lr_at(tr.cfg, 2) == pytest.approx(0.0, abs=1e-15)
    tr.fit(log=None)
    # the last step of 2 x 8 batches ran at progress 15/16 of the way: lr (1 + cos(15 pi / 16)) / 2
    last = tr.block_opts[1].param_groups[0]["lr"]
    assert last == pytest.approx(1e-3 * (1 + math.cos(15 / 16 * math.pi)) / 2)
    assert tr.shared_opt.param_groups[0]["lr"] == last
    const = Trainer(tiny_cfg(lr=2e-3), tiny(mnist), tmp_path / "const", quiet=True)
    assert lr_at(const.cfg, 0.7) == 2e-3
    with pytest.raises(ConfigError, match="--lr-schedule"):
        tiny_cfg(lr_schedule="linear").validate()


def test_fit_stops_when_told_with_the_whole_history(tmp_path, mnist):
    tr = Trainer(tiny_cfg(epochs=5), tiny(mnist), tmp_path / "run", quiet=True)
    seen = []
    tr.fit(log=None, stop=lambda h: seen.append(len(h)) or len(h) >= 2)
    assert tr.epoch == 2 and seen == [1, 2]


def test_a_budget_far_shorter_than_one_epoch_trains_every_block_and_beats_chance(tmp_path, mnist):
    """Algorithm 1's order under a time budget of about a third of one epoch: the budget is divided
    among the epoch's block passes, so all T = 10 blocks train, in order, each on its share of the
    images, and the model beats chance on validation. (Before, the budget ran out during block 4's
    pass: blocks 4-10 never trained and every rule read chance.) The budget is set from this
    machine's fastest step, so the test asks the same of a fast and a slow CPU, and the epoch is
    cut whatever else slows the steps down."""
    from noprop.runner import run
    data = tiny(mnist, n=6400, nval=1000)
    data.test = subset(mnist.test, 1000)
    cfg = dict(T=10, epochs=1, batch_size=128, order="paper", train_subset=6400, val_subset=1000)
    one_thread = device.threads(1)  # the suite's processes share the cores: no thread waits on a busy one
    one_thread.__enter__()
    probe = Trainer(Config(**cfg), data, None, quiet=True)
    x, y = probe._batch(data.train.x[:128], data.train.y[:128])
    fastest = math.inf
    for _ in range(10):
        t = time.perf_counter()
        probe.step([1], x, y, "probe", 0.0)
        fastest = min(fastest, time.perf_counter() - t)
    epoch_seconds = fastest * 50 * 10  # at least: 50 steps per pass, 10 passes
    logs = []
    try:
        tr, result = run(Config(**cfg, minutes=0.4 * epoch_seconds / 60), data, tmp_path / "run", eval_runs=1,
                         quiet=True, log=logs.append)
    finally:
        one_thread.__exit__(None, None, None)
    steps = tr.history[-1]["steps_per_block"]
    assert all(n >= 1 for n in steps) and result["untrained_blocks"] == [] and result["steps_per_block"] == steps
    assert sum(steps) < 50 * 10, steps  # the epoch was cut: every pass took its share only
    assert "each block trained on its share" in logs[0] and not any("WARNING" in line for line in logs)
    # 1,000 validation images: chance is 10% with a standard error of 1 point
    assert max(v["mean"] for v in result["val"].values()) > 20.0, result["val"]


def test_a_run_that_ends_with_blocks_untrained_says_so_on_screen_and_in_its_result(tmp_path, mnist):
    """One block drawn per step (order random) and a budget spent after the first step: the other
    blocks never trained, and the run says which, in its log and in result.json."""
    from noprop.runner import describe_result, run
    logs = []
    cfg = tiny_cfg(order="random", T=4, minutes=1e-9)
    _, result = run(cfg, tiny(mnist), tmp_path / "run", eval_runs=1, quiet=True, log=logs.append)
    assert sum(result["steps_per_block"]) == 1 and len(result["untrained_blocks"]) == 3
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["untrained_blocks"] == result["untrained_blocks"]
    assert any(line.startswith("WARNING: 3 of 4 blocks never trained") for line in logs)
    assert "WARNING: 3 of 4 blocks never trained" in describe_result(result, cfg)


def test_a_budget_stop_inside_a_pass_of_every_block_resumes_exactly(tmp_path, mnist):
    """Order all (one pass per epoch training every block): the budget is checked after every step,
    the stop records the step and the RNG state, and a resume finishes the epoch with the weights of
    an uninterrupted run (each pass draws its data order and noise from (seed, epoch) alone)."""
    data = tiny(mnist)
    straight = Trainer(tiny_cfg(order="all", T=3), data, tmp_path / "a", quiet=True)
    straight.fit(log=None)
    cut = Trainer(tiny_cfg(order="all", T=3, minutes=1e-9), data, tmp_path / "b", quiet=True)
    cut.fit(log=None)
    assert cut.epoch == 0 and cut.steps_done == 1 and cut.history[-1]["steps_per_block"] == [1, 1, 1]
    assert (tmp_path / "b" / LAST).exists()  # saved, evaluable
    resumed = Trainer(tiny_cfg(order="all", T=3), data, tmp_path / "b", quiet=True)
    resumed.fit(resume=True, log=None)
    assert resumed.epoch == 1 and resumed.steps_done == 0
    for (n, p), (_, q) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(p, q), n


def test_a_one_network_budget_stops_mid_epoch_and_resume_continues_exactly(tmp_path, mnist):
    """A one-network method's only pass is the whole epoch, so its budget is checked after every
    step: the stop records the step and the RNG state, and the resume finishes the epoch with the
    weights of an uninterrupted run."""
    data = tiny(mnist)
    cfg = dict(method="fm", steps=3)
    straight = Trainer(tiny_cfg(**cfg), data, tmp_path / "a", quiet=True)
    straight.fit(log=None)
    cut = Trainer(tiny_cfg(**cfg, minutes=1e-9), data, tmp_path / "b", quiet=True)
    cut.fit(log=None)
    assert cut.epoch == 0 and cut.steps_done == 1 and cut.history[-1]["steps_trained"] == 1
    resumed = Trainer(tiny_cfg(**cfg), data, tmp_path / "b", quiet=True)
    resumed.fit(resume=True, log=None)
    assert resumed.epoch == 1 and resumed.steps_done == 0
    for (n, p), (_, q) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(p, q), n


def test_the_inference_rule_is_chosen_on_validation_never_on_test(mnist, monkeypatch):
    """final_evaluation names the rule with the best validation accuracy, even where the test set
    would rank the rules the other way; the time-to-accuracy row judges its target by that rule."""
    from noprop import evaluation
    from noprop.tools import bench
    d = tiny(mnist)
    scores = {id(d.val): {"stochastic": 90.0, "no-noise": 95.0}, id(d.test): {"stochastic": 99.5, "no-noise": 98.0}}

    def fake_rules(model, split, runs, ensemble, seed, rules, **kw):
        return {r: {"runs": [scores[id(split)][r]] * runs, "mean": scores[id(split)][r], "se": 0.0} for r in rules}

    monkeypatch.setattr(evaluation, "rules_accuracy", fake_rules)
    ev = evaluation.final_evaluation(None, d, runs=2)
    assert ev["rule_chosen_on_val"] == "no-noise"
    assert ev["val"]["no-noise"]["mean"] == 95.0 and ev["test"]["stochastic"]["mean"] == 99.5
    row = bench._tta_row(99.0, 1.0, 2.0, 1, [95.0], "fp32", "paper", "constant", 1, {}, ev, 1)
    assert row["rule_chosen_on_val"] == "no-noise" and row["test_acc_chosen_rule"] == 98.0
    assert not row["reached"]  # the paper's rule's 99.5 on test does not count: validation chose no-noise


def test_a_trained_model_reports_validation_accuracy_under_each_rule(mnist):
    from noprop.evaluation import final_evaluation, predict_proba
    d = tiny(mnist)
    tr = Trainer(tiny_cfg().validate(), d, None, quiet=True)
    tr.fit()
    ev = final_evaluation(tr.model, d, runs=1, ensemble=3)
    # each rule's number is the accuracy of its own seed-0 run on the validation images, not the test's
    own = {}
    for rule, kw in {"stochastic": {}, "no-noise": dict(noise=False), "ensemble-3": dict(ensemble=3)}.items():
        predicted = predict_proba(tr.model, d.val.x, seed=0, **kw).argmax(-1)
        own[rule] = 100.0 * (predicted == d.val.y).float().mean().item()
        assert ev["val"][rule]["runs"] == [own[rule]] and ev["val"][rule]["mean"] == own[rule], (rule, ev["val"])
    assert list(ev["val"]) == list(own)
    # the rule named is the first of the best in that order (ties go to the paper's rule)
    assert ev["rule_chosen_on_val"] == next(r for r in own if own[r] == max(own.values())), own


def test_an_evaluation_that_will_outlast_training_is_announced_with_what_sets_its_cost(mnist):
    """The estimate times the evaluation's own plan on 100 test images and scales it to the test set;
    the warning appears only when that passes both the training time and a minute."""
    from noprop.evaluation import evaluation_estimate, evaluation_warning
    d = tiny(mnist)
    d.test = subset(mnist.test, 300)
    tr = Trainer(tiny_cfg(), d, None, quiet=True)
    assert evaluation_estimate(tr.model, d, 1, 0, 1) > 0
    assert evaluation_warning(50.0, 10.0, 5, 0, 10_000) is None     # under a minute
    assert evaluation_warning(100.0, 200.0, 5, 0, 10_000) is None    # shorter than training
    msg = evaluation_warning(2040.0, 229.0, 1, 10, 55_000)
    assert "34.0 min" in msg and "3.8 min" in msg and "10-chain ensemble" in msg and "--ensemble" in msg
