"""Device selection (device.py). This machine has no GPU, so these check the choices and the
errors; the CUDA code paths themselves (NCCL, GPU autocast) run only where a GPU is present."""

import subprocess
import sys

import pytest
import torch

from noprop import device
from noprop.config import Config, ConfigError


@pytest.mark.parametrize("gpus,local_rank,name,expect", [
    (0, None, "auto", "cpu"), (0, None, "cpu", "cpu"), (2, None, "cpu", "cpu"),
    (2, None, "auto", "cuda:0"), (2, 1, "auto", "cuda:1"), (2, 3, "cuda", "cuda:1"),  # rank 3 of 2 GPUs: 3 % 2
    (2, None, "cuda:1", "cuda:1")])
def test_the_device_chosen_for_each_name_and_gpu_count(monkeypatch, gpus, local_rank, name, expect):
    """What --device resolves to on a machine with 0 or 2 GPUs (torch's answers replaced: this machine
    may have none): auto takes a GPU where there is one, a rank takes GPU LOCAL_RANK mod the count."""
    pretend_gpus(monkeypatch, gpus)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert device.resolve(name, local_rank) == torch.device(expect)


def pretend_gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


def test_a_rank_reads_torchruns_local_rank_and_a_missing_gpu_is_named(monkeypatch):
    pretend_gpus(monkeypatch, 2)
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's variable, read where no rank is given
    assert device.resolve("cuda") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="--device cuda:2: only 2 CUDA GPU"):
        device.resolve("cuda:2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_named_error():
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=f"--device {name}: torch sees no CUDA GPU"):
            device.resolve(name)


def test_unknown_device_names_are_refused():
    for name in ("gpu", "cuda:x", "tpu", ""):
        with pytest.raises(ConfigError, match="--device"):
            device.resolve(name)
        with pytest.raises(ConfigError, match="--device"):
            Config(device=name).validate()


def test_backend_and_autocast_follow_the_device():
    assert device.backend(torch.device("cpu")) == "gloo"
    assert device.backend(torch.device("cuda", 0)) == "nccl"
    assert device.autocast(torch.device("cpu"), "bf16") == dict(device_type="cpu", dtype=torch.bfloat16,
                                                                enabled=True)
    assert device.autocast(torch.device("cuda", 0), "fp32")["enabled"] is False


def test_seeded_noise_is_drawn_on_the_cpu_generator():
    a = device.randn((3, 4), torch.Generator().manual_seed(7), "cpu")
    assert torch.equal(a, torch.randn(3, 4, generator=torch.Generator().manual_seed(7)))


def test_the_device_is_not_part_of_a_runs_identity():
    a, b = Config(device="cpu").validate(), Config(device="auto").validate()
    assert a.differences(b) == []
    assert Config(lr=2e-3).validate().differences(a) == ["lr"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cli_names_the_device_option(tmp_path):
    r = subprocess.run([sys.executable, "-m", "noprop", "train", "--device", "cuda", "--epochs", "1",
                        "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--device cuda" in r.stderr and "--device cpu" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags,native", [({"avx2", "fma"}, False), ({"avx2", "avx512f"}, False),
                                          ({"avx512f", "avx512_bf16"}, True),
                                          ({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, True)])
def test_auto_precision_is_bf16_exactly_where_the_cpu_has_native_bf16(flags, native, monkeypatch):
    from noprop import machine
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(machine, "cpu_flags", lambda: flags)
    cpu = torch.device("cpu")
    assert device.bf16_native(cpu) == native
    assert device.resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert device.resolve_precision("fp32", cpu) == "fp32"
    assert device.resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ConfigError, match="--precision"):
        Config(precision="fp16").validate()
