"""Where one NoProp-DT block training step spends its time (torch.profiler), before and after the
conv path's reordering (max-pool before ReLU) and the one-multiply dropout, on this machine's CPU
class. Writes results/profile-<cpu class>.json; `noprop results` renders bench/profile.md from it.

    python bench/block_profile.py [--threads 1] [--steps 20]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/block_profile.py
                            (an AVX2 machine mimicked on a newer CPU: the class is then reported as avx2)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from noprop import nets
from noprop.tools import bench
from noprop.tools.results import save_study

ROOT = Path(__file__).resolve().parent.parent


def old_dropout(self, x):  # before: x * bool_mask * scale (the mask converted in both passes)
    if not self.training or self.p == 0.0:
        return x
    return x * self.keep_mask(x) * (1.0 / (1.0 - self.p))


def paper_order(model) -> None:  # before: conv -> ReLU -> pool, as the paper draws it
    for block in model.blocks:
        f = block.image_path.features
        f[1], f[2] = f[2], f[1]
        f[8], f[9] = f[9], f[8]


def measure(variant: str, precision: str, steps: int) -> dict:
    step, _, model = bench._setup("dt", "mnist", precision, True, 128)
    saved = nets.Dropout.forward
    if variant == "before":
        paper_order(model)
        nets.Dropout.forward = old_dropout
    try:
        for _ in range(5):
            step()
        seconds = bench.timed(step, min_run_time=2.0)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
    finally:
        nets.Dropout.forward = saved
    ops = sorted(((e.key, e.self_cpu_time_total / steps / 1e3) for e in prof.key_averages()), key=lambda t: -t[1])
    return {"variant": variant, "precision": precision, "ms_per_step": seconds * 1e3,
            "block_samples_per_s": 128 / seconds, "top_ops_ms_per_step": ops[:12],
            "profiled_ms_per_step": sum(t for _, t in ops)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--precision", nargs="+", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    precisions = a.precision or bench.default_precisions()[0]
    rows = [measure(v, p, a.steps) for p in precisions for v in ("before", "after")]
    save_study(ROOT, "profile", "bench/block_profile.py", sys.argv[1:], {"threads": a.threads, "rows": rows})


if __name__ == "__main__":
    main()
