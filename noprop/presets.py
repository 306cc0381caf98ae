"""Named presets: every row of the paper's hyperparameter table (Table 3 in v1 = Table 4 in v2),
one per dataset x method, named f"{dataset}-{method}" (e.g. "mnist-dt", "cifar10-ct").

A preset is a plain dict of noprop.config.Config fields and options of its method (T for dt and
backprop, steps for the others). The paper writes "–" for eta where a method has none (backprop,
adjoint, fm); such presets leave "eta" out entirely rather than inventing a value."""

from __future__ import annotations

from .errors import PresetError
from .methods import get_method

DATASETS = ("mnist", "cifar10", "cifar100")
METHODS = ("dt", "backprop", "adjoint", "ct", "fm")

_DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}

# Epochs per (dataset, table row). The table has three rows per dataset: Backprop / DT share
# one, Adjoint has its own, and CT / FM share one.
_EPOCHS = {
    "mnist":    {"dt": 100, "adjoint": 2, "ct": 100},
    "cifar10":  {"dt": 150, "adjoint": 4, "ct": 500},
    "cifar100": {"dt": 150, "adjoint": 4, "ct": 1000},
}
_ROW = {"dt": "dt", "backprop": "dt", "adjoint": "adjoint", "ct": "ct", "fm": "ct"}
# CT / FM are the only rows the paper trains with Adam (not AdamW).
_OPTIMIZER = {"dt": "adamw", "adjoint": "adamw", "ct": "adam"}
# "Steps": T for DT / backprop (10 blocks); inference / integration steps for CT, FM, adjoint.
_STEPS = {"dt": 10, "adjoint": 1000, "ct": 1000}
# eta only where the paper gives a number; "–" means the key is absent.
_ETA = {"dt": 0.1, "ct": 1.0}


def _make(dataset: str, method: str) -> dict:
    row = _ROW[method]
    p = {
        "dataset": dataset,
        "method": method,
        "batch_size": 128,
        "epochs": _EPOCHS[dataset][row],
        "optimizer": _OPTIMIZER[row],
        "lr": 1e-3,
        "weight_decay": 1e-3,
    }
    # "Steps": the number of blocks T of dt / backprop, the inference steps of ct / fm / adjoint
    p["T" if row == "dt" else "steps"] = _STEPS[row]
    if method in _ETA:
        p["eta"] = _ETA[method]
    return p


def _num(x: float) -> str:
    """1e-3 rather than 0.001, as the paper writes it; small round numbers stay plain (0.1, 1)."""
    mant, exp = f"{x:e}".split("e")
    if x and abs(int(exp)) >= 3:
        return f"{mant.rstrip('0').rstrip('.')}e{int(exp)}"
    return f"{x:g}"


def _describe(p: dict) -> str:
    opt = {"adamw": "AdamW", "adam": "Adam"}[p["optimizer"]]
    s = (f"paper Table 3: {_DATASET_NAMES[p['dataset']]}, {get_method(p['method']).display_name}: "
         f"batch {p['batch_size']}, {p['epochs']} epochs, {opt} lr {_num(p['lr'])} wd {_num(p['weight_decay'])}")
    s += f", T={p['T']}" if p["method"] in ("dt", "backprop") else f", {p['steps']} steps"
    if "eta" in p:
        s += f", eta {p['eta']:g}"
    return s


PRESETS: dict[str, dict] = {f"{d}-{m}": _make(d, m) for d in DATASETS for m in METHODS}
PAPER_ROW: dict[str, str] = {name: _describe(p) for name, p in PRESETS.items()}


def get_preset(name: str) -> dict:
    """A copy of the preset (callers may change it without altering PRESETS)."""
    if name not in PRESETS:
        raise PresetError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def list_presets() -> str:
    """A plain-text table of every preset, for `noprop presets`."""
    header = ("name", "dataset", "method", "batch", "epochs", "optimizer", "lr", "wd", "steps", "eta")
    rows = [header]
    for name, p in PRESETS.items():
        eta = f"{p['eta']:g}" if "eta" in p else "–"
        rows.append((name, p["dataset"], p["method"], str(p["batch_size"]), str(p["epochs"]),
                     p["optimizer"], _num(p["lr"]), _num(p["weight_decay"]), str(p.get("T", p.get("steps"))), eta))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
