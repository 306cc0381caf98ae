"""The ``noprop`` command: train, evaluate, diagnose."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import checkpoint
from .checkpoint import CheckpointError
from .config import ORDERS, PRECISIONS, Config, ConfigError
from .data import DATASETS, DataError
from .dt import HEADS
from .embedding import KINDS
from .evaluate import accuracy_runs, block_diagnostics, mean_se
from .train import RESULT, DivergenceError, RunDirError, Trainer, load_data, load_model, threads

USER_ERRORS = (ConfigError, DataError, CheckpointError, RunDirError, DivergenceError)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="folder holding the dataset files (looked at before $NOPROP_DATA "
                   "and the bundled MNIST)")
    p.add_argument("--download", action="store_true", help="download missing files from the official mirrors")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    ap = argparse.ArgumentParser(prog="noprop", description="Train and evaluate NoProp networks "
                                 "(Li, Teh, Pascanu 2025) without end-to-end back-propagation.")
    sub = ap.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train a model; prints its test accuracy at the end",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    tr.add_argument("--dataset", default=d.dataset, choices=sorted(DATASETS))
    tr.add_argument("--embedding", default=d.embedding, choices=KINDS)
    tr.add_argument("--embed-dim", type=int, default=d.embed_dim, help="dimension of a learned embedding (20)")
    tr.add_argument("--head", default=d.head, choices=HEADS)
    tr.add_argument("--posterior-sigma", type=float, default=d.posterior_sigma)
    tr.add_argument("--epochs", type=int, default=d.epochs)
    tr.add_argument("--batch-size", type=int, default=d.batch_size)
    tr.add_argument("--lr", type=float, default=d.lr)
    tr.add_argument("--weight-decay", type=float, default=d.weight_decay)
    tr.add_argument("-T", "--T", dest="T", type=int, default=d.T, help="number of blocks")
    tr.add_argument("--eta", type=float, default=d.eta)
    tr.add_argument("--schedule-eps", type=float, default=d.schedule_eps)
    tr.add_argument("--order", default=d.order, choices=ORDERS,
                    help="paper: block by block each epoch; all: every block on each batch; "
                    "random: one random block per batch")
    tr.add_argument("--seed", type=int, default=d.seed)
    tr.add_argument("--val-size", type=int, default=d.val_size, help="images held out of the training set")
    tr.add_argument("--train-subset", type=int, default=d.train_subset,
                    help="train on a seeded subset of this many images")
    tr.add_argument("--val-subset", type=int, default=d.val_subset,
                    help="validate on a seeded subset of this many held-out images (faster epochs)")
    tr.add_argument("--precision", default=d.precision, choices=PRECISIONS)
    tr.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    tr.add_argument("--eval-runs", type=int, default=5, help="inference runs for the final test accuracy")
    tr.add_argument("--out", help="run folder (default: runs/<dataset>-dt-<embedding>-<time>)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    _data_args(tr)

    ev = sub.add_parser("evaluate", help="test accuracy of a checkpoint, mean +- s.e. over inference runs")
    ev.add_argument("checkpoint")
    ev.add_argument("--runs", type=int, default=5)
    ev.add_argument("--seed", type=int, default=0, help="first inference seed")
    ev.add_argument("--split", default="test", choices=("test", "val"))
    ev.add_argument("--no-noise", dest="noise", action="store_false",
                    help="deterministic inference: drop the sqrt(c_t) eps term of Eq. 3")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    _data_args(ev)

    dg = sub.add_parser("diagnose", help="per-block and along-the-chain accuracy of a checkpoint")
    dg.add_argument("checkpoint")
    dg.add_argument("--split", default="val", choices=("test", "val"))
    dg.add_argument("--seed", type=int, default=0)
    dg.add_argument("--json", action="store_true")
    _data_args(dg)
    return ap


def _config_from_args(a: argparse.Namespace) -> Config:
    return Config(dataset=a.dataset, embedding=a.embedding, embed_dim=a.embed_dim, head=a.head,
                  posterior_sigma=a.posterior_sigma, T=a.T, eta=a.eta, schedule_eps=a.schedule_eps,
                  epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay,
                  order=a.order, seed=a.seed, val_size=a.val_size, train_subset=a.train_subset,
                  val_subset=a.val_subset,
                  precision=a.precision, channels_last=a.channels_last).validate()


def _fmt(mean: float, se: float) -> str:
    return f"{mean:.2f} +- {se:.2f}%"


def cmd_train(a: argparse.Namespace) -> int:
    cfg = _config_from_args(a)
    if a.eval_runs < 1:
        raise ConfigError("--eval-runs: must be >= 1")
    if a.resume and not a.out:
        raise ConfigError("--resume: needs --out, the run folder to continue")
    out = Path(a.out or f"runs/{cfg.dataset}-dt-{cfg.embedding}-{time.strftime('%Y%m%d-%H%M%S')}")
    t0 = time.perf_counter()
    data = load_data(cfg, a.data_dir, a.download)
    print(f"data: {cfg.dataset} from {data.source}: {len(data.train)} train / {len(data.val)} val / "
          f"{len(data.test)} test; run folder {out}")
    trainer = Trainer(cfg, data, out, quiet=a.quiet)
    summary = trainer.fit(resume=a.resume)
    kw = dict(batch_size=cfg.eval_batch_size, channels_last=cfg.channels_last,
              autocast_dtype=torch.bfloat16 if cfg.precision == "bf16" else None)
    accs = accuracy_runs(trainer.model, data.test, runs=a.eval_runs, seed=0, **kw)
    m, se = mean_se(accs)
    result = {"test_acc_mean": m, "test_acc_se": se, "test_acc_runs": accs, "epochs": summary["epochs"],
              "best_val_acc": summary["best_val"], "wall_seconds": time.perf_counter() - t0,
              "model": "final epoch", "threads": torch.get_num_threads(), "torch": torch.__version__}
    checkpoint.atomic_write_text(out / RESULT, json.dumps(result, indent=2))
    print(f"test accuracy (final model, {a.eval_runs} inference runs): {_fmt(m, se)}")
    return 0


def _load_for_eval(a: argparse.Namespace):
    model, cfg, _ = load_model(a.checkpoint)
    data = load_data(cfg, a.data_dir, a.download)
    return model, cfg, getattr(data, a.split)


def cmd_evaluate(a: argparse.Namespace) -> int:
    if a.runs < 1:
        raise ConfigError("--runs: must be >= 1")
    model, cfg, split = _load_for_eval(a)
    accs = accuracy_runs(model, split, runs=a.runs, noise=a.noise, seed=a.seed,
                         batch_size=cfg.eval_batch_size, channels_last=cfg.channels_last)
    m, se = mean_se(accs)
    if a.json:
        print(json.dumps({"split": a.split, "runs": accs, "mean": m, "se": se, "noise": a.noise}))
    else:
        kind = "stochastic" if a.noise else "noise-free"
        print(f"{a.split} accuracy ({a.runs} {kind} inference runs): {_fmt(m, se)}")
    return 0


def cmd_diagnose(a: argparse.Namespace) -> int:
    model, cfg, split = _load_for_eval(a)
    diag = block_diagnostics(model, split, seed=a.seed, batch_size=cfg.eval_batch_size,
                             channels_last=cfg.channels_last)
    if a.json:
        print(json.dumps(diag))
        return 0
    print(f"{a.split} accuracy (%) per step t; 'block' is fed z_(t-1) ~ q(z_(t-1)|y), 'chain' and "
          "'head' run from z_0 ~ N(0, I)")
    print(f"{'t':>3} {'block':>8} {'chain':>8} {'head':>8}")
    for t in range(model.T):
        print(f"{t + 1:>3} {diag['block'][t]:8.2f} {diag['chain'][t]:8.2f} {diag['head'][t]:8.2f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        with threads(getattr(a, "threads", None)):
            return {"train": cmd_train, "evaluate": cmd_evaluate, "diagnose": cmd_diagnose}[a.command](a)
    except USER_ERRORS as e:
        print(f"noprop: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("noprop: interrupted; the last completed epoch's checkpoint is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
