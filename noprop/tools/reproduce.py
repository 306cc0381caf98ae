"""`noprop reproduce`: the paper's grid (datasets x methods x embeddings x seeds) under a time budget,
resumable, and a report folder.

Each cell runs the paper's preset (Table 3) with the given overrides in its own run folder
``<out>/runs/<dataset>-<method>-<embedding>-s<seed>``; a finished cell (result.json present) is
kept, an unfinished one resumes from its last checkpoint. A cell that cannot run (data absent, time
budget spent, adjoint with a learned embedding, which the paper does not report) is skipped with
its reason. The report folder then holds report.md (our Table 1 beside the paper's, the memory
table beside the paper's Table 2, the skipped cells) and PNG figures.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..checkpoint import atomic_write_text
from ..config import Config, taken_by
from ..data import DataError, load_data, subset
from ..diagnose import chain_analysis
from ..models import load
from ..presets import get_preset
from ..runfolder import LAST, RESULT
from ..runner import run


def cell_name(dataset: str, method: str, embedding: str, seed: int) -> str:
    return f"{dataset}-{method}-{embedding}-s{seed}"


@torch.no_grad()
def dt_trajectory(model, split, n: int = 500, seed: int = 0) -> dict:
    """z_0, z_1..z_T of the chain from z_0 ~ N(0, I) for n test images, projected in 2-D on the two
    principal axes of the final latents z_T together with the class embeddings."""
    model.eval()
    x, y = split.x[:n].contiguous(memory_format=torch.channels_last), split.y[:n]
    z0 = model.embed.sample_z0(len(x), torch.Generator().manual_seed(seed))  # the chain's first draw
    zs = [z0] + [s.z for s in model.chain(x, generator=torch.Generator().manual_seed(seed))]
    W = model.embed.weight.float()
    basis = torch.cat([zs[-1], W])
    mean = basis.mean(0)
    _, _, v = torch.pca_lowrank(basis - mean, q=2, center=False)
    proj = lambda a: ((a - mean) @ v[:, :2]).tolist()  # noqa: E731
    return {"labels": y.tolist(), "steps": [proj(z) for z in zs], "embeddings": proj(W)}


def run_grid(datasets, methods, embeddings, seeds, out, budget_hours: float, overrides: dict,
             eval_runs: int = 5, data_dir=None, allow_download: bool = False, log=print,
             cell_minutes: float | None = None) -> list[dict]:
    """overrides: Config fields, and method options (e.g. steps), each given to the methods that take
    it. cell_minutes: a cell stops training after the first epoch that brings its total training time
    (resumed epochs included) past this; the preset's epochs stay the upper limit."""
    out = Path(out)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cells = []
    data_cache: dict = {}
    for dataset in datasets:
        for method in methods:
            for embedding in embeddings:
                for seed in seeds:
                    name = cell_name(dataset, method, embedding, seed)
                    run_dir = out / "runs" / name
                    cell = {"cell": name, "dataset": dataset, "method": method, "embedding": embedding,
                            "seed": seed, "run_dir": str(run_dir)}
                    cells.append(cell)
                    if (run_dir / RESULT).exists():
                        cell["status"] = "done"
                        continue
                    if method == "adjoint" and embedding != "one-hot":
                        cell["status"] = "skipped: the paper reports the adjoint baseline with one-hot only"
                        continue
                    if time.perf_counter() - start > 3600 * budget_hours:
                        cell["status"] = f"skipped: the time budget ({budget_hours} h) was spent"
                        continue
                    cfg = Config(**{**get_preset(f"{dataset}-{method}"), "embedding": embedding, "seed": seed,
                                    "test_curve": True, **taken_by(method, overrides)}).validate()
                    try:
                        key = (dataset, cfg.seed, cfg.val_size, cfg.train_subset, cfg.val_subset)
                        if key not in data_cache:
                            data_cache.clear()  # one dataset in memory at a time
                            data_cache[key] = load_data(cfg, data_dir, allow_download)
                        data = data_cache[key]
                    except DataError as e:
                        cell["status"] = f"skipped: data not available ({str(e).splitlines()[0]})"
                        continue
                    log(f"[{name}] training ({cfg.epochs} epochs" +
                        (f", at most {cell_minutes} min)" if cell_minutes else ")"))
                    stop = None
                    if cell_minutes is not None:
                        stop = lambda h: sum(e["train_seconds"] for e in h) >= 60 * cell_minutes  # noqa: E731
                    resume = (run_dir / "train_state.safetensors").exists()
                    _, res = run(cfg, data, run_dir, eval_runs=eval_runs, resume=resume, quiet=True,
                                 log=lambda s, n=name: log(f"[{n}] {s}"), stop=stop)
                    if method == "dt":
                        model = load(run_dir / LAST)
                        atomic_write_text(run_dir / "diagnostics.json", json.dumps(
                            chain_analysis(model, subset(data.val, 2000), seed=seed)))
                        atomic_write_text(run_dir / "trajectory.json", json.dumps(dt_trajectory(model, data.test)))
                    cell["status"] = "done"
                    log(f"[{name}] test {res['test_acc_mean']:.2f} +- {res['test_acc_se']:.2f}")
    atomic_write_text(out / "cells.json", json.dumps(cells, indent=2))
    return cells
