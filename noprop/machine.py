"""What a result was measured on and made by: the CPU class, the machine, the package version and
git commit. Every result file and checkpoint carries these, because the CPU differs from one
machine to the next (AVX2 only, AVX-512, AVX-512 with native bf16, AMX), and a figure holds for its
class only."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

import torch

from .version import __version__

CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
CLASS_NAMES = {"amx": "AVX-512 BF16 + AMX", "avx512_bf16": "AVX-512 BF16", "avx512": "AVX-512",
               "avx2": "AVX2/FMA", "other": "other"}


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_class(flags: set[str] | None = None) -> str:
    """One of "amx" (AVX-512 BF16 and AMX tiles), "avx512_bf16", "avx512", "avx2", "other": the
    instruction sets that decide how fast fp32 and bf16 training run. ATEN_CPU_CAPABILITY or
    ONEDNN_MAX_CPU_ISA set to AVX2 (to mimic an AVX2 machine on a newer one) caps the class."""
    flags = cpu_flags() if flags is None else flags
    cls = ("amx" if {"amx_bf16", "amx_tile"} <= flags and "avx512_bf16" in flags else
           "avx512_bf16" if "avx512_bf16" in flags else
           "avx512" if "avx512f" in flags else
           "avx2" if "avx2" in flags else "other")
    capped = (os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in ("avx2", "default")
              or os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper().startswith("AVX2"))
    return "avx2" if capped and cls != "other" else cls


def bf16_native_cpu() -> bool:
    """Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX), not emulated through fp32."""
    return cpu_class() in ("amx", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The commit of the checkout this package runs from (with "+dirty" when it has uncommitted
    changes), or None outside a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    """Version and commit of the code that made a result."""
    return {"noprop_version": __version__, "git_commit": git_commit(), "torch": torch.__version__}


def describe(dev=None) -> dict:
    """The machine a figure was measured on."""
    flags = cpu_flags()
    return {"cpu": cpu_name(), "cpu_class": cpu_class(flags),
            "cpu_flags": sorted(f for f in CPU_FEATURES if f in flags), "cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "isa_caps": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ},
            "device": str(dev or "cpu"),
            "gpu": torch.cuda.get_device_name(dev) if dev is not None and getattr(dev, "type", "") == "cuda" else None}


def class_name(cls: str) -> str:
    """A CPU class as the docs name it ("amx" -> "AVX-512 BF16 + AMX")."""
    return CLASS_NAMES.get(cls, cls)


def machine_line(r: dict) -> str:
    """The machine and the code a result was measured with, in one line of Markdown: r holds
    describe()'s "machine" and provenance()'s fields (every result file and bench result does)."""
    m = r["machine"]
    caps = "".join(f", {k}={v}" for k, v in (m.get("isa_caps") or {}).items())
    gpu = f", GPU {m['gpu']} ({m['device']})" if m.get("gpu") else ""
    return (f"{m['cpu']}, CPU class **{class_name(m['cpu_class'])}**{caps}{gpu}, "
            f"{r.get('threads', m.get('threads'))} thread(s), torch {r.get('torch', m.get('torch'))}, noprop "
            f"{r.get('noprop_version')} at commit `{(r.get('git_commit') or '?')[:12]}`")
