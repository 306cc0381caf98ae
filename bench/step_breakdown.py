"""Where a data-parallel step's time goes: the training step of each one-network method, timed part
by part, in one process at batch 128 and at batch 64, and in each of two data-parallel processes at
batch 64 each (the paper's global 128), 1 thread per process, through noprop's own Trainer (the
same code `noprop train --workers 2` runs: DistributedDataParallel, the shared-memory sums,
synchronised BatchNorm). With `--batch per-rank` each process steps on 128: one process, two
processes at once that exchange nothing (two one-process jobs, started together), and two
data-parallel ranks; the last two differ only by what the exchange costs.

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
                                   [--images 8192] [--batch global|per-rank]
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

from noprop.tools.results import save_study
from noprop.tools.settings import STEP_SETTINGS, WORKERS_BATCH

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


def _rank(rank: int, world: int, port: int, method: str, precision: str, batch: int, images: int, queue,
          barrier=None) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from noprop import hostsum, parallel
    from noprop.config import Config, taken_by
    from noprop.data import load_data
    from noprop.models import blocks_for
    from noprop.trainer import Trainer
    cfg = Config(method=method, precision=precision, batch_size=batch, train_subset=images, val_subset=64,
                 test_subset=100, epochs=2, **taken_by(method, {"steps": 10})).validate()
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
        if barrier is not None:  # lone processes: time their epochs side by side (ranks meet anyway)
            barrier.wait()
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


def run_setting(method: str, precision: str, world: int, batch: int, images: int, exchange: bool = True) -> list[dict]:
    """One training setting: `world` processes (1 or 2) at the global `batch`; each rank's figures.
    exchange=False: `world` one-process jobs at once, each on its share of the batch, alone."""
    from noprop.parallel import free_port
    ctx = mp.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    if exchange:
        procs = [ctx.Process(target=_rank, args=(r, world, port, method, precision, batch, images, queue))
                 for r in range(world)]
    else:
        barrier = ctx.Barrier(world)
        procs = [ctx.Process(target=_rank, args=(0, 1, port, method, precision, batch // world, images, queue,
                                                 barrier)) for _ in range(world)]
    for p in procs:
        p.start()
    ranks = sorted((queue.get(timeout=3600) for _ in procs), key=lambda r: (r["rank"], r["step_ms"]))
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"{method} {precision} with {world} process(es) failed (exit code {p.exitcode})")
    return ranks


def measure(method: str, precision: str, images: int, batch: str = "global") -> dict:
    settings = STEP_SETTINGS[batch]
    row = {"method": method, "precision": precision}
    for name, _, world, global_batch, exchange in settings:
        row[name] = run_setting(method, precision, world, global_batch, images, exchange)
    one = row["one_process_batch128"][0]
    name, _, _, global_batch, _ = settings[-1]  # the data-parallel setting
    # images/s of the data-parallel ranks (the slower sets the pace) over one process's at batch 128
    row["speed_up"] = global_batch / max(r["step_ms"] for r in row[name]) / (128 / one["step_ms"])
    print(f"{method} {precision}: " + "; ".join(
        f"{name}: " + ", ".join(f"step {r['step_ms']:.1f} ms (sums {r['sums_ms']:.1f}, waiting {r['waiting_ms']:.1f}, "
                                f"optimizer {r['optimizer_ms']:.1f})" for r in row[name]) for name, *_ in settings)
        + f"; speed-up {row['speed_up']:.2f}x", flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["ct", "fm", "backprop", "adjoint", "cnn"])
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--images", type=int, default=8192, help="training images per epoch")
    ap.add_argument("--batch", choices=WORKERS_BATCH, default="global",
                    help="global: the paper's 128 split over two ranks; per-rank: 128 for each process")
    a = ap.parse_args()
    rows = [measure(m, p, a.images, a.batch) for p in a.precision for m in a.methods]
    study = "step-breakdown" + ("-per-rank" if a.batch == "per-rank" else "")
    save_study(ROOT, study, "bench/step_breakdown.py", sys.argv[1:],
               {"threads": 1, "images_per_epoch": a.images, "batch": a.batch, "rows": rows})


if __name__ == "__main__":
    main()
