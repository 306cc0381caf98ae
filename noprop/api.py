"""The Python API: what ``import noprop`` offers a notebook or a script.

    import noprop
    cfg = noprop.Config(method="dt", epochs=1, train_subset=3200)
    run = noprop.train(cfg)                       # in memory; out_dir="runs/x" writes a run folder
    print(run.history[-1]["val_acc"])
    print(noprop.evaluate(run.model, "test", runs=5))   # mean +- s.e. over inference runs
    model = noprop.load("runs/x/last.safetensors")       # a model ready for predict
    labels = model.predict(images)                       # images normalised as the loaders do
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from . import models
from .config import Config
from .data import Dataset, Split, load_data
from .evaluation import mean_se, predict_proba, rules_accuracy
from .method import Method
from .runner import run


@dataclass
class TrainedRun:
    """What train() returns: the trained model, its per-epoch history, the final evaluation (the
    content of result.json) and the data it used."""
    model: Method
    history: list[dict]
    result: dict
    data: Dataset = field(repr=False)


def train(config: Config | dict | None = None, out_dir: str | os.PathLike | None = None, *, data: Dataset | None = None,
          resume: bool = False, eval_runs: int = 5, ensemble: int = 0, log=print, quiet: bool = True,
          **overrides) -> TrainedRun:
    """Train a model and evaluate it on the test set.

    config: a Config, a dict of its fields, or None (the defaults); keyword overrides replace fields
    (``noprop.train(method="fm", epochs=2)``). out_dir None trains in memory (nothing is written);
    otherwise it is a run folder as the CLI writes it. data: a Dataset to use instead of loading
    config.dataset (it must match the config's dataset)."""
    cfg = _config(config, overrides)
    data = data if data is not None else load_data(cfg)
    trainer, result = run(cfg, data, out_dir, eval_runs=eval_runs, resume=resume, quiet=quiet, log=log,
                          ensemble=ensemble)
    trainer.model.eval()
    return TrainedRun(trainer.model, trainer.history, result, data)


def load(path: str | os.PathLike, device: str = "cpu") -> Method:
    """A trained model from a checkpoint (last.safetensors / best.safetensors), in eval mode;
    ``model.config`` is its run's Config."""
    return models.load(path, device)


def evaluate(model: Method, split: str | Split = "test", runs: int = 5, *, noise: bool = True, ensemble: int = 1,
             data: Dataset | None = None, seed: int = 0, steps: int | None = None, solver: str | None = None) -> dict:
    """Accuracy (%) of a model over `runs` inference runs: {"mean", "se", "runs", "rule"}.

    split: "test", "val" or "train" (loaded as the model's config says, validation split included),
    or a Split. noise=False: the noise-free chain; ensemble=K: K chains per image, probabilities
    averaged."""
    if isinstance(split, str):
        if split not in ("test", "val", "train"):
            raise ValueError(f"split must be 'test', 'val', 'train' or a Split, got {split!r}")
        split = getattr(data if data is not None else load_data(model.config), split)
    rule = "ensemble" if ensemble > 1 else ("stochastic" if noise else "no-noise")
    res = rules_accuracy(model, split, runs, ensemble, seed, (rule,), steps=steps, solver=solver)
    (name, r), = res.items()
    return {**r, "rule": name}


def predict(model: Method, images: torch.Tensor, *, noise: bool = True, ensemble: int = 1,
            seed: int = 0) -> torch.Tensor:
    """Predicted labels for a batch of images normalised as the dataset loaders do."""
    return predict_proba(model, images, noise, seed, ensemble=ensemble).argmax(-1)


def _config(config, overrides: dict) -> Config:
    if config is None:
        config = Config()
    if isinstance(config, dict):
        config = Config(**config)
    if not isinstance(config, Config):
        raise TypeError(f"config must be a noprop.Config, a dict or None, got {type(config).__name__}")
    if overrides:
        config = Config(**{**config.to_dict(), **overrides})
    return config.validate()


__all__ = ["train", "load", "evaluate", "predict", "TrainedRun", "mean_se"]
