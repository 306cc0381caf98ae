"""Benchmark (not a test): train NoProp-DT on all of MNIST and record test accuracy, validation
accuracy and seconds per epoch, with the command and the machine.

    python bench/mnist_dt.py --epochs 12 --out bench/results/mnist_dt

Writes <out>/bench.json and <out>/bench.md beside the run folder's metrics.jsonl. Selection
(best epoch) uses the validation split only; the test set is evaluated once per reported model.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from noprop.evaluate import accuracy_runs, mean_se
from noprop.train import BEST, Trainer, load_data, load_model

from noprop.bench import machine
from noprop.checkpoint import atomic_write_text
from noprop.config import Config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--order", default="paper")
    ap.add_argument("--embedding", default="one-hot")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-runs", type=int, default=5)
    ap.add_argument("--out", default="bench/results/mnist_dt")
    a = ap.parse_args()
    cfg = Config(epochs=a.epochs, order=a.order, embedding=a.embedding, precision=a.precision, seed=a.seed)
    out = Path(a.out)
    t0 = time.perf_counter()
    data = load_data(cfg)
    trainer = Trainer(cfg, data, out / "run", quiet=True)
    trainer.fit(resume=True, log=lambda s: print(s, flush=True))
    train_wall = time.perf_counter() - t0
    kw = dict(batch_size=cfg.eval_batch_size, channels_last=cfg.channels_last,
              autocast_dtype=torch.bfloat16 if cfg.precision == "bf16" else None)
    final = accuracy_runs(trainer.model, data.test, runs=a.eval_runs, **kw)
    best_model, _, best_state = load_model(out / "run" / BEST)
    best = accuracy_runs(best_model, data.test, runs=a.eval_runs, **kw)
    hist = trainer.history
    res = {
        "command": "python " + " ".join(shlex.quote(x) for x in sys.argv),
        "machine": machine(), "config": cfg.to_dict(),
        "epochs": len(hist),
        "seconds_per_epoch": [h["train_seconds"] for h in hist],
        "val_acc_per_epoch": [h["val_acc"] for h in hist],
        "train_wall_seconds": train_wall,
        "test_final": {"runs": final, "mean": mean_se(final)[0], "se": mean_se(final)[1]},
        "test_best_val": {"epoch": best_state["epoch"], "val_acc": best_state["best_val"], "runs": best,
                          "mean": mean_se(best)[0], "se": mean_se(best)[1]},
    }
    atomic_write_text(out / "bench.json", json.dumps(res, indent=2))
    md = [f"NoProp-DT MNIST ({cfg.embedding}, order {cfg.order}, {cfg.precision}), {len(hist)} epochs, "
          f"{res['machine']['cpu']}, {res['machine']['threads']} threads, torch {torch.__version__}",
          f"command: `{res['command']}`", "",
          f"| model | test acc (mean +- s.e., {a.eval_runs} inference runs) | val acc |", "|---|---|---|",
          f"| final (epoch {len(hist)}) | {res['test_final']['mean']:.2f} +- {res['test_final']['se']:.2f} | "
          f"{hist[-1]['val_acc']:.2f} |",
          f"| best validation (epoch {best_state['epoch']}) | {res['test_best_val']['mean']:.2f} +- "
          f"{res['test_best_val']['se']:.2f} | {best_state['best_val']:.2f} |", "",
          f"seconds per epoch (train): mean {sum(res['seconds_per_epoch']) / len(hist):.0f}; "
          f"total wall {train_wall / 60:.1f} min"]
    atomic_write_text(out / "bench.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
