"""Crash safety with real processes: kill -9 at random moments, --resume, and the same weights."""

import os
import random
import signal
import subprocess
import sys
import time

import torch

from noprop import checkpoint

ARGS = ["train", "-T", "2", "--train-subset", "1024", "--val-subset", "64", "--batch-size", "32",
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
    for attempt in range(5):  # kill at a random moment of the run: a step, validation, a write
        p = start(out, resume=attempt > 0)
        time.sleep(rng.uniform(0.3, full))
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        p.wait(timeout=60)
        if (out / "last.safetensors").exists():
            checkpoint.load(out / "last.safetensors")  # whatever survived is a whole checkpoint
    assert kills >= 3
    p = start(out, resume=True)
    assert p.wait(timeout=600) == 0, p.stderr.read()
    a = checkpoint.load(tmp_path / "ref" / "last.safetensors")
    b = checkpoint.load(out / "last.safetensors")
    assert a["epoch"] == b["epoch"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert (out / "result.json").exists()
    leftovers = [f.name for f in out.iterdir() if f.name.endswith(".tmp")]
    assert leftovers == [], leftovers
