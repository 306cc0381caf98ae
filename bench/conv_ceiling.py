"""How close to the matmul peak can a NoProp-DT block step get here? Its FLOPs are ~90% in three
small convolutions, so the step's share of the peak is bounded by theirs: this measures each of the
block's convolutions alone (forward and the backward training runs, channels_last, oneDNN), the
whole block step, and two candidates for more arithmetic per call: T blocks' convolutions as one
grouped convolution (one call for all blocks of a minibatch), and an im2col + matmul convolution.
Writes results/ceiling-<cpu class>.json; `noprop results` renders its table in bench/profile.md.

    python bench/conv_ceiling.py [--threads N]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/conv_ceiling.py
                            (an AVX2 machine mimicked on a newer CPU: the class is then reported as avx2)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from noprop.tools import bench
from noprop.tools.results import save_study

ROOT = Path(__file__).resolve().parent.parent
BATCH, T = 128, 10
# (name, in channels, out channels, input side) of the MNIST DT block's convolutions (nets.ConvPath)
LAYERS = [("conv1 1->32 on 28x28", 1, 32, 28), ("conv2 32->64 on 13x13", 32, 64, 13),
          ("conv3 64->128 on 11x11", 64, 128, 11)]


class Im2colConv(torch.autograd.Function):
    """A 3x3 valid convolution as one matmul on channels_last patches (a candidate: measured, not used)."""

    @staticmethod
    def forward(ctx, x, w):  # x (B, H, W, C) contiguous; w (Cout, C, 3, 3)
        b, h, wd, c = x.shape
        ho, wo = h - 2, wd - 2
        s = x.stride()
        patches = x.as_strided((b, ho, wo, 3, 3, c), (s[0], s[1], s[2], s[1], s[2], s[3])).reshape(-1, 9 * c)
        wm = w.permute(2, 3, 1, 0).reshape(9 * c, -1)
        ctx.save_for_backward(patches, wm)
        ctx.shape = (b, h, wd, c, ho, wo)
        return (patches @ wm).view(b, ho, wo, -1)

    @staticmethod
    def backward(ctx, g):
        patches, wm = ctx.saved_tensors
        b, h, wd, c, ho, wo = ctx.shape
        g2 = g.reshape(-1, g.shape[-1])
        gw = (patches.t() @ g2).view(3, 3, c, -1).permute(3, 2, 0, 1)
        gp = (g2 @ wm.t()).view(b, ho, wo, 3, 3, c)
        gx = torch.zeros(b, h, wd, c, dtype=g.dtype)
        for i in range(3):
            for j in range(3):
                gx[:, i:i + ho, j:j + wo] += gp[:, :, :, i, j]
        return gx, gw


def conv_step(cin: int, cout: int, side: int, precision: str, groups: int = 1, im2col: bool = False):
    """Forward + backward of one convolution as training runs it (the first layer's input needs no
    gradient; the others' do). groups > 1: `groups` blocks' layers in one grouped call."""
    dtype = bench.DTYPES[precision]
    first = cin == 1
    x = torch.randn(BATCH, cin * (1 if first else groups), side, side)
    if im2col:
        w = torch.randn(cout, cin, 3, 3, dtype=dtype, requires_grad=True)
        x = x.to(dtype).permute(0, 2, 3, 1).contiguous().requires_grad_(not first)
        g = torch.randn(BATCH, side - 2, side - 2, cout, dtype=dtype)
        return lambda: Im2colConv.apply(x, w).backward(g)
    conv = nn.Conv2d(cin * (1 if first else groups), cout * groups, 3, groups=1 if first else groups)
    conv.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(not first)
    g = torch.randn(BATCH, cout * groups, side - 2, side - 2).contiguous(memory_format=torch.channels_last)
    autocast = {"device_type": "cpu", "dtype": torch.bfloat16, "enabled": precision == "bf16"}

    def step():
        with torch.autocast(**autocast):
            out = conv(x)
        out.backward(g.to(out.dtype))
    return step


def row(name: str, fn, peak: float, per_call: int = 1, flops: int | None = None) -> dict:
    flops = bench.count_flops(fn) if flops is None else flops
    seconds = bench.timed(fn, min_run_time=1.0, rounds=2)
    gflops = flops / seconds / 1e9
    print(f"  {name}: {seconds * 1e3:.2f} ms, {gflops:.0f} GFLOP/s, {100 * gflops / peak:.0f}% of peak")
    return {"what": name, "ms": seconds * 1e3, "ms_per_block": seconds * 1e3 / per_call, "flops": flops,
            "gflops": gflops, "share_of_peak": gflops / peak}


def measure(precision: str) -> dict:
    peak = bench.matmul_peak(precision)
    print(f"{precision}: matmul peak {peak:.0f} GFLOP/s")
    layers = [row(name, conv_step(ci, co, s, precision), peak) for name, ci, co, s in LAYERS]
    three = [conv_step(ci, co, s, precision) for _, ci, co, s in LAYERS]
    grouped = [conv_step(ci, co, s, precision, groups=T) for _, ci, co, s in LAYERS]
    one = row("the three convolutions of one block", lambda: [f() for f in three], peak)
    # the grouped call does T times one block's arithmetic (FlopCounterMode miscounts the backward of
    # a grouped convolution: it reported 4x that)
    candidates = [one, row(f"the same for {T} blocks as one grouped call per layer", lambda: [f() for f in grouped],
                           peak, T, flops=T * one["flops"])]
    im2col = [conv_step(ci, co, s, precision, im2col=True) for _, ci, co, s in LAYERS[1:]]
    candidates.append(row("conv2 + conv3 as im2col + matmul", lambda: [f() for f in im2col], peak))
    candidates.append(row("conv2 + conv3, oneDNN", lambda: [f() for f in three[1:]], peak))
    block = bench.throughput("dt", "mnist", precision)
    step = {"what": "the whole DT block step (bench throughput)", "ms": block["seconds_per_step"] * 1e3,
            "gflops": block["gflops"], "share_of_peak": block["gflops"] / peak}
    print(f"  block step: {step['ms']:.1f} ms, {step['gflops']:.0f} GFLOP/s, {100 * step['share_of_peak']:.0f}%")
    conv_share = sum(r["flops"] for r in layers) / (block["train_flops_per_block_sample"] * BATCH)
    return {"precision": precision, "peak_gflops": peak, "layers": layers, "candidates": candidates,
            "block_step": step, "conv_share_of_block_flops": conv_share}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--precision", nargs="+", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    precisions = a.precision or bench.default_precisions()[0]
    rows = [measure(p) for p in precisions]
    save_study(ROOT, "ceiling", "bench/conv_ceiling.py", sys.argv[1:], {"threads": a.threads, "rows": rows})


if __name__ == "__main__":
    main()
