"""How many torch threads a training step should use when another process keeps a core busy (not
a test): a NoProp-DT block step (batch 128, the paper's block, the run's precision) timed for a few
seconds with 1 and with all cores' threads, on an idle machine and beside a one-core busy loop, and
with OMP_WAIT_POLICY=PASSIVE (threads that sleep instead of spinning while they wait). Each setting
runs in a fresh process. Writes results/busy-threads-<cpu class>.json; noprop.device.IdleCoreThreads
follows what it shows.

    python bench/busy_threads.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/busy_threads.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from noprop.tools.results import save_study

ROOT = Path(__file__).resolve().parent.parent
HOG = "while True: pass"


def child(threads: int, seconds: float) -> None:
    import torch

    from noprop.config import Config
    from noprop.data import load_mnist
    from noprop.trainer import Trainer
    torch.set_num_threads(threads)
    data = load_mnist(val_size=100, split_seed=0)
    tr = Trainer(Config(epochs=1), data, None, quiet=True)
    x, y = tr._batch(data.train.x[:128], data.train.y[:128])
    for t in range(1, 4):
        tr.step([t], x, y, "warm-up", 0.0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        tr.step([1 + n % 10], x, y, "timed", 0.0)
        n += 1
    print(json.dumps({"ms_per_step": 1000 * (time.perf_counter() - t0) / n, "steps": n,
                      "precision": tr.precision}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.seconds)
    cores = len(os.sched_getaffinity(0))
    rows = []
    for hog in (False, True):
        busy = subprocess.Popen([sys.executable, "-c", HOG]) if hog else None
        try:
            time.sleep(1.0 if busy else 0.0)
            for threads, policy in ((cores, None), (1, None), (cores, "PASSIVE")):
                env = {**os.environ, **({"OMP_WAIT_POLICY": policy} if policy else {})}
                r = subprocess.run([sys.executable, __file__, "--child", str(threads), "--seconds", str(a.seconds)],
                                   capture_output=True, text=True, env=env, cwd=ROOT, check=True)
                row = {"beside": "a one-core busy loop" if hog else "nothing", "threads": threads,
                       "omp_wait_policy": policy or "default", **json.loads(r.stdout.strip().splitlines()[-1])}
                print(json.dumps(row), flush=True)
                rows.append(row)
        finally:
            if busy:
                busy.kill()
    save_study(ROOT, "busy-threads", "bench/busy_threads.py", sys.argv[1:], {"rows": rows})


if __name__ == "__main__":
    main()
