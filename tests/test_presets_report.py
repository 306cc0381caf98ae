import json

import pytest

from noprop.config import Config
from noprop.presets import PAPER_ROW, PRESETS, PresetError, get_preset, list_presets
from noprop.tools.report import PAPER_TABLE1, collect, load_results, table1_markdown

DATASETS = ("mnist", "cifar10", "cifar100")
METHODS = ("dt", "backprop", "adjoint", "ct", "fm")
FIELDS = {"dataset", "method", "batch_size", "epochs", "optimizer", "lr", "weight_decay", "T", "steps", "eta"}


# --- presets -------------------------------------------------------------------------------------

def test_every_dataset_method_preset_exists():
    names = {f"{d}-{m}" for d in DATASETS for m in METHODS}
    assert set(PRESETS) == names and len(PRESETS) == 15
    assert set(PAPER_ROW) == names
    for name, p in PRESETS.items():
        assert set(p) <= FIELDS, name
        d, m = name.split("-")
        assert p["dataset"] == d and p["method"] == m
        assert p["batch_size"] == 128 and p["lr"] == 1e-3 and p["weight_decay"] == 1e-3
        # the table's "Steps": T of the block methods, the inference steps of the others; only the
        # option the method takes is set, so every preset is a valid Config
        assert (p["T"] == 10 and "steps" not in p) if m in ("dt", "backprop") else "T" not in p
        Config(**p).validate()
        assert PAPER_ROW[name].startswith("paper Table 3: ")


def test_presets_match_paper_table():
    p = get_preset("cifar100-ct")
    assert (p["epochs"], p["optimizer"], p["steps"], p["eta"]) == (1000, "adam", 1000, 1.0)
    p = get_preset("mnist-adjoint")
    assert (p["epochs"], p["optimizer"], p["steps"]) == (2, "adamw", 1000) and "eta" not in p
    p = get_preset("cifar10-dt")
    assert (p["epochs"], p["optimizer"], p["T"], p["eta"]) == (150, "adamw", 10, 0.1)
    assert get_preset("cifar10-adjoint")["epochs"] == 4 and get_preset("cifar100-adjoint")["epochs"] == 4
    assert get_preset("mnist-dt")["epochs"] == 100 and get_preset("cifar100-backprop")["epochs"] == 150
    assert get_preset("cifar10-fm")["epochs"] == 500 and get_preset("mnist-fm")["optimizer"] == "adam"
    # "–" in the paper: the key is absent, not None
    for m in ("backprop", "adjoint", "fm"):
        for d in DATASETS:
            assert "eta" not in PRESETS[f"{d}-{m}"]
    assert PAPER_ROW["mnist-dt"] == ("paper Table 3: MNIST, NoProp-DT: batch 128, 100 epochs, AdamW lr 1e-3 "
                                     "wd 1e-3, T=10, eta 0.1")


def test_get_preset_returns_a_copy():
    p = get_preset("mnist-dt")
    p["epochs"] = 1
    assert PRESETS["mnist-dt"]["epochs"] == 100


def test_unknown_preset_lists_valid_names():
    with pytest.raises(KeyError) as ei:
        get_preset("mnist-xx")
    assert isinstance(ei.value, PresetError)
    msg = str(ei.value)
    assert "mnist-xx" in msg and not msg.startswith(('"', "'"))
    for name in PRESETS:
        assert name in msg


def test_list_presets_table():
    text = list_presets()
    lines = text.splitlines()
    assert lines[0].split() == ["name", "dataset", "method", "batch", "epochs", "optimizer", "lr", "wd",
                                "steps", "eta"]
    assert len(lines) == 2 + 15
    row = next(line for line in lines if line.startswith("cifar100-ct "))
    assert row.split() == ["cifar100-ct", "cifar100", "ct", "128", "1000", "adam", "1e-3", "1e-3", "1000", "1"]
    row = next(line for line in lines if line.startswith("mnist-fm "))
    assert row.split()[-1] == "–"


# --- paper Table 1 -------------------------------------------------------------------------------

def test_paper_table1_values():
    assert PAPER_TABLE1[("dt", "one-hot", "mnist")]["test"] == (99.47, 0.05)
    assert PAPER_TABLE1[("fm", "one-hot", "cifar100")]["test"] == (6.38, 4.9)
    assert PAPER_TABLE1[("adjoint", "one-hot", "cifar10")]["train"] == (70.64, 0.49)
    assert PAPER_TABLE1[("backprop", "one-hot", "mnist")]["train"] == (100.0, 0.0)
    assert PAPER_TABLE1[("dt", "prototype", "cifar10")]["test"] == (80.54, 0.2)
    assert PAPER_TABLE1[("ct", "prototype", "cifar100")]["train"] == (40.88, 10.72)
    assert PAPER_TABLE1[("fm", "learned", "cifar100")]["test"] == (31.14, 0.52)
    assert PAPER_TABLE1[("backprop", "prototype", "cifar100")]["test"] == (47.8, 0.19)


def test_paper_table1_shape():
    rows = {(m, e) for m, e, _ in PAPER_TABLE1}
    assert len(rows) == 13 and len(PAPER_TABLE1) == 39
    assert {e for m, e in rows if m == "adjoint"} == {"one-hot"}
    for m in ("backprop", "dt", "ct", "fm"):
        assert {e for mm, e in rows if mm == m} == {"one-hot", "learned", "prototype"}
    for v in PAPER_TABLE1.values():
        assert set(v) == {"train", "test"}


# --- collect / markdown --------------------------------------------------------------------------

def _res(seed, test, train=None, epochs=3, method="dt", embedding="one-hot", dataset="mnist"):
    r = {"method": method, "embedding": embedding, "dataset": dataset, "seed": seed,
         "test_acc_runs": test, "epochs": epochs}
    if train is not None:
        r["train_acc_runs"] = train
    return r


def test_collect_averages_each_seed_then_takes_the_spread_across_seeds():
    results = [_res(0, [90.0, 92.0]), _res(1, [94.0, 96.0]), _res(0, [50.0], dataset="cifar10", epochs=1)]
    c = collect(results)
    e = c[("dt", "one-hot", "mnist")]
    # seed means 91 and 95: mean 93, s.e. across seeds = sd(91, 95) / sqrt(2) = 2; pooling the four
    # values as if independent would have given sqrt(20/3/4) = 1.29, understating it
    assert e["test"]["mean"] == pytest.approx(93.0)
    assert e["test"]["se"] == pytest.approx(2.0)
    assert e["test"]["seed_means"] == [91.0, 95.0]
    # the inference-run spread, apart: each seed's runs have s.e. 1
    assert e["test"]["runs_se"] == pytest.approx(1.0)
    assert (e["n_seeds"], e["n_runs"], e["epochs"]) == (2, 4, [3, 3])
    assert "train" not in e
    e = c[("dt", "one-hot", "cifar10")]
    assert e["test"]["mean"] == 50.0 and e["test"]["se"] is None and (e["n_seeds"], e["n_runs"]) == (1, 1)


def test_collect_train_runs():
    c = collect([_res(0, [80.0], train=[99.0, 97.0]), _res(1, [81.0], train=[95.0])])
    train = c[("dt", "one-hot", "mnist")]["train"]
    assert train["mean"] == pytest.approx(96.5) and train["se"] == pytest.approx(1.5)


def test_table1_markdown_paper_beside_ours_and_only_our_rows():
    c = collect([_res(0, [99.0, 99.2]), _res(1, [99.4, 99.6]),
                 _res(0, [97.0], method="ct", embedding="learned")])
    md = table1_markdown(c)
    lines = md.splitlines()
    assert "MNIST ours test" in lines[0] and "MNIST paper test" in lines[0]
    assert "CIFAR-10" not in lines[0] and "train" not in lines[0]
    assert lines[0].rstrip(" |").endswith("seeds × runs, epochs")
    assert len(lines) == 2 + 2
    dt = next(line for line in lines if line.startswith("| NoProp-DT (one-hot)"))
    # seed means 99.1 and 99.5: 99.30 ± 0.20 across seeds
    assert "99.30 ± 0.20" in dt and "99.47 ± 0.05" in dt and "2 × 2, 3 ep" in dt
    ct = next(line for line in lines if line.startswith("| NoProp-CT (dim=20)"))
    assert "97.00 (1 seed; runs ± 0.00)" in ct and "97.70 ± 0.51" in ct
    assert lines.index(dt) < lines.index(ct)  # the paper's row order
    assert "Backprop" not in md and "Adjoint" not in md and "NoProp-FM" not in md


def test_table1_markdown_train_columns_and_missing():
    c = collect([_res(0, [45.0], train=[85.0], dataset="cifar100"),
                 _res(0, [99.0], method="backprop", dataset="mnist")])
    md = table1_markdown(c)
    header = md.splitlines()[0]
    assert "CIFAR-100 ours train" in header and "CIFAR-100 paper train" in header
    assert "MNIST ours train" not in header
    bp = next(line for line in md.splitlines() if line.startswith("| Backprop (one-hot)"))
    assert bp.count("–") == 2  # no CIFAR-100 run of ours for backprop: ours train and test missing
    assert "98.63 ± 1.34" in bp and "45.85 ± 2.07" in bp and "99.46 ± 0.06" in bp
    dt = next(line for line in md.splitlines() if line.startswith("| NoProp-DT (one-hot)"))
    assert "85.00 (1 seed; runs ± 0.00)" in dt and "84.97 ± 0.67" in dt


# --- load_results --------------------------------------------------------------------------------

def _run_folder(root, name, cfg, result=None):
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    if result is not None:
        (d / "result.json").write_text(json.dumps(result))
    return d


def test_load_results_reads_folders_and_reports_skipped(tmp_path):
    cfg = {"method": "dt", "embedding": "prototype", "dataset": "mnist", "seed": 0, "lr": 1e-3}
    a = _run_folder(tmp_path, "a", cfg, {"test_acc_runs": [99.5, 99.6], "epochs": 100})
    b = _run_folder(tmp_path, "b", {**cfg, "seed": 1},
                    {"test_acc_runs": [99.4], "epochs": 100, "train_acc_runs": [99.9]})
    unfinished = _run_folder(tmp_path, "c", cfg)
    broken = _run_folder(tmp_path, "d", cfg)
    (broken / "result.json").write_text("{not json")
    results, skipped = load_results([a, str(b), unfinished, broken])
    assert len(results) == 2
    assert results[0]["test_acc_runs"] == [99.5, 99.6] and results[0]["seed"] == 0
    assert results[0]["epochs"] == 100 and "train_acc_runs" not in results[0]
    assert results[1]["train_acc_runs"] == [99.9] and results[1]["seed"] == 1
    assert len(skipped) == 2
    assert skipped[0].startswith(f"{unfinished}: ") and "result.json" in skipped[0]
    assert skipped[1].startswith(f"{broken}: ")
    c = collect(results)
    e = c[("dt", "prototype", "mnist")]
    assert (e["n_seeds"], e["n_runs"], e["epochs"]) == (2, 3, [100, 100])
    assert e["test"]["mean"] == pytest.approx((99.55 + 99.4) / 2)
    assert "99.54 ± 0.04" in table1_markdown(c)


def test_every_table_of_the_readme_and_docs_is_generated_from_committed_results():
    """`noprop results --check`: every marked table in README.md, docs/ and bench/profile.md has its
    result file under results/ and equals what the file gives (no typed or stale number survives)."""
    from pathlib import Path

    from noprop.tools.results import run
    assert run(Path(__file__).resolve().parent.parent, check=True) == 0


def test_results_tables_from_a_small_study(tmp_path):
    """The generator on a study of two variants x two seeds: seed-level mean ± s.e., the rule
    differences per seed, and a marker regenerated in place."""
    from noprop.tools.results import regenerate
    runs = lambda base: {"stochastic": {"runs": [base, base + 2]}, "no-noise": {"runs": [base + 3, base + 3]},  # noqa: E731
                         "ensemble-10": {"runs": [base + 1]}}
    cells = [{"label": lab, "seed": s, "result": {"test": runs(90.0 + s + off), "best_val_acc": 80.0},
              "history": [{"epoch": 1, "val_acc": 85.0 + s, "train_seconds": 30.0, "ce": 0.5}]}
             for lab, off in (("A", 0.0), ("B", 4.0)) for s in (0, 1)]
    study = {"command": "python bench/study.py x", "git_commit": "abc", "noprop_version": "0.2.0", "torch": "2",
             "threads": 1, "common": {"minutes": 1.0}, "cells": cells,
             "machine": {"cpu": "cpu", "cpu_class": "avx2", "threads": 1, "torch": "2"}}
    text = "before\n<!-- results:rules -->\nold\n<!-- /results:rules -->\nafter\n"
    new, missing = regenerate(text, {"mnist-equal-budget": study})
    assert missing == [] and new.startswith("before\n") and new.endswith("after\n") and "old" not in new
    # A: seed means 91 (s0) and 92 (s1); no-noise 93, 94: +2.00 ± 0.00 over the paper's rule; ensemble +0
    assert "| A | 2.00 ± 0.00 | 0.00 ± 0.00 | no noise |" in new
    assert "`results/mnist-equal-budget.json`" in new and "CPU class **AVX2/FMA**" in new


def test_val_test_gap_leaves_out_runs_stopped_inside_their_first_epoch():
    """A run whose budget ended inside its first epoch has untrained blocks (chance on both splits):
    it is named as left out, and the mean gap is over the trained runs only."""
    from noprop.tools.results import table_val_test_gap
    cell = lambda lab, s, val, test, frac: {  # noqa: E731
        "label": lab, "seed": s, "history": [{"val_acc": val}],
        "result": {"epochs_fraction": frac, "test": {"stochastic": {"mean": test}}}}
    study = {"cells": [cell("NoProp-DT (a)", 0, 97.0, 98.0, 1.7), cell("NoProp-DT (a)", 1, 97.0, 97.5, 1.6),
                       cell("NoProp-DT (b)", 0, 12.0, 9.0, 0.9), cell("Backprop", 0, 90.0, 99.0, 2.0)]}
    out = table_val_test_gap(study)
    assert "| NoProp-DT (a) | 0 | 97.00 | 98.00 | +1.00 |" in out
    assert "NoProp-DT (b) | 0" not in out and "Backprop" not in out
    assert "over these 2 runs: 0.75 ± 0.25 points" in out and "Left out" in out and "NoProp-DT (b) seed 0" in out


def test_recipe_table_chooses_on_seed_zero_validation_and_counts_seeds():
    """dt-recipe: both recipes on seed 0, the better final validation accuracy chosen (even where its
    test accuracy is worse), and only the chosen one on seeds 1 and 2; test columns are seed means."""
    from noprop.tools.results import table_recipe
    runs = lambda acc: {"stochastic": {"runs": [acc, acc]}, "no-noise": {"runs": [acc + 1, acc + 1]},  # noqa: E731
                        "ensemble-10": {"runs": [acc + 0.5]}}
    cell = lambda lab, s, val, acc: {  # noqa: E731
        "label": lab, "seed": s, "history": [{"epoch": 20, "val_acc": val}],
        "result": {"test": runs(acc), "train": {"stochastic": {"runs": [99.0]}}}}
    study = {"common": {"epochs": 20}, "cells": [
        cell("lr 1e-3", 0, 98.0, 99.4), cell("lr 2e-3", 0, 98.5, 99.0),
        cell("lr 2e-3", 1, 98.4, 99.2), cell("lr 2e-3", 2, 98.6, 99.4)]}
    out = table_recipe(study)
    assert "| lr 1e-3 | 98.00 | 1 | 99.40 |" in out
    assert "| lr 2e-3 | 98.50 | 3 | 99.20 ± 0.12 | 100.20 ± 0.12 | 99.70 ± 0.12 | 99.00 ± 0.00 |" in out
    assert "Chosen on seed 0's validation accuracy: **lr 2e-3**" in out
