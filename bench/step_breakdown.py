"""Where a data-parallel step's time goes: the training step of each one-network method, timed part
by part, in one process at batch 128 and at batch 64, and in each of two data-parallel processes at
batch 64 each (the paper's global 128), 1 thread per process, through noprop's own Trainer (the
same code `noprop train --workers 2` runs: DistributedDataParallel, the shared-memory sums,
synchronised BatchNorm).

Per step of the second epoch (the first warms up), on each rank:
- step: the whole Trainer.step (forward, backward, sums, optimizer);
- sums: inside the shared-memory sums (noprop/hostsum.py: the gradient buckets, BatchNorm
  statistics, the status word), of which waiting: spinning until the other rank has published;
- optimizer: the optimizer's step;
- compute and the rest: step - sums - optimizer (forward, backward and Python).

What the two-process step costs beyond one process at batch 64 is what data parallelism itself
costs here; one process at 128 over 64 is what halving the batch costs. Writes
results/step-breakdown-<cpu class>.json; `noprop results` renders its table in docs/performance.md.

    python bench/step_breakdown.py [--methods ct fm backprop adjoint cnn] [--precision fp32 bf16]
                                   [--images 8192]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from noprop.results import STEP_SETTINGS, save_study

ROOT = Path(__file__).resolve().parent.parent


def _timed(owner, name: str, key: str, totals: dict, counts: dict) -> None:
    """Replace owner.name by a wrapper that adds its wall time to totals[key]."""
    inner = getattr(owner, name)

    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            totals[key] += time.perf_counter() - t0
            counts[key] += 1
    setattr(owner, name, wrapper)


def _rank(rank: int, world: int, port: int, method: str, precision: str, batch: int, images: int, queue) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from noprop import hostsum, parallel
    from noprop.config import Config
    from noprop.models import blocks_for
    from noprop.trainer import Trainer, load_data
    cfg = Config(method=method, precision=precision, batch_size=batch, train_subset=images, val_subset=64,
                 test_subset=100, epochs=2, steps=10).validate()
    d = parallel.init_from_env(cfg.device, blocks_for(cfg), None) if world > 1 else parallel.SINGLE
    try:
        tr = Trainer(cfg, load_data(cfg), None, quiet=True, dist=d)
        totals, counts = defaultdict(float), defaultdict(int)
        _timed(tr, "step", "step", totals, counts)
        for o in tr.optimizers():
            _timed(o, "step", "optimizer", totals, counts)
        _timed(hostsum.HostSum, "sum_", "sums", totals, counts)
        _timed(hostsum.HostSum, "_wait", "waiting", totals, counts)
        tr.train_epoch()  # warm-up: the sums' segments, DDP's bucket rebuild, oneDNN's kernels
        tr.epoch += 1
        totals.clear()
        counts.clear()
        t0 = time.perf_counter()
        tr.train_epoch()
        wall = time.perf_counter() - t0
        steps = counts["step"]
        ms = {k: 1e3 * v / steps for k, v in totals.items()}
        queue.put({"rank": rank, "steps": steps, "epoch_seconds": wall, "sums_per_step": counts["sums"] / steps,
                   "step_ms": ms["step"], "sums_ms": ms.get("sums", 0.0), "waiting_ms": ms.get("waiting", 0.0),
                   "optimizer_ms": ms.get("optimizer", 0.0),
                   "compute_ms": ms["step"] - ms.get("sums", 0.0) - ms.get("optimizer", 0.0)})
    finally:
        parallel.shutdown(wait=True)


def run_setting(method: str, precision: str, world: int, batch: int, images: int) -> list[dict]:
    """One training setting: `world` processes (1 or 2) at the global `batch`; each rank's figures."""
    from noprop.parallel import free_port
    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, method, precision, batch, images, queue))
             for r in range(world)]
    for p in procs:
        p.start()
    ranks = sorted((queue.get(timeout=3600) for _ in procs), key=lambda r: r["rank"])
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"{method} {precision} with {world} process(es) failed (exit code {p.exitcode})")
    return ranks


def measure(method: str, precision: str, images: int) -> dict:
    row = {"method": method, "precision": precision}
    for name, _, world, batch in STEP_SETTINGS:
        row[name] = run_setting(method, precision, world, batch, images)
    one, two = row["one_process_batch128"][0], row["two_processes_batch64_each"]
    row["speed_up"] = one["step_ms"] / max(r["step_ms"] for r in two)  # images per step are the same (128)
    print(f"{method} {precision}: " + "; ".join(
        f"{name}: " + ", ".join(f"step {r['step_ms']:.1f} ms (sums {r['sums_ms']:.1f}, waiting {r['waiting_ms']:.1f}, "
                                f"optimizer {r['optimizer_ms']:.1f})" for r in row[name]) for name, *_ in STEP_SETTINGS)
        + f"; speed-up {row['speed_up']:.2f}x", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["ct", "fm", "backprop", "adjoint", "cnn"])
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--images", type=int, default=8192, help="training images per epoch")
    a = ap.parse_args()
    rows = [measure(m, p, a.images) for p in a.precision for m in a.methods]
    save_study(ROOT, "step-breakdown", "bench/step_breakdown.py", sys.argv[1:],
               {"threads": 1, "images_per_epoch": a.images, "rows": rows})


if __name__ == "__main__":
    main()
