"""Honest evaluation: inference sees only images; every number is a mean over inference runs.

Protocol (paper, Table 1): accuracy is averaged over seeds x inference runs and reported as
mean +- standard error. An inference run differs from another only in its noise (z_0 and the
per-step eps), drawn from a generator seeded by the run index.

Three inference rules, all reported side by side by ``rules_accuracy``:
- ``stochastic``: the paper's rule (Eq. 3 with its sqrt(c_t) eps; the ODE from a random z_0 for FM);
- ``no-noise``: the same chain without the eps term (deterministic given z_0);
- ``ensemble-K``: K stochastic chains per image, the class probabilities softmax(classify(z)) averaged.

The final evaluation of a trained run (``final_evaluation``, which runner.run calls after training)
scores every rule on the test split and chooses the rule to trust on the validation split.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from . import device
from .data import Dataset, Split, subset
from .method import Method


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample std / sqrt(n); 0 for a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    m = sum(values) / n
    if n == 1:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (n - 1)
    return m, math.sqrt(var / n)


def format_mean_se(v, digits: int = 2, sign: str = "±") -> str:
    """A mean and its standard error as the tables and the CLI print them. v: (mean, se), or a dict
    with "mean" and "se" (seed_stats', rules_accuracy's); None prints "–", an s.e. of None (one
    seed says nothing of the spread between seeds) the mean alone. sign: "+-" on terminal lines."""
    if v is None:
        return "–"
    mean, se = (v["mean"], v["se"]) if isinstance(v, dict) else v
    return f"{mean:.{digits}f}" if se is None else f"{mean:.{digits}f} {sign} {se:.{digits}f}"


def default_autocast(model: Method) -> torch.dtype | None:
    """Inference in the precision the run trained in (bf16 autocast where it trained so)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    dev = next(model.parameters()).device
    return device.eval_dtype(device.resolve_precision(cfg.precision, dev))


def batches_of_images(x: torch.Tensor, batch_size: int, channels_last: bool, dev):
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev)
        yield xb.contiguous(memory_format=torch.channels_last) if channels_last else xb


@dataclass(frozen=True)
class Run:
    """One inference run: with or without the chain's noise, its seed, and K chains per image."""
    noise: bool = True
    seed: int = 0
    ensemble: int = 1


@torch.no_grad()
def predict_proba_runs(model: Method, images: torch.Tensor | Split, runs: list[Run], batch_size: int | None = None,
                       channels_last: bool | None = None, autocast_dtype="auto", steps: int | None = None,
                       solver: str | None = None, progress: str | None = None) -> list[torch.Tensor]:
    """Class probabilities for every image under each run (averaged over a run's K chains). Takes
    images only: labels never enter.

    Each run draws its noise from a generator of its own, seeded by the run's seed and consumed batch
    after batch, so a run's numbers do not depend on which other runs are computed beside it. The
    images' features (model.image_features: the convolutions, which see no noise) are computed once
    per batch and shared by all the runs: 5 stochastic + 5 no-noise runs of NoProp-DT cost about
    one conv pass per block instead of ten. progress: a progress bar over the images with this
    description (None: none)."""
    if any(r.ensemble < 1 for r in runs):
        raise ValueError(f"ensemble must be >= 1, got {min(r.ensemble for r in runs)}")
    x = images.x if isinstance(images, Split) else images
    cfg = getattr(model, "config", None)
    batch_size = batch_size or (cfg.eval_batch_size if cfg else 1000)
    channels_last = (cfg.channels_last if cfg else False) if channels_last is None else channels_last
    dtype = default_autocast(model) if autocast_dtype == "auto" else autocast_dtype
    model.eval()
    dev = next(model.parameters()).device
    gens = [torch.Generator().manual_seed(r.seed) for r in runs]  # on the CPU: the same noise on every device
    out: list[list[torch.Tensor]] = [[] for _ in runs]
    bar = tqdm(total=len(x), desc=progress, unit="img", leave=False, disable=progress is None or None)
    for xb in batches_of_images(x, batch_size, channels_last, dev):
        with torch.autocast(dev.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            feats = model.image_features(xb)
            shared = {} if feats is None else {"features": feats}
            for run, gen, probs in zip(runs, gens, out):
                total = 0
                for _ in range(run.ensemble):
                    logits = model.predict_logits(xb, noise=run.noise, generator=gen, steps=steps, solver=solver,
                                                  **shared)
                    total = total + logits.float().softmax(-1)
                probs.append((total / run.ensemble).cpu())
        bar.update(len(xb))
    bar.close()
    return [torch.cat(p) for p in out]


def predict_proba(model: Method, images: torch.Tensor | Split, noise: bool = True, seed: int = 0,
                  ensemble: int = 1, **kw) -> torch.Tensor:
    """Class probabilities for every image, averaged over `ensemble` chains per image (one run; see
    predict_proba_runs for the options). Takes images only: labels never enter."""
    return predict_proba_runs(model, images, [Run(noise, seed, ensemble)], **kw)[0]


def predict(model: Method, images: torch.Tensor | Split, noise: bool = True, seed: int = 0, **kw) -> torch.Tensor:
    """Predicted labels (see predict_proba for the options). With ensemble=1 this is the argmax of
    one chain's scores: the method's own predict()."""
    return predict_proba(model, images, noise, seed, **kw).argmax(-1)


def _accuracy(probs: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * (probs.argmax(-1) == y).float().mean().item()


def accuracy_runs(model: Method, split: Split, runs: int = 5, noise: bool = True, seed: int = 0,
                  ensemble: int = 1, **kw) -> list[float]:
    """Accuracy (%) of each of `runs` inference runs (seeds seed, seed+1, ...)."""
    probs = predict_proba_runs(model, split, [Run(noise, seed + r, ensemble) for r in range(runs)], **kw)
    return [_accuracy(p, split.y) for p in probs]


RULES = ("stochastic", "no-noise", "ensemble")


def rules_accuracy(model: Method, split: Split, runs: int = 5, ensemble: int = 10, seed: int = 0,
                   rules=RULES, ensemble_runs: int | None = None, **kw) -> dict[str, dict]:
    """Every inference rule on one split: {rule: {"runs": [...], "mean": m, "se": s}}; the
    ensemble rule's key names its K (e.g. "ensemble-10") and it makes `ensemble_runs` runs (default:
    `runs`). Run r of every rule has seed seed + r. Methods without noise (cnn) give the same number
    under every rule. All rules' runs go through the split together (predict_proba_runs), sharing
    each batch's image features."""
    keys = {rule: f"ensemble-{ensemble}" if rule == "ensemble" else rule for rule in rules}
    n_runs = {rule: ensemble_runs if rule == "ensemble" and ensemble_runs is not None else runs for rule in rules}
    plan = [(keys[rule], Run(rule != "no-noise", seed + r, ensemble if rule == "ensemble" else 1))
            for rule in rules for r in range(n_runs[rule])]
    probs = predict_proba_runs(model, split, [run for _, run in plan], **kw)
    out = {}
    for key in keys.values():
        accs = [_accuracy(p, split.y) for (k, _), p in zip(plan, probs) if k == key]
        m, se = mean_se(accs)
        out[key] = {"runs": accs, "mean": m, "se": se}
    return out


def final_evaluation(model, data: Dataset, runs: int = 5, ensemble: int = 0, train_images: int = 0,
                     seed: int = 0, ensemble_runs: int = 1, val_rules: dict | None = None,
                     progress: bool = False) -> dict:
    """Test accuracy of a trained model under every inference rule: the paper's stochastic rule and
    no-noise over `runs` inference runs each, and with ensemble = K > 0 the K-chain ensemble over
    `ensemble_runs` runs (each of K chains). With train_images > 0 also the training accuracy (paper's
    rule, one run) on that many training images (a fixed subset; Table 1's train column).

    The same rules are also scored on the validation split (one run each; val_rules: those the last
    epoch's validation scored already), and the best of them there is named "rule_chosen_on_val":
    which rule to trust for this model is chosen without the test set."""
    rules = ("stochastic", "no-noise", "ensemble") if ensemble else ("stochastic", "no-noise")
    bar = {"progress": "evaluating: test"} if progress else {}
    # one pass over each split for all its rules: each batch's image features are computed once
    out = {"test": rules_accuracy(model, data.test, runs, ensemble, seed, rules, ensemble_runs=ensemble_runs, **bar)}
    if len(data.val):
        val = dict(val_rules or {})
        missing = tuple(r for r in rules if (f"ensemble-{ensemble}" if r == "ensemble" else r) not in val)
        if missing:
            bar = {"progress": "evaluating: validation"} if progress else {}
            val.update(rules_accuracy(model, data.val, 1, ensemble, seed, missing, ensemble_runs=1, **bar))
        out["val"] = {k: val[k] for k in out["test"]}  # in the test's order: ties go to the paper's rule
        out["rule_chosen_on_val"] = max(out["val"], key=lambda r: out["val"][r]["mean"])
    if train_images:  # one inference run: the spread that matters here is the seeds'
        out["train"] = rules_accuracy(model, subset(data.train, train_images, 0), 1, 1, seed, ("stochastic",))
        out["train_images"] = min(train_images, len(data.train))
    return out


def evaluation_estimate(model, data: Dataset, runs: int, ensemble: int, ensemble_runs: int) -> float:
    """Seconds the final evaluation will take, from timing its plan on the first 100 test images."""
    rules = ("stochastic", "no-noise", "ensemble") if ensemble else ("stochastic", "no-noise")
    n = min(100, len(data.test))
    if n == 0:
        return 0.0
    t = time.perf_counter()
    rules_accuracy(model, subset(data.test, n, 0), runs, ensemble, 0, rules, ensemble_runs=ensemble_runs)
    return (time.perf_counter() - t) * len(data.test) / n


def evaluation_warning(guess: float, train_s: float, runs: int, ensemble: int, images: int) -> str | None:
    """What to say before a final evaluation that will outlast the training (and a minute)."""
    if guess <= max(60.0, train_s):
        return None
    plan = f"{runs} run(s) of each rule" + (f" and the {ensemble}-chain ensemble" if ensemble else "")
    return (f"the final evaluation ({plan} on {images:,} test images) will take about {guess / 60:.1f} min, longer "
            f"than the training ({train_s / 60:.1f} min); --eval-runs, --ensemble and the method's --steps "
            "set its cost")
