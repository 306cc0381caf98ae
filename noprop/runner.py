"""A run from start to result: train (trainer.Trainer), evaluate the final model (evaluation.
final_evaluation), write result.json, and the lines the CLI prints about it. The CLI, the Python
API (api.train), reproduce.py and the benchmarks start runs here; ``worker`` is the entry point of
each process of a parallel run (parallel.launch).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from . import models
from .config import Config
from .data import Dataset, load_data
from .evaluation import evaluation_estimate, evaluation_warning, final_evaluation
from .machine import describe, provenance
from .metrics import steps_per_block
from .paper import PAPER_TABLE1
from .parallel import SINGLE, Dist
from .runfolder import STATE
from .trainer import Trainer


def untrained(steps: list[int] | None) -> list[int]:
    """The blocks (1-based) that no optimizer step reached, from each block's step count."""
    return [t for t, n in enumerate(steps or [], 1) if n == 0]


def run(cfg: Config, data: Dataset, out=None, eval_runs: int = 5, resume: bool = False, quiet: bool = False,
        dist: Dist = SINGLE, log=print, t0: float | None = None, stop=None, ensemble: int = 0,
        train_images: int = 0, ensemble_runs: int = 1, adapt_threads: bool = False):
    """Train (or finish training) a run, then evaluate the final model on the test set (see
    final_evaluation), written to result.json when there is a run folder. Returns (trainer, result);
    result is None on ranks > 0. adapt_threads: torch's CPU threads follow the idle cores
    (device.IdleCoreThreads)."""
    t0 = time.perf_counter() if t0 is None else t0
    trainer = Trainer(cfg, data, out, quiet=quiet, dist=dist, adapt_threads=adapt_threads)
    summary = trainer.fit(resume=resume, log=log if dist.main else None, stop=stop)
    if not dist.main:
        return trainer, None
    train_s = sum(h["train_seconds"] for h in trainer.history)
    steps = steps_per_block(trainer.history)
    if untrained(steps) and log:
        log(f"WARNING: {describe_untrained(untrained(steps), len(steps))}")
    if trainer.threads is not None:
        trainer.threads.adjust()
    with trainer.alone():
        if log and not quiet:
            warning = evaluation_warning(evaluation_estimate(trainer.model, data, eval_runs, ensemble, ensemble_runs),
                                         train_s, eval_runs, ensemble, len(data.test))
            if warning:
                log(warning)
        t_eval = time.perf_counter()
        ev = final_evaluation(trainer.model, data, eval_runs, ensemble, train_images, ensemble_runs=ensemble_runs,
                              val_rules=trainer.val_rules, progress=not quiet)
    stochastic = ev["test"]["stochastic"]
    result = {"test_acc_mean": stochastic["mean"], "test_acc_se": stochastic["se"],
              "test_acc_runs": stochastic["runs"], **ev, "epochs": summary["epochs"],
              "epochs_fraction": trainer.history[-1]["epoch"] if trainer.history else 0,
              "best_val_acc": summary["best_val"], "wall_seconds": time.perf_counter() - t0,
              "evaluation_seconds": time.perf_counter() - t_eval, "train_seconds": train_s,
              "steps_per_block": steps, "untrained_blocks": untrained(steps),
              "model": "final epoch", "precision": trainer.precision, "device": str(trainer.device),
              "workers": dist.world, "block_groups": dist.groups, "machine": describe(trainer.device),
              **provenance()}
    if trainer.folder is not None:
        trainer.folder.write_result(result)
    return trainer, result


def worker(cfg_dict: dict, out: str, options: dict) -> None:
    """The entrypoint of one process of a parallel run (parallel.launch): join the group, train,
    evaluate on rank 0. After an elastic restart it resumes from the last checkpoint on its own."""
    from . import parallel
    from .device import threads
    cfg = Config.from_dict(cfg_dict)
    with threads(options.get("threads")):
        d = parallel.init_from_env(cfg.device, models.blocks_for(cfg), cfg.block_groups)
        finished = False
        try:
            restarted = parallel.restart_count() > 0 and (Path(out) / STATE).exists()
            resume = options.get("resume", False) or restarted
            data = load_data(cfg, options.get("data_dir"), options.get("download", False))
            if d.main:
                print(describe_start(cfg, data, out, d), flush=True)
                if restarted:
                    print(f"restart {parallel.restart_count()} by the elastic agent: resuming from {Path(out) / STATE}",
                          flush=True)
            _, result = run(cfg, data, out, options.get("eval_runs", 5), resume, options.get("quiet", False), d,
                            ensemble=options.get("ensemble", 0), train_images=options.get("train_images", 0),
                            adapt_threads=options.get("threads") is None)
            if d.main:
                print(describe_result(result, cfg), flush=True)
            finished = True
        finally:
            sys.stdout.flush()
            parallel.shutdown(wait=finished)


def describe_start(cfg: Config, data: Dataset, out, d: Dist) -> str:
    layout = f"; {d.world} workers ({d.groups} block group(s) x {d.shards} data shard(s))" if d.active else ""
    return (f"data: {cfg.dataset} from {data.source}: {len(data.train)} train / {len(data.val)} val / "
            f"{len(data.test)} test; run folder {out if out is not None else '(in memory)'}{layout}")


def describe_untrained(blocks: list[int], num_blocks: int) -> str:
    return (f"{len(blocks)} of {num_blocks} blocks never trained (block(s) {', '.join(map(str, blocks))}): "
            "give the run more time (--minutes) or let the budget reach every block (--order paper)")


def describe_result(result: dict, cfg: Config | None = None) -> str:
    """The run's headline: the test accuracy under the rule chosen on validation, the paper's rule
    and the paper's own figure beside it, and where the time went."""
    test = result["test"]
    chosen = result.get("rule_chosen_on_val", "stochastic")
    r = test[chosen]
    n = len(r["runs"])
    lines = [f"test accuracy {r['mean']:.2f} +- {r['se']:.2f}% ({chosen} rule, chosen on validation; "
             f"final model, {n} inference run{'s' if n > 1 else ''})"]
    others = [f"{rule} {v['mean']:.2f} +- {v['se']:.2f}%" for rule, v in test.items() if rule != chosen]
    paper = PAPER_TABLE1.get((cfg.method, cfg.embedding, cfg.dataset)) if cfg is not None else None
    beside = ([f"the paper's rule (stochastic, Eq. 3): {test['stochastic']['mean']:.2f} +- "
               f"{test['stochastic']['se']:.2f}%"] if chosen != "stochastic" else [])
    beside += [o for o in others if not o.startswith("stochastic ")]
    if paper:
        beside.append(f"the paper (Table 1, its full training): {paper['test'][0]:.2f}%")
    if beside:
        lines.append("  " + "; ".join(beside))
    lines.append(f"  wall time {result['wall_seconds']:.0f} s: training {result['train_seconds']:.0f} s, "
                 f"evaluation {result['evaluation_seconds']:.0f} s")
    if result.get("untrained_blocks"):
        lines.append("  WARNING: " + describe_untrained(result["untrained_blocks"], len(result["steps_per_block"])))
    return "\n".join(lines)
