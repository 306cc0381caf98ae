"""Options belong to their method: the declarations (Method.options) make the CLI's flags and the
checks, an option given to a method that does not take it is refused with the methods that take it,
config.json round-trips, and what version 0.2 (commit 5b91a6a) wrote still loads and resumes."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from noprop import checkpoint, cli
from noprop.config import Config, ConfigError
from noprop.methods import get_method, method_names
from noprop.models import load
from noprop.options import flag

ROOT = Path(__file__).resolve().parent.parent
OLD = ROOT / "tests" / "data" / "old-run-5b91a6a"  # written by 5b91a6a's code (see its tiny_chain.py)
BUILTIN = ("dt", "ct", "fm", "backprop", "adjoint", "cnn")


def declared() -> dict[str, list[str]]:
    """option name -> the built-in methods that declare it."""
    out: dict[str, list[str]] = {}
    for m in method_names():
        if m in BUILTIN:
            for name in get_method(m).options:
                out.setdefault(name, []).append(m)
    return out


def test_the_done_when_command_exits_2_with_one_line():
    r = subprocess.run([sys.executable, "-m", "noprop", "train", "--method", "fm", "--eta", "0.5"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr == "noprop: error: --eta: NoProp-FM does not take it; it is an option of dt, ct\n"


def test_every_option_given_to_a_method_that_does_not_take_it_exits_2_naming_the_takers(capsys):
    options = declared()
    assert {"T", "eta", "head", "posterior_sigma", "head_init", "schedule_eps", "steps", "solver", "fm_sigma",
            "logit_scale"} <= set(options)
    refused = 0
    for method in BUILTIN:
        cls = get_method(method)
        for name, takers in options.items():
            if name in cls.options:
                continue
            value = get_method(takers[0]).options[name].default
            assert cli.main(["train", "--method", method, flag(name), str(value)]) == 2, (method, name)
            err = capsys.readouterr().err
            assert err == (f"noprop: error: {flag(name)}: {cls.display_name} does not take it; it is an option of "
                           f"{', '.join(takers)}\n"), (method, name)
            refused += 1
    assert refused >= 40  # e.g. cnn refuses all 10 names, dt 4


def test_options_are_checked_against_the_methods_declarations():
    for kw, message in [(dict(method="dt", T=0), "--T: must be an integer >= 1, got 0"),
                        (dict(method="dt", T=2.5), "--T: must be an integer, got 2.5"),
                        (dict(method="ct", solver="heun", eta=-1.0), "--eta: must be > 0, got -1.0"),
                        (dict(method="fm", solver="stochastic"), "--solver: 'stochastic' does not apply to NoProp-FM"),
                        (dict(method="backprop", head_init="bayes"), "--head-init: 'bayes' does not apply to Backprop"),
                        (dict(method="dt", schedule_eps=0.5), "--schedule-eps: must be in (0, 0.5), got 0.5"),
                        (dict(method="cnn", width=3), "--width: CNN (not in the paper) does not take it, nor does")]:
        with pytest.raises(ConfigError) as e:
            Config(**kw).validate()
        assert str(e.value).startswith(message), (kw, str(e.value))


def test_a_validated_config_holds_exactly_its_methods_options_and_round_trips(tmp_path):
    given = {"dt": dict(T=3, eta=0.2, head="posterior", head_init="random"), "ct": dict(eta=2, solver="heun"),
             "fm": dict(steps=7, fm_sigma=0.1), "backprop": dict(logit_scale=3.0), "adjoint": dict(steps=9),
             "cnn": {}}
    for method, options in given.items():
        cfg = Config(method=method, lr=2e-3, **options).validate()
        assert list(cfg.method_options) == list(get_method(method).options)  # every one, in declaration order
        for name, value in options.items():
            assert getattr(cfg, name) == value and type(getattr(cfg, name)) is get_method(method).options[name].type
        path = tmp_path / f"{method}.json"
        path.write_text(cfg.to_json())
        saved = json.loads(path.read_text())
        assert saved["method_options"] == cfg.method_options and "eta" not in saved and "extra" not in saved
        again = Config.from_json_file(path)
        assert again == cfg and again.differences(cfg) == []
    dt = Config(method="dt", T=3).validate()
    assert dt.differences(Config(method="dt", T=4).validate()) == ["T"]
    assert Config(method="dt", T=3).to_dict()["method_options"] == {"T": 3}  # before validate: what was given


def test_config_files_of_version_0_2_load_with_the_options_their_method_takes():
    """configs.json: 5b91a6a's Config(method=m, **options).validate().to_dict() for each method: every
    option flat, null for "the method's default", "extra": {}. The options a method ignored then
    (cnn was given eta 0.5) are dropped, the rest are kept, nulls take the method's default."""
    old = json.loads((OLD / "configs.json").read_text())
    expected = {"dt": dict(T=4, eta=0.2, head="posterior", posterior_sigma=1.0, head_init="bayes", schedule_eps=0.01),
                "ct": dict(eta=1.0, steps=20, solver="euler"), "fm": dict(steps=30, solver="euler", fm_sigma=0.1),
                "backprop": dict(T=3, head_init="decoder", logit_scale=3.0), "adjoint": dict(steps=40, solver="euler"),
                "cnn": {}}
    for method, d in old.items():
        assert "extra" in d and "eta" in d and "method_options" not in d  # really the old format
        cfg = Config.from_dict(d)
        assert cfg.method_options == expected[method], method
        assert cfg.differences(Config(method=method, **expected[method]).validate()) == [], method


def test_a_run_folder_written_by_5b91a6a_resumes_and_evaluates(tmp_path, monkeypatch, capsys):
    """The folder holds what 5b91a6a's `noprop train --plugin tiny_chain.py --method tiny-chain -T 2
    --eta 0.5 --epochs 2` wrote (best.safetensors left out), its config.json in the flat format.
    Today's code evaluates its weights, resumes it for a third epoch from its config.json, and the
    options it was trained with (T = 2 blocks, eta 0.5) are the ones the resumed run keeps."""
    monkeypatch.chdir(ROOT)  # the run recorded its data and plugin relative to the repository
    run = tmp_path / "run"
    shutil.copytree(OLD / "run", run)
    assert "method_options" not in json.loads((run / "config.json").read_text())
    model = load(run / "last.safetensors")
    assert (model.num_blocks, model.eta, model.config.method_options) == (2, 0.5, {"T": 2, "eta": 0.5})
    assert cli.main(["evaluate", str(run / "last.safetensors"), "--runs", "1", "--json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert before["mean"] == json.loads((OLD / "run" / "result.json").read_text())["test"]["stochastic"]["mean"]

    assert cli.main(["train", "--config", str(run / "config.json"), "--epochs", "3", "--resume", "--out", str(run),
                     "--quiet", "--eval-runs", "1", "--threads", "1"]) == 0
    capsys.readouterr()
    state = checkpoint.load(run / "train_state.safetensors")
    assert state["epoch"] == 3 and [h["epoch"] for h in state["history"]] == [1, 2, 3]
    assert json.loads((run / "config.json").read_text())["method_options"] == {"T": 2, "eta": 0.5}
    assert cli.main(["evaluate", str(run / "last.safetensors"), "--runs", "1", "--json"]) == 0
    after = json.loads(capsys.readouterr().out)
    assert after["mean"] > 25.0  # 4 classes; the bands make them easy


def test_resuming_with_another_value_of_an_option_the_method_takes_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    run = tmp_path / "run"
    shutil.copytree(OLD / "run", run)
    assert cli.main(["train", "--config", str(run / "config.json"), "--eta", "0.25", "--epochs", "3", "--resume",
                     "--out", str(run), "--quiet", "--threads", "1"]) == 2
    assert "different settings (eta)" in capsys.readouterr().err
