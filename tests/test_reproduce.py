"""`noprop reproduce` on a tiny grid: the report folder, skipping with reasons, resumability."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # real data, real processes: left out by `make test`, run by `make test-slow` and CI


def reproduce(*args):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("NOPROP_DATA", None)
    return subprocess.run([sys.executable, "-m", "noprop", "reproduce", *args], capture_output=True, text=True,
                          timeout=900, env=env)


GRID = ["--datasets", "mnist", "cifar10", "--methods", "dt", "fm", "--embeddings", "one-hot", "--seeds", "0",
        "--epochs", "1", "--steps", "3", "--train-subset", "256", "--val-subset", "64", "--test-subset", "200",
        "--eval-runs", "2", "--offline"]


def test_tiny_grid_report_and_resume(tmp_path):
    out = tmp_path / "rep"
    r = reproduce(*GRID, "--out", str(out))
    assert r.returncode == 0, r.stderr
    report = (out / "report.md").read_text()
    assert "NoProp-DT (one-hot)" in report and "99.47 ± 0.05" in report     # ours beside the paper's
    assert "NoProp-FM (one-hot)" in report and "99.21 ± 0.09" in report
    assert "Smoke runs" in report                                            # test_subset is declared
    assert "cifar10-dt-one-hot-s0: skipped: data not available" in report   # CIFAR is absent here
    assert "Training memory" in report and "paper (GPU, GB)" in report
    for png in ("accuracy.png", "blocks-mnist-dt-one-hot-s0.png", "trajectory-mnist-dt-one-hot-s0.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png
    cells = json.loads((out / "cells.json").read_text())
    assert {c["status"] for c in cells if c["dataset"] == "mnist"} == {"done"}
    # run again: finished cells are kept, not retrained
    ckpt = out / "runs" / "mnist-dt-one-hot-s0" / "last.safetensors"
    before = ckpt.stat().st_mtime_ns
    r = reproduce(*GRID, "--out", str(out), "--no-memory")
    assert r.returncode == 0, r.stderr
    assert ckpt.stat().st_mtime_ns == before
    assert "training" not in r.stdout


def test_budget_spent_skips_with_reason(tmp_path):
    r = reproduce("--datasets", "mnist", "--methods", "dt", "--embeddings", "one-hot", "--seeds", "0",
                  "--budget-hours", "0", "--out", str(tmp_path / "rep"), "--no-memory")
    assert r.returncode == 0, r.stderr
    assert "time budget" in (tmp_path / "rep" / "report.md").read_text()


def test_cell_minutes_stop_each_cell_after_the_epoch_that_spends_them(tmp_path):
    out = tmp_path / "rep"
    r = reproduce("--datasets", "mnist", "--methods", "dt", "ct", "--embeddings", "one-hot", "--seeds", "0",
                  "--epochs", "3", "--cell-minutes", "0.0001", "--steps", "3", "--train-subset", "256",
                  "--val-subset", "64", "--test-subset", "200", "--eval-runs", "1", "--offline",
                  "--out", str(out), "--no-memory")
    assert r.returncode == 0, r.stderr
    for cell in ("mnist-dt-one-hot-s0", "mnist-ct-one-hot-s0"):
        assert json.loads((out / "runs" / cell / "result.json").read_text())["epochs"] == 1
    assert ", 1 ep" in (out / "report.md").read_text()
    bad = reproduce("--methods", "dt", "--cell-minutes", "0", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "--cell-minutes" in bad.stderr
