"""Wall time of the two commands a new user runs first, on this machine's CPU class (not a test):
`make run`'s training command and the test suite (`make test`'s pytest, and `make test-slow`'s).
Writes results/timing-<cpu class>.json; `noprop results` renders docs/performance.md's table.

    python bench/timing.py [--skip-tests | --targets test]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/timing.py
        (torch, oneDNN and MKL held to AVX2 code on a newer CPU: the class is reported as avx2)

The install is not timed (it is pip's and the network's); the commands run from the repository with
the .venv the Makefile builds.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from noprop.tools.results import save_study

ROOT = Path(__file__).resolve().parent.parent


def make_target_command(target: str) -> list[str]:
    """The command a Makefile target runs (its last recipe line), with $(BIN) resolved."""
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = lines.index(next(x for x in lines if x.startswith(f"{target}:")))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    bin_dir = str(Path(sys.executable).parent)
    return shlex.split(recipe[-1].replace("$(BIN)", bin_dir))


def shown(cmd: list[str]) -> str:
    """The command as a reader would type it (the venv's path left out)."""
    return shlex.join([Path(cmd[0]).name, *cmd[1:]])


def timed(cmd: list[str], cwd: Path) -> tuple[float, str, int]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t0, r.stdout + r.stderr, r.returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--targets", nargs="+", default=["test", "test-slow"], choices=["test", "test-slow"],
                    help="which test targets to time (default: both)")
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cmd = make_target_command("run")
        seconds, out, code = timed(cmd, Path(tmp))
        acc = re.search(r"^test accuracy .*$", out, re.M)
        rows.append({"what": "make run (after the install)", "command": shown(cmd),
                     "seconds": seconds, "returncode": code,
                     "printed": acc.group(0) if acc else out[-500:]})
    if not a.skip_tests:
        for target in a.targets:
            cmd = make_target_command(target)
            seconds, out, code = timed(cmd, ROOT)
            summary = [x for x in out.splitlines() if re.search(r"\d+ passed", x)]
            rows.append({"what": f"make {target} (pytest)", "command": shown(cmd),
                         "seconds": seconds, "returncode": code, "printed": summary[-1] if summary else out[-500:]})
    print(json.dumps(rows, indent=1))
    save_study(ROOT, "timing", "bench/timing.py", sys.argv[1:], {"rows": rows})


if __name__ == "__main__":
    main()
