"""The ``noprop`` command: train, evaluate, diagnose, and the tools around them."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import checkpoint, device, diagnose, models, parallel, runner
from .config import (
    BATCHNORM_STATS,
    LR_SCHEDULES,
    OPTIMIZERS,
    ORDERS,
    PRECISIONS,
    SHARED_FIELDS,
    Config,
    not_taken,
    taken_by,
)
from .data import DATASETS, load_data
from .embedding import KINDS
from .errors import USER_ERRORS, ConfigError, RunDirError
from .evaluation import format_mean_se, rules_accuracy
from .method import load_plugin
from .methods import get_method, method_names, takers
from .options import Option, flag
from .presets import get_preset, list_presets
from .runfolder import LAST, STATE
from .tools.settings import WORKERS_BATCH

START = time.perf_counter()  # process start (near enough), for wall times measured from it


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="folder holding the dataset files (looked at before $NOPROP_DATA "
                   "and the bundled MNIST)")
    p.add_argument("--download", action="store_true", help="download missing files from the official mirrors")
    p.add_argument("--offline", action="store_true", help="never download (also NOPROP_OFFLINE=1)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: all cores; `train` in one process: "
                   "one per core that other processes leave idle, looked at again as it trains)")
    _plugin_arg(p)


def _plugin_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py|MODULE",
                   help="import a module that registers methods of your own (repeatable; also "
                   "$NOPROP_PLUGINS, separated by ':'); a run records it in config.json")


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    ap = argparse.ArgumentParser(prog="noprop", description="Train and evaluate NoProp networks "
                                 "(Li, Teh, Pascanu 2025) without end-to-end back-propagation.")
    sub = ap.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("train", help="train a model; prints its test accuracy at the end",
                        description="Train a model. Options left out come from --config or --preset when "
                        "given, else from the defaults shown (the paper's values for NoProp-DT on MNIST).")
    S = argparse.SUPPRESS  # unset options stay unset, so a preset's or a config file's values survive

    def opt(*flags, field_name=None, help="", **kw):
        name = field_name or flags[-1].lstrip("-").replace("-", "_")
        default = getattr(d, name)
        tr.add_argument(*flags, dest=name, default=S, help=f"{help} (default: {default})".strip(), **kw)

    tr.add_argument("--preset", default=None, help="a row of the paper's Table 3, e.g. mnist-dt "
                    "(`noprop presets` lists them); other options override its fields")
    tr.add_argument("--config", default=None, metavar="RUN/config.json",
                    help="repeat a run from its config.json; other options override its fields")
    opt("--dataset", help=f"{', '.join(sorted(DATASETS))}, or a .npz file with x_train, y_train, x_test, y_test")
    opt("--method", help=f"{' | '.join(method_names())}, or one a --plugin registers")
    opt("--embedding", choices=KINDS)
    opt("--embed-dim", type=int, help="dimension of a learned embedding; None means 20")
    opt("--epochs", type=int)
    opt("--minutes", type=float, help="training time budget, then save and evaluate; NoProp-DT in paper "
        "order divides it among the epoch's block passes, so every block trains")
    opt("--batch-size", type=int, help="the global batch (split over the data shards of a parallel run)")
    opt("--optimizer", choices=OPTIMIZERS, help="None means the method's (Table 3's)")
    opt("--lr", type=float)
    opt("--lr-schedule", choices=LR_SCHEDULES, help="constant (the paper) or cosine decay to 0 over --epochs")
    opt("--weight-decay", type=float)
    opt("--order", choices=ORDERS, help="paper = block by block each epoch; all = every block "
        "on each batch; random = one random block per batch")
    opt("--seed", type=int)
    opt("--val-size", type=int, help="images held out of the training set for validation")
    opt("--train-subset", type=int, help="train on a seeded subset of this many images")
    opt("--val-subset", type=int, help="validate on a seeded subset of the held-out images")
    opt("--test-subset", type=int, help="smoke runs only: test on a fixed subset of the test set")
    opt("--precision", choices=PRECISIONS)
    opt("--device", help="auto (CUDA if torch sees a GPU, else CPU) | cpu | cuda | cuda:N")
    opt("--block-groups", type=int, help="parallel runs: block groups G (workers / G data shards each); "
        "None chooses")
    opt("--batchnorm-stats", choices=BATCHNORM_STATS, help="data-parallel runs: BatchNorm statistics of "
        "the global batch (the update of one process; one all-reduce per layer and pass) or of each "
        "shard's share (no collective in the forward pass, as DistributedDataParallel does by default)")
    tr.add_argument("--augment", action="store_true", default=S,
                    help="random crop (padding 4) and horizontal flip while training (the paper used none)")
    tr.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=S,
                    help="keep the default NCHW memory layout")
    tr.add_argument("--deterministic", action="store_true", default=S, help="deterministic algorithms, and "
                    "data-parallel noise independent of the worker count, so a resumed or re-run run ends "
                    "with exactly the same weights")
    _method_option_args(tr.add_argument_group(
        "method options", "each is taken only by the methods it names; given to another method it is an error"))
    tr.add_argument("--eval-runs", type=int, default=5, help="inference runs for the final test accuracy")
    tr.add_argument("--ensemble", type=int, default=0, metavar="K", help="also report the K-chain ensemble "
                    "rule in the final evaluation")
    tr.add_argument("--eval-train", type=int, default=0, metavar="N", help="also report the accuracy on N "
                    "training images (Table 1's train column)")
    tr.add_argument("--out", help="run folder (default: runs/<dataset>-<method>-<embedding>-<time>)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")
    tr.add_argument("--workers", type=int, default=1, help="train in this many processes on this machine "
                    "(torch's elastic launcher; gloo, or NCCL on CUDA); --threads is then per worker "
                    "(default: cores / N). Under torchrun the world size comes from torchrun instead")
    tr.add_argument("--max-restarts", type=int, default=0, help="with --workers: restart the workers this "
                    "many times after a failure, resuming from the last checkpoint")
    _data_args(tr)

    ev = sub.add_parser("evaluate", help="test accuracy of a checkpoint, mean +- s.e. over inference runs")
    ev.add_argument("checkpoint")
    ev.add_argument("--runs", type=int, default=5)
    ev.add_argument("--seed", type=int, default=0, help="first inference seed")
    ev.add_argument("--split", default="test", choices=("test", "val", "train"))
    ev.add_argument("--no-noise", dest="noise", action="store_false",
                    help="deterministic inference: drop the sqrt(c_t) eps term of Eq. 3")
    ev.add_argument("--ensemble", type=int, default=1, metavar="K", help="average the class probabilities "
                    "of K stochastic chains per image")
    ev.add_argument("--all-rules", action="store_true", help="report the stochastic, no-noise and ensemble "
                    "(--ensemble K, default 10) rules side by side")
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
    rp.add_argument("--methods", nargs="+", default=["dt", "ct", "fm", "backprop", "adjoint"])
    rp.add_argument("--embeddings", nargs="+", default=["one-hot", "learned", "prototype"], choices=KINDS)
    rp.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    rp.add_argument("--budget-hours", type=float, default=2.0, help="no new cell starts after this long")
    rp.add_argument("--out", default="report", help="report folder (its runs/ holds one folder per cell)")
    rp.add_argument("--epochs", type=int, help="override every preset's epochs (the report shows those run)")
    rp.add_argument("--cell-minutes", type=float, help="stop a cell's training after the first epoch that "
                    "brings its training time past this (the same wall budget for every method; the report "
                    "shows the epochs run)")
    rp.add_argument("--steps", type=int, help="override the steps of the methods that take --steps")
    rp.add_argument("--train-subset", type=int)
    rp.add_argument("--val-subset", type=int)
    rp.add_argument("--test-subset", type=int, help="smoke runs only; the report says so")
    rp.add_argument("--precision", choices=PRECISIONS)
    rp.add_argument("--eval-runs", type=int, default=5)
    rp.add_argument("--no-memory", dest="memory", action="store_false", help="skip the memory table")
    _data_args(rp)

    bn = sub.add_parser("bench", help="measure training throughput, FLOPs, memory and block-parallel "
                        "speed-up; prints and saves tables")
    bn.add_argument("--what", nargs="+", default=["peak", "throughput", "memory"],
                    choices=("peak", "throughput", "memory", "workers", "tta"),
                    help="peak: the matmul peak alone; workers: real --workers runs of each method at 1 and 2 "
                    "processes; tta: time to a validation accuracy on full MNIST")
    bn.add_argument("--target", type=float, default=99.0, help="tta: one process stops at the first epoch whose "
                    "validation accuracy reaches it (%%); the table says whether the test accuracy did")
    bn.add_argument("--budget-minutes", type=float, default=10.0, help="tta: give up after this long")
    bn.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), help="default: fp32, and bf16 where "
                    "the CPU computes it natively (elsewhere it is emulated, and skipped unless asked for)")
    bn.add_argument("--methods", nargs="+", default=["dt", "ct", "fm", "backprop"], help="throughput, memory "
                    "and workers rows")
    bn.add_argument("--tta-epochs", type=int, help="tta: planned epochs (needed by --lr-schedule cosine)")
    bn.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="constant", help="tta: learning-rate schedule")
    bn.add_argument("--tta-workers", type=int, default=1, help="tta: processes (> 1: a fixed plan of --tta-epochs "
                    "epochs through noprop train --workers N --threads 1)")
    bn.add_argument("--tta-lr", type=float, default=1e-3, help="tta: learning rate")
    bn.add_argument("--seconds", type=float, default=2.0, help="timed seconds per throughput row (after warm-up)")
    bn.add_argument("--out", default="bench/results/bench", help="folder for bench.json and bench.md, or a .json "
                    "file (a result file for results/)")
    bn.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    bn.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (workers: CPU only)")
    bn.add_argument("--workers-images", type=int, default=8192, help="workers: training images per epoch")
    bn.add_argument("--workers-repeats", type=int, default=1, help="workers: runs per row, alternating 1 and N "
                    "processes; rows report the median (this machine's speed drifts as much as the differences)")
    bn.add_argument("--batchnorm-stats", choices=BATCHNORM_STATS, default="global", help="workers: BatchNorm "
                    "statistics of the global batch or of each data shard (noprop train --batchnorm-stats)")
    bn.add_argument("--workers-batch", choices=WORKERS_BATCH, default="global", help="workers: keep "
                    "the method's global batch at every process count (the same training, split: the paper's "
                    "128), or give each data shard that batch (the global batch grows with the workers)")
    _plugin_arg(bn)

    rs = sub.add_parser("results", help="regenerate the tables of README.md and docs/ from results/*.json")
    rs.add_argument("--check", action="store_true", help="only check that they are up to date (exit 1 if not)")
    rs.add_argument("--root", default=".", help="the repository (holding results/ and docs/)")

    dg = sub.add_parser("diagnose", help="per-block and along-the-chain accuracy of a checkpoint")
    dg.add_argument("checkpoint")
    dg.add_argument("--split", default="val", choices=("test", "val"))
    dg.add_argument("--seed", type=int, default=0)
    dg.add_argument("--json", action="store_true")
    dg.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    _data_args(dg)
    return ap


def _declared_options() -> dict[str, list[tuple[str, Option]]]:
    """Every option a registered method declares (plugins' too, loaded before the parser is built):
    name -> [(method, its declaration)], methods in listing order."""
    out: dict[str, list[tuple[str, Option]]] = {}
    for m in method_names():
        for name, option in get_method(m).options.items():
            out.setdefault(name, []).append((m, option))
    return out


def _method_option_args(group) -> None:
    """One flag per declared option name, unset unless given (Config.validate then refuses it for a
    method that does not declare it, and fills the method's default when left out)."""
    for name, declared in _declared_options().items():
        lines: dict[str, list[str]] = {}  # one line per distinct declaration, naming its methods
        for m, o in declared:
            choices = f"; {' | '.join(map(str, o.choices))}" if o.choices else ""
            lines.setdefault(f"{o.help}{choices} (default: {o.default})", []).append(m)
        flags = [f"-{name}", flag(name)] if len(name) == 1 else [flag(name)]
        kind = declared[0][1].type
        group.add_argument(*flags, dest=name, default=argparse.SUPPRESS,
                           metavar={int: "N", float: "X", bool: "BOOL"}.get(kind, "NAME"),
                           type=_parse_bool if kind is bool else kind,
                           help="; ".join(f"{', '.join(ms)}: {text}" for text, ms in lines.items()))


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _config_from_args(a: argparse.Namespace) -> Config:
    """Defaults, then --config's or --preset's fields, then every option given on the command line.
    A --method that differs from the file's or the preset's starts from its own options' defaults
    (the others' options are not its own); the command line's method options always apply."""
    if a.preset and a.config:
        raise ConfigError("--config and --preset: give one (a config file already holds every field)")
    fields = get_preset(a.preset) if a.preset else {}
    if a.config:
        fields = Config.from_json_file(a.config).to_dict()
    options = {**fields.pop("method_options", {}), **{k: fields.pop(k) for k in list(fields) if k not in
                                                       SHARED_FIELDS}}
    given = vars(a)
    if "method" in given and given["method"] != fields.get("method", Config.method):
        options = {}
    fields.update({k: v for k, v in given.items() if k in SHARED_FIELDS})
    options.update({k: v for k, v in given.items() if k in _declared_options()})
    fields["plugins"] = list(dict.fromkeys(list(fields.get("plugins") or []) + a.plugin))
    return Config(**fields, method_options=options).validate()


def cmd_train(a: argparse.Namespace) -> int:
    cfg = _config_from_args(a)
    for option, value in (("--eval-runs", a.eval_runs), ("--workers", a.workers)):
        if value < 1:
            raise ConfigError(f"{option}: must be >= 1, got {value}")
    for option, value in (("--max-restarts", a.max_restarts), ("--ensemble", a.ensemble),
                          ("--eval-train", a.eval_train)):
        if value < 0:
            raise ConfigError(f"{option}: must be >= 0, got {value}")
    if a.resume and not a.out:
        raise ConfigError("--resume: needs --out, the run folder to continue")
    out = Path(a.out or f"runs/{cfg.dataset}-{cfg.method}-{cfg.embedding}-{time.strftime('%Y%m%d-%H%M%S')}")
    if a.resume and not ((out / STATE).exists() or (out / LAST).exists()):
        raise RunDirError(f"--resume: {out} holds no run to continue; check the folder, or leave out --resume "
                          "to start a new run there")
    options = {"eval_runs": a.eval_runs, "resume": a.resume, "quiet": a.quiet, "data_dir": a.data_dir,
               "download": a.download, "threads": a.threads, "ensemble": a.ensemble, "train_images": a.eval_train}
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    if a.workers > 1 and not under_torchrun:  # this process launches the workers and waits for them
        groups = parallel.choose_groups(models.blocks_for(cfg), a.workers, cfg.block_groups)
        parallel.check_layout(cfg, models.blocks_for(cfg), parallel.Dist(0, a.workers, groups))
        return parallel.launch(runner.worker, (cfg.to_dict(), str(out), options), a.workers, a.threads,
                               a.max_restarts)
    runner.worker(cfg.to_dict(), str(out), options)
    return 0


def _load_for_eval(a: argparse.Namespace):
    model = models.load(a.checkpoint, a.device)
    data = load_data(model.config, a.data_dir, a.download)
    return model, model.config, getattr(data, a.split)


def cmd_evaluate(a: argparse.Namespace) -> int:
    if a.runs < 1:
        raise ConfigError("--runs: must be >= 1")
    if a.ensemble < 1:
        raise ConfigError(f"--ensemble: must be >= 1, got {a.ensemble}")
    model, cfg, split = _load_for_eval(a)
    overrides = {k: v for k, v in (("steps", a.steps), ("solver", a.solver)) if v is not None}
    for name in overrides:
        if name not in type(model).options:
            raise ConfigError(not_taken(name, type(model), takers(name)))
    if overrides:
        Config(**{**cfg.to_dict(), **overrides}).validate()  # names a bad value before any work
    if a.all_rules:
        rules, k = ("stochastic", "no-noise", "ensemble"), (a.ensemble if a.ensemble > 1 else 10)
    else:
        rules, k = (("ensemble",) if a.ensemble > 1 else ("stochastic",) if a.noise else ("no-noise",)), a.ensemble
    res = rules_accuracy(model, split, a.runs, k, a.seed, rules, **overrides)
    if a.json:
        if len(res) == 1:
            (rule, r), = res.items()
            print(json.dumps({"split": a.split, "rule": rule, "noise": a.noise, **r}))
        else:
            print(json.dumps({"split": a.split, "rules": res}))
    else:
        for rule, r in res.items():
            kind = {"stochastic": "stochastic", "no-noise": "noise-free"}.get(rule, rule)
            print(f"{a.split} accuracy ({a.runs} {kind} inference runs): {format_mean_se(r, sign='+-')}%")
    return 0


def cmd_presets(a: argparse.Namespace) -> int:
    print(list_presets())
    return 0


def cmd_table(a: argparse.Namespace) -> int:
    from .tools.report import collect, load_results, table1_markdown  # the tools load when their command runs
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
    from .tools import bench, reproduce
    from .tools.report import write_report
    overrides = {k: v for k, v in (("epochs", a.epochs), ("steps", a.steps), ("train_subset", a.train_subset),
                                   ("val_subset", a.val_subset), ("test_subset", a.test_subset),
                                   ("precision", a.precision)) if v is not None}
    for ds in a.datasets:  # name a bad value before any work
        for m in a.methods:  # --steps reaches the methods that take it (reproduce.run_grid)
            Config(dataset=ds, method=m, **taken_by(m, overrides)).validate()
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
    from .tools import bench
    if a.seconds <= 0:
        raise ConfigError(f"--seconds: must be > 0, got {a.seconds}")
    if a.workers_repeats < 1:
        raise ConfigError(f"--workers-repeats: must be >= 1, got {a.workers_repeats}")
    if a.lr_schedule == "cosine" and not a.tta_epochs:
        raise ConfigError("--lr-schedule cosine: give --tta-epochs, the length the schedule decays over")
    for m in a.methods:
        Config(method=m).validate()  # names an unknown method before any work
    bench.run(a.what, a.out, precisions=a.precision, methods=tuple(a.methods), target=a.target,
              budget_minutes=a.budget_minutes, tta_epochs=a.tta_epochs, lr_schedule=a.lr_schedule,
              device_name=a.device, workers_images=a.workers_images, min_run_time=a.seconds, t0=START,
              tta_workers=a.tta_workers, tta_lr=a.tta_lr, batchnorm_stats=a.batchnorm_stats,
              workers_repeats=a.workers_repeats, workers_batch=a.workers_batch)
    return 0


def cmd_results(a: argparse.Namespace) -> int:
    from .tools.results import run
    return run(Path(a.root), check=a.check)


def cmd_diagnose(a: argparse.Namespace) -> int:
    model, cfg, split = _load_for_eval(a)
    diag = diagnose.chain_analysis(model, split, seed=a.seed, batch_size=cfg.eval_batch_size)
    if a.json:
        print(json.dumps(diag))
        return 0
    what = ("(a)-(d): block t's own logits fed (a) z ~ q(z_(t-1)|y) [built from the label: a diagnostic], (b) "
            "the chain's z_(t-1), (c) pure noise, (d) zeros; " if diag["kind"] == "dt" else "")
    print(f"{a.split} accuracy (%) per step t of the inference chain ({len(split)} images). {what}'head': the "
          "output head (the method's classifier) on z_t along the chain, with and without the noise")
    print(diagnose.table(diag))
    return 0


def _early_plugins(argv: list[str]) -> list[str]:
    """--plugin values, read before the parser is built."""
    out = []
    for i, arg in enumerate(argv):
        if arg == "--plugin" and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif arg.startswith("--plugin="):
            out.append(arg.split("=", 1)[1])
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    env_plugins = [p for p in os.environ.get("NOPROP_PLUGINS", "").split(":") if p]
    try:
        for spec in env_plugins + _early_plugins(argv):  # before parsing: --method help lists them
            load_plugin(spec)
    except USER_ERRORS as e:
        print(f"noprop: error: {e}", file=sys.stderr)
        return 2
    a = build_parser().parse_args(argv)
    a.argv = argv
    if hasattr(a, "plugin"):
        a.plugin = env_plugins + a.plugin
    if getattr(a, "offline", False):
        os.environ["NOPROP_OFFLINE"] = "1"
    try:
        with device.threads(getattr(a, "threads", None)):
            return {"train": cmd_train, "evaluate": cmd_evaluate, "diagnose": cmd_diagnose,
                    "presets": cmd_presets, "table": cmd_table, "bench": cmd_bench,
                    "reproduce": cmd_reproduce, "results": cmd_results}[a.command](a)
    except USER_ERRORS as e:
        print(f"noprop: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("noprop: interrupted; the last completed epoch's checkpoint is kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
