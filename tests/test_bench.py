"""The benchmark's counting and its tables (not its timings): FLOPs against a hand count, the peak
probe against a pure matmul workload measured the way the throughput rows are, the CPU class."""

import json
import platform

import pytest
import torch

from noprop import machine
from noprop.nets import DTBlock
from noprop.tools import bench


def test_flop_counter_matches_the_hand_count_of_the_mnist_block():
    convs = 2 * (1 * 9 * 32 * 26 * 26 + 32 * 9 * 64 * 11 * 11 + 64 * 9 * 128 * 9 * 9)
    linears = 2 * (2048 * 256 + 10 * 256 + 256 * 256 * 2 + 512 * 256 + 256 * 128 + 128 * 10)
    blk = DTBlock((1, 28, 28), 10, 10).eval()
    z, x = torch.zeros(4, 10), torch.zeros(4, 1, 28, 28)
    assert bench.count_flops(lambda: blk(z, x)) == 4 * (convs + linears) == 4 * 18_439_936
    # the real backward: twice the forward for every layer but the two that read the inputs (the
    # first conv and the label path's first linear), which need no gradient for their input
    blk.train()
    train = bench.count_flops(lambda: blk(z, x).sum().backward())
    no_input_grad = 4 * 2 * (1 * 9 * 32 * 26 * 26 + 10 * 256)
    assert train == 3 * 4 * (convs + linears) - no_input_grad


def test_the_peak_probe_and_a_workload_count_a_product_the_same_way(monkeypatch):
    """The arithmetic behind a share of peak, without a clock: both count 2mnk FLOPs per (m x k)(k x n)
    product and divide by the time that timed() reports."""
    monkeypatch.setattr(bench, "timed", lambda fn, *args, **kw: 0.5)
    assert bench.matmul_peak("fp32", n=64) == 2 * 64 ** 3 / 0.5 / 1e9
    a, b = torch.randn(64, 48), torch.randn(48, 32)
    assert bench.count_flops(lambda: torch.mm(a, b)) == 2 * 64 * 48 * 32
    assert bench.workload_gflops(lambda: torch.mm(a, b)) == 2 * 64 * 48 * 32 / 0.5 / 1e9


@pytest.mark.slow  # a timing: it depends on the machine's load, so it stays out of `make test`
def test_a_pure_matmul_workload_lands_near_the_peak_probe():
    """Measured as the throughput rows are (FLOPs counted, best timed block), n x n products must run
    at 80-105% of the probe: the probe is neither too low (the share of peak would exceed 100%, as an
    earlier probe did) nor an unreachable ideal."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core: the suite may run on two workers, each on its own core
    seen = []
    try:
        for _ in range(3):  # a shared machine's clock wanders by several %: one agreeing attempt of three
            probe = bench.matmul_peak("fp32", min_run_time=1.5)
            work = bench.workload_gflops(lambda: torch.mm(a, b), min_run_time=1.5)
            seen.append((work, probe))
            if 0.8 * probe <= work <= 1.05 * probe:
                break
    finally:
        torch.set_num_threads(threads)
    assert 0.8 * probe <= work <= 1.05 * probe, seen


def test_throughput_rows_and_tables(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "timed", lambda fn, *args, **kw: 0.25)  # a step of 0.25 s
    row = bench.throughput("dt", batch=8, min_run_time=0.2)
    # NoProp-DT trains one block a step: 8 block-samples in 0.25 s; the backprop baseline all 10 of them
    assert row["seconds_per_step"] == 0.25 and row["block_samples_per_s"] == 32.0
    assert row["train_flops_per_block_sample"] == pytest.approx(3 * 18_439_936, rel=0.01)
    assert row["gflops"] == pytest.approx(32.0 * row["train_flops_per_block_sample"] / 1e9)
    assert bench.throughput("backprop", batch=2)["block_samples_per_s"] == 2 * 10 / 0.25
    mem = bench.memory("dt", steps=2)
    assert mem["process_peak_mb"] >= mem["train_peak_mb"] >= 0
    results = {"machine": machine.describe(), "peak": {"fp32": {"measured_gflops": 100.0, "nominal_gflops": None}},
               "throughput": [row], "notes": ["bf16 skipped: test"],
               "memory": [mem, {**mem, "method": "backprop", "train_peak_mb": 2 * mem["train_peak_mb"] + 1}],
               "command": "test"}
    md = bench.markdown(results)
    assert "block-samples/s" in md and "vs backprop" in md and results["machine"]["torch"] in md
    assert f"CPU class **{machine.class_name(machine.cpu_class())}**" in md and "bf16 skipped" in md
    json.dumps(results)


@pytest.mark.parametrize("flags,cls", [
    ({"avx2", "fma"}, "avx2"), ({"avx2", "avx512f"}, "avx512"), ({"avx2", "avx512f", "avx512_bf16"}, "avx512_bf16"),
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, "amx"), ({"sse4_2"}, "other")])
def test_cpu_class_from_flags(flags, cls, monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert machine.cpu_class(flags) == cls
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # an AVX2 machine mimicked on a newer CPU
    assert machine.cpu_class(flags) == ("other" if cls == "other" else "avx2")


def test_bf16_is_skipped_where_it_is_emulated(monkeypatch):
    # the CPU's flags decide here, not a cap this process may run under (the AVX2-held benchmarks)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2", "fma"})
    precisions, notes = bench.default_precisions()
    assert precisions == ["fp32"] and "bf16 skipped" in notes[0] and "avx2" in notes[0]
    monkeypatch.setattr(machine, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    assert bench.default_precisions() == (["fp32", "bf16"], [])


def test_repeated_workers_rows_alternate_and_report_medians_of_paired_ratios(monkeypatch):
    """With --workers-repeats R, one method's runs alternate 1, N, 1, N, ... and a row reports the
    median images/s and the median of the paired runs' ratios (not the ratio of two medians)."""
    order, speeds = [], iter([100.0, 150.0, 100.0, 190.0, 80.0, 160.0])  # ratios 1.5, 1.9, 2.0

    def fake(world, method, precision, **kw):
        order.append((method, world))
        ips = next(speeds)
        return {"method": method, "workers": world, "precision": precision, "images_per_s": ips,
                "block_samples_per_s": 10 * ips, "peak_memory_mb_per_rank": [1.0] * world}
    monkeypatch.setattr(bench, "workers_throughput", fake)
    rows = bench.workers_rows(["ct"], ["fp32"], (1, 2), repeats=3, n_train=256)
    assert order == [("ct", 1), ("ct", 2)] * 3
    one, two = rows
    assert one["runs_images_per_s"] == [100.0, 100.0, 80.0] and one["images_per_s"] == 100.0
    assert two["images_per_s"] == 160.0 and two["block_samples_per_s"] == 1600.0
    assert two["speed_ups"] == pytest.approx([1.5, 1.9, 2.0]) and two["speed_up"] == pytest.approx(1.9)
    md = bench.markdown({"machine": machine.describe(), "workers": rows})
    assert "| 1.90x (1.50-2.00) |" in md and "| 1.00x |" in md and "median of 3 runs" in md


def test_workers_batch_is_the_global_batch_or_grows_with_the_data_shards():
    """--workers-batch global keeps the method's batch (128) at any process count; per-rank gives
    each data shard 128, so the global batch grows with the shards, not with NoProp-DT's block
    groups (each group takes the whole batch)."""
    assert [bench.workers_batch_size("ct", w) for w in (1, 2, 4)] == [128, 128, 128]
    assert [bench.workers_batch_size("ct", w, "per-rank") for w in (1, 2, 4)] == [128, 256, 512]
    assert bench.workers_batch_size("dt", 2, "per-rank") == 128  # 2 groups x 1 shard
    assert bench.workers_batch_size("dt", 4, "per-rank") == 256  # 2 groups x 2 shards
    with pytest.raises(ValueError, match="per-rank"):
        bench.workers_batch_size("ct", 2, "per-worker")


@pytest.mark.slow
def test_workers_rows_run_real_workers_and_name_local_batchnorm():
    """A workers row is a real `noprop train --workers N` run; with --batchnorm-stats local the row
    and its table say that BatchNorm was per shard, and with --workers-batch per-rank the 2-process
    run trains with a global batch of 256 (128 per rank), which the table shows."""
    rows = [bench.workers_throughput(w, "cnn", n_train=512, precision="fp32", batchnorm_stats="local",
                                     batch="per-rank") for w in (1, 2)]
    assert [r["workers"] for r in rows] == [1, 2] and all(r["images_per_s"] > 0 for r in rows)
    assert [(r["batch_size"], r["rank_batch"]) for r in rows] == [(128, 128), (256, 128)]
    # two epochs ran; the second is the one timed (the first warms up)
    assert all(r["timed_epoch"] == 2 and len(r["all_epochs_train_seconds"]) == 2 for r in rows)
    assert all(r["images_per_s"] == pytest.approx(512 / r["all_epochs_train_seconds"][1]) for r in rows)
    assert all(r["batchnorm_stats"] == "local" and len(r["peak_memory_mb_per_rank"]) == r["workers"] for r in rows)
    md = bench.markdown({"machine": machine.describe(), "workers": rows})
    assert "| cnn | 2 | 1 x 2, BatchNorm per shard | 256 (128) | fp32 |" in md
    assert "| cnn | 1 | 1 x 1 | 128 (128) | fp32 |" in md


def _bench_script(name: str):
    """A script of bench/ as a module (importable by name, so that spawned processes find it too)."""
    import importlib
    import sys
    from pathlib import Path
    folder = str(Path(__file__).resolve().parent.parent / "bench")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(name)


def test_the_im2col_candidate_computes_the_convolution_and_its_gradients():
    """bench/conv_ceiling.py times an im2col + matmul convolution against oneDNN's: it must compute
    the same function and gradients, or its time would compare nothing."""
    import torch.nn.functional as F
    Im2colConv = _bench_script("conv_ceiling").Im2colConv
    torch.manual_seed(0)
    x = torch.randn(3, 5, 9, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(7, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 7, 7, 6, dtype=torch.float64)
    F.conv2d(x, w).backward(g)
    xn = x.detach().permute(0, 2, 3, 1).contiguous().requires_grad_()
    wn = w.detach().clone().requires_grad_()
    out = Im2colConv.apply(xn, wn)
    torch.testing.assert_close(out.permute(0, 3, 1, 2), F.conv2d(x, w))
    out.backward(g.permute(0, 2, 3, 1))
    torch.testing.assert_close(xn.grad.permute(0, 3, 1, 2), x.grad)
    torch.testing.assert_close(wn.grad, w.grad)


def test_ceiling_and_two_process_tables():
    """The tables of bench/conv_ceiling.py and bench/two_process_ceiling.py, rendered from small
    files: shares of the peak in per cent, the ceiling and its two factors."""
    from noprop.tools.results import render
    m = {"cpu": "cpu", "cpu_class": "avx2", "threads": 2, "torch": "2"}
    layer = lambda what, ms, gf: {"what": what, "ms": ms, "ms_per_block": ms, "gflops": gf,  # noqa: E731
                                  "share_of_peak": gf / 200}
    ceiling = {"command": "python bench/conv_ceiling.py", "machine": m, "threads": 2, "rows": [
        {"precision": "fp32", "peak_gflops": 200.0, "conv_share_of_block_flops": 0.91,
         "layers": [layer("conv2", 10.0, 150.0)], "candidates": [layer("grouped", 12.0, 120.0)],
         "block_step": {"what": "block step", "ms": 60.0, "gflops": 110.0, "share_of_peak": 0.55}}]}
    out = render("ceiling:ceiling-avx2", {"ceiling-avx2": ceiling})
    assert "peak 200 GFLOP/s" in out and "91% of a block step's FLOPs" in out
    assert "| conv2 | 10.00 | 150 | 75% |" in out and "| grouped | 12.00 | 120 | 60% |" in out
    assert "| **block step** | 60.00 | 110 | **55%** |" in out and "`results/ceiling-avx2.json`" in out
    two = {"command": "python bench/two_process_ceiling.py", "machine": m, "threads": 1, "rows": [
        {"method": "ct", "precision": "fp32", "rank_batch": 64, "alone_batch128_images_per_s": 1000.0,
         "alone_rank_batch_images_per_s": 900.0, "two_at_once_images_per_s": [800.0, 760.0],
         "ceiling": 1.56, "batch_effect": 0.9, "sharing_effect": 1560 / 1800, "step_ms_two_at_once": 84.2,
         "allreduce_values": 250_000, "allreduce_ms": 1.234}]}
    out = render("twoproc:two-process-ceiling-avx2", {"two-process-ceiling-avx2": two})
    assert "| ct | fp32 | 64 | 1000 | 900 | 1560 | **1.56x** | 0.90 | 0.87 | 84.2 | 1.00 MB: gloo 1.23 ms |" in out
    two["rows"][0].update(allreduce_values=110, shared_memory_sum_ms=0.031)  # NoProp-DT's head: in KB
    out = render("twoproc:two-process-ceiling-avx2", {"two-process-ceiling-avx2": two})
    assert "| 0.4 KB: gloo 1.23 ms, shared memory 0.03 ms |" in out
    assert render("twoproc:missing", {}) is None


def test_collectives_table():
    """bench/collective_latency.py's table: both columns and their ratio, and a machine where the
    shared-memory sum was not available says so."""
    from noprop.tools.results import render
    m = {"cpu": "cpu", "cpu_class": "avx2", "threads": 2, "torch": "2"}
    r = {"command": "python bench/collective_latency.py", "machine": m, "threads": 1, "rows": [
        {"what": "status word", "values": 2, "bytes": 8, "gloo_ms": 0.44, "shared_memory_ms": 0.022},
        {"what": "ct gradient", "values": 867_000, "bytes": 3_468_000, "gloo_ms": 4.0}]}
    out = render("sums:collectives-avx2", {"collectives-avx2": r})
    assert "| status word | 0.0 KB | 0.440 | 0.022 | 20.0x |" in out
    assert "| ct gradient | 3.47 MB | 4.000 | not available | – |" in out
    assert "`results/collectives-avx2.json`" in out


@pytest.mark.slow
def test_two_process_ceiling_runs_two_real_processes():
    """bench/two_process_ceiling.py on NoProp-CT for a moment: one process, then two at once; the
    ceiling is the two processes' images/s over one process's at batch 128."""
    row = _bench_script("two_process_ceiling").measure("ct", "fp32", 0.3, repeats=1)
    assert row["rank_batch"] == 64 and len(row["two_at_once_images_per_s"]) == 2
    assert all(r > 0 for r in row["two_at_once_images_per_s"])
    assert row["ceiling"] == pytest.approx(sum(row["two_at_once_images_per_s"]) / row["alone_batch128_images_per_s"])
    assert row["ceiling"] == pytest.approx(2 * row["batch_effect"] * row["sharing_effect"])
    # --batch per-rank: each process steps on 128, the batch of one process alone, so only sharing counts
    per_rank = _bench_script("two_process_ceiling").measure("ct", "fp32", 0.3, repeats=1, batch="per-rank")
    assert per_rank["rank_batch"] == 128 and per_rank["batch_effect"] == 1.0
    assert per_rank["ceiling"] == pytest.approx(2 * per_rank["sharing_effect"])
    sums = _bench_script("collective_latency")  # the sums' sizes and their timing, shared by both scripts
    from noprop import models
    from noprop.config import Config
    schedule = models.build(Config(method="ct").validate(), (1, 28, 28), 10).schedule
    # CT: its net (the paper's 0.87M), head and learned schedule; DT: only its head
    assert sums.step_sum_values("ct") == 867_722 + 110 + sum(p.numel() for p in schedule.parameters())
    assert sums.step_sum_values("dt") == 110
    (timed,) = sums.time_sums([("1000 values", 1000, torch.float32)], repeats=3)
    assert timed["values"] == 1000 and timed["bytes"] == 4000 and timed["gloo_ms"] > 0
    if platform.machine().lower() in ("x86_64", "amd64"):  # where the shared-memory sum exists
        assert timed["shared_memory_ms"] > 0


def test_a_bench_script_result_file_names_its_command_commit_machine_and_class(tmp_path, monkeypatch):
    """results.save_study, which every bench script writes its file with: results/<study>-<class>.json
    holding the command as typed, the commit, the machine, then the script's own fields."""
    from noprop.tools import results
    monkeypatch.setattr(machine, "cpu_class", lambda flags=None: "avx2")
    (tmp_path / "results").mkdir()
    path = results.save_study(tmp_path, "ceiling", "bench/conv_ceiling.py", ["--threads", "2", "a b"],
                              {"threads": 2, "rows": [1]})
    assert path == tmp_path / "results" / "ceiling-avx2.json"
    r = json.loads(path.read_text())
    assert r["study"] == "ceiling" and r["command"] == "python bench/conv_ceiling.py --threads 2 'a b'"
    assert r["rows"] == [1] and r["threads"] == 2 and "git_commit" in r and r["machine"]["cores"] >= 1
    assert list(r)[:3] == ["study", "command", "created"]


def test_step_breakdown_table():
    """bench/step_breakdown.py's table: one row per setting, both ranks of the two-process one,
    images/s set by the slower rank and compared with one process at batch 128."""
    from noprop.tools.results import render
    m = {"cpu": "cpu", "cpu_class": "avx2", "threads": 1, "torch": "2"}

    def rank(step, sums=0.0, waiting=0.0, opt=1.0):
        return {"step_ms": step, "sums_ms": sums, "waiting_ms": waiting, "optimizer_ms": opt,
                "compute_ms": step - sums - opt}
    r = {"command": "python bench/step_breakdown.py", "machine": m, "threads": 1, "rows": [
        {"method": "ct", "precision": "fp32", "one_process_batch128": [rank(100.0)],
         "one_process_batch64": [rank(52.0)],
         "two_processes_batch64_each": [rank(60.0, 3.0, 1.0), rank(64.0, 2.5, 0.5)]}]}
    out = render("steps:step-breakdown-avx2", {"step-breakdown-avx2": r})
    assert "| ct | fp32 | 1 process, batch 128 | 100.0 | 99.0 | – | – | 1.0 | 1280 | 1.00x |" in out
    assert "| ct | fp32 | 1 process, batch 64 | 52.0 | 51.0 | – | – | 1.0 | 1231 | 0.96x |" in out
    assert ("| ct | fp32 | 2 processes, 64 each | 60.0 / 64.0 | 56.0 / 60.5 | 3.0 / 2.5 | 1.0 / 0.5 | 1.0 / 1.0 "
            "| 2000 | 1.56x |") in out
    assert "`results/step-breakdown-avx2.json`" in out
    # --batch per-rank: two lone processes at once, then two ranks, each at 128 (256 images a step)
    per_rank = {**r, "batch": "per-rank", "rows": [
        {"method": "ct", "precision": "fp32", "one_process_batch128": [rank(100.0)],
         "two_alone_batch128_each": [rank(101.0), rank(104.0)],
         "two_processes_batch128_each": [rank(110.0, 3.0, 1.0), rank(112.0, 2.5, 0.5)]}]}
    out = render("steps:step-breakdown-per-rank-avx2", {"step-breakdown-per-rank-avx2": per_rank})
    assert ("| ct | fp32 | 2 processes at once, no exchange, 128 each | 101.0 / 104.0 | 100.0 / 103.0 | – | – "
            "| 1.0 / 1.0 | 2462 | 1.92x |") in out
    assert ("| ct | fp32 | 2 processes, 128 each | 110.0 / 112.0 | 106.0 / 108.5 | 3.0 / 2.5 | 1.0 / 0.5 "
            "| 1.0 / 1.0 | 2286 | 1.79x |") in out
    assert "1 process, batch 64" not in out


@pytest.mark.slow
def test_step_breakdown_times_real_data_parallel_steps():
    """bench/step_breakdown.py runs noprop's Trainer in one and in two real processes: the two
    ranks sum through shared memory every step (the DDP buckets, the status word and, for the cnn,
    its BatchNorm layers' statistics), one process never does, and the parts fit in the step."""
    sb = _bench_script("step_breakdown")
    row = sb.measure("cnn", "fp32", images=512)
    one, two = row["one_process_batch128"], row["two_processes_batch64_each"]
    assert len(one) == 1 and len(two) == 2 and len(row["one_process_batch64"]) == 1
    assert one[0]["steps"] == 4 and row["one_process_batch64"][0]["steps"] == 8 and all(r["steps"] == 4 for r in two)
    assert one[0]["sums_ms"] == 0 and one[0]["sums_per_step"] == 0
    assert all(r["sums_per_step"] >= 2 + 4 for r in two)  # >= 1 bucket + status word + 2 BatchNorm x fwd/bwd
    for r in one + two:
        assert 0 < r["optimizer_ms"] < r["step_ms"] and r["waiting_ms"] <= r["sums_ms"] < r["step_ms"]
        assert r["compute_ms"] == pytest.approx(r["step_ms"] - r["sums_ms"] - r["optimizer_ms"])
    assert row["speed_up"] == pytest.approx(one[0]["step_ms"] / max(r["step_ms"] for r in two))
    # --batch per-rank: two lone one-process jobs (no sums at all) beside two ranks, all at 128 each
    row = sb.measure("cnn", "fp32", images=512, batch="per-rank")
    alone, ranks = row["two_alone_batch128_each"], row["two_processes_batch128_each"]
    assert len(alone) == 2 and all(r["steps"] == 4 and r["sums_per_step"] == 0 for r in alone)
    assert len(ranks) == 2 and all(r["steps"] == 2 and r["sums_per_step"] >= 2 + 4 for r in ranks)
    assert row["speed_up"] == pytest.approx(2 * row["one_process_batch128"][0]["step_ms"]
                                            / max(r["step_ms"] for r in ranks))
