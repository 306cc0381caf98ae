"""What one sum over two ranks on this machine costs: gloo's all-reduce (TCP on the loopback
address) against the shared-memory sum (noprop/hostsum.py) that ranks on one machine use instead.
Two processes, one thread each, pinned to a core each, doing nothing else; the sizes are those a
training step sums: the status word, a synchronised BatchNorm layer's statistics, the gradients of
the one-network methods. Writes results/collectives-<cpu class>.json; `noprop results` renders its
table in docs/performance.md.

    python bench/collective_latency.py [--repeats 50]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import torch

from noprop.tools.results import save_study

ROOT = Path(__file__).resolve().parent.parent


def step_sum_values(method: str) -> int:
    """Values a data-parallel step sums between ranks: the whole gradient of a one-network method;
    for NoProp-DT's block groups only the shared parameters' (its head). The status word (two
    flags) is summed apart by the one-network methods, with NoProp-DT's shared gradient."""
    from noprop import models
    from noprop.config import Config
    model = models.build(Config(method=method).validate(), (1, 28, 28), 10)
    params = model.shared_parameters() if model.num_blocks > 1 else list(model.parameters())
    return sum(p.numel() for p in params)


def sizes() -> list[tuple[str, int, torch.dtype]]:
    """(what, values, dtype) for each sum a training step makes."""
    return [("status word (2 flags)", 2, torch.float32),
            ("one BatchNorm layer's statistics (256 channels)", 2 * 256 + 1, torch.float64),
            *((f"{m}: a step's gradient", step_sum_values(m), torch.float32) for m in ("ct", "cnn", "backprop"))]


def _worker(rank: int, port: int, todo: list, repeats: int, queue) -> None:
    import torch.distributed as dist

    from noprop.hostsum import HostSum
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {rank % os.cpu_count()})
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    capacity = max(n * torch.empty(0, dtype=d).element_size() for _, n, d in todo)
    hs = HostSum.create(dist.group.WORLD, capacity, timeout_s=300)
    out = []
    for what, n, dtype in todo:
        row = {"what": what, "values": n, "bytes": n * torch.empty(0, dtype=dtype).element_size()}
        for name, fn in (("gloo", dist.all_reduce), ("shared_memory", hs.sum_ if hs else None)):
            if fn is None:
                continue
            x = torch.randn(n).to(dtype)
            for _ in range(3):
                fn(x)
                x.fill_(1.0)  # the sums would overflow without it; timed in both columns alike
            dist.barrier()
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn(x)
                x.fill_(1.0)
            row[f"{name}_ms"] = 1e3 * (time.perf_counter() - t0) / repeats
        out.append(row)
    if rank == 0:
        queue.put(out)
    if hs:
        hs.close()
    dist.destroy_process_group()


def time_sums(todo: list[tuple[str, int, torch.dtype]], repeats: int = 50) -> list[dict]:
    """One sum of each (what, values, dtype) over two processes (one thread, pinned to a core each),
    through gloo and through shared memory: a row per sum with gloo_ms and shared_memory_ms."""
    from noprop.parallel import free_port
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, port, todo, repeats, queue)) for r in range(2)]
    for p in procs:
        p.start()
    rows = queue.get(timeout=600)
    for p in procs:
        p.join()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=50)
    a = ap.parse_args()
    rows = time_sums(sizes(), a.repeats)
    for r in rows:
        print(f"{r['what']}: {r['bytes'] / 1e3:.1f} KB: gloo {r['gloo_ms']:.3f} ms, "
              f"shared memory {r.get('shared_memory_ms', float('nan')):.3f} ms")
    save_study(ROOT, "collectives", "bench/collective_latency.py", sys.argv[1:],
               {"processes": 2, "threads": 1, "repeats": a.repeats, "rows": rows})


if __name__ == "__main__":
    main()
