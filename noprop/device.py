"""Where the tensors live: CPU or a CUDA GPU, and the autocast and collective backend that go
with it.

- ``--device auto`` (the default) takes CUDA when torch sees a GPU, the CPU otherwise;
  ``cpu``, ``cuda`` and ``cuda:N`` ask for one. Under block-parallel training on CUDA, rank r of a
  machine uses GPU LOCAL_RANK and the ranks talk over NCCL; on CPU over gloo.
- ``--precision bf16`` is autocast to bfloat16 on either device (on CPU it pays off where the CPU
  has native bf16 instructions: AVX-512 BF16 or AMX). ``auto``, the default, picks bf16 exactly
  there and fp32 elsewhere: on this project's AVX-512 BF16 CPU a full 10-epoch MNIST NoProp-DT run
  gave the same test accuracy in bf16 as in fp32 (99.12 +- 0.02 both) at 1.9x the speed.
- Seeded inference noise is drawn on the CPU from a CPU generator and then moved, so an inference
  run with a given seed draws the same numbers on every device.

The device is a runtime choice, not part of a run's identity: a run trained on a GPU resumes or
evaluates on a CPU and the other way round (checkpoints are always written from CPU copies).
"""

from __future__ import annotations

import contextlib
import os

import torch

from .errors import ConfigError
from .machine import bf16_native_cpu
from .noise import randn as batch_randn

DEVICES = ("auto", "cpu", "cuda")


def valid_name(name: str) -> bool:
    if name in DEVICES:
        return True
    head, _, index = name.partition(":")
    return head == "cuda" and index.isdigit()


def resolve(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """The torch.device for a --device value. A rank of a multi-GPU run takes GPU LOCAL_RANK."""
    if not valid_name(name):
        raise ConfigError(f"--device: unknown device {name!r}; choose auto, cpu, cuda or cuda:N")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: torch sees no CUDA GPU here (torch {torch.__version__}); "
                          "use --device cpu, or install a CUDA build of torch")
    if name == "cuda":
        if local_rank is None:
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        name = f"cuda:{local_rank % torch.cuda.device_count()}"
    index = int(name.split(":")[1])
    if index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return torch.device(name)


def bf16_native(device: torch.device) -> bool:
    """Whether the device computes in bf16 natively (not emulated through fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bf16_native_cpu()


def resolve_precision(precision: str, device: torch.device) -> str:
    """fp32 or bf16 for a --precision value on a device."""
    if precision == "auto":
        return "bf16" if bf16_native(device) else "fp32"
    return precision


def backend(device: torch.device) -> str:
    """The torch.distributed backend for ranks on this kind of device."""
    return "nccl" if device.type == "cuda" else "gloo"


def autocast(device: torch.device, precision: str) -> dict:
    """Keyword arguments of torch.autocast for a run's precision on its device."""
    return dict(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def eval_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of inference for a resolved precision (None: plain fp32)."""
    return torch.bfloat16 if precision == "bf16" else None


def randn(shape, generator: torch.Generator | None, device, dtype=torch.float32) -> torch.Tensor:
    """N(0, I) noise. With a (CPU) generator: drawn on the CPU and moved, so the numbers do not
    depend on the device; without one (training): drawn on the device from its default generator,
    through noise.randn (a data-parallel rank's slice of the global batch's draw)."""
    if generator is None:
        return batch_randn(shape, device, dtype)
    return torch.randn(shape, generator=generator, dtype=dtype).to(device)


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak memory so far: resident set (VmHWM) on CPU, allocated memory on CUDA."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (timing); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def threads(n: int | None):
    """torch's intra-op CPU threads set to n inside the block (None: unchanged)."""
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _busy_seconds() -> float | None:
    """CPU seconds every process on the machine has run, from /proc/stat (None where there is none)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class IdleCoreThreads:
    """torch's CPU threads follow the cores that other processes leave idle, re-read at each
    adjust() (at most once a second). A thread that shares its core with another busy process makes
    every parallel region wait for it. bench/busy_threads.py (results/busy-threads-*.json; a
    NoProp-DT step, batch 128, 2 cores): beside a one-core busy loop 2 threads took 1.6x (AVX-512
    BF16, bf16) and 1.9x (held to AVX2 code, fp32) as long as 1 thread, where on an idle machine 1
    thread takes about 1.6x as long as 2. OMP_WAIT_POLICY=PASSIVE (read once, at start) helped
    beside the loop but cost 20-30% on an idle machine in the same runs. So: one thread per core
    left idle, where idle means another process used less than half of it since the last look.
    --threads turns this off."""

    def __init__(self, min_interval: float = 1.0):
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.min_interval = min_interval
        self.last = self._read()

    @staticmethod
    def _read() -> tuple[float, float | None, float]:
        import time
        return time.monotonic(), _busy_seconds(), time.process_time()

    def others(self, now: tuple, last: tuple) -> float:
        """Cores' worth of CPU that other processes used between two readings."""
        return max(0.0, (now[1] - last[1]) - (now[2] - last[2])) / max(now[0] - last[0], 1e-9)

    def adjust(self) -> int | None:
        """Set the thread count from the last interval; returns it when it changed."""
        now = self._read()
        if now[1] is None or self.last[1] is None or now[0] - self.last[0] < self.min_interval:
            return None
        n = max(1, min(self.cores, int(self.cores - self.others(now, self.last) + 0.5)))
        self.last = now
        if n == torch.get_num_threads():
            return None
        torch.set_num_threads(n)
        return n
