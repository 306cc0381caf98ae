"""Benchmark studies (not tests): named grids of training runs whose results are committed under
results/ and whose tables are generated from those files by `noprop results`.

    python bench/study.py STUDY [--threads 1] [--runs-dir bench/runs] [--seeds 0 1 2] [--only NAME ...]

Each cell (a variant x a seed) trains in its own run folder under --runs-dir/STUDY/, so a study that
is interrupted resumes where it stopped (finished cells are kept, an unfinished one continues from
its checkpoint). When every cell is done, results/STUDY.json is written: the command, the commit,
the machine with its CPU class and flags, torch, and per cell its whole config, seed, per-epoch
history and every inference run's accuracy under each rule. Selection (best epoch, recipes, head
choices) only ever reads validation accuracy; test accuracy is reported, never used to choose.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from noprop.checkpoint import atomic_write_text
from noprop.config import Config, taken_by
from noprop.data import load_data
from noprop.diagnose import chain_analysis
from noprop.machine import describe, provenance
from noprop.models import load
from noprop.runfolder import LAST, RESULT, STATE
from noprop.runner import run

ROOT = Path(__file__).resolve().parent.parent

# Every study: a title, what it varies (variants: label -> Config overrides), what all its cells
# share, the seeds, and how each cell is evaluated at the end.
STUDIES: dict[str, dict] = {
    "dt-head-init": {
        "title": "NoProp-DT's output head: random start or the Bayes classifier of q(z_T|y), chosen on validation",
        "common": dict(method="dt", epochs=1, batch_size=128, precision="fp32", val_subset=2000),
        "variants": {f"{init} head, {n} images": dict(head_init=init, train_subset=n)
                     for n in (3200, 12800) for init in ("random", "bayes")},
        "seeds": [0, 1, 2], "eval": dict(eval_runs=3, ensemble=0), "diagnose": True,
    },
    "backprop-logit-scale": {
        "title": "The backprop baseline's learnable logit scale: its start, chosen on validation",
        "common": dict(method="backprop", epochs=2, batch_size=128, train_subset=12800, val_subset=2000),
        "variants": {f"scale {s:g}": dict(logit_scale=s) for s in (1.0, 3.0, 10.0, 30.0)},
        "seeds": [0], "eval": dict(eval_runs=1, ensemble=0),
    },
    "small-budget": {
        "title": "NoProp-DT after one epoch on 3,200 / 12,800 / 55,000 MNIST images (batch 128, fp32)",
        "common": dict(method="dt", epochs=1, batch_size=128, precision="fp32"),
        "variants": {f"{n} images": dict(train_subset=n) for n in (3200, 12800, 55000)},
        "seeds": [0, 1, 2], "eval": dict(eval_runs=3, ensemble=10), "diagnose": True,
    },
    "mnist-equal-budget": {
        "title": "Every method on MNIST with the same wall-clock training budget",
        "common": dict(minutes=5.0, epochs=1000, steps=100, test_curve=False),
        "variants": {
            "NoProp-DT (one-hot)": dict(method="dt", embedding="one-hot"),
            "NoProp-DT (learned)": dict(method="dt", embedding="learned"),
            "NoProp-DT (prototype)": dict(method="dt", embedding="prototype"),
            "NoProp-CT (one-hot)": dict(method="ct"),
            "NoProp-FM (one-hot)": dict(method="fm"),
            "Backprop (one-hot)": dict(method="backprop"),
            "CNN (not in the paper)": dict(method="cnn"),
        },
        "seeds": [0, 1, 2], "eval": dict(eval_runs=3, ensemble=10, train_images=10000), "diagnose": True,
    },
    "dt-recipe": {
        "title": "NoProp-DT in 20 epochs: a cosine learning-rate recipe chosen on validation",
        # both candidates run on seed 0; the one with the better final validation accuracy then on
        # seeds 1 and 2 (python bench/study.py dt-recipe --seeds 0, then --only LABEL --seeds 1 2)
        "common": dict(method="dt", epochs=20, lr_schedule="cosine"),
        "variants": {"cosine from lr 1e-3": dict(lr=1e-3), "cosine from lr 2e-3": dict(lr=2e-3)},
        "seeds": [0, 1, 2], "eval": dict(eval_runs=5, ensemble=10, train_images=10000),
    },
}
# Evaluation: the paper's rule and no-noise over eval_runs inference runs each; the ensemble rule
# (K chains per image) over one run of K chains; train accuracy (paper's rule) on train_images.


def cell_dir(runs_dir: Path, study: str, label: str, seed: int) -> Path:
    slug = "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return runs_dir / study / f"{slug}-s{seed}"


def run_cell(study: dict, label: str, seed: int, folder: Path, log=print) -> dict:
    fields = {**study["common"], **study["variants"][label], "seed": seed}
    cfg = Config(**taken_by(fields.get("method", "dt"), fields)).validate()  # "common" may hold steps for all
    if not (folder / RESULT).exists():
        data = load_data(cfg)
        t0 = time.perf_counter()
        run(cfg, data, folder, resume=(folder / STATE).exists(), quiet=True,
            log=lambda s: log(f"[{label} s{seed}] {s}"), **study["eval"])
        log(f"[{label} s{seed}] done in {time.perf_counter() - t0:.0f}s")
        if study.get("diagnose"):
            model = load(folder / LAST)
            atomic_write_text(folder / "diagnostics.json",
                              json.dumps(chain_analysis(model, data.val if len(data.val) <= 2000 else
                                                        _first(data.val, 2000), seed=seed)))
    cell = {"label": label, "seed": seed, "config": json.loads((folder / "config.json").read_text()),
            "result": json.loads((folder / RESULT).read_text()),
            "history": [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]}
    if (folder / "diagnostics.json").exists():
        cell["diagnostics"] = json.loads((folder / "diagnostics.json").read_text())
    return cell


def _first(split, n):
    from noprop.data import subset
    return subset(split, n, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", choices=list(STUDIES))
    ap.add_argument("--seeds", nargs="+", type=int, help="default: the study's")
    ap.add_argument("--only", nargs="+", help="variant labels to run (default: all)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--runs-dir", default=str(ROOT / "bench" / "runs"))
    ap.add_argument("--out", default=str(ROOT / "results"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    study = STUDIES[a.study]
    labels = a.only or list(study["variants"])
    seeds = a.seeds or study["seeds"]
    for seed in seeds:  # seed-major: a study stopped early still has every variant for some seeds
        for label in labels:
            run_cell(study, label, seed, cell_dir(Path(a.runs_dir), a.study, label, seed),
                     log=lambda s: print(s, flush=True))
    # Several processes may run parts of a study side by side (one per core), and a study may run a
    # variant on more seeds than another (a recipe chosen on seed 0, then run on the others): each
    # process collects every finished cell of the study, so the last to finish writes all of them.
    finished = [(lab, s) for s in study["seeds"] for lab in study["variants"]
                if (cell_dir(Path(a.runs_dir), a.study, lab, s) / RESULT).exists()]
    cells = [run_cell(study, lab, s, cell_dir(Path(a.runs_dir), a.study, lab, s)) for lab, s in finished]
    labels = [lab for lab in study["variants"] if any(c["label"] == lab for c in cells)]
    seeds = sorted({c["seed"] for c in cells})
    out = {"study": a.study, "title": study["title"],
           # the study's command; its cells may have been run by several invocations (--seeds,
           # --only, one per core), and this one, the last to finish, is recorded beside it
           "command": f"python bench/study.py {a.study} --threads {a.threads}",
           "last_invocation": "python " + " ".join(shlex.quote(x) for x in ["bench/study.py", *sys.argv[1:]]),
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **provenance(),
           "machine": describe(), "threads": a.threads, "common": study["common"], "eval": study["eval"],
           "seeds": seeds, "variants": labels, "cells": cells}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(a.out) / f"{a.study}.json", json.dumps(out, indent=1))
    print(f"wrote {Path(a.out) / (a.study + '.json')}")


if __name__ == "__main__":
    main()
