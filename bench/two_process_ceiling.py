"""The most two processes can gain on this machine, with no communication at all: each method's
training step timed in one process alone, then in two processes at once (1 thread each, pinned to a
core each, started together). A data-parallel rank steps on half the batch, so for the one-network
methods the ceiling is 2 x (steps/s of batch 64, two at once) / (steps/s of batch 128 alone) in
images; a NoProp-DT block group keeps batch 128. With `--batch per-rank` every process steps on 128
images (a fixed batch per worker, as `noprop bench --what workers --workers-batch per-rank` runs),
so the ceiling is what sharing the machine alone leaves. What `noprop bench --what workers` measures
on top of this is the cost of the exchange; the gloo all-reduce of each method's per-step gradient
is also timed alone, between two pinned processes (bench/collective_latency.py), through gloo and
through the shared-memory sum the ranks of one machine use. Writes
results/two-process-ceiling[-per-rank]-<cpu class>.json; `noprop results` renders its table in
docs/performance.md.

    python bench/two_process_ceiling.py [--methods dt ct fm backprop adjoint cnn] [--precision fp32 bf16]
                                        [--seconds 6] [--repeats 2] [--batch global|per-rank]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import torch
from collective_latency import step_sum_values, time_sums  # this folder is on sys.path when run as a script

from noprop.tools import bench
from noprop.tools.results import save_study
from noprop.tools.settings import WORKERS_BATCH

ROOT = Path(__file__).resolve().parent.parent


def _worker(core: int, method: str, precision: str, batch: int, seconds: float, barrier, queue) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core % os.cpu_count()})
    torch.set_num_threads(1)
    step, _, _ = bench._setup(method, "mnist", precision, True, batch)
    for _ in range(3):
        step()
    barrier.wait()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        steps += 1
    queue.put(batch * steps / (time.perf_counter() - t0))


def images_per_s(method: str, precision: str, batch: int, processes: int, seconds: float) -> list[float]:
    """Training images/s of each of `processes` processes stepping at once on their own core."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(i, method, precision, batch, seconds, barrier, queue))
             for i in range(processes)]
    for p in procs:
        p.start()
    rates = [queue.get(timeout=600 + 10 * seconds) for _ in procs]
    for p in procs:
        p.join()
    return rates


def measure(method: str, precision: str, seconds: float, repeats: int = 2, batch: str = "global") -> dict:
    """The best of `repeats` windows for each figure (the least disturbed by the rest of the machine)."""
    def best(batch: int, processes: int) -> list[float]:
        return max((images_per_s(method, precision, batch, processes, seconds) for _ in range(repeats)), key=sum)
    alone = best(128, 1)[0]
    # a block group keeps the batch; a data shard halves the global one, or keeps 128 per rank
    rank_batch = bench.workers_batch_size(method, 2, batch) // bench.data_shards(method, 2)
    half_alone = alone if rank_batch == 128 else best(rank_batch, 1)[0]
    together = best(rank_batch, 2)
    row = {"method": method, "precision": precision, "rank_batch": rank_batch,
           "alone_batch128_images_per_s": alone, "alone_rank_batch_images_per_s": half_alone,
           "two_at_once_images_per_s": together, "ceiling": sum(together) / alone,
           "batch_effect": half_alone / alone, "sharing_effect": sum(together) / (2 * half_alone)}
    print(f"{method} {precision}: alone {alone:.0f} img/s at batch 128, {half_alone:.0f} at batch {rank_batch}; "
          f"two at once "
          f"{' + '.join(f'{r:.0f}' for r in together)}: ceiling {row['ceiling']:.2f}x")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["dt", "ct", "fm", "backprop", "adjoint", "cnn"])
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--repeats", type=int, default=2, help="windows per figure; the best counts")
    ap.add_argument("--batch", choices=WORKERS_BATCH, default="global",
                    help="global: a data shard steps on 64 (the paper's 128 split in two); per-rank: on 128")
    a = ap.parse_args()
    rows = [measure(m, p, a.seconds, a.repeats, a.batch) for p in a.precision for m in a.methods]
    sizes = {m: step_sum_values(m) for m in a.methods}
    todo = [(f"{n} values", n, torch.float32) for n in sorted(set(sizes.values()))]  # ct, fm, adjoint: one net
    sums = {r["values"]: r for r in time_sums(todo, repeats=20)}
    for r in rows:  # what one step's exchange of gradients costs, timed apart from any training
        n = sizes[r["method"]]
        r.update(allreduce_values=n, allreduce_ms=sums[n]["gloo_ms"],
                 shared_memory_sum_ms=sums[n].get("shared_memory_ms"),
                 step_ms_two_at_once=1e3 * r["rank_batch"] / min(r["two_at_once_images_per_s"]))
        print(f"{r['method']}: sum of {4 * n / 1e6:.2f} MB: gloo {r['allreduce_ms']:.2f} ms, shared memory "
              f"{r['shared_memory_sum_ms'] or float('nan'):.2f} ms (a step, two at once: "
              f"{r['step_ms_two_at_once']:.1f} ms)")
    study = "two-process-ceiling" + ("-per-rank" if a.batch == "per-rank" else "")
    save_study(ROOT, study, "bench/two_process_ceiling.py", sys.argv[1:],
               {"threads": 1, "rows": rows})


if __name__ == "__main__":
    main()
