"""One typed structure holds a run's whole configuration; it is saved beside every run
(config.json) so that the run can be repeated exactly."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .data import DATASETS, is_npz
from .device import valid_name as valid_device
from .embedding import KINDS as EMBEDDINGS
from .errors import ConfigError
from .method import load_plugin
from .methods import get_method

OPTIMIZERS = ("adamw", "adam", "sgd")
ORDERS = ("paper", "all", "random")
PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "cosine")
BATCHNORM_STATS = ("global", "local")  # data-parallel BatchNorm: the global batch's, or each shard's


@dataclass
class Config:
    dataset: str = "mnist"
    method: str = "dt"              # a registered method: dt | ct | fm | backprop | adjoint | cnn | yours
    embedding: str = "one-hot"      # one-hot | learned | prototype
    embed_dim: int | None = None    # learned: 20 by default; prototype: C*H*W (fixed)
    head: str = "linear"            # linear (Eq. 14) | posterior (Eq. 15-16)
    posterior_sigma: float = 1.0    # sigma of the posterior head: not given in the paper
    head_init: str | None = None    # DT: bayes (default) | random;  backprop: decoder (default) | random
    logit_scale: float | None = None  # backprop: the learnable logit scale's start (default 10)
    T: int = 10
    eta: float | None = None        # None: the method's own default (the paper's: DT 0.1, CT 1)
    schedule_eps: float = 0.01      # cosine schedule squeezed into [eps, 1-eps]: see schedule.py
    steps: int = 1000               # inference steps of CT / FM / adjoint (paper: 1000); DT uses T
    solver: str | None = None       # None: the method's first solver (ct: stochastic | euler | heun;
                                    # fm: euler | heun; adjoint: euler)
    fm_sigma: float = 0.0           # sigma of the FM path: not given in the paper
    epochs: int = 100
    optimizer: str | None = None    # adamw | adam | sgd (momentum 0.9; not in the paper); None: the
                                    # method's default, Table 3's (AdamW for DT, backprop, adjoint;
                                    # Adam for CT, FM)
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"   # constant (the paper) | cosine: lr * (1 + cos(pi * progress)) / 2,
                                    # progress = fraction of cfg.epochs done, for short fixed budgets
    weight_decay: float = 1e-3
    order: str = "paper"            # paper: block by block each epoch | all: every block each batch
                                    # | random: one random block each batch
    seed: int = 0
    val_size: int = 5000
    train_subset: int | None = None  # train on a seeded subset of this many images (quick runs)
    val_subset: int | None = None
    test_subset: int | None = None  # smoke runs only: evaluate on a seeded subset of the test set
    precision: str = "auto"         # auto | fp32 | bf16 (autocast). auto: bf16 where the device does
                                    # bf16 natively (AVX-512 BF16 / AMX CPUs, CUDA GPUs that support
                                    # it), else fp32; see device.resolve_precision
    device: str = "auto"            # auto | cpu | cuda | cuda:N (see device.py); not part of a run's
                                    # identity: a run may resume on another device
    channels_last: bool = True      # same maths, faster convolutions on CPU
    augment: bool = False           # random crop (pad 4) + horizontal flip; the paper used none
    eval_batch_size: int = 1000
    test_curve: bool = False        # also record test accuracy each epoch, for plots (never for selection)
    minutes: float | None = None    # training time budget (then save and evaluate as usual); paper
                                    # order divides it among the epoch's block passes (trainer.py)
    deterministic: bool = False     # deterministic kernels, and data-parallel noise drawn for the whole
                                    # global batch, so results do not depend on the worker count
    block_groups: int | None = None  # parallel runs: G block groups x (workers / G) data shards;
                                    # None: chosen by parallel.choose_groups
    batchnorm_stats: str = "global"  # data-parallel runs: BatchNorm over the global batch (global:
                                    # the update of one process) or each shard's share (local: faster)
    plugins: list = field(default_factory=list)  # modules / .py files that register methods (--plugin)
    extra: dict = field(default_factory=dict)

    def validate(self) -> Config:
        """Check every field and fill the method-dependent defaults (eta, optimizer, solver)."""
        def need(cond: bool, option: str, msg: str):
            if not cond:
                raise ConfigError(f"--{option.replace('_', '-')}: {msg}")

        for spec in self.plugins:
            load_plugin(spec)
        need(self.dataset in DATASETS or is_npz(self.dataset), "dataset", f"unknown dataset "
             f"{self.dataset!r}; choose one of {', '.join(DATASETS)} or a path to a .npz file")
        method = get_method(self.method)
        for name, value in {"optimizer": "adamw", **method.defaults}.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        need(self.optimizer in OPTIMIZERS, "optimizer", f"unknown optimizer {self.optimizer!r}; choose "
             f"one of {', '.join(OPTIMIZERS)}")
        need(isinstance(self.steps, int) and self.steps >= 1, "steps", f"must be an integer >= 1, got {self.steps}")
        if self.solver is None and method.solvers:
            self.solver = method.solvers[0]
        need(self.solver is None or self.solver in method.solvers, "solver",
             f"{self.solver!r} does not apply to method {self.method}" + (
                 f"; choose one of {', '.join(method.solvers)}" if method.solvers else " (it has no solver)"))
        need(self.fm_sigma >= 0, "fm_sigma", f"must be >= 0, got {self.fm_sigma}")
        need(self.embedding in EMBEDDINGS, "embedding", f"unknown embedding {self.embedding!r}; "
             f"choose one of {', '.join(EMBEDDINGS)}")
        need(self.order in ORDERS, "order", f"unknown order {self.order!r}; choose one of {', '.join(ORDERS)}")
        need(valid_device(self.device), "device", f"unknown device {self.device!r}; choose auto, cpu, cuda "
             "or cuda:N")
        need(self.precision in PRECISIONS, "precision", f"unknown precision {self.precision!r}; choose "
             f"one of {', '.join(PRECISIONS)}")
        need(isinstance(self.T, int) and self.T >= 1, "T", f"must be an integer >= 1, got {self.T}")
        need(self.eta is None or self.eta > 0, "eta", f"must be > 0, got {self.eta}")
        need(0 < self.schedule_eps < 0.5, "schedule_eps", f"must be in (0, 0.5), got {self.schedule_eps}")
        need(self.epochs >= 0, "epochs", f"must be >= 0, got {self.epochs}")
        need(self.batch_size >= 2, "batch_size", f"must be >= 2 (BatchNorm needs two examples), got "
             f"{self.batch_size}")
        need(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        need(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"unknown schedule {self.lr_schedule!r}; "
             f"choose one of {', '.join(LR_SCHEDULES)}")
        need(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        need(self.val_size >= 0, "val_size", f"must be >= 0, got {self.val_size}")
        need(self.posterior_sigma > 0, "posterior_sigma", f"must be > 0, got {self.posterior_sigma}")
        need(self.embed_dim is None or self.embed_dim >= 1, "embed_dim", f"must be >= 1, got {self.embed_dim}")
        need(self.train_subset is None or self.train_subset >= 1, "train_subset",
             f"must be >= 1, got {self.train_subset}")
        need(self.eval_batch_size >= 1, "eval_batch_size", f"must be >= 1, got {self.eval_batch_size}")
        need(self.minutes is None or self.minutes > 0, "minutes", f"must be > 0, got {self.minutes}")
        need(self.block_groups is None or self.block_groups >= 1, "block_groups",
             f"must be >= 1, got {self.block_groups}")
        need(self.batchnorm_stats in BATCHNORM_STATS, "batchnorm_stats",
             f"must be global or local, got {self.batchnorm_stats!r}")
        method.check_config(self)
        return self

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json_file(cls, path) -> Config:
        """A run's config.json (``noprop train --config``); the message names the file when it is
        not one."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except OSError as e:
            raise ConfigError(f"--config: cannot read {path} ({e.strerror})") from e
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config: {path} is not JSON ({e}); give a run's config.json") from e
        if not isinstance(d, dict):
            raise ConfigError(f"--config: {path} holds no configuration object; give a run's config.json")
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"--config {path}: {e}") from e

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown configuration field(s): {', '.join(sorted(unknown))}")
        return cls(**d).validate()  # also fills defaults that older config files lack

    def differences(self, other: Config, ignore=("epochs", "device", "minutes", "plugins", "deterministic",
                                                   "block_groups", "batchnorm_stats", "test_curve",
                                                   "eval_batch_size")) -> list[str]:
        """Fields that differ, but for those a resumed run may change (more epochs, another device or
        time budget, another layout of workers)."""
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in ignore and a[k] != b[k]]
