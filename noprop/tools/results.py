"""`noprop results`: the tables of the README and docs/results.md, generated from results/*.json.

Every number the documentation shows comes from a committed result file (what ran, on which
commit, machine and CPU class, with every seed's and every inference run's numbers), through the
functions here. `noprop results` rewrites the generated parts (between "<!-- results:NAME -->" and
"<!-- /results:NAME -->" markers); `noprop results --check` fails when they differ from what the
files give, so a typed or stale number cannot survive (a test runs it).

Statistics: a seed's value is the mean of its inference runs; tables show mean ± s.e. across seeds
(report.seed_stats), with the inference-run spread apart where it matters.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import time
from pathlib import Path

from .. import machine
from ..checkpoint import atomic_write_text
from ..evaluation import format_mean_se as pm  # mean ± s.e., the cells of every table
from ..machine import class_name, machine_line
from ..paper import PAPER_TABLE1
from .bench import markdown
from .report import seed_stats
from .settings import STEP_SETTINGS


def save_study(root: Path, study: str, script: str, argv: list[str], fields: dict) -> Path:
    """Write a bench script's result file, root/results/<study>-<cpu class>.json: the command that
    ran (`python SCRIPT ARGS`), when, the commit and the machine, then the script's own fields."""
    command = "python " + " ".join(shlex.quote(x) for x in [script, *argv])
    out = {"study": study, "command": command, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           **machine.provenance(), "machine": machine.describe(), **fields}
    path = Path(root) / "results" / f"{study}-{machine.cpu_class()}.json"
    atomic_write_text(path, json.dumps(out, indent=1))
    print(f"wrote {path}")
    return path


def load_results(folder: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))}


def _outside(path: str) -> bool:
    """Whether a path a command wrote to lies outside the repository (absolute, or up from it)."""
    return path.startswith(("/", "~", "..")) or re.match(r"[A-Za-z]:[\\/]", path) is not None


def command_in_repo(name: str, command: str) -> str:
    """The command as the docs show it: an `--out` outside the repository (where a measurement ran,
    so that its runs left the checkout untouched) is shown as the file's place in the repository,
    results/NAME.json, so every command the docs print writes inside the repository. The raw
    result file keeps the command exactly as it ran."""
    try:
        tokens = shlex.split(command)
    except ValueError:
        return command
    for i, t in enumerate(tokens):
        out = tokens[i + 1] if t == "--out" and i + 1 < len(tokens) else t[6:] if t.startswith("--out=") else None
        if out and _outside(out):
            command = command.replace(out, f"results/{name}.json")
    return command


def source_line(name: str, r: dict) -> str:
    return f"Source: `results/{name}.json`, made by `{command_in_repo(name, r['command'])}` on {machine_line(r)}."


# "written to /some/folder/ (why) and copied here": where a measurement's files went before they
# were copied into results/; the rendered docs leave it out (the raw file keeps it), keeping any
# other part of the note.
_WRITTEN_ELSEWHERE = re.compile(r"written to (?:/|~|\.\.)\S*(?: \([^)]*\))?(?: and copied here)?(?:; |$)")


def notes_for_docs(r: dict) -> dict:
    """A result file as the docs render it: its notes without where its files were first written."""
    if not r.get("notes"):
        return r
    notes = []
    for note in r["notes"]:
        n = _WRITTEN_ELSEWHERE.sub("", note).strip()
        if n:
            notes.append(n if n == note else n[0].upper() + n[1:])  # what is left now opens the note
    return {**r, "notes": notes}


def _by_variant(r: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for c in r["cells"]:
        out.setdefault(c["label"], []).append(c)
    return out


def _rule(cells: list[dict], rule: str, split: str = "test") -> dict | None:
    runs = [c["result"].get(split, {}).get(rule, {}).get("runs") for c in cells]
    return seed_stats(runs) if all(runs) and runs else None


def _val(cells: list[dict], which: str = "last") -> dict:
    vals = [[c["history"][-1]["val_acc"]] if which == "last" else [c["result"]["best_val_acc"]] for c in cells]
    return seed_stats(vals)


def _hist(cells: list[dict], key: str) -> dict | None:
    vals = [[c["history"][-1][key]] for c in cells if key in c["history"][-1]]
    return seed_stats(vals) if vals else None


def _ensemble_key(cells: list[dict]) -> str | None:
    keys = [k for k in cells[0]["result"].get("test", {}) if k.startswith("ensemble-")]
    return keys[0] if keys else None


# --- one table per study --------------------------------------------------------------------------
def table_head_init(r: dict) -> str:
    rows = ["| variant | seeds | validation acc (selection) | head CE at the end of training | "
            "test acc, paper's rule | test acc, no noise |", "|---|---|---|---|---|---|"]
    groups = _by_variant(r)
    for label, cells in groups.items():
        rows.append(f"| {label} | {len(cells)} | {pm(_val(cells))} | {pm(_hist(cells, 'ce'), 3)} | "
                    f"{pm(_rule(cells, 'stochastic'))} | {pm(_rule(cells, 'no-noise'))} |")
    return "\n".join(rows) + "\n\n" + _choice(groups, lambda lab: lab.split(",")[1], "head")


def _choice(groups: dict[str, list[dict]], budget_of, what: str) -> str:
    """Which variant wins on validation at each budget (the choice the defaults follow)."""
    budgets: dict[str, list[tuple[float, str]]] = {}
    for label, cells in groups.items():
        budgets.setdefault(budget_of(label).strip(), []).append((_val(cells)["mean"], label))
    lines = [f"- {b}: best validation accuracy with **{max(v)[1].split(',')[0]}**" for b, v in budgets.items()]
    return f"Chosen on validation ({what}):\n" + "\n".join(lines)


def table_logit_scale(r: dict) -> str:
    rows = ["| start of the logit scale | validation acc after each epoch (selection) | training CE per epoch |",
            "|---|---|---|"]
    groups = _by_variant(r)
    for label, cells in groups.items():
        c = cells[0]
        vals = ", ".join(f"{h['val_acc']:.2f}" for h in c["history"])
        ces = ", ".join(f"{h['ce']:.3f}" for h in c["history"])
        rows.append(f"| {label.split()[-1]} | {vals} | {ces} |")
    best = max(groups, key=lambda lab: _val(groups[lab])["mean"])
    return "\n".join(rows) + f"\n\nChosen on validation: **{best}** (seed {r['seeds'][0]}; {len(groups)} starts tried)."


def table_small_budget(r: dict) -> str:
    groups = _by_variant(r)
    ens = _ensemble_key(next(iter(groups.values())))
    rows = [f"| training images (1 epoch) | seeds | paper's rule (stochastic) | no noise | {ens} | "
            "head CE at the end | block 1 fed pure noise | head on z_T along the chain |",
            "|---|---|---|---|---|---|---|---|"]
    for label, cells in groups.items():
        diag = [c.get("diagnostics") for c in cells]
        b1 = seed_stats([[d["pure_noise"][0]] for d in diag]) if all(diag) else None
        hz = seed_stats([[d["head_chain"][-1]] for d in diag]) if all(diag) else None
        rows.append(f"| {label.split()[0]} | {len(cells)} | {pm(_rule(cells, 'stochastic'))} | "
                    f"{pm(_rule(cells, 'no-noise'))} | {pm(_rule(cells, ens))} | {pm(_hist(cells, 'ce'), 3)} | "
                    f"{pm(b1)} | {pm(hz)} |")
    return "\n".join(rows)


def table_equal_budget(r: dict) -> str:
    groups = _by_variant(r)
    ens = _ensemble_key(next(iter(groups.values())))
    rows = [f"| method | seeds | epochs in {r['common'].get('minutes')} min | test, paper's rule | test, no noise | "
            f"test, {ens} | train acc (10,000 images) | final training CE |", "|---|---|---|---|---|---|---|---|"]
    for label, cells in groups.items():
        epochs = [c["history"][-1]["epoch"] for c in cells]
        ep = f"{min(epochs):.1f}–{max(epochs):.1f}" if max(epochs) - min(epochs) > 0.05 else f"{epochs[0]:.1f}"
        rows.append(f"| {label} | {len(cells)} | {ep} | {pm(_rule(cells, 'stochastic'))} | "
                    f"{pm(_rule(cells, 'no-noise'))} | {pm(_rule(cells, ens))} | "
                    f"{pm(_rule(cells, 'stochastic', 'train'))} | {pm(_hist(cells, 'ce'), 3)} |")
    return "\n".join(rows)


def table_rules(r: dict) -> str:
    """Which inference rule is best, by how much (seed means of the difference)."""
    groups = _by_variant(r)
    ens = _ensemble_key(next(iter(groups.values())))
    rows = [f"| method | no noise − paper's rule | {ens} − paper's rule | best rule |", "|---|---|---|---|"]
    def mean_of(c, rule):
        runs = c["result"]["test"][rule]["runs"]
        return sum(runs) / len(runs)

    def diff(cells, rule):  # per seed: rule's mean minus the paper's rule's mean
        return seed_stats([[mean_of(c, rule) - mean_of(c, "stochastic")] for c in cells])

    for label, cells in groups.items():
        dn, de = diff(cells, "no-noise"), diff(cells, ens)
        best = max((("paper's rule", 0.0), ("no noise", dn["mean"]), (ens, de["mean"])), key=lambda t: t[1])[0]
        rows.append(f"| {label} | {pm(dn)} | {pm(de)} | {best} |")
    return "\n".join(rows)


def table_val_test_gap(r: dict) -> str:
    rows = ["| method | split seed | validation acc (final model, 1 run) | test acc (final model, paper's rule) | "
            "test − validation |", "|---|---|---|---|---|"]
    gaps, left_out = [], []
    for label, cells in _by_variant(r).items():
        if not label.startswith("NoProp-DT"):
            continue
        for c in cells:
            # a run stopped inside its first epoch has untrained blocks and predicts at chance on
            # both splits: its "gap" says nothing about the splits
            if c["result"].get("epochs_fraction", 1.0) < 1.0:
                left_out.append(f"{label} seed {c['seed']}")
                continue
            val = c["history"][-1]["val_acc"]
            test = c["result"]["test"]["stochastic"]["mean"]
            gaps.append(test - val)
            rows.append(f"| {label} | {c['seed']} | {val:.2f} | {test:.2f} | {test - val:+.2f} |")
    s = seed_stats([[g] for g in gaps])
    out = "\n".join(rows) + f"\n\nMean test − validation over these {len(gaps)} runs: {pm(s)} points."
    if left_out:
        out += (f" Left out, having stopped inside their first epoch (untrained blocks, chance on both "
                f"splits): {', '.join(left_out)}.")
    return out


def table_time_curves(r: dict, points=None) -> str:
    """Validation accuracy against training minutes (the last epoch finished by each mark; the
    budget's crossing epoch counts at the last mark)."""
    budget = r["common"].get("minutes") or 6
    points = points or list(range(1, math.ceil(budget) + 1))
    rows = ["| method | " + " | ".join(f"{p} min" for p in points) + " |", "|---|" + "---|" * len(points)]
    for label, cells in _by_variant(r).items():
        cols = []
        for p in points:
            vals = []
            for c in cells:
                t, best = 0.0, None
                for h in c["history"]:
                    t += h["train_seconds"]
                    if t <= 60 * p + 1e-9 or p == points[-1]:
                        best = h["val_acc"]
                vals.append(best)
            got = [[v] for v in vals if v is not None]
            cols.append(pm(seed_stats(got), 1) if len(got) == len(vals) else "–")
        rows.append(f"| {label} | " + " | ".join(cols) + " |")
    return "\n".join(rows)


def _chosen_recipe(groups: dict[str, list[dict]]) -> str:
    """The recipe with the best final validation accuracy on seed 0 (the test set chooses nothing)."""
    return max((lab for lab, cells in groups.items() if any(c["seed"] == 0 for c in cells)),
               key=lambda lab: next(c for c in groups[lab] if c["seed"] == 0)["history"][-1]["val_acc"])


def table_recipe(r: dict) -> str:
    groups = _by_variant(r)
    ens = _ensemble_key(next(iter(groups.values())))
    epochs = r["common"].get("epochs")
    rows = [f"| recipe ({epochs} epochs) | seed 0: final validation acc (selection) | seeds | test, paper's rule | "
            f"test, no noise | test, {ens} | train acc (10,000 images) |", "|---|---|---|---|---|---|---|"]
    for label, cells in groups.items():
        seed0 = next((c for c in cells if c["seed"] == 0), None)
        val0 = f"{seed0['history'][-1]['val_acc']:.2f}" if seed0 else "–"
        rows.append(f"| {label} | {val0} | {len(cells)} | {pm(_rule(cells, 'stochastic'))} | "
                    f"{pm(_rule(cells, 'no-noise'))} | {pm(_rule(cells, ens))} | "
                    f"{pm(_rule(cells, 'stochastic', 'train'))} |")
    chosen = _chosen_recipe(groups)
    paper = PAPER_TABLE1[("dt", "one-hot", "mnist")]["test"]
    return "\n".join(rows) + (f"\n\nChosen on seed 0's validation accuracy: **{chosen}**; the paper reports "
                              f"{pm(paper)} after 100 epochs.")


def table_recipe_vs_paper(r: dict) -> str:
    """The README's headline: the recipe chosen on seed 0's validation accuracy (as table_recipe
    chooses it), over its seeds, beside the paper's NoProp-DT on MNIST."""
    groups = _by_variant(r)
    ens = _ensemble_key(next(iter(groups.values())))
    chosen = _chosen_recipe(groups)
    cells = groups[chosen]
    paper = PAPER_TABLE1[("dt", "one-hot", "mnist")]["test"]
    return "\n".join([
        f"| NoProp-DT, MNIST | epochs | seeds | test, paper's rule | test, no noise | test, {ens} |",
        "|---|---|---|---|---|---|",
        f"| ours ({chosen}, chosen on validation) | {r['common'].get('epochs')} | {len(cells)} | "
        f"**{pm(_rule(cells, 'stochastic'))}** | {pm(_rule(cells, 'no-noise'))} | {pm(_rule(cells, ens))} |",
        f"| the paper (Table 1) | 100 | – | **{pm(paper)}** | – | – |"])


def _chain_means(cells: list[dict]) -> dict[str, list[float]]:
    diags = [c["diagnostics"] for c in cells if c.get("diagnostics", {}).get("kind") == "dt"]
    keys = ("q_sample", "chain", "chain_no_noise", "pure_noise", "zeros", "head_chain", "head_chain_no_noise")
    return {k: [sum(d[k][t] for d in diags) / len(diags) for t in range(len(diags[0][k]))] for k in keys} | {
        "shuffled": sum(d["shuffled"] for d in diags) / len(diags), "chance": diags[0]["chance"], "n": len(diags)}


def table_chain(r: dict, label: str = "NoProp-DT (one-hot)") -> str:
    """What the chain does, per block: the (a)-(d) feeds and the head along the chain (seed means)."""
    m = _chain_means(_by_variant(r)[label])
    rows = ["| block t | (a) fed q(z_(t-1)\\|y) | (b) along the chain | (b) chain, no noise | (c) fed N(0, I) | "
            "(d) fed zeros | head on z_t, chain | head on z_t, no noise |", "|---|---|---|---|---|---|---|---|"]
    for t in range(len(m["q_sample"])):
        rows.append(f"| {t + 1} | " + " | ".join(f"{m[k][t]:.1f}" for k in (
            "q_sample", "chain", "chain_no_noise", "pure_noise", "zeros", "head_chain", "head_chain_no_noise")) + " |")
    return (f"{label}, validation accuracy (%) of each block's own logits, mean of {m['n']} seeds "
            f"({r['common'].get('minutes')} minutes of training):\n\n" + "\n".join(rows) +
            f"\n\nImages shuffled against labels: {m['shuffled']:.1f}% (chance {m['chance']:.1f}%).")


def summary_chain(r: dict, label: str = "NoProp-DT (one-hot)") -> str:
    """The chain in one paragraph, numbers from the seeds' means."""
    m = _chain_means(_by_variant(r)[label])
    T = len(m["q_sample"])
    best_noise = max(range(T), key=lambda t: m["pure_noise"][t])
    return (f"After {r['common'].get('minutes')} minutes of training ({label}, {m['n']} seeds), block 1 fed "
            f"pure noise already classifies {m['pure_noise'][0]:.1f}% of the validation images, and block "
            f"{best_noise + 1} {m['pure_noise'][best_noise]:.1f}%: early blocks act as image classifiers that "
            f"hardly read z. Fed zeros, block {T} falls to {m['zeros'][-1]:.1f}% against {m['q_sample'][-1]:.1f}% "
            f"on its training input: the last blocks trust z. Along the chain with the paper's noise the "
            f"blocks' own accuracies run {m['chain'][0]:.1f} -> {m['chain'][-1]:.1f}% and the head on z_T gives "
            f"{m['head_chain'][-1]:.1f}%; without the noise, {m['chain_no_noise'][-1]:.1f}% and "
            f"{m['head_chain_no_noise'][-1]:.1f}%. With the images shuffled against the labels the chain "
            f"scores {m['shuffled']:.1f}% (chance {m['chance']:.1f}%).")


def table_bench(r: dict) -> str:
    return markdown(r, machine_header=False)  # the source line below names the machine


def _timing_what(row: dict) -> str:
    """What a timed command is: bench/timing.py names it by its Makefile target; `make test` is
    the suite less the slow tests, which the table says."""
    if "-m 'not slow'" in row["command"]:
        return "make test (pytest: the suite less the slow tests)"
    return row["what"]


def table_timing(results: dict[str, dict]) -> str | None:
    """make run and the test suite's wall time, per CPU class (every timing-*.json)."""
    files = {k: v for k, v in results.items() if k.startswith("timing-")}
    if not files:
        return None
    rows = ["| CPU class | what | command | wall time | printed |", "|---|---|---|---|---|"]
    for _, r in sorted(files.items()):
        cls = class_name(r["machine"]["cpu_class"])
        caps = " (held to AVX2 code)" if r["machine"].get("isa_caps") else ""
        for row in r["rows"]:
            m, s = divmod(round(row["seconds"]), 60)
            rows.append(f"| {cls}{caps} | {_timing_what(row)} | `{row['command']}` | {m} min {s:02d} s | "
                        f"{row['printed'].strip()} |")
    sources = "; ".join(f"`results/{n}.json` ({machine_line(r)})" for n, r in sorted(files.items()))
    return "\n".join(rows) + f"\n\nSources: {sources}."


TABLES = {  # marker name -> (result file, function)
    "head-init": ("dt-head-init", table_head_init),
    "logit-scale": ("backprop-logit-scale", table_logit_scale),
    "small-budget": ("small-budget", table_small_budget),
    "equal-budget": ("mnist-equal-budget", table_equal_budget),
    "rules": ("mnist-equal-budget", table_rules),
    "val-test-gap": ("mnist-equal-budget", table_val_test_gap),
    "time-curves": ("mnist-equal-budget", table_time_curves),
    "recipe": ("dt-recipe", table_recipe),
    "recipe-vs-paper": ("dt-recipe", table_recipe_vs_paper),
    "chain": ("mnist-equal-budget", table_chain),
    "chain-summary": ("mnist-equal-budget", summary_chain),
    "chain-small": ("small-budget", lambda r: table_chain(r, "3200 images").replace(
        f"({r['common'].get('minutes')} minutes of training)", "(one epoch on 3,200 images)")),
}


def table_profile(r: dict) -> str:
    """A block step's time by operator, before and after, per precision."""
    out = []
    for prec in dict.fromkeys(row["precision"] for row in r["rows"]):
        before, after = (next(x for x in r["rows"] if x["precision"] == prec and x["variant"] == v)
                         for v in ("before", "after"))
        out += [f"**{prec}**: {before['ms_per_step']:.1f} ms per step before ({before['block_samples_per_s']:.0f} "
                f"block-samples/s), {after['ms_per_step']:.1f} ms after ({after['block_samples_per_s']:.0f}).", "",
                "| before: operator | ms per step | after: operator | ms per step |", "|---|---|---|---|"]
        for (bn, bt), (an, at) in zip(before["top_ops_ms_per_step"], after["top_ops_ms_per_step"]):
            out.append(f"| {bn} | {bt:.2f} | {an} | {at:.2f} |")
        out.append("")
    return "\n".join(out)


def table_ceiling(r: dict) -> str:
    """bench/conv_ceiling.py: each convolution of a DT block alone, the candidates for more
    arithmetic per call, and the whole block step, as shares of the measured matmul peak."""
    out = []
    for p in r["rows"]:
        out += [f"**{p['precision']}** (measured matmul peak {p['peak_gflops']:.0f} GFLOP/s; the convolutions are "
                f"{100 * p['conv_share_of_block_flops']:.0f}% of a block step's FLOPs)", "",
                "| forward + backward, batch 128 | ms per block | GFLOP/s | share of measured peak |",
                "|---|---|---|---|"]
        for x in p["layers"] + p["candidates"]:
            out.append(f"| {x['what']} | {x.get('ms_per_block', x['ms']):.2f} | {x['gflops']:.0f} | "
                       f"{100 * x['share_of_peak']:.0f}% |")
        b = p["block_step"]
        out += [f"| **{b['what']}** | {b['ms']:.2f} | {b['gflops']:.0f} | **{100 * b['share_of_peak']:.0f}%** |", ""]
    return "\n".join(out)


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e6:.2f} MB" if nbytes >= 100_000 else f"{nbytes / 1e3:.1f} KB"


def table_two_process(r: dict) -> str:
    """bench/two_process_ceiling.py: the speed-up two processes could reach with no communication."""
    out = ["| method | precision | batch per process | images/s, one process, batch 128 "
           "| images/s, one process, its batch | images/s, two at once (sum) | ceiling at 2 processes "
           "| of which: batch size | sharing the machine | one step, two at once (ms) "
           "| sum of a step's gradient, timed apart |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        shm = x.get("shared_memory_sum_ms")  # measured since the ranks of one machine sum in shared memory
        exchange = f"gloo {x['allreduce_ms']:.2f} ms, shared memory {shm:.2f} ms" if shm is not None \
            else f"gloo {x['allreduce_ms']:.2f} ms"
        out.append(f"| {x['method']} | {x['precision']} | {x['rank_batch']} | {x['alone_batch128_images_per_s']:.0f} | "
                   f"{x['alone_rank_batch_images_per_s']:.0f} | {sum(x['two_at_once_images_per_s']):.0f} | "
                   f"**{x['ceiling']:.2f}x** | {x['batch_effect']:.2f} | {x['sharing_effect']:.2f} | "
                   f"{x['step_ms_two_at_once']:.1f} | {_size(4 * x['allreduce_values'])}: {exchange} |")
    return "\n".join(out) + "\n"


def table_collectives(r: dict) -> str:
    """bench/collective_latency.py: one sum over two ranks, gloo against shared memory."""
    out = ["| what is summed | size | gloo all-reduce (ms) | shared-memory sum (ms) | gloo / shared memory |",
           "|---|---|---|---|---|"]
    for x in r["rows"]:
        shm = x.get("shared_memory_ms")
        out.append(f"| {x['what']} | {_size(x['bytes'])} | {x['gloo_ms']:.3f} | "
                   + (f"{shm:.3f} | {x['gloo_ms'] / shm:.1f}x |" if shm else "not available | – |"))
    return "\n".join(out) + "\n"


def table_step_breakdown(r: dict) -> str:
    """bench/step_breakdown.py: a training step part by part, in one process and in each of two
    (rank 0 / rank 1, or the two lone processes); images/s relative to one process at batch 128."""
    out = ["| method | precision | setting | step (ms) | compute and the rest (ms) | sums (ms) | of which waiting "
           "(ms) | optimizer (ms) | images/s | vs 1 process, batch 128 |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        base = 128e3 / x["one_process_batch128"][0]["step_ms"]
        for key, label, _, images_per_step, exchange in STEP_SETTINGS[r.get("batch", "global")]:
            ranks = x[key]

            def each(k, ranks=ranks):
                return " / ".join(f"{q[k]:.1f}" for q in ranks)
            ips = images_per_step * 1e3 / max(q["step_ms"] for q in ranks)  # the slower rank sets the pace
            sums, waiting = (each("sums_ms"), each("waiting_ms")) if len(ranks) > 1 and exchange else ("–", "–")
            out.append(f"| {x['method']} | {x['precision']} | {label} | {each('step_ms')} | {each('compute_ms')} | "
                       f"{sums} | {waiting} | {each('optimizer_ms')} | {ips:.0f} | {ips / base:.2f}x |")
    return "\n".join(out) + "\n"


# markers "PREFIX:FILE": a table of one result file of that kind
def table_busy_threads(r: dict) -> str:
    """bench/busy_threads.py: a NoProp-DT step's time by thread count, idle and beside a busy loop."""
    rows = ["| beside it | threads | OMP_WAIT_POLICY | precision | ms per step |", "|---|---|---|---|---|"]
    for x in r["rows"]:
        rows.append(f"| {x['beside']} | {x['threads']} | {x['omp_wait_policy']} | {x['precision']} | "
                    f"{x['ms_per_step']:.1f} |")
    return "\n".join(rows) + "\n"


PREFIXED = {"profile": table_profile, "bench": table_bench, "ceiling": table_ceiling, "twoproc": table_two_process,
            "sums": table_collectives, "steps": table_step_breakdown, "busy": table_busy_threads}


def _span(values: list[float], digits: int = 0) -> str:
    """Mean, and the range where the runs differ."""
    m, lo, hi = sum(values) / len(values), min(values), max(values)
    return f"{m:.{digits}f}" + (f" ({lo:.{digits}f}–{hi:.{digits}f})" if len(values) > 1 and hi > lo else "")


def table_make_run(results: dict[str, dict], prefix: str = "make-run-") -> str | None:
    """bench/make_run.py: what `make run` (or examples/quickstart.py: prefix "quickstart-") printed
    and where its time went, per CPU class, quiet and beside a one-core CPU hog."""
    files = {k: v for k, v in results.items() if k.startswith(prefix)}
    if not files:
        return None
    rows = ["| CPU class | beside it | runs | test accuracy, rule chosen on validation | paper's rule | "
            "wall time (s) | training (s) | evaluation (s) | steps per block, fewest–most |",
            "|---|---|---|---|---|---|---|---|---|"]
    for _, r in sorted(files.items(), key=lambda kv: (kv[1]["machine"]["cpu_class"], kv[1]["hog"])):
        cls = class_name(r["machine"]["cpu_class"])
        caps = " (held to AVX2 code)" if r["machine"].get("isa_caps") else ""
        runs = r["runs"]
        chosen = sorted({x["rule_chosen_on_val"] for x in runs})
        steps = [n for x in runs for n in x["steps_per_block"]]
        untrained = sum(len(x["untrained_blocks"]) for x in runs)
        rows.append(f"| {cls}{caps} | {'a one-core CPU hog' if r['hog'] else 'nothing'} | {len(runs)} | "
                    f"{_span([x['test_acc_chosen_rule'] for x in runs], 2)} ({', '.join(chosen)}) | "
                    f"{_span([x['test_acc_paper_rule'] for x in runs], 2)} | {_span([x['seconds'] for x in runs])} | "
                    f"{_span([x['train_seconds'] for x in runs])} | {_span([x['evaluation_seconds'] for x in runs])} | "
                    f"{min(steps)}–{max(steps)}" + (f", {untrained} untrained" if untrained else ", none untrained")
                    + " |")
    first = next(iter(sorted(files.items())))[1]
    sources = "; ".join(f"`results/{n}.json` (`{r['command']}`; {machine_line(r)})" for n, r in sorted(files.items()))
    return ("\n".join(rows) + f"\n\nEach row: mean over the runs, their range in brackets; wall time counts "
            f"from the command's start (`{first['what']}`) to its exit, after the install. Sources: {sources}.")


def render(name: str, results: dict[str, dict]) -> str | None:
    """The generated text for a marker: a known table, or the table of one result file of a kind
    ("bench:FILE", "profile:FILE", "ceiling:FILE", "twoproc:FILE", "sums:FILE", "steps:FILE")."""
    if name == "timing":
        return table_timing(results)
    if name in ("make-run", "quickstart"):
        return table_make_run(results, name + "-")
    prefix, _, file = name.partition(":")
    if file and prefix in PREFIXED:
        if file not in results:
            return None
        table = PREFIXED[prefix](notes_for_docs(results[file]))
        return table + "\n" + source_line(file, results[file])
    if name not in TABLES or TABLES[name][0] not in results:
        return None
    file, fn = TABLES[name]
    return fn(results[file]) + "\n\n" + source_line(file, results[file])


MARKER = re.compile(r"(<!-- results:(?P<name>[\w:.-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.S)


def regenerate(text: str, results: dict[str, dict]) -> tuple[str, list[str]]:
    """The text with every marked block regenerated; and the markers whose results are missing."""
    missing = []

    def sub(m):
        body = render(m.group("name"), results)
        if body is None:
            missing.append(m.group("name"))
            return m.group(0)
        return m.group(1) + body.rstrip() + "\n" + m.group(4)
    return MARKER.sub(sub, text), missing


def run(root: Path, check: bool = False, files=None) -> int:
    """Regenerate (or, with check, only compare) the marked blocks of README.md, every docs/*.md and
    bench/profile.md."""
    if files is None:
        files = ["README.md", *(f"docs/{p.name}" for p in sorted((root / "docs").glob("*.md"))), "bench/profile.md"]
    results = load_results(root / "results")
    stale, missing_all = [], []
    for f in files:
        path = root / f
        if not path.exists():
            continue
        text = path.read_text()
        new, missing = regenerate(text, results)
        missing_all += [f"{f}: {m}" for m in missing]
        if new != text:
            stale.append(f)
            if not check:
                atomic_write_text(path, new)
    for m in missing_all:
        print(f"no result file for {m}")
    if check and stale:
        print(f"out of date (run `noprop results`): {', '.join(stale)}")
        return 1
    if not check:
        print(f"regenerated: {', '.join(stale) or 'nothing changed'}")
    return 1 if missing_all and check else 0
