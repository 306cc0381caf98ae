"""What `make run` prints and how long it takes on this machine's CPU class, quiet or beside a
one-core CPU hog (not a test): each run is the Makefile's own `run` command, in a fresh run folder
under runs/, and its result.json gives the accuracy under each rule, the training and evaluation
times and each block's optimizer steps. Writes results/make-run-<cpu class>[-hog].json; `noprop
results` renders the README's table from every such file.

    python bench/make_run.py --repeats 3
    python bench/make_run.py --repeats 3 --hog            # a busy-looping process beside it
    python bench/make_run.py --repeats 2 --quickstart     # examples/quickstart.py instead (quickstart-*.json)
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 python bench/make_run.py
        (torch, oneDNN and MKL held to AVX2 code on a newer CPU: the class is reported as avx2)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from noprop.tools.results import save_study

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import ROOT, make_target_command, shown  # noqa: E402

HOG = "while True: pass"  # one busy core, as a pip install or a build in another terminal makes


def one_run(cmd: list[str], out: Path, env_extra: dict) -> dict:
    import os
    t0 = time.perf_counter()
    r = subprocess.run([*cmd, "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, **env_extra})
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"make run failed ({r.returncode}):\n{r.stderr[-2000:]}")
    res = json.loads((out / "result.json").read_text())
    printed = [x for x in r.stdout.splitlines() if x.startswith("test accuracy")]
    chosen = res["rule_chosen_on_val"]
    return {"seconds": seconds, "printed": printed[0] if printed else "", "rule_chosen_on_val": chosen,
            "test_acc_chosen_rule": res["test"][chosen]["mean"], "test_acc_paper_rule": res["test_acc_mean"],
            "train_seconds": res["train_seconds"], "evaluation_seconds": res["evaluation_seconds"],
            "wall_seconds": res["wall_seconds"], "steps_per_block": res["steps_per_block"],
            "untrained_blocks": res["untrained_blocks"], "epochs_fraction": res["epochs_fraction"],
            "threads": res["machine"]["threads"]}


def quickstart_run(env_extra: dict) -> dict:
    """examples/quickstart.py as a user runs it, in a fresh folder (it writes runs/quickstart there)."""
    import os
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], cwd=tmp, capture_output=True,
                           text=True, env={**os.environ, **env_extra})
        seconds = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"quickstart failed ({r.returncode}):\n{r.stderr[-2000:]}")
        res = json.loads((Path(tmp) / "runs" / "quickstart" / "result.json").read_text())
    chosen = res["rule_chosen_on_val"]
    return {"seconds": seconds, "printed": r.stdout.splitlines()[0], "rule_chosen_on_val": chosen,
            "test_acc_chosen_rule": res["test"][chosen]["mean"], "test_acc_paper_rule": res["test_acc_mean"],
            "train_seconds": res["train_seconds"], "evaluation_seconds": res["evaluation_seconds"],
            "steps_per_block": res["steps_per_block"], "untrained_blocks": res["untrained_blocks"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hog", action="store_true", help="run a one-core busy loop beside every run")
    ap.add_argument("--quickstart", action="store_true", help="time examples/quickstart.py instead of make run")
    ap.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE", help="extra environment for the runs")
    a = ap.parse_args()
    cmd = make_target_command("run")
    env_extra = dict(kv.split("=", 1) for kv in a.env)
    hog = subprocess.Popen([sys.executable, "-c", HOG]) if a.hog else None
    try:
        time.sleep(1.0 if hog else 0.0)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        runs = []
        for i in range(a.repeats):
            runs.append(quickstart_run(env_extra) if a.quickstart else
                        one_run(cmd, ROOT / "runs" / f"make-run-bench-{stamp}-{i}", env_extra))
            print(json.dumps(runs[-1]), flush=True)
    finally:
        if hog:
            hog.kill()
    study = ("quickstart" if a.quickstart else "make-run") + ("-hog" if a.hog else "")
    save_study(ROOT, study, "bench/make_run.py", sys.argv[1:],
               {"what": "python examples/quickstart.py" if a.quickstart else shown(cmd), "hog": a.hog,
                "env": env_extra, "runs": runs})


if __name__ == "__main__":
    main()
