"""The ``noprop`` command: train, evaluate, diagnose."""

from __future__ import annotations

import argparse
import dataclasses
import os
import json
import sys
import time
from pathlib import Path

import torch

from . import checkpoint, device, parallel
from .checkpoint import CheckpointError
from .config import LR_SCHEDULES, METHODS, OPTIMIZERS, ORDERS, PRECISIONS, Config, ConfigError
from .data import DATASETS, DataError
from .dt import HEADS
from .embedding import KINDS
from .presets import PresetError, get_preset, list_presets
from .report import collect, load_results, table1_markdown
from .evaluate import accuracy_runs, block_diagnostics, mean_se
from .train import DivergenceError, RunDirError, load_data, load_model, threads, train_and_evaluate

USER_ERRORS = (parallel.DistributedError, PresetError, ConfigError, DataError, CheckpointError, RunDirError, DivergenceError)


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="folder holding the dataset files (looked at before $NOPROP_DATA "
                   "and the bundled MNIST)")
    p.add_argument("--download", action="store_true", help="download missing files from the official mirrors")
    p.add_argument("--offline", action="store_true", help="never download (also NOPROP_OFFLINE=1)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    ap = argparse.ArgumentParser(prog="noprop", description="Train and evaluate NoProp networks "
                                 "(Li, Teh, Pascanu 2025) without end-to-end back-propagation.")
    sub = ap.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train a model; prints its test accuracy at the end",
                        description="Train a model. Options left out come from --preset when given, "
                        "else from the defaults shown (the paper's values for NoProp-DT on MNIST).")
    S = argparse.SUPPRESS  # unset options stay unset, so a preset's values survive

    def opt(*flags, field_name=None, help="", **kw):
        name = field_name or flags[-1].lstrip("-").replace("-", "_")
        default = getattr(d, name)
        tr.add_argument(*flags, dest=name, default=S, help=f"{help} (default: {default})".strip(), **kw)

    tr.add_argument("--preset", default=None, help="a row of the paper's Table 3, e.g. mnist-dt "
                    "(`noprop presets` lists them); other options override its fields")
    opt("--dataset", help=f"{', '.join(sorted(DATASETS))}, or a .npz file with x_train, y_train, x_test, y_test")
    opt("--method", choices=METHODS)
    opt("--embedding", choices=KINDS)
    opt("--embed-dim", type=int, help="dimension of a learned embedding; None means 20")
    opt("--head", choices=HEADS, help="DT output head")
    opt("--posterior-sigma", type=float)
    opt("--epochs", type=int)
    opt("--batch-size", type=int)
    opt("--optimizer", choices=OPTIMIZERS, help="None means Table 3's choice for the method")
    opt("--lr", type=float)
    opt("--lr-schedule", choices=LR_SCHEDULES, help="constant (the paper) or cosine decay to 0 over --epochs")
    opt("--weight-decay", type=float)
    opt("-T", "--T", type=int, help="number of blocks (DT, backprop)")
    opt("--eta", type=float, help="None means the paper's: DT 0.1, CT 1")
    opt("--schedule-eps", type=float, help="DT cosine schedule squeeze")
    opt("--steps", type=int, help="inference steps of CT / FM / adjoint")
    opt("--solver", help="CT: stochastic | euler | heun; FM: euler | heun; None means the first")
    opt("--fm-sigma", type=float, help="noise of the FM path")
    opt("--order", choices=ORDERS, help="DT: paper = block by block each epoch; all = every block "
        "on each batch; random = one random block per batch")
    opt("--seed", type=int)
    opt("--val-size", type=int, help="images held out of the training set for validation")
    opt("--train-subset", type=int, help="train on a seeded subset of this many images")
    opt("--val-subset", type=int, help="validate on a seeded subset of the held-out images")
    opt("--test-subset", type=int, help="smoke runs only: test on a fixed subset of the test set")
    opt("--precision", choices=PRECISIONS)
    opt("--device", help="auto (CUDA if torch sees a GPU, else CPU) | cpu | cuda | cuda:N")
    tr.add_argument("--augment", action="store_true", default=S,
                    help="random crop (padding 4) and horizontal flip while training (the paper used none)")
    tr.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=S,
                    help="keep the default NCHW memory layout")
    tr.add_argument("--eval-runs", type=int, default=5, help="inference runs for the final test accuracy")
    tr.add_argument("--out", help="run folder (default: runs/<dataset>-<method>-<embedding>-<time>)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.add_argument("--deterministic", action="store_true", help="deterministic algorithms only, so a "
                    "resumed run ends with exactly the weights of an uninterrupted one")
    tr.add_argument("--workers", type=int, default=1, help="block-parallel NoProp-DT over this many "
                    "processes on this machine (gloo); --threads is then per worker (default: cores / N). "
                    "Under torchrun the world size comes from torchrun instead")
    _data_args(tr)

    ev = sub.add_parser("evaluate", help="test accuracy of a checkpoint, mean +- s.e. over inference runs")
    ev.add_argument("checkpoint")
    ev.add_argument("--runs", type=int, default=5)
    ev.add_argument("--seed", type=int, default=0, help="first inference seed")
    ev.add_argument("--split", default="test", choices=("test", "val"))
    ev.add_argument("--no-noise", dest="noise", action="store_false",
                    help="deterministic inference: drop the sqrt(c_t) eps term of Eq. 3")
    ev.add_argument("--steps", type=int, help="inference steps for CT / FM / adjoint (default: the run's)")
    ev.add_argument("--solver", help="CT: stochastic | euler | heun; FM: euler | heun (default: the run's)")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    ev.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    _data_args(ev)

    sub.add_parser("presets", help="list the paper's configurations (Table 3) as named presets")

    tb = sub.add_parser("table", help="our test accuracy beside the paper's Table 1, from finished run "
                        "folders (seeds x inference runs pooled, mean +- s.e.)")
    tb.add_argument("runs", nargs="+", help="run folders (each with config.json and result.json)")
    tb.add_argument("--out", help="also write the Markdown table to this file")

    rp = sub.add_parser("reproduce", help="run the paper's grid under a time budget (resumable) and write "
                        "a report folder: Table 1 and Table 2 beside the paper's, and figures")
    rp.add_argument("--datasets", nargs="+", default=["mnist"])
    rp.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    rp.add_argument("--embeddings", nargs="+", default=["one-hot", "learned", "prototype"], choices=KINDS)
    rp.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    rp.add_argument("--budget-hours", type=float, default=2.0, help="no new cell starts after this long")
    rp.add_argument("--out", default="report", help="report folder (its runs/ holds one folder per cell)")
    rp.add_argument("--epochs", type=int, help="override every preset's epochs (the report shows those run)")
    rp.add_argument("--cell-minutes", type=float, help="stop a cell's training after the first epoch that "
                    "brings its training time past this (the same wall budget for every method; the report "
                    "shows the epochs run)")
    rp.add_argument("--steps", type=int, help="override the inference steps of CT / FM / adjoint")
    rp.add_argument("--train-subset", type=int)
    rp.add_argument("--val-subset", type=int)
    rp.add_argument("--test-subset", type=int, help="smoke runs only; the report says so")
    rp.add_argument("--precision", choices=PRECISIONS)
    rp.add_argument("--eval-runs", type=int, default=5)
    rp.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory table")
    _data_args(rp)

    bn = sub.add_parser("bench", help="measure training throughput, FLOPs, memory and block-parallel "
                        "speed-up; prints and saves tables")
    bn.add_argument("--what", nargs="+", default=["throughput", "memory", "workers"],
                    choices=("throughput", "memory", "workers", "tta"),
                    help="tta: time to a validation accuracy on full MNIST (minutes per precision)")
    bn.add_argument("--target", type=float, default=99.0, help="tta: validation accuracy to reach (%%)")
    bn.add_argument("--budget-minutes", type=float, default=10.0, help="tta: give up after this long")
    bn.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=("fp32", "bf16"))
    bn.add_argument("--tta-epochs", type=int, help="tta: planned epochs (needed by --lr-schedule cosine)")
    bn.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant", help="tta: learning-rate schedule")
    bn.add_argument("--steps", type=int, default=20, help="timed training steps per throughput row")
    bn.add_argument("--out", default="bench/results/bench", help="folder for bench.json and bench.md")
    bn.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    bn.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (workers: CPU only)")
    bn.add_argument("--workers-images", type=int, default=8192, help="workers: training images per epoch")

    dg = sub.add_parser("diagnose", help="per-block and along-the-chain accuracy of a checkpoint")
    dg.add_argument("checkpoint")
    dg.add_argument("--split", default="val", choices=("test", "val"))
    dg.add_argument("--seed", type=int, default=0)
    dg.add_argument("--json", action="store_true")
    dg.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    _data_args(dg)
    return ap


def _config_from_args(a: argparse.Namespace) -> Config:
    """Defaults, then the preset's fields, then every option given on the command line."""
    fields = get_preset(a.preset) if a.preset else {}
    names = {f.name for f in dataclasses.fields(Config)}
    fields.update({k: v for k, v in vars(a).items() if k in names})
    return Config(**fields).validate()


def _fmt(mean: float, se: float) -> str:
    return f"{mean:.2f} +- {se:.2f}%"


def cmd_train(a: argparse.Namespace) -> int:
    cfg = _config_from_args(a)
    if a.eval_runs < 1:
        raise ConfigError("--eval-runs: must be >= 1")
    if a.workers < 1:
        raise ConfigError("--workers: must be >= 1")
    if a.resume and not a.out:
        raise ConfigError("--resume: needs --out, the run folder to continue")
    out = Path(a.out or f"runs/{cfg.dataset}-{cfg.method}-{cfg.embedding}-{time.strftime('%Y%m%d-%H%M%S')}")
    d = parallel.init_from_env(cfg.device)
    if a.workers > 1 and not d.active:  # this process launches the workers and waits for them
        parallel.check_parallel(cfg, a.workers)
        return parallel.launch(a.workers, a.argv + ([] if a.out else ["--out", str(out)]), a.threads)
    parallel.check_parallel(cfg, d.world)
    finished = False
    try:
        code = _train(a, cfg, out, d)
        finished = True
        return code
    finally:
        parallel.shutdown(wait=finished)  # after an error, leave without waiting for the others


def _train(a: argparse.Namespace, cfg: Config, out: Path, d: parallel.Dist) -> int:
    t0 = time.perf_counter()
    if a.deterministic:
        torch.use_deterministic_algorithms(True)
    data = load_data(cfg, a.data_dir, a.download)
    if d.main:
        print(f"data: {cfg.dataset} from {data.source}: {len(data.train)} train / {len(data.val)} val / "
              f"{len(data.test)} test; run folder {out}" + (f"; {d.world} workers" if d.active else ""))
    result = train_and_evaluate(cfg, data, out, eval_runs=a.eval_runs, resume=a.resume, quiet=a.quiet, dist=d,
                                t0=t0)
    if d.main:
        print(f"test accuracy (final model, {a.eval_runs} inference runs): "
              f"{_fmt(result['test_acc_mean'], result['test_acc_se'])}")
    return 0


def _load_for_eval(a: argparse.Namespace):
    model, cfg, _ = load_model(a.checkpoint, a.device)
    data = load_data(cfg, a.data_dir, a.download)
    return model, cfg, getattr(data, a.split)


def cmd_evaluate(a: argparse.Namespace) -> int:
    if a.runs < 1:
        raise ConfigError("--runs: must be >= 1")
    model, cfg, split = _load_for_eval(a)
    overrides = {k: v for k, v in (("steps", a.steps), ("solver", a.solver)) if v is not None}
    if overrides:
        if cfg.method not in ("ct", "fm", "adjoint"):
            raise ConfigError(f"--steps/--solver: apply to ct, fm and adjoint, not {cfg.method}")
        Config(**{**cfg.to_dict(), **overrides}).validate()  # names a bad value before any work
    precision = device.resolve_precision(cfg.precision, next(model.parameters()).device)  # as in training
    accs = accuracy_runs(model, split, runs=a.runs, noise=a.noise, seed=a.seed, batch_size=cfg.eval_batch_size,
                         channels_last=cfg.channels_last, autocast_dtype=device.eval_dtype(precision),
                         **overrides)
    m, se = mean_se(accs)
    if a.json:
        print(json.dumps({"split": a.split, "runs": accs, "mean": m, "se": se, "noise": a.noise}))
    else:
        kind = "stochastic" if a.noise else "noise-free"
        print(f"{a.split} accuracy ({a.runs} {kind} inference runs): {_fmt(m, se)}")
    return 0


def cmd_presets(a: argparse.Namespace) -> int:
    print(list_presets())
    return 0


def cmd_table(a: argparse.Namespace) -> int:
    results, skipped = load_results(a.runs)
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if not results:
        raise ConfigError("table: none of the given folders holds a finished run (result.json)")
    md = table1_markdown(collect(results))
    print(md)
    if a.out:
        checkpoint.atomic_write_text(a.out, md + "\n")
    return 0


def cmd_reproduce(a: argparse.Namespace) -> int:
    from . import bench, reproduce
    from .report import write_report
    overrides = {k: v for k, v in (("epochs", a.epochs), ("steps", a.steps), ("train_subset", a.train_subset),
                                   ("val_subset", a.val_subset), ("test_subset", a.test_subset),
                                   ("precision", a.precision)) if v is not None}
    for ds in a.datasets:  # name a bad value before any work
        Config(dataset=ds, **overrides).validate()
    if a.eval_runs < 1:
        raise ConfigError("--eval-runs: must be >= 1")
    if a.cell_minutes is not None and a.cell_minutes <= 0:
        raise ConfigError(f"--cell-minutes: must be > 0, got {a.cell_minutes}")
    cells = reproduce.run_grid(a.datasets, a.methods, a.embeddings, a.seeds, a.out, a.budget_hours, overrides,
                               a.eval_runs, a.data_dir, a.download, cell_minutes=a.cell_minutes)
    memory = None
    if a.memory:
        done = sorted({(c["dataset"], c["method"]) for c in cells if c.get("status") == "done"})
        datasets = sorted({d for d, _ in done if d in bench.SHAPES})
        memory = [bench.memory(m, d) for d in datasets for m in a.methods]
    path = write_report(Path(a.out), cells, memory)
    print(f"report: {path}")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from . import bench
    if a.steps < 1:
        raise ConfigError("--steps: must be >= 1")
    if a.lr_schedule == "cosine" and not a.tta_epochs:
        raise ConfigError("--lr-schedule cosine: give --tta-epochs, the length the schedule decays over")
    bench.run(a.what, a.out, steps=a.steps, precisions=tuple(a.precision), target=a.target,
              budget_minutes=a.budget_minutes, tta_epochs=a.tta_epochs, lr_schedule=a.lr_schedule,
              device_name=a.device, workers_images=a.workers_images)
    return 0


def cmd_diagnose(a: argparse.Namespace) -> int:
    model, cfg, split = _load_for_eval(a)
    if cfg.method != "dt":
        raise ConfigError(f"diagnose: per-block diagnostics are for NoProp-DT; this checkpoint is {cfg.method}")
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
    argv = sys.argv[1:] if argv is None else list(argv)
    a = build_parser().parse_args(argv)
    a.argv = argv
    if getattr(a, "offline", False):
        os.environ["NOPROP_OFFLINE"] = "1"
    try:
        with threads(getattr(a, "threads", None)):
            return {"train": cmd_train, "evaluate": cmd_evaluate, "diagnose": cmd_diagnose,
                    "presets": cmd_presets, "table": cmd_table, "bench": cmd_bench,
                    "reproduce": cmd_reproduce}[a.command](a)
    except USER_ERRORS as e:
        print(f"noprop: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("noprop: interrupted; the last completed epoch's checkpoint is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
