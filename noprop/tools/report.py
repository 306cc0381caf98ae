"""Our accuracies beside the paper's Table 1 (identical in v1 and v2 of arXiv 2503.24322).

PAPER_TABLE1 (noprop/paper.py) holds the paper's numbers exactly as printed (accuracy %, mean ± s.e. over 3 seeds x 5
inference runs). collect() pools our runs the same way, and table1_markdown() lays both out row by
row in the paper's order. The prior-method rows (Forward-Forward etc.) are left out: they come from
other papers with other architectures, so there is nothing of ours to put beside them."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import atomic_write_text
from ..evaluation import format_mean_se, mean_se
from ..methods import get_method, method_names
from ..paper import DATASETS, PAPER_TABLE1, Key

DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}
class _DisplayNames(dict):
    """A method's display name from the registry (its own Method.display_name)."""

    def get(self, name, default=None):
        return get_method(name).display_name if name in method_names() else default


METHOD_NAMES = _DisplayNames()
# The paper calls the learned embedding "dim=20" (its default dimension).
EMBEDDING_NAMES = {"one-hot": "one-hot", "learned": "dim=20", "prototype": "prototype"}

# The paper's row order; Adjoint is reported with one-hot embeddings only.
ROWS: list[tuple[str, str]] = (
    [("backprop", e) for e in EMBEDDING_NAMES]
    + [("dt", e) for e in EMBEDDING_NAMES]
    + [("adjoint", "one-hot")]
    + [("ct", e) for e in EMBEDDING_NAMES]
    + [("fm", e) for e in EMBEDDING_NAMES]
)


def seed_stats(per_seed_runs: list[list[float]]) -> dict:
    """Statistics done right for seeds x inference runs: each seed is first averaged over its
    inference runs; the reported mean +- s.e. is across those seed means (None for one seed: a
    single seed says nothing of the spread between seeds). The inference-run spread is reported
    apart, as the mean over seeds of the s.e. of each seed's runs. Pooling all seed x run values
    as if independent would understate the between-seed variance."""
    seed_means = [sum(r) / len(r) for r in per_seed_runs]
    m, se = mean_se(seed_means)
    runs_se = sum(mean_se(r)[1] for r in per_seed_runs) / len(per_seed_runs)
    return {"mean": m, "se": se if len(seed_means) > 1 else None, "runs_se": runs_se,
            "seed_means": seed_means, "n_seeds": len(seed_means), "runs_per_seed": [len(r) for r in per_seed_runs]}


def collect(results: list[dict]) -> dict[Key, dict]:
    """Group results by (method, embedding, dataset): seed-level mean +- s.e. (seed_stats) for the
    test accuracy (and the train accuracy, where results have it).

    Each value: {"test": seed_stats, "train": seed_stats (only when some result has train runs),
    "n_seeds", "n_runs": test values in all, "epochs": one entry per result that states its epochs,
    in seed order}. Several results of one seed (reruns) are averaged within that seed."""
    groups: dict[Key, list[dict]] = {}
    for r in results:
        groups.setdefault((r["method"], r["embedding"], r["dataset"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        by_seed: dict[int, list[float]] = {}
        train_by_seed: dict[int, list[float]] = {}
        for r in rs:
            by_seed.setdefault(r["seed"], []).extend(r["test_acc_runs"])
            if r.get("train_acc_runs"):
                train_by_seed.setdefault(r["seed"], []).extend(r["train_acc_runs"])
        entry = {"test": seed_stats(list(by_seed.values())), "n_seeds": len(by_seed),
                 "n_runs": sum(len(v) for v in by_seed.values()),
                 "epochs": [r["epochs"] for r in rs if r.get("epochs") is not None]}
        if train_by_seed:
            entry["train"] = seed_stats(list(train_by_seed.values()))
        out[key] = entry
    return out


def _fmt(v) -> str:
    """A paper value (mean, se), or ours (seed_stats): the s.e. across seeds, or for one seed the
    inference-run s.e. marked 'runs'."""
    if isinstance(v, dict) and v["se"] is None:
        return f"{format_mean_se(v)} (1 seed; runs ± {v['runs_se']:.2f})"
    return format_mean_se(v)


def _row_name(method: str, embedding: str) -> str:
    return f"{METHOD_NAMES.get(method, method)} ({EMBEDDING_NAMES.get(embedding, embedding)})"


def _counts(entry: dict) -> str:
    """"3 × 5, 100 ep": seeds × inference runs per seed (or the total when seeds ran unequal numbers)."""
    s, n = entry["n_seeds"], entry["n_runs"]
    runs = f"{s} × {n // s}" if n % s == 0 else f"{s} seeds, {n} runs"
    epochs = sorted(set(entry["epochs"]))
    return runs + (f", {'/'.join(str(e) for e in epochs)} ep" if epochs else ", ? ep")


def table1_markdown(collected: dict[Key, dict]) -> str:
    """Our numbers beside the paper's, laid out like Table 1. Only rows with at least one result
    of ours appear; only datasets we have results for get columns; train columns only where we
    have train accuracies for that dataset."""
    datasets = [d for d in DATASETS if any(k[2] == d for k in collected)]
    datasets += sorted({k[2] for k in collected} - set(DATASETS))  # a dataset the paper lacks
    with_train = {d for (_, _, d), e in collected.items() if "train" in e}

    # The paper's rows first, in its order; anything else we ran (not in the paper) after them.
    ours = {(m, e) for m, e, _ in collected}
    rows = [r for r in ROWS if r in ours] + sorted(ours - set(ROWS))

    header = ["Method"]
    for d in datasets:
        name = DATASET_NAMES.get(d, d)
        if d in with_train:
            header += [f"{name} ours train", f"{name} paper train"]
        header += [f"{name} ours test", f"{name} paper test"]
    header.append("seeds × runs, epochs")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m, e in rows:
        cells = [_row_name(m, e)]
        counts = []
        for d in datasets:
            entry = collected.get((m, e, d), {})
            paper = PAPER_TABLE1.get((m, e, d), {})
            if d in with_train:
                cells += [_fmt(entry.get("train")), _fmt(paper.get("train"))]
            cells += [_fmt(entry.get("test")), _fmt(paper.get("test"))]
            if entry:
                counts.append(_counts(entry) if len(datasets) == 1
                              else f"{DATASET_NAMES.get(d, d)}: {_counts(entry)}")
        cells.append("; ".join(counts))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_results(paths) -> tuple[list[dict], list[str]]:
    """Read run folders (each with config.json and result.json) into collect()'s dict form.
    Folders that cannot be read are skipped, not fatal: a sweep may still be running, and one
    unfinished run should not hide the others. Returns (results, skipped), skipped holding
    "folder: reason" strings."""
    results, skipped = [], []
    for p in paths:
        folder = Path(p)
        if not (folder / "result.json").is_file():
            skipped.append(f"{folder}: no result.json (unfinished or not a run folder)")
            continue
        if not (folder / "config.json").is_file():
            skipped.append(f"{folder}: no config.json")
            continue
        try:
            cfg = json.loads((folder / "config.json").read_text())
            res = json.loads((folder / "result.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            skipped.append(f"{folder}: unreadable JSON ({e})")
            continue
        missing = [k for k in ("method", "embedding", "dataset", "seed") if k not in cfg]
        missing += [k for k in ("test_acc_runs",) if k not in res]
        if missing:
            skipped.append(f"{folder}: missing {', '.join(missing)}")
            continue
        r = {"method": cfg["method"], "embedding": cfg["embedding"], "dataset": cfg["dataset"],
             "seed": int(cfg["seed"]), "test_acc_runs": list(res["test_acc_runs"]),
             "epochs": res.get("epochs"), "run_dir": str(folder), "test_subset": cfg.get("test_subset")}
        train = res.get("train_acc_runs") or ((res.get("train") or {}).get("stochastic") or {}).get("runs")
        if train:
            r["train_acc_runs"] = list(train)
        results.append(r)
    return results, skipped


# ------------------------------------------------------------------------------------------------
# The report folder of `noprop reproduce`: Markdown tables and PNG figures (matplotlib).
PAPER_MEMORY_GB = {  # v1 Table 2: GPU memory, one-hot embeddings
    "backprop": {"mnist": 0.87, "cifar10": 1.17, "cifar100": 1.73},
    "dt": {"mnist": 0.49, "cifar10": 0.64, "cifar100": 1.23},
    "adjoint": {"mnist": 2.32, "cifar10": 6.23, "cifar100": 6.45},
    "ct": {"mnist": 1.05, "cifar10": 0.45, "cifar100": 0.50},
    "fm": {"mnist": 1.06, "cifar10": 0.44, "cifar100": 0.49},
}


def memory_markdown(rows: list[dict]) -> str:
    """Our training memory (peak RSS growth of one CPU process, MB) beside the paper's Table 2."""
    lines = ["| method | dataset | ours: training peak above start (MB) | ours vs backprop | paper (GPU, GB) | "
             "paper vs backprop |", "|---|---|---|---|---|---|"]
    ours_bp = {r["dataset"]: r["train_peak_mb"] for r in rows if r["method"] == "backprop"}
    for r in rows:
        paper = PAPER_MEMORY_GB.get(r["method"], {}).get(r["dataset"])
        pb = PAPER_MEMORY_GB["backprop"].get(r["dataset"])
        ob = ours_bp.get(r["dataset"])
        ours_ratio = f"{r['train_peak_mb'] / ob:.2f}x" if ob else "–"
        paper_ratio = f"{paper / pb:.2f}x" if paper and pb else "–"
        lines.append(f"| {METHOD_NAMES.get(r['method'], r['method'])} | {DATASET_NAMES.get(r['dataset'], r['dataset'])} "
                     f"| {r['train_peak_mb']:.0f} | {ours_ratio} | {paper if paper is not None else '–'} | {paper_ratio} |")
    return "\n".join(lines)


def _history(run_dir: Path) -> list[dict]:
    f = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed); imported on first use
    so the package works without the optional `report` extra until a figure is asked for."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_accuracy(results: list[dict], path: Path) -> None:
    """Test accuracy (per-epoch curve, recorded for plotting only) against epochs and against
    cumulative training seconds, one line per run, as the paper's Fig. 3."""
    plt = _pyplot()
    datasets = sorted({r["dataset"] for r in results})
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 3.6 * len(datasets)), squeeze=False)
    for row, ds in zip(axes, datasets):
        for r in (r for r in results if r["dataset"] == ds):
            h = _history(r["run_dir"])
            if not h:
                continue
            key = "test_acc" if "test_acc" in h[0] else "val_acc"
            ep = [e["epoch"] for e in h]
            secs, total = [], 0.0
            for e in h:
                total += e["train_seconds"]
                secs.append(total)
            label = f"{METHOD_NAMES.get(r['method'], r['method'])} ({EMBEDDING_NAMES.get(r['embedding'], r['embedding'])}) s{r['seed']}"
            acc = [e[key] for e in h]
            row[0].plot(ep, acc, marker="o", ms=3, label=label)
            row[1].plot(secs, acc, marker="o", ms=3, label=label)
        for ax, xl in zip(row, ("epoch", "training seconds")):
            ax.set_xlabel(xl)
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(DATASET_NAMES.get(ds, ds))
            ax.grid(alpha=0.3)
        row[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_blocks(run_dir: Path, path: Path) -> bool:
    """What the NoProp-DT chain does (from the run's diagnostics.json, see noprop.diagnose): each
    block's accuracy fed (a) q-samples, (b) the chain's own z with and without noise, (c) pure noise,
    (d) zeros, and the head along the chain."""
    f = Path(run_dir) / "diagnostics.json"
    if not f.exists():
        return False
    plt = _pyplot()
    d = json.loads(f.read_text())
    if "q_sample" not in d:
        return False
    t = list(range(1, len(d["q_sample"]) + 1))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, marker, label in (("q_sample", "o", "(a) block t fed z ~ q(z_(t-1)|y) [uses the label]"),
                               ("chain", "s", "(b) block t along the chain (paper's noise)"),
                               ("chain_no_noise", "D", "(b) block t along the chain, no noise"),
                               ("pure_noise", "v", "(c) block t fed N(0, I)"),
                               ("zeros", "x", "(d) block t fed zeros"),
                               ("head_chain", "^", "head on z_t along the chain")):
        ax.plot(t, d[key], marker=marker, label=label)
    ax.axhline(d["chance"], color="grey", ls=":", lw=1, label=f"chance; shuffled images: {d['shuffled']:.1f}%")
    ax.set_xlabel("block t")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(f"What the NoProp-DT chain does: {Path(run_dir).name}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_trajectory(run_dir: Path, path: Path) -> bool:
    """The chain's z_0..z_T for test images in 2-D (see reproduce.dt_trajectory)."""
    f = Path(run_dir) / "trajectory.json"
    if not f.exists():
        return False
    plt = _pyplot()
    d = json.loads(f.read_text())
    labels = torch.tensor(d["labels"])
    steps = torch.tensor(d["steps"])  # [T+1, n, 2]: z_0 .. z_T
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    ax.scatter(steps[-1, :, 0], steps[-1, :, 1], c=[cmap(int(c) % 10) for c in labels], s=4, alpha=0.25)
    for c in labels.unique().tolist():
        mean_path = steps[:, labels == c].mean(1)  # the class's mean latent at each step
        ax.plot(mean_path[:, 0], mean_path[:, 1], color=cmap(c % 10), lw=1.8, marker="o", ms=3)
    for c, (ex, ey) in enumerate(d["embeddings"]):
        ax.scatter([ex], [ey], color=cmap(c % 10), marker="*", s=240, edgecolor="black", zorder=5)
        ax.annotate(str(c), (ex, ey), textcoords="offset points", xytext=(7, 7), fontsize=9)
    ax.set_title("z_t from z_0 ~ N(0, I) (t = 0..T): mean per true class (lines),\n"
                 "final z_T per image (dots), class embeddings (stars)", fontsize=9)
    ax.set_xlabel("principal axis 1")
    ax.set_ylabel("principal axis 2")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(out: Path, cells: list[dict], memory_rows: list[dict] | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results, skipped = load_results([c["run_dir"] for c in cells if c.get("status") == "done"])
    lines = ["# NoProp reproduction report", ""]
    if results:
        lines += ["## Test accuracy beside the paper's Table 1", "",
                  "Ours: the final model of each run; mean ± s.e. across seeds, each seed averaged over its "
                  "inference runs (one seed: its inference-run s.e., marked 'runs'). The paper: 3 seeds × 5 "
                  "runs. Epochs are those actually run.", "", table1_markdown(collect(results)), ""]
        partial = sorted({r["run_dir"] for r in results if r.get("test_subset")})
        if partial:
            lines += [f"**Smoke runs:** {len(partial)} run(s) were tested on a subset of the test set "
                      "(`test_subset`); their numbers are not comparable with the paper's.", ""]
        plot_accuracy(results, out / "accuracy.png")
        lines += ["![test accuracy against epochs and training seconds](accuracy.png)", ""]
        for r in results:
            if r["method"] == "dt":
                name = Path(r["run_dir"]).name
                if plot_blocks(r["run_dir"], out / f"blocks-{name}.png"):
                    lines += [f"![per-block diagnostics]({'blocks-' + name + '.png'})", ""]
                if plot_trajectory(r["run_dir"], out / f"trajectory-{name}.png"):
                    lines += [f"![denoising trajectory]({'trajectory-' + name + '.png'})", ""]
                break  # one DT run's figures stand for the rest
    if memory_rows:
        lines += ["## Training memory beside the paper's Table 2", "",
                  "Ours: peak resident memory of one CPU training process above its size before the first "
                  "step, batch 128, fp32. The paper: process GPU memory.", "", memory_markdown(memory_rows), ""]
    not_run = [c for c in cells if c.get("status") != "done"] + [{"cell": s, "status": "no result"} for s in skipped]
    if not_run:
        lines += ["## Not run", ""] + [f"- {c['cell']}: {c['status']}" for c in not_run] + [""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return out / "report.md"
