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

pytestmark = pytest.mark.slow  # real data, real processes: left out by `make test`, run by `make test-slow` and CI

TINY = ["-T", "4", "--train-subset", "512", "--val-subset", "64", "--test-subset", "100", "--batch-size", "32",
        "--eval-runs", "1",
        "--threads", "1", "--quiet"]


def noprop(*args, timeout=300, env=None, **kw):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **(env or {})}
    return subprocess.run([sys.executable, "-m", "noprop", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


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
    tiny = TINY[2:] if "fm" in args else TINY  # NoProp-FM takes no -T
    r = noprop("train", *tiny, *args, "--out", str(tmp_path / "a"))
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
    args = ["train", "-T", "4", "--train-subset", "1024", "--val-subset", "64", "--test-subset", "100",
            "--batch-size", "32",
            "--eval-runs", "1", "--threads", "1", "--quiet", "--epochs", "3", "--workers", "2", "--out", str(out)]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    p = subprocess.Popen([sys.executable, "-m", "noprop", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    while not (out / "last.safetensors").exists() and time.time() < deadline:  # epoch 1 done
        time.sleep(0.1)
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


# --- data-parallel and blocks x data ---------------------------------------------------------------
ONE_BATCH = ["--train-subset", "64", "--batch-size", "64", "--val-subset", "64", "--test-subset", "64",
             "--eval-runs", "1", "--threads", "1", "--quiet", "--deterministic", "--precision", "fp32", "--epochs", "1"]
STEPS = ["--steps", "4"]  # for the methods that take --steps


def initial_weights(method: str, **cfg) -> dict:
    """The weights a run starts from (the trainer seeds, then builds the model)."""
    from noprop import models
    from noprop.config import Config, taken_by
    c = Config(**taken_by(method, dict(method=method, precision="fp32", steps=4, **cfg))).validate()
    torch.manual_seed(c.seed)
    return {k: v.clone() for k, v in models.build(c, (1, 28, 28), 10).state_dict().items()}


def assert_same_updates(start: dict, a: dict, b: dict, rtol: float, keys=None) -> None:
    """The update each run made to every floating-point tensor (weights and BatchNorm statistics)
    agrees: ||(a - s) - (b - s)|| <= rtol ||a - s|| + 1e-7.

    For SGD runs, whose first update is lr (g + weight_decay w), linear in the gradient: the runs'
    updates then differ by the gradients' rounding, within GRADIENT_RTOL (below) of the gradient,
    and rtol 1e-2 leaves a factor 10 for later steps and BatchNorm statistics (float64 sums across
    shards against float32 in one process). The 1e-7 is for a tensor whose exact gradient is zero
    (a bias before a BatchNorm): what remains of its update is lr times a rounding error, <= 0.05 x
    gamma_64 x sum|t|, orders of magnitude below it. Not for Adam: its updates are not linear in
    the gradient (test_data_parallel_adam_steps_on_the_global_batchs_gradient)."""
    checked = 0
    for k in keys or a:
        if not a[k].is_floating_point():
            continue
        da, db = (a[k] - start[k]).double(), (b[k] - start[k]).double()
        assert (da - db).norm() <= rtol * da.norm() + 1e-7, (k, (da - db).norm().item(), da.norm().item())
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("method,host_sum", [("fm", "1"), ("ct", "1"), ("adjoint", "1"), ("backprop", "1"),
                                             ("cnn", "1"), ("dt", "1"), ("backprop", "0")])
def test_two_data_shards_make_the_update_of_one_process_with_the_global_batch(tmp_path, method, host_sum):
    """2 ranks with batch B each make the same update as 1 rank with batch 2B (B = 32): the data,
    the noise (deterministic mode draws it for the global batch) and BatchNorm's statistics are
    the global batch's, and the gradients are averaged. One step (DT: one step of each block, here
    all in one group of 2 shards). SGD: its update is linear in the gradient, where Adam's first step
    is the gradient's sign, which turns float rounding in gradients that are zero in exact
    arithmetic (biases before a BatchNorm) into +-lr. The ranks' sums go through shared memory
    (noprop/hostsum.py) or, with NOPROP_HOST_SUM=0, through gloo (as between machines)."""
    extra = ["--optimizer", "sgd", "--lr", "0.05"] + (["-T", "3", "--block-groups", "1"] if method == "dt" else []) \
        + (STEPS if method in ("ct", "fm", "adjoint") else [])
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        r = noprop("train", "--method", method, *ONE_BATCH, *extra, "--workers", str(workers), "--out", str(out),
                   env={"NOPROP_HOST_SUM": host_sum})
        assert r.returncode == 0, r.stderr
        outs[workers] = checkpoint.load_weights(out / "last.safetensors")[0]
    start = initial_weights(method, optimizer="sgd", lr=0.05, **({"T": 3} if method == "dt" else {}))
    assert_same_updates(start, outs[1], outs[2], rtol=1e-2)
    if method == "dt":
        result = json.loads((tmp_path / "w2" / "result.json").read_text())
        assert (result["workers"], result["block_groups"]) == (2, 1)


# How far apart float32 rounding alone can put the gradient of one global batch computed in one
# process and in D data shards, relative to the gradient (per tensor, in norm). The shards sum the
# same per-example terms in another order: one process reduces the batch of 64 in one kernel call,
# two ranks reduce 32 each and add the halves, and a kernel may block a batch of 32 differently from
# one of 64, down to the dot products of the forward pass. With u = 2^-24 (6e-8), the longest sum
# here has n = 64 x 26 x 26 = 43,264 terms (the first convolution's weight gradient); two orders of
# such a sum differ by at most 2 gamma_n sum|t| (gamma_n = n u / (1 - n u), 5e-3: Higham, Accuracy
# and Stability of Numerical Algorithms, 2nd ed., eq. 4.4), and, rounding errors being unbiased and
# independent in practice, by lambda sqrt(n) u sum|t| with lambda of a few (Higham & Mary, SIAM J.
# Sci. Comput. 41(5), 2019): 1.3e-5 sum|t| for lambda = 1. The per-example gradients of one batch
# partly cancel (||sum t|| / sum|t| is 0.3 to 0.5 here, per tensor, measured with single-example
# gradients), and about 8 layers of float32 dot products stand between the input and each weight's
# gradient, each adding an error of that size: 1.3e-5 x 3 x 8 = 3e-4, so 1e-3.
# Measured: at most 3e-6 (fm and ct, 1 vs 2 and 4 ranks, held to AVX-512 or to AVX2 code alike).
GRADIENT_RTOL = 1e-3
# NoProp-CT's learned noise schedule (noprop/schedule.py) is a worse-conditioned function of the same
# roundings: its gradient reaches it through exp(-gamma) with |gamma| up to 5, and through
# gamma_bar = (g(t) - g(0)) / (g(1) - g(0)), differences of nearly equal sigmoid sums (|g| /
# |g - g(0)| of 3 to 10), a condition number of up to ~50 on top: 50 x GRADIENT_RTOL. Measured: up to 9e-5.
SCHEDULE_RTOL = 5e-2
# A broken reduction misses either by orders of magnitude: a gradient left undivided by the shard
# count is off by 100%, one taken from rank 0's half of the batch alone by about 100% (measured).


def first_moments(run: Path, method: str) -> dict:
    """Adam's first moment after the run's only step, per parameter: with zero initial moments the
    first step sets m_1 = (1 - beta1) g_1, so this is the step's gradient (the one every rank used:
    shards hold identical optimizer states) times 0.1."""
    from noprop import models
    from noprop.config import Config, taken_by
    state = checkpoint.load(run / "train_state.safetensors")
    model = models.build(Config(**taken_by(method, dict(method=method, precision="fp32", steps=4))).validate(),
                         (1, 28, 28), 10)
    name = {id(p): n for n, p in model.named_parameters()}
    opts = [(model.block_parameters(t + 1), o) for t, o in enumerate(state["block_opts"])]
    if state["shared_opt"] is not None:
        opts.append((model.shared_parameters(), state["shared_opt"]))
    moments = {}
    for params, opt in opts:
        assert sorted(opt["state"]) == list(range(len(params)))  # every parameter stepped
        for i, s in opt["state"].items():
            assert int(s["step"]) == 1, (name[id(params[i])], s["step"])
            moments[name[id(params[i])]] = s["exp_avg"]
    return moments


@pytest.mark.parametrize("method", ["fm", "ct"])
def test_data_parallel_adam_steps_on_the_global_batchs_gradient(tmp_path, method):
    """The paper's optimizer (AdamW, fused) with 2 data shards steps on the gradient one process
    takes of the global batch. Compared: the gradient, not the weights. Adam divides each
    coordinate's step by its gradient's magnitude, so its first update is lr * sign(g): where a
    coordinate's gradient is within rounding of zero, float rounding (which differs with the
    reduction order, and with the CPU's kernels: an AVX2-only machine failed a comparison of the
    weights after 4 steps here) moves it by +-lr, and later steps compound that. The gradient itself
    differs only by rounding: GRADIENT_RTOL (SCHEDULE_RTOL for CT's learned schedule)."""
    outs = {}
    for workers in (1, 2):
        r = noprop("train", "--method", method, *ONE_BATCH, *STEPS, "--workers", str(workers),
                   "--out", str(tmp_path / str(workers)))
        assert r.returncode == 0, r.stderr
        outs[workers] = first_moments(tmp_path / str(workers), method)
    assert outs[1].keys() == outs[2].keys() and len(outs[1]) > 0
    for k in outs[1]:
        a, b = outs[1][k].double(), outs[2][k].double()
        rtol = SCHEDULE_RTOL if k.startswith("schedule.") else GRADIENT_RTOL
        assert (a - b).norm() <= rtol * max(a.norm(), b.norm()), (k, ((a - b).norm() / a.norm()).item())
    assert all(m.norm() > 0 for k, m in outs[1].items() if k.endswith("weight"))


@pytest.mark.parametrize("method", ["fm", "ct"])
def test_data_parallel_runs_stay_equal_for_several_steps(tmp_path, method):
    """Without BatchNorm nothing in the forward pass depends on how the batch is split, so 4 steps
    on 2 shards (each step's data slice and noise, in deterministic mode) make the updates of 4
    steps in one process. SGD with momentum: its update is linear in the gradients, so the
    difference is each step's rounding (GRADIENT_RTOL) carried forward; rtol 1e-2 leaves a factor
    10 for the way the weights' difference after a step changes the next gradients ((1 + lr L)^3
    <= 10 while lr L <= 1.15, L the gradient's Lipschitz constant; 4 steps at lr 0.05 that do not
    diverge stay within it). Measured: 7e-6 (fm). An undivided or half-batch gradient is off by 60% to
    80% of the update."""
    args = [*ONE_BATCH, *STEPS, "--train-subset", "256", "--optimizer", "sgd", "--lr", "0.05"]
    outs = {}
    for workers in (1, 2):
        r = noprop("train", "--method", method, *args, "--workers", str(workers), "--out", str(tmp_path / str(workers)))
        assert r.returncode == 0, r.stderr
        outs[workers] = checkpoint.load_weights(tmp_path / str(workers) / "last.safetensors")[0]
    start = initial_weights(method, optimizer="sgd", lr=0.05)
    assert_same_updates(start, outs[1], outs[2], rtol=1e-2)


def test_local_batchnorm_statistics_are_each_shards_own(tmp_path):
    """--batchnorm-stats local: no BatchNorm synchronisation, so the 2-shard update is no longer the
    one-process update of the global batch (each shard normalised by its own half); the run still
    trains: it ends and every weight moved."""
    extra = ["--method", "cnn", "--optimizer", "sgd", "--lr", "0.05"]
    outs = {}
    for workers, stats in ((1, "global"), (2, "global"), (2, "local")):
        out = tmp_path / f"w{workers}-{stats}"
        r = noprop("train", *ONE_BATCH, *extra, "--workers", str(workers), "--batchnorm-stats", stats,
                   "--out", str(out))
        assert r.returncode == 0, r.stderr
        outs[workers, stats] = checkpoint.load_weights(out / "last.safetensors")[0]
    start = initial_weights("cnn", optimizer="sgd", lr=0.05)
    assert_same_updates(start, outs[1, "global"], outs[2, "global"], rtol=1e-2)
    with pytest.raises(AssertionError):
        assert_same_updates(start, outs[1, "global"], outs[2, "local"], rtol=1e-2)
    assert all(not torch.equal(outs[2, "local"][k], start[k]) for k in start if k.endswith("weight"))


def test_blocks_by_data_2x2_make_the_update_of_block_parallel_2x1(tmp_path):
    """NoProp-DT on 4 ranks = 2 block groups x 2 data shards against the block-parallel 2 x 1 (the
    D = 1 case, itself tested against one process above): the same global batch, the same updates
    of every block and of the shared head."""
    extra = ["-T", "4", "--optimizer", "sgd", "--lr", "0.05", "--block-groups", "2"]
    outs = {}
    for workers in (2, 4):
        out = tmp_path / f"w{workers}"
        r = noprop("train", *ONE_BATCH, *extra, "--workers", str(workers), "--out", str(out), timeout=600)
        assert r.returncode == 0, r.stderr
        outs[workers] = checkpoint.load_weights(out / "last.safetensors")[0]
        result = json.loads((out / "result.json").read_text())
        assert (result["workers"], result["block_groups"]) == (workers, 2)
    start = initial_weights("dt", T=4, optimizer="sgd", lr=0.05)
    assert_same_updates(start, outs[2], outs[4], rtol=1e-2)


# --- elastic restarts and two machines (rehearsed on one) -------------------------------------------
RESTART = ["-T", "4", "--train-subset", "1024", "--val-subset", "64", "--test-subset", "100", "--batch-size", "32",
           "--eval-runs", "1", "--threads", "1", "--quiet", "--deterministic", "--epochs", "3"]


def test_a_killed_worker_is_restarted_and_the_job_ends_as_an_uninterrupted_one(tmp_path):
    """--workers 2 --max-restarts 1: SIGKILL one worker after the first epoch's checkpoint; the
    elastic agent restarts the group, which resumes from that checkpoint with no user action, and
    (deterministic mode) ends with the weights of a run nobody killed."""
    ref = noprop("train", *RESTART, "--workers", "2", "--out", str(tmp_path / "ref"), timeout=600)
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    p = subprocess.Popen([sys.executable, "-m", "noprop", "train", *RESTART, "--workers", "2", "--max-restarts", "1",
                          "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 300
    while not (out / "train_state.safetensors").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (out / "train_state.safetensors").exists()
    kids = [c for c in children(p.pid) if "resource_tracker" not in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(kids) >= 2
    os.kill(kids[-1], signal.SIGKILL)
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr
    assert "restart 1 by the elastic agent: resuming" in stdout
    a = checkpoint.load_weights(tmp_path / "ref" / "last.safetensors")[0]
    b = checkpoint.load_weights(out / "last.safetensors")[0]
    assert checkpoint.load(out / "train_state.safetensors")["epoch"] == 3
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_two_torchrun_agents_on_the_loopback_form_one_job(tmp_path):
    """Two machines rehearsed on one: two torchrun agents (--nnodes 2, one process each) meet through
    a c10d rendezvous on 127.0.0.1 and train one NoProp-DT run as 2 block groups."""
    from noprop.parallel import free_port
    port = free_port()
    out = tmp_path / "run"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "loopback",
           "-m", "noprop", "train", "-T", "4", "--train-subset", "256", "--val-subset", "64", "--test-subset", "100",
           "--batch-size", "32", "--epochs", "1", "--eval-runs", "1", "--threads", "1", "--quiet", "--out", str(out)]
    agents = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
              for _ in range(2)]
    results = [a.communicate(timeout=600) for a in agents]
    for a, (_, e) in zip(agents, results):
        assert a.returncode == 0, e
    printed = "".join(o for o, _ in results)
    assert "2 workers (2 block group(s) x 1 data shard(s))" in printed and "test accuracy" in printed
    result = json.loads((out / "result.json").read_text())
    assert (result["workers"], result["block_groups"]) == (2, 2)
