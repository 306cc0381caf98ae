"""The benchmark's counting (not its timings): FLOPs by hand, and the tables it writes."""

import json

import torch

from noprop import bench
from noprop.nets import DTBlock


def test_forward_flops_of_the_mnist_block_by_hand():
    convs = 2 * (1 * 9 * 32 * 26 * 26 + 32 * 9 * 64 * 11 * 11 + 64 * 9 * 128 * 9 * 9)
    linears = 2 * (2048 * 256 + 10 * 256 + 256 * 256 * 2 + 512 * 256 + 256 * 128 + 128 * 10)
    blk = DTBlock((1, 28, 28), 10, 10).eval()
    n = bench.forward_flops(blk, torch.zeros(4, 10), torch.zeros(4, 1, 28, 28))
    assert n == 4 * (convs + linears) == 4 * 18_439_936


def test_throughput_rows_and_tables(tmp_path):
    row = bench.throughput("dt", steps=1, warmup=1, batch=8)
    assert row["block_samples_per_s"] > 0 and row["train_flops_per_block_sample"] == 3 * 18_439_936
    mem = bench.memory("dt", steps=2)
    assert mem["process_peak_mb"] >= mem["train_peak_mb"] >= 0
    results = {"machine": bench.machine(), "peak": {"fp32": 100.0, "bf16": 200.0}, "throughput": [row],
               "memory": [mem, {**mem, "method": "backprop", "train_peak_mb": 2 * mem["train_peak_mb"] + 1}],
               "command": "test"}
    md = bench.markdown(results)
    assert "block-samples/s" in md and "vs backprop" in md and results["machine"]["torch"] in md
    json.dumps(results)
