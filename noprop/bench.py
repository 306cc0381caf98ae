"""`noprop bench`: speed and memory, measured (never asserted by tests).

- throughput: training block-samples per second (samples x blocks updated, per second) for the
  NoProp-DT block (MNIST- and CIFAR-shaped), the CT/FM network and the backprop baseline (one step
  updates all T blocks), in fp32 and bf16 autocast, on synthetic batches of the real shapes;
- FLOPs of one training block-sample, counted from the layers (2 x multiply-adds of every conv and
  linear layer forward, x3 for forward + backward), and the share of the machine's measured
  matrix-multiply peak that the throughput reaches;
- memory: peak resident memory of one training process per method, above the same process before
  its first step (model and optimizer built), measured in a fresh subprocess;
- workers: block-parallel throughput of real `noprop train --workers N` runs, one thread per worker.

Every table is printed with the machine, the torch version and the thread count, and saved as JSON
and Markdown.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from . import device
from .checkpoint import atomic_write_text
from .config import Config
from .train import build_model, make_optimizers

SHAPES = {"mnist": ((1, 28, 28), 10), "fashion-mnist": ((1, 28, 28), 10), "kmnist": ((1, 28, 28), 10),
          "cifar10": ((3, 32, 32), 10), "cifar100": ((3, 32, 32), 100)}


def machine(dev=None) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "bf16_native": device.bf16_native(torch.device("cpu")),
            "device": str(dev or "cpu"),
            "gpu": torch.cuda.get_device_name(dev) if dev is not None and dev.type == "cuda" else None}


def matmul_peak(dtype: torch.dtype, n: int = 2048, seconds: float = 1.0, dev=None) -> float:
    """Measured GFLOP/s of an n x n matrix multiply in dtype."""
    dev = dev or torch.device("cpu")
    a, b = torch.randn(n, n, device=dev).to(dtype), torch.randn(n, n, device=dev).to(dtype)
    a @ b
    device.synchronize(dev)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    device.synchronize(dev)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


def forward_flops(module: nn.Module, *inputs) -> int:
    """FLOPs (2 x multiply-adds) of conv and linear layers for one forward of the given inputs."""
    total = 0

    def hook(mod, inp, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total += 2 * k * out.numel()
        elif isinstance(mod, nn.Linear):
            total += 2 * mod.in_features * out.numel()
    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return total


def _setup(method: str, dataset: str, precision: str, channels_last: bool, batch: int, dev=None):
    dev = dev or torch.device("cpu")
    shape, m = SHAPES[dataset]
    cfg = Config(method=method, dataset="mnist", precision=precision, channels_last=channels_last,
                 batch_size=batch, steps=10).validate()
    torch.manual_seed(0)
    model = build_model(cfg, shape, m).to(dev)
    model.train()
    block_opts, shared_opt = make_optimizers(model, cfg)
    x = torch.randn(batch, *shape, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, m, (batch,), device=dev)
    autocast = device.autocast(dev, precision)
    if method == "dt":  # one block's update, the unit of NoProp-DT training, cycling through blocks
        counter = iter(range(10 ** 9))

        def step():
            t = next(counter) % cfg.T + 1
            with torch.autocast(**autocast):
                loss = model.block_loss(t, x, y)["loss"]
            opts = [block_opts[t - 1], shared_opt]
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in opts:
                o.step()
        blocks_per_step = 1
        block = model.blocks[0]
        flops = forward_flops(block, torch.zeros(batch, model.embed.dim, device=dev), x) // batch
    else:
        def step():
            with torch.autocast(**autocast):
                loss = model.loss(x, y)["loss"]
            shared_opt.zero_grad(set_to_none=True)
            loss.backward()
            shared_opt.step()
        if method == "backprop":
            blocks_per_step = cfg.T
            flops = cfg.T * forward_flops(model.blocks[0], torch.zeros(batch, model.embed.dim, device=dev), x) // batch
        else:
            blocks_per_step = 1
            flops = forward_flops(model.net, torch.zeros(batch, model.embed.dim, device=dev), x,
                                  torch.zeros(batch, device=dev)) // batch
    return step, blocks_per_step, flops


def throughput(method: str, dataset: str = "mnist", precision: str = "fp32", channels_last: bool = True,
               batch: int = 128, steps: int = 20, warmup: int = 3, dev=None) -> dict:
    dev = dev or torch.device("cpu")
    step, blocks_per_step, flops = _setup(method, dataset, precision, channels_last, batch, dev)
    for _ in range(warmup):
        step()
    device.synchronize(dev)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    device.synchronize(dev)
    dt = time.perf_counter() - t0
    bs = batch * blocks_per_step * steps / dt
    per_block = flops // blocks_per_step
    return {"method": method, "dataset": dataset, "precision": precision, "channels_last": channels_last,
            "batch": batch, "block_samples_per_s": bs, "train_flops_per_block_sample": 3 * per_block,
            "gflops": bs * 3 * per_block / 1e9}


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
    peak = device.peak_memory_mb(dev) * 1024
    return {"method": method, "dataset": dataset, "precision": precision, "device": str(dev),
            "train_peak_mb": (peak - before) / 1024, "process_peak_mb": peak / 1024}


def memory(method: str, dataset: str = "mnist", precision: str = "fp32", steps: int = 11,
           device_name: str = "cpu") -> dict:
    """11 steps: NoProp-DT visits every block once (all optimizer states exist), plus one."""
    code = ("import json,sys; from noprop.bench import memory_child; "
            f"print(json.dumps(memory_child({method!r}, {dataset!r}, {precision!r}, {steps}, {device_name!r})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"memory measurement of {method} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def workers_throughput(world: int, T: int = 10, n_train: int = 8192, epochs: int = 1,
                       precision: str = "auto") -> dict:
    """Block-samples/s of a real `noprop train --workers N --threads 1` run (paper order). Its
    training seconds include the end-of-epoch gathering of the blocks on rank 0, a cost per epoch:
    more images per epoch amortise it, as a full epoch (55,000 images) does."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-m", "noprop", "train", "-T", str(T), "--train-subset", str(n_train),
                "--precision", precision,
                "--val-subset", "64", "--epochs", str(epochs), "--eval-runs", "1", "--threads", "1",
                "--quiet", "--out", f"{tmp}/run", "--workers", str(world)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=3600)
        if r.returncode != 0:
            raise RuntimeError(f"workers={world} run failed:\n{r.stderr}")
        hist = [json.loads(line) for line in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
    secs = sum(h["train_seconds"] for h in hist)
    n = (n_train // 128) * 128 * T * epochs
    return {"workers": world, "threads_per_worker": 1, "block_samples_per_s": n / secs, "train_seconds": secs,
            "images": n_train, "precision": precision, "peak_memory_mb_per_rank": hist[-1].get("peak_memory_mb")}


def time_to_accuracy(target: float = 99.0, budget_minutes: float = 10.0, precision: str = "fp32",
                     order: str = "paper", out: str | None = None, eval_runs: int = 5,
                     epochs: int | None = None, lr_schedule: str = "constant", device_name: str = "auto") -> dict:
    """NoProp-DT on all of MNIST: wall seconds from start (data loading included) until the
    validation accuracy first reaches `target`, checked after every epoch, or until the budget is
    spent (or `epochs` are done: a cosine schedule needs a planned length); then the test accuracy
    of the model at that moment (mean +- s.e. over inference runs), and the wall time with it."""
    from .evaluate import accuracy_runs, mean_se
    from .train import Trainer, load_data
    t0 = time.perf_counter()
    cfg = Config(precision=precision, order=order, epochs=epochs or 10 ** 6, lr_schedule=lr_schedule,
                 device=device_name).validate()
    data = load_data(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        tr = Trainer(cfg, data, out or f"{tmp}/run", quiet=True)
        tr.fit(log=lambda s: print(f"[{time.perf_counter() - t0:.0f}s] {s}", flush=True),
               stop=lambda h: h[-1]["val_acc"] >= target or time.perf_counter() - t0 > 60 * budget_minutes)
    train_wall = time.perf_counter() - t0
    reached = tr.history[-1]["val_acc"] >= target
    test = accuracy_runs(tr.model, data.test, runs=eval_runs,
                         autocast_dtype=device.eval_dtype(precision))
    return {"target_val_acc": target, "reached": reached, "wall_seconds": train_wall,
            "wall_seconds_with_test": time.perf_counter() - t0, "epochs": tr.epoch,
            "val_acc": tr.history[-1]["val_acc"], "val_curve": [h["val_acc"] for h in tr.history],
            "precision": precision, "order": order, "lr_schedule": lr_schedule, "planned_epochs": epochs,
            "test_acc_mean": mean_se(test)[0], "test_acc_se": mean_se(test)[1], "test_acc_runs": test}


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads, torch {m['torch']}, "
             f"native bf16: {m['bf16_native']}" + (f"; GPU: {m['gpu']} ({m['device']})" if m.get("gpu") else ""), ""]
    if results.get("peak"):
        p = results["peak"]
        lines += [f"Measured matmul peak: fp32 {p['fp32']:.0f} GFLOP/s, bf16 {p['bf16']:.0f} GFLOP/s", ""]
    if results.get("throughput"):
        lines += ["| method | data | precision | block-samples/s | train FLOPs per block-sample | GFLOP/s | "
                  "share of peak |", "|---|---|---|---|---|---|---|"]
        for r in results["throughput"]:
            peak = results.get("peak", {}).get(r["precision"])
            share = f"{100 * r['gflops'] / peak:.0f}%" if peak else "–"
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
        lines += ["| precision | lr schedule | target val acc | reached | wall to stop (s) | wall incl. test (s) | "
                  "epochs | val acc | test acc |", "|---|---|---|---|---|---|---|---|---|"]
        for r in results["tta"]:
            sched = r.get("lr_schedule", "constant")
            if r.get("planned_epochs"):
                sched += f" over {r['planned_epochs']} ep"
            lines.append(f"| {r['precision']} | {sched} | {r['target_val_acc']} | {r['reached']} | "
                         f"{r['wall_seconds']:.0f} | {r.get('wall_seconds_with_test', float('nan')):.0f} | "
                         f"{r['epochs']} | {r['val_acc']:.2f} | {r['test_acc_mean']:.2f} +- {r['test_acc_se']:.2f} |")
        lines.append("")
    if results.get("workers"):
        lines += ["| workers (1 thread each) | precision | images per epoch | block-samples/s | speed-up | "
                  "process peak memory per rank (MB) |", "|---|---|---|---|---|---|"]
        for w in results["workers"]:
            prec = w.get("precision", "auto")
            one = next((v["block_samples_per_s"] for v in results["workers"]
                        if v["workers"] == 1 and v.get("precision", "auto") == prec), None)
            sp = f"{w['block_samples_per_s'] / one:.2f}x" if one else "–"
            mem = ", ".join(f"{m:.0f}" for m in w.get("peak_memory_mb_per_rank") or []) or "–"
            lines.append(f"| {w['workers']} | {prec} | {w.get('images', '?')} | {w['block_samples_per_s']:.0f} | {sp} "
                         f"| {mem} |")
        lines.append("")
    return "\n".join(lines)


def run(what: list[str], out: str | None, steps: int = 20, precisions=("fp32", "bf16"),
        methods=("dt", "ct", "fm", "backprop"), workers=(1, 2), target: float = 99.0,
        budget_minutes: float = 10.0, tta_epochs: int | None = None, lr_schedule: str = "constant",
        device_name: str = "auto", workers_images: int = 8192) -> dict:
    dev = device.resolve(device_name)
    results: dict = {"machine": machine(dev), "command": " ".join(sys.argv)}
    if "throughput" in what:
        results["peak"] = {"fp32": matmul_peak(torch.float32, dev=dev), "bf16": matmul_peak(torch.bfloat16, dev=dev)}
        rows = []
        for prec in precisions:
            for method in methods:
                rows.append(throughput(method, "mnist", prec, steps=steps, dev=dev))
            rows.append(throughput("dt", "cifar10", prec, steps=steps, dev=dev))
        results["throughput"] = rows
    if "memory" in what:
        results["memory"] = [memory(m, "mnist", "fp32", device_name=str(dev)) for m in methods]
    if "workers" in what:
        results["workers"] = [workers_throughput(w, n_train=workers_images, precision=p)
                              for p in precisions for w in workers]
    if "tta" in what:
        results["tta"] = [time_to_accuracy(target, budget_minutes, p, epochs=tta_epochs, lr_schedule=lr_schedule,
                                           device_name=str(dev)) for p in precisions]
    md = markdown(results)
    print(md)
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(out) / "bench.json", json.dumps(results, indent=2))
        atomic_write_text(Path(out) / "bench.md", f"command: `{results['command']}`\n\n" + md + "\n")
    return results
