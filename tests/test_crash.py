"""Crash safety with real processes: kill -9 at random moments, --resume, and the same weights."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from noprop import checkpoint

pytestmark = pytest.mark.slow  # real data, real processes: left out by `make test`, run by `make test-slow` and CI

ARGS = ["train", "-T", "2", "--train-subset", "1024", "--val-subset", "64", "--test-subset", "100",
        "--batch-size", "32",
        "--epochs", "4", "--eval-runs", "1", "--threads", "1", "--quiet", "--deterministic"]


def start(out, resume=False):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.Popen([sys.executable, "-m", "noprop", *ARGS, "--out", str(out)]
                            + (["--resume"] if resume else []),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_random_kills_then_resume_give_the_uninterrupted_weights(tmp_path):
    ref = start(tmp_path / "ref")
    t0 = time.time()
    assert ref.wait(timeout=600) == 0, ref.stderr.read()
    full = time.time() - t0
    rng = random.Random(1234)
    out = tmp_path / "killed"
    kills = 0
    for _ in range(5):  # kill at a random moment of the run: a step, validation, a write
        # a kill before the first checkpoint leaves nothing to resume: the user starts again
        p = start(out, resume=(out / "train_state.safetensors").exists())
        # a resumed run has less left to do than a whole one: drawing the moment from the first 60%
        # of a full run's time keeps the kills landing (a run that ends first is not a kill)
        time.sleep(rng.uniform(0.3, 0.6 * full))
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        p.wait(timeout=60)
        # whatever survived is whole; the weights file may be a save behind the train state, or
        # absent after a kill inside the first save (the resume writes it again: complete_save)
        if (out / "train_state.safetensors").exists():
            checkpoint.load(out / "train_state.safetensors")
        if (out / "last.safetensors").exists():
            checkpoint.load_weights(out / "last.safetensors")
    assert kills >= 3
    p = start(out, resume=True)
    assert p.wait(timeout=600) == 0, p.stderr.read()
    a = checkpoint.load(tmp_path / "ref" / "train_state.safetensors")
    b = checkpoint.load(out / "train_state.safetensors")
    assert a["epoch"] == b["epoch"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    weights, meta = checkpoint.load_weights(out / "last.safetensors")  # the portable file agrees
    assert meta["epoch"] == 4 and all(torch.equal(weights[k], b["model"][k]) for k in weights)
    assert (out / "result.json").exists()
    leftovers = [f.name for f in out.iterdir() if f.name.endswith(".tmp")]
    assert leftovers == [], leftovers


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path):
    """A write that fails (file-size limit: the disk 'fills' at 1 MB) stops the run with a clear
    error, exit code 2, and the last good checkpoint untouched."""
    import resource
    out = tmp_path / "r"
    args = [sys.executable, "-m", "noprop", *ARGS, "--out", str(out)]
    args[args.index("--epochs") + 1] = "1"
    assert subprocess.run(args, capture_output=True, timeout=600).returncode == 0
    before = (out / "last.safetensors").read_bytes()
    state_before = (out / "train_state.safetensors").read_bytes()

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    args[args.index("--epochs") + 1] = "2"
    r = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600, preexec_fn=small_disk)
    assert r.returncode == 2, r.stderr
    assert "checkpoint failed" in r.stderr and "previous checkpoint is intact" in r.stderr
    assert "Traceback" not in r.stderr
    assert (out / "last.safetensors").read_bytes() == before
    assert (out / "train_state.safetensors").read_bytes() == state_before
    assert checkpoint.load(out / "train_state.safetensors")["epoch"] == 1


def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    def metrics(name, seed):
        out = tmp_path / name
        args = [sys.executable, "-m", "noprop", *ARGS, "--out", str(out), "--seed", str(seed)]
        args[args.index("--epochs") + 1] = "1"
        assert subprocess.run(args, capture_output=True, timeout=600).returncode == 0
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        # wall times and peak memory are measurements of the machine, not results of the seed
        return [{k: v for k, v in r.items() if "seconds" not in k and k != "peak_memory_mb"} for r in rows]
    a, b, c = metrics("a", 0), metrics("b", 0), metrics("c", 1)
    assert a == b
    assert a != c
