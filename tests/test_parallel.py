"""Block-parallel NoProp-DT with real processes on 127.0.0.1 (gloo)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from noprop import checkpoint
from noprop.parallel import owned_blocks

pytestmark = pytest.mark.slow  # real data, real processes: `make test-fast` leaves these out

TINY = ["-T", "4", "--train-subset", "512", "--val-subset", "64", "--batch-size", "32", "--eval-runs", "1",
        "--threads", "1", "--quiet"]


def noprop(*args, timeout=300, **kw):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "noprop", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


@pytest.mark.parametrize("T,world", [(10, 1), (10, 2), (10, 3), (10, 4), (4, 4), (7, 3)])
def test_owned_blocks_partition(T, world):
    parts = [owned_blocks(T, world, r) for r in range(world)]
    assert sum(parts, []) == list(range(1, T + 1))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert all(p == list(range(p[0], p[-1] + 1)) for p in parts)


def blocks_of(path: Path) -> dict:
    return {k: v for k, v in checkpoint.load_weights(path)[0].items() if k.startswith("blocks.")}


def test_two_workers_train_the_same_blocks_as_one_process(tmp_path):
    """Paper order, one-hot: block t's data order and noise depend only on (seed, epoch, t), so the
    blocks trained on two processes equal those trained on one. The checkpoints have one format:
    each kind resumes the other's."""
    r1 = noprop("train", *TINY, "--epochs", "1", "--out", str(tmp_path / "one"))
    r2 = noprop("train", *TINY, "--epochs", "1", "--workers", "2", "--out", str(tmp_path / "two"))
    assert r1.returncode == 0, r1.stderr
    assert r2.returncode == 0, r2.stderr
    a, b = blocks_of(tmp_path / "one" / "last.safetensors"), blocks_of(tmp_path / "two" / "last.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    # the metrics record each rank's peak memory
    mem = [json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[0])["peak_memory_mb"]
           for d in ("one", "two")]
    assert len(mem[0]) == 1 and len(mem[1]) == 2 and all(m > 50 for m in mem[0] + mem[1])
    # the parallel run's checkpoint resumes in one process, and the single one in two
    r = noprop("train", *TINY, "--epochs", "2", "--out", str(tmp_path / "two"), "--resume")
    assert r.returncode == 0, r.stderr
    r = noprop("train", *TINY, "--epochs", "2", "--workers", "2", "--out", str(tmp_path / "one"), "--resume")
    assert r.returncode == 0, r.stderr
    assert checkpoint.load(tmp_path / "one" / "train_state.safetensors")["epoch"] == 2
    r = noprop("evaluate", str(tmp_path / "one" / "last.safetensors"), "--runs", "1", "--split", "val")
    assert r.returncode == 0, r.stderr


def test_learned_embedding_stays_in_sync_in_all_order(tmp_path):
    # the trainer checks every epoch that the shared parameters are bit-identical on every rank
    r = noprop("train", *TINY, "--epochs", "1", "--workers", "2", "--order", "all", "--embedding", "learned",
               "--out", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout


@pytest.mark.parametrize("args,needle", [
    (["--workers", "5"], "--batch-size: the global batch of 32 does not split into 5"),
    (["--workers", "4", "--block-groups", "3"], "--block-groups: 3 does not divide the 4 workers"),
    (["--workers", "4", "--block-groups", "4", "-T", "2"], "--block-groups: 4 groups for 2 block(s)"),
    (["--workers", "2", "--block-groups", "2", "--order", "random"], "--order: random"),
    (["--workers", "2", "--method", "fm", "--block-groups", "2"], "--block-groups: 2 groups for 1 block(s)"),
])
def test_refusals(tmp_path, args, needle):
    r = noprop("train", *TINY, *args, "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "a").exists()


def children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def test_a_killed_worker_stops_the_others_and_the_run_resumes(tmp_path):
    out = tmp_path / "r"
    args = ["train", "-T", "4", "--train-subset", "2048", "--val-subset", "64", "--batch-size", "32",
            "--eval-runs", "1", "--threads", "1", "--quiet", "--epochs", "3", "--workers", "2", "--out", str(out)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    p = subprocess.Popen([sys.executable, "-m", "noprop", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    while not (out / "last.safetensors").exists() and time.time() < deadline:  # epoch 1 done
        time.sleep(0.5)
    assert (out / "last.safetensors").exists()
    kids = [c for c in children(p.pid) if "resource_tracker" not in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(kids) >= 2
    before = (out / "last.safetensors").read_bytes()
    t0 = time.time()
    os.kill(kids[-1], signal.SIGKILL)
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "killed by signal 9" in err, err
    assert time.time() - t0 < 60, "the surviving worker must stop promptly"
    assert checkpoint.load(out / "train_state.safetensors")["epoch"] >= 1  # a good checkpoint survived
    assert len(before) > 0
    r = noprop(*args, "--resume")
    assert r.returncode == 0, r.stderr
    assert checkpoint.load(out / "train_state.safetensors")["epoch"] == 3
