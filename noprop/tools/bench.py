"""`noprop bench`: speed and memory, measured (never asserted by timed tests).

- peak: the machine's matrix-multiply peak per precision, measured (warm-up, best of repeated timed
  blocks of 2048 x 2048 products, the training's thread count), with the CPU's name, class and flags;
- throughput: training block-samples per second (samples x blocks updated, per second) of every
  method on synthetic batches of the real shapes, fp32 and bf16 autocast; FLOPs of one training step
  counted by torch's FlopCounterMode (forward and the real backward), and the share of the measured
  peak that the throughput reaches. Timings by torch.utils.benchmark;
- memory: peak resident memory of one training process per method, above the same process before
  its first step (model and optimizer built), measured in a fresh subprocess;
- workers: real `noprop train --workers N --threads 1` runs of each method at 1 and N processes;
- tta: wall time from process start until NoProp-DT's validation accuracy reaches a target.

bf16 autocast is only fast where the CPU computes bf16 natively (AVX-512 BF16, AMX); elsewhere it is
emulated through fp32 (13x slower on an AVX2 machine), so the bench skips it there unless asked for
with --precision bf16. Every table names the CPU class it was measured on.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils import benchmark
from torch.utils.flop_counter import FlopCounterMode

from .. import device, models
from ..checkpoint import atomic_write_text
from ..config import Config, taken_by
from ..data import load_data
from ..evaluation import final_evaluation, format_mean_se
from ..machine import class_name, cpu_class, describe, machine_line, provenance
from ..method import Loss
from ..methods import get_method
from ..optim import make_optimizer
from ..parallel import choose_groups
from ..trainer import Trainer
from .settings import WORKERS_BATCH

SHAPES = {"mnist": ((1, 28, 28), 10), "fashion-mnist": ((1, 28, 28), 10), "kmnist": ((1, 28, 28), 10),
          "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def timed(fn, min_run_time: float = 1.0, warmup: int = 3, dev=None, rounds: int = 1) -> float:
    """Seconds per call of fn: warm-up calls, then `rounds` of torch.utils.benchmark's blocked
    autorange at the current thread count; the best block of all (the least disturbed by the rest
    of the machine)."""
    dev = dev or torch.device("cpu")
    for _ in range(warmup):
        fn()
    device.synchronize(dev)
    sync = (lambda: device.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    timer = benchmark.Timer("fn(); sync()", globals={"fn": fn, "sync": sync}, num_threads=torch.get_num_threads())
    return min(min(timer.blocked_autorange(min_run_time=min_run_time).times) for _ in range(rounds))


def count_flops(fn) -> int:
    """FLOPs of one call of fn (matmuls and convolutions, forward and backward), by FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(precision: str = "fp32", n: int = 2048, min_run_time: float = 1.0, dev=None) -> float:
    """Measured GFLOP/s of n x n matrix products in the given precision: the best of three rounds,
    so that a clock or a neighbour slowing one round does not lower the peak."""
    dev = dev or torch.device("cpu")
    a = torch.randn(n, n, device=dev).to(DTYPES[precision])
    b = torch.randn(n, n, device=dev).to(DTYPES[precision])
    return 2 * n ** 3 / timed(lambda: a @ b, min_run_time / 3, dev=dev, rounds=3) / 1e9


def workload_gflops(fn, min_run_time: float = 1.0, dev=None) -> float:
    """GFLOP/s of any workload, measured as the throughput rows are: FLOPs by count_flops, time by
    timed(). (A pure matmul workload lands near the peak probe: a test checks it.)"""
    return count_flops(fn) / timed(fn, min_run_time, dev=dev) / 1e9


def nominal_peak(precision: str = "fp32") -> float | None:
    """A rough theoretical fp32 peak: threads x 2 FMA units x SIMD lanes x 2 x the clock /proc/cpuinfo
    reports (None off Linux or for bf16, whose AMX/AVX-512 BF16 rates vary too much by model)."""
    if precision != "fp32":
        return None
    try:
        mhz = max(float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("cpu MHz"))
    except (OSError, ValueError):
        return None
    lanes = {"amx": 16, "avx512_bf16": 16, "avx512": 16, "avx2": 8}.get(cpu_class())
    return None if lanes is None else torch.get_num_threads() * 2 * lanes * 2 * mhz / 1e3


def peak(precisions=("fp32", "bf16"), dev=None) -> dict:
    return {p: {"measured_gflops": matmul_peak(p, dev=dev), "nominal_gflops": nominal_peak(p)} for p in precisions}


def _setup(method: str, dataset: str, precision: str, channels_last: bool, batch: int, dev=None):
    """One training step of `method` on a synthetic batch; returns (step, blocks per step, model)."""
    dev = dev or torch.device("cpu")
    shape, m = SHAPES[dataset]
    cfg = Config(**taken_by(method, dict(method=method, dataset="mnist", precision=precision,
                                         channels_last=channels_last, batch_size=batch, steps=10))).validate()
    torch.manual_seed(0)
    model = models.build(cfg, shape, m).to(dev)
    model.train()
    opts = {t: make_optimizer(model.block_parameters(t), cfg) for t in range(1, model.num_blocks + 1)}
    shared = model.shared_parameters()
    shared_opt = [make_optimizer(shared, cfg)] if shared else []
    x = torch.randn(batch, *shape, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, m, (batch,), device=dev)
    autocast = device.autocast(dev, precision)
    counter = iter(range(10 ** 9))

    def step():  # one block's update, the unit of block-wise training, cycling through the blocks
        t = next(counter) % model.num_blocks + 1
        with torch.autocast(**autocast):
            loss = Loss.of(model.loss(x, y, [t] if model.num_blocks > 1 else None)).total
        for o in [opts[t]] + shared_opt:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in [opts[t]] + shared_opt:
            o.step()
    blocks_per_step = model.network_blocks(cfg) // model.num_blocks  # backprop: all T; NoProp-DT: one of T
    return step, blocks_per_step, model


def throughput(method: str, dataset: str = "mnist", precision: str = "fp32", channels_last: bool = True,
               batch: int = 128, min_run_time: float = 2.0, dev=None) -> dict:
    dev = dev or torch.device("cpu")
    step, blocks_per_step, _ = _setup(method, dataset, precision, channels_last, batch, dev)
    flops = count_flops(step) / (batch * blocks_per_step)  # per block-sample, forward + backward
    seconds = timed(step, min_run_time, dev=dev)
    bs = batch * blocks_per_step / seconds
    return {"method": method, "dataset": dataset, "precision": precision, "channels_last": channels_last,
            "batch": batch, "block_samples_per_s": bs, "train_flops_per_block_sample": flops,
            "gflops": bs * flops / 1e9, "seconds_per_step": seconds}


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def memory_child(method: str, dataset: str, precision: str, steps: int, device_name: str = "cpu") -> dict:
    """Runs inside a fresh process: peak RSS growth from training `steps` steps (on CUDA: peak
    allocated GPU memory above the same point)."""
    dev = device.resolve(device_name)
    step, _, _ = _setup(method, dataset, precision, True, 128, dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev) / 1024
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        before = _rss_kb("VmRSS")
    for _ in range(steps):
        step()
    peak_kb = device.peak_memory_mb(dev) * 1024
    return {"method": method, "dataset": dataset, "precision": precision, "device": str(dev),
            "train_peak_mb": (peak_kb - before) / 1024, "process_peak_mb": peak_kb / 1024}


def memory(method: str, dataset: str = "mnist", precision: str = "fp32", steps: int = 11,
           device_name: str = "cpu") -> dict:
    """11 steps: NoProp-DT visits every block once (all optimizer states exist), plus one."""
    code = ("import json,sys; from noprop.tools.bench import memory_child; "
            f"print(json.dumps(memory_child({method!r}, {dataset!r}, {precision!r}, {steps}, {device_name!r})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"memory measurement of {method} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _train_run(options: list[str], what: str, timeout: float, env: dict | None = None) -> tuple[list, dict, dict]:
    """A real `noprop train OPTIONS --threads 1 --quiet` in a process of its own, into a temporary run
    folder: its per-epoch history (metrics.jsonl), result.json and config.json."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-m", "noprop", "train", *options, "--threads", "1", "--quiet", "--out", f"{tmp}/run"]
        r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"{what} failed:\n{r.stderr}")
        run = Path(tmp) / "run"
        hist = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return hist, json.loads((run / "result.json").read_text()), json.loads((run / "config.json").read_text())


def data_shards(method: str, world: int) -> int:
    """How many data shards a `world`-process run of the method has: the ranks over its block groups
    (`noprop train --workers N` picks the groups; a one-network method has one, NoProp-DT up to T)."""
    return world // choose_groups(models.blocks_for(Config(method=method).validate()), world)


def workers_batch_size(method: str, world: int, batch: str = "global") -> int:
    """The global batch of a `world`-process run: the method's own (128, the paper's) whatever the
    process count ("global": the same training, split), or that many per data shard ("per-rank": the
    global batch grows with the shards, as when scaling out with a fixed batch per worker; the
    update is then another run's). NoProp-DT's block groups each take the whole batch either way."""
    cfg = Config(method=method).validate()
    if batch not in WORKERS_BATCH:
        raise ValueError(f"workers batch {batch!r}: choose one of {', '.join(WORKERS_BATCH)}")
    if batch == "global" or world == 1:
        return cfg.batch_size
    return cfg.batch_size * data_shards(method, world)


def workers_throughput(world: int, method: str = "dt", n_train: int = 8192, epochs: int = 2,
                       precision: str = "auto", steps: int = 10, extra: tuple = (),
                       batchnorm_stats: str = "global", batch: str = "global") -> dict:
    """A real `noprop train --workers N --threads 1` run (paper order) of `epochs` epochs, the last
    one timed: the first ones warm up (the communicators connect on their first collective,
    DistributedDataParallel rebuilds its buckets after its first step, oneDNN picks its kernels),
    costs a long run pays once. images_per_s: training images of that epoch per second (comparable
    across methods: an image passes all T blocks of DT and of the backprop baseline once an epoch);
    block_samples_per_s = that x the method's network_blocks (T for DT and backprop). The training seconds include the
    end-of-epoch gathering of blocks on rank 0 (block groups). `batch`: workers_batch_size."""
    batch_size = workers_batch_size(method, world, batch)
    hist, result, run_cfg = _train_run(
        ["--method", method, "--train-subset", str(n_train), "--precision", precision,
         *(["--steps", str(steps)] if taken_by(method, {"steps": steps}) else []),
         "--val-subset", "64", "--test-subset", "100", "--epochs", str(epochs), "--eval-runs", "1",
         "--workers", str(world), "--batchnorm-stats", batchnorm_stats, "--batch-size", str(batch_size), *extra],
        f"{method} with {world} workers", timeout=3600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    secs = hist[-1]["train_seconds"]
    cfg = Config(method=method).validate()
    blocks = get_method(method).network_blocks(cfg)
    batch_size = run_cfg["batch_size"]  # what the run trained with (`extra` may have set it)
    images = (n_train // batch_size) * batch_size
    groups = result.get("block_groups") or 1
    return {"method": method, "workers": world, "threads_per_worker": 1, "images_per_s": images / secs,
            "batch_size": batch_size, "rank_batch": batch_size // (world // groups),
            "block_samples_per_s": images * blocks / secs, "train_seconds": secs, "images": n_train,
            "epochs": epochs, "timed_epoch": len(hist), "all_epochs_train_seconds": [h["train_seconds"] for h in hist],
            "precision": result.get("precision", precision), "block_groups": result.get("block_groups"),
            "batchnorm_stats": batchnorm_stats,
            "peak_memory_mb_per_rank": hist[-1].get("peak_memory_mb")}


def workers_rows(methods, precisions, workers=(1, 2), repeats: int = 1, **kw) -> list[dict]:
    """workers_throughput for every method, precision and process count, `repeats` times, the runs
    of one method and precision alternating (1, N, 1, N, ...): this machine's speed drifts by 15-25%
    over minutes, as much as the differences measured, so a speed-up compares runs made one after
    the other, and each row reports the median over the repeats (images_per_s, speed_up) with every
    run kept (runs_images_per_s, speed_ups: run i at N processes over run i at one)."""
    rows = []
    for p in precisions:
        for m in methods:
            runs = {w: [] for w in workers}
            for _ in range(repeats):
                for w in workers:
                    runs[w].append(workers_throughput(w, m, precision=p, **kw))
            for w in workers:
                ips = [r["images_per_s"] for r in runs[w]]
                row = dict(sorted(runs[w], key=lambda r: r["images_per_s"])[(len(ips) - 1) // 2])
                row.update(images_per_s=statistics.median(ips), runs_images_per_s=ips,
                           block_samples_per_s=statistics.median(r["block_samples_per_s"] for r in runs[w]))
                if 1 in runs:
                    row["speed_ups"] = [a["images_per_s"] / b["images_per_s"] for a, b in zip(runs[w], runs[1])]
                    row["speed_up"] = statistics.median(row["speed_ups"])
                rows.append(row)
    return rows


def time_to_accuracy(target: float = 99.0, budget_minutes: float = 10.0, precision: str = "fp32",
                     order: str = "paper", out: str | None = None, eval_runs: int = 5,
                     epochs: int | None = None, lr_schedule: str = "constant", device_name: str = "auto",
                     t0: float | None = None, workers: int = 1, lr: float = 1e-3) -> dict:
    """NoProp-DT on all of MNIST: wall seconds from t0 (by default: now; the CLI passes its process
    start) until training stops, and until the test evaluation (every inference rule, `eval_runs`
    runs each) has ended.

    One process: training stops at the first epoch whose validation accuracy reaches `target`, or
    when the budget is spent, or after `epochs` (a cosine schedule needs a planned length).
    workers > 1: a real `noprop train --workers N --threads 1` run of `epochs` planned epochs (a plan
    fixed in advance: the target is then only checked, not used to stop)."""
    t0 = time.perf_counter() if t0 is None else t0
    if workers > 1:
        return _tta_workers(target, precision, order, eval_runs, epochs, lr_schedule, workers, lr, t0)
    cfg = Config(precision=precision, order=order, epochs=epochs or 10 ** 6, lr_schedule=lr_schedule,
                 device=device_name, lr=lr).validate()
    data = load_data(cfg)
    tr = Trainer(cfg, data, out, quiet=True)
    tr.fit(log=lambda s: print(f"[{time.perf_counter() - t0:.0f}s] {s}", flush=True),
           stop=lambda h: h[-1]["val_acc"] >= target or time.perf_counter() - t0 > 60 * budget_minutes)
    train_wall = time.perf_counter() - t0
    ev = final_evaluation(tr.model, data, eval_runs)
    return _tta_row(target, train_wall, time.perf_counter() - t0, tr.epoch, [h["val_acc"] for h in tr.history],
                    tr.precision, order, lr_schedule, epochs, cfg.to_dict(), ev, 1)


def _tta_workers(target, precision, order, eval_runs, epochs, lr_schedule, workers, lr, t0) -> dict:
    if not epochs:
        raise ValueError("a multi-process time-to-accuracy run needs its planned --tta-epochs")
    hist, res, cfg = _train_run(
        ["--epochs", str(epochs), "--lr-schedule", lr_schedule, "--lr", str(lr), "--precision", precision,
         "--order", order, "--eval-runs", str(eval_runs), "--workers", str(workers)],
        "time-to-accuracy run", timeout=7200)
    end = time.perf_counter() - t0
    train_wall = end - res["evaluation_seconds"]  # the final evaluation is the run's last work
    return _tta_row(target, train_wall, end, res["epochs"], [h["val_acc"] for h in hist], res["precision"], order,
                    lr_schedule, epochs, cfg, res, workers)


def _tta_row(target, train_wall, wall, epochs_run, val_curve, precision, order, lr_schedule, planned, cfg, ev,
             workers) -> dict:
    """The target counts as reached when the test accuracy of the inference rule chosen on
    validation (final_evaluation's rule_chosen_on_val) reaches it: the test set picks nothing."""
    test, rule = ev["test"], ev["rule_chosen_on_val"]
    st = test["stochastic"]
    return {"target_test_acc": target, "reached": test[rule]["mean"] >= target, "rule_chosen_on_val": rule,
            "val_rules": ev["val"], "test_acc_chosen_rule": test[rule]["mean"], "wall_seconds": train_wall,
            "wall_seconds_with_test": wall, "epochs": epochs_run, "val_acc": val_curve[-1], "val_curve": val_curve,
            "precision": precision, "order": order, "lr_schedule": lr_schedule, "planned_epochs": planned,
            "workers": workers, "config": cfg, "test": test, "test_acc_mean": st["mean"], "test_acc_se": st["se"],
            "test_acc_runs": st["runs"]}


def markdown(results: dict, machine_header: bool = True) -> str:
    m = results["machine"]
    lines = [f"Machine: {machine_line(results)}", ""] if machine_header else []
    for note in results.get("notes", []):
        lines += [f"Note: {note}", ""]
    pk = results.get("peak") or {}
    if pk:
        lines += ["| precision | measured matmul peak (GFLOP/s, 2048 x 2048, best block) | nominal (estimate) |",
                  "|---|---|---|"]
        for p, v in pk.items():
            nominal = f"{v['nominal_gflops']:.0f}" if v.get("nominal_gflops") else "–"
            lines.append(f"| {p} | {v['measured_gflops']:.0f} | {nominal} |")
        lines.append("")
    if results.get("throughput"):
        lines += [f"| method | data | precision | block-samples/s | train FLOPs per block-sample | GFLOP/s | "
                  f"share of measured peak ({class_name(m['cpu_class'])}) |", "|---|---|---|---|---|---|---|"]
        for r in results["throughput"]:
            p = pk.get(r["precision"], {}).get("measured_gflops")
            share = f"{100 * r['gflops'] / p:.0f}%" if p else "–"
            lines.append(f"| {r['method']} | {r['dataset']} | {r['precision']} | {r['block_samples_per_s']:.0f} | "
                         f"{r['train_flops_per_block_sample'] / 1e6:.1f} M | {r['gflops']:.1f} | {share} |")
        lines.append("")
    if results.get("memory"):
        base = {(r["dataset"], r["precision"]): r["train_peak_mb"] for r in results["memory"]
                if r["method"] == "backprop"}
        lines += ["| method | data | precision | training peak above start (MB) | process peak (MB) | vs backprop |",
                  "|---|---|---|---|---|---|"]
        for r in results["memory"]:
            b = base.get((r["dataset"], r["precision"]))
            ratio = f"{r['train_peak_mb'] / b:.2f}x" if b else "–"
            lines.append(f"| {r['method']} | {r['dataset']} | {r['precision']} | {r['train_peak_mb']:.0f} | "
                         f"{r['process_peak_mb']:.0f} | {ratio} |")
        lines.append("")
    if results.get("tta"):
        lines += ["| precision | processes | lr schedule | epochs | wall to the end of training | wall incl. the "
                  "test evaluation | val acc | test, paper's rule | test, no noise | rule chosen on validation | "
                  "target reached |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["tta"]:
            sched = r.get("lr_schedule", "constant") + (f", lr {r['config']['lr']:g}" if r.get("config") else "")
            nn = r["test"].get("no-noise") if r.get("test") else None
            lines.append(f"| {r['precision']} | {r.get('workers', 1)} | {sched} | {r['epochs']} | "
                         f"{r['wall_seconds'] / 60:.1f} min | {r['wall_seconds_with_test'] / 60:.1f} min | "
                         f"{r['val_acc']:.2f} | {format_mean_se((r['test_acc_mean'], r['test_acc_se']))} | "
                         + (f"{format_mean_se(nn)} |" if nn else "– |")
                         # rows from before the rule was chosen on validation judged the paper's rule
                         + f" {r.get('rule_chosen_on_val', 'none (judged by the paper rule)')} | "
                         + f"{'yes' if r['reached'] else 'no'} ({r['target_test_acc']:g}%) |")
        lines.append("")
    if results.get("workers"):
        lines += ["| method | workers (1 thread each) | layout (groups x shards) | batch: global (per rank) | "
                  "precision | images/s | block-samples/s | speed-up | process peak memory per rank (MB) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for w in results["workers"]:
            one = next((v["images_per_s"] for v in results["workers"] if v["workers"] == 1
                        and v["method"] == w["method"] and v["precision"] == w["precision"]), None)
            sp = f"{w['images_per_s'] / one:.2f}x" if one else "–"
            if len(w.get("speed_ups") or []) > 1 and w["workers"] > 1:  # repeated: median of paired ratios, range
                sp = f"{w['speed_up']:.2f}x ({min(w['speed_ups']):.2f}-{max(w['speed_ups']):.2f})"
            g = w.get("block_groups") or 1
            batch = w.get("batch_size", 128)  # rows from before the option ran the paper's global 128
            rank_batch = w.get("rank_batch", batch // (w["workers"] // g))
            mem = ", ".join(f"{x:.0f}" for x in w.get("peak_memory_mb_per_rank") or []) or "–"
            # BatchNorm statistics per shard (--batchnorm-stats local) are named: the update then differs
            local = ", BatchNorm per shard" if w.get("batchnorm_stats") == "local" and w["workers"] > g else ""
            lines.append(f"| {w['method']} | {w['workers']} | {g} x {w['workers'] // g}{local} | "
                         f"{batch} ({rank_batch}) | {w['precision']} | {w['images_per_s']:.0f} | "
                         f"{w['block_samples_per_s']:.0f} | {sp} | {mem} |")
        repeats = max(len(w.get("runs_images_per_s") or [1]) for w in results["workers"])
        if repeats > 1:
            lines += ["", f"Each row: the median of {repeats} runs, made alternately at 1 and N processes; the "
                      "speed-up is the median of the paired runs' ratios, their range in brackets."]
        lines.append("")
    return "\n".join(lines)


def default_precisions() -> tuple[list[str], list[str]]:
    """fp32, and bf16 where it is native; the notes say what was skipped and why."""
    if device.bf16_native(torch.device("cpu")):
        return ["fp32", "bf16"], []
    return ["fp32"], [f"bf16 skipped: this CPU (class {cpu_class()}) has no native bf16, so autocast emulates "
                      "it through fp32 at a fraction of fp32's speed; ask with --precision bf16 to measure it"]


def run(what: list[str], out: str | None, precisions=None, methods=("dt", "ct", "fm", "backprop"),
        workers=(1, 2), target: float = 99.0, budget_minutes: float = 10.0, tta_epochs: int | None = None,
        lr_schedule: str = "constant", device_name: str = "auto", workers_images: int = 8192,
        min_run_time: float = 2.0, workers_methods=None, t0: float | None = None, tta_workers: int = 1,
        tta_lr: float = 1e-3, batchnorm_stats: str = "global", workers_repeats: int = 1,
        workers_batch: str = "global") -> dict:
    dev = device.resolve(device_name)
    notes = []
    if precisions is None:
        precisions, notes = default_precisions()
    results: dict = {"machine": describe(dev), "command": " ".join(["noprop", *sys.argv[1:]]), **provenance(),
                     "notes": notes}
    for n in notes:
        print(n, file=sys.stderr)
    if "peak" in what or "throughput" in what:
        results["peak"] = peak(precisions, dev)
    if "throughput" in what:
        rows = []
        for prec in precisions:
            for method in methods:
                rows.append(throughput(method, "mnist", prec, min_run_time=min_run_time, dev=dev))
            rows.append(throughput("dt", "cifar10", prec, min_run_time=min_run_time, dev=dev))
        results["throughput"] = rows
    if "memory" in what:
        results["memory"] = [memory(m, "mnist", "fp32", device_name=str(dev)) for m in methods]
    if "workers" in what:
        results["workers"] = workers_rows(workers_methods or methods, precisions, workers, workers_repeats,
                                          n_train=workers_images, batchnorm_stats=batchnorm_stats,
                                          batch=workers_batch)
    if "tta" in what:
        results["tta"] = [time_to_accuracy(target, budget_minutes, p, epochs=tta_epochs, lr_schedule=lr_schedule,
                                           device_name=str(dev), t0=t0, workers=tta_workers, lr=tta_lr)
                          for p in precisions]
    md = markdown(results)
    print(md)
    if out and str(out).endswith(".json"):  # a result file (e.g. results/bench-amx.json)
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out), json.dumps(results, indent=1))
    elif out:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out) / "bench.json", json.dumps(results, indent=2))
        atomic_write_text(Path(out) / "bench.md", f"command: `{results['command']}`\n\n" + md + "\n")
    return results
