"""noprop as a library: a method defined here (outside the package) trains and evaluates through the
Python API and the CLI; portable checkpoints; reruns from config.json; the run-folder errors."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

import noprop
from noprop import checkpoint, cli

pytestmark = pytest.mark.slow  # real data, real processes: left out by `make test`, run by `make test-slow` and CI

HERE = Path(__file__).resolve()
SMALL = dict(train_subset=2048, val_subset=200, test_subset=500, batch_size=64)


@noprop.register_method
class TinyLinear(noprop.Method):
    """The smallest method the interface allows: a linear softmax classifier on the pixels, trained
    by cross-entropy. Defined in a test file, registered here, not in the package."""
    name = "tiny-linear"
    display_name = "Tiny linear (a test's)"
    in_paper = False

    def __init__(self, image_shape, num_classes):
        super().__init__()
        self.num_classes = num_classes
        self.linear = nn.Linear(math.prod(image_shape), num_classes)

    @classmethod
    def from_config(cls, cfg, image_shape, num_classes, embedding):
        return cls(image_shape, num_classes)

    def loss(self, x, y, blocks=None):
        ce = F.cross_entropy(self.final_latent(x), y)
        return noprop.Loss(ce, {"ce": ce})

    def final_latent(self, x, noise=True, generator=None, steps=None, solver=None):
        return self.linear(x.reshape(len(x), -1))

    def classify(self, z):
        return z


def cli_run(*args, cwd=None):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "noprop", *args], capture_output=True, text=True, timeout=600,
                          env=env, cwd=cwd)


def test_a_method_defined_in_a_test_file_trains_through_the_python_api(tmp_path):
    assert "tiny-linear" in noprop.METHODS and "tiny-linear" in noprop.method_names()
    run = noprop.train(noprop.Config(method="tiny-linear", epochs=2, **SMALL), eval_runs=2)
    assert isinstance(run.model, TinyLinear) and len(run.history) == 2
    assert run.history[-1]["ce"] < run.history[0]["ce"]
    assert run.result["test"]["stochastic"]["mean"] > 80.0, run.result["test"]
    res = noprop.evaluate(run.model, "val", runs=1, data=run.data)
    assert res["mean"] > 80.0 and res["rule"] == "stochastic"
    assert list(tmp_path.iterdir()) == []  # in memory: nothing written anywhere we look
    # and with a folder: its checkpoint loads back as the same method
    out = tmp_path / "run"
    noprop.train(noprop.Config(method="tiny-linear", epochs=1, **SMALL), out, eval_runs=1)
    model = noprop.load(out / "last.safetensors")
    assert isinstance(model, TinyLinear) and not model.training
    x = run.data.test.x[:50]
    assert model.predict(x).shape == (50,)


def test_the_same_method_through_the_cli_in_process_and_as_a_plugin(tmp_path, capsys):
    out = tmp_path / "in-process"
    args = ["train", "--method", "tiny-linear", "--epochs", "2", "--lr", "5e-3", "--train-subset", "2048",
            "--val-subset", "200", "--test-subset", "500", "--batch-size", "64", "--eval-runs", "1", "--quiet",
            "--out", str(out)]
    assert cli.main(args) == 0
    assert "test accuracy" in capsys.readouterr().out
    # a fresh process knows nothing of this file until --plugin imports it; config.json records it
    r = cli_run(*args[:-1], str(tmp_path / "plugin"), "--plugin", str(HERE))
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "plugin" / "result.json").read_text())
    assert f"test accuracy {result['test'][result['rule_chosen_on_val']]['mean']:.2f} +- " in r.stdout
    assert result["test_acc_mean"] > 80.0, r.stdout
    assert json.loads((tmp_path / "plugin" / "config.json").read_text())["plugins"] == [str(HERE)]
    r = cli_run("evaluate", str(tmp_path / "plugin" / "last.safetensors"), "--runs", "1", "--split", "val", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["mean"] > 80.0
    r = cli_run("train", "--method", "tiny-linear", "--out", str(tmp_path / "x"))  # without the plugin
    assert r.returncode == 2 and "unknown method 'tiny-linear'" in r.stderr and "--plugin" in r.stderr


def test_checkpoint_weights_load_with_plain_safetensors_and_carry_their_provenance(tmp_path):
    out = tmp_path / "r"
    run = noprop.train(noprop.Config(T=2, epochs=1, **SMALL), out, eval_runs=1)
    weights = safetensors.torch.load_file(out / "last.safetensors")
    fresh = noprop.NoPropDT((1, 28, 28), noprop.ClassEmbedding("one-hot", 10), T=2)
    fresh.load_state_dict(weights, strict=True)  # no noprop code between the file and the module
    for k, v in run.model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    with safe_open(str(out / "last.safetensors"), framework="pt") as f:
        meta = f.metadata()
    cfg = json.loads(meta["config"])
    assert cfg["method_options"]["T"] == 2 and meta["noprop_version"] == noprop.__version__
    assert meta["git_commit"] and json.loads(meta["epoch"]) == 1
    result = json.loads((out / "result.json").read_text())
    assert result["noprop_version"] == noprop.__version__ and result["git_commit"] == meta["git_commit"]
    # the optimizer state and history live apart, in the train state
    state = checkpoint.load(out / "train_state.safetensors")
    assert state["epoch"] == 1 and len(state["block_opts"]) == 2 and len(state["history"]) == 1


def test_a_checkpoint_of_the_previous_format_still_loads(tmp_path):
    """Before 0.2 a checkpoint was one file of prefixed keys (s.model....) with the schedule's
    buffers among the weights."""
    torch.manual_seed(0)
    cfg = noprop.Config(T=2).validate()
    model = noprop.models.build(cfg, (1, 28, 28), 10)
    old_model = dict(model.state_dict())
    old_model.update(alpha_bar=torch.rand(3), coef_a=torch.rand(2), coef_b=torch.rand(2), coef_c=torch.rand(2),
                     l2_weight=torch.rand(2))
    checkpoint.save(tmp_path / "last.safetensors", {
        "config": cfg.to_dict(), "image_shape": [1, 28, 28], "num_classes": 10, "epoch": 3, "best_val": 90.0,
        "history": [], "model": old_model, "block_opts": [], "shared_opt": None})
    loaded = noprop.load(tmp_path / "last.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_rerun_from_config_json_repeats_the_first_epoch_exactly(tmp_path):
    args = ["--T", "2", "--epochs", "1", "--train-subset", "512", "--val-subset", "100", "--test-subset", "100",
            "--batch-size", "32", "--eval-runs", "1", "--quiet", "--deterministic", "--threads", "1", "--seed", "3",
            "--lr", "2e-3"]
    r = cli_run("train", *args, "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr
    r = cli_run("train", "--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "b"), "--quiet",
                "--eval-runs", "1", "--threads", "1")
    assert r.returncode == 0, r.stderr

    def first_epoch(d):
        row = json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[0])
        return {k: v for k, v in row.items() if "seconds" not in k and k != "peak_memory_mb"}
    assert first_epoch("a") == first_epoch("b")
    assert json.loads((tmp_path / "b" / "config.json").read_text())["lr"] == 2e-3
    # options given beside --config override its fields
    r = cli_run("train", "--config", str(tmp_path / "a" / "config.json"), "--lr", "1e-3", "--out",
                str(tmp_path / "c"), "--quiet", "--eval-runs", "1", "--epochs", "1")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "c" / "config.json").read_text())["lr"] == 1e-3
    assert first_epoch("c") != first_epoch("a")


@pytest.mark.parametrize("args,needle", [
    (["--resume"], "holds no run to continue"),
    (["--config", "{missing}"], "--config: cannot read"),
    (["--config", "{notjson}"], "is not JSON"),
    (["--config", "{cfg}", "--preset", "mnist-dt"], "give one"),
])
def test_run_folder_and_config_errors_are_one_line_with_exit_2(tmp_path, args, needle):
    (tmp_path / "not.json").write_text("{nope")
    (tmp_path / "cfg.json").write_text(noprop.Config().to_json())
    args = [a.format(missing=tmp_path / "none.json", notjson=tmp_path / "not.json", cfg=tmp_path / "cfg.json")
            for a in args]
    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli_run("train", "--out", str(empty), *args)
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    if "--resume" in args:
        assert str(empty) in r.stderr
        assert list(empty.iterdir()) == []  # nothing started there


def test_quickstart_example_runs(tmp_path):
    env = {**os.environ, "NOPROP_QUICKSTART_SUBSET": "1024", "OMP_WAIT_POLICY": "PASSIVE"}
    r = subprocess.run([sys.executable, str(HERE.parent.parent / "examples" / "quickstart.py")], capture_output=True,
                       text=True, timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout and "predicted" in r.stdout
