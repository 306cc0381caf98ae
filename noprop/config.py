"""One typed structure holds a run's whole configuration; it is saved beside every run
(config.json) so that the run can be repeated exactly.

``Config`` has the fields every method shares (data, embedding, optimizer, the run) and, in
``method_options``, the options of the chosen method alone, as that method declares them in its
module (``Method.options``: name -> ``Option``). Keywords that are not shared fields are method
options: ``Config(method="dt", T=10, eta=0.1)`` holds ``method_options={"T": 10, "eta": 0.1}``, and
``cfg.eta`` reads it back. ``validate()`` refuses an option the method does not declare, naming the
methods that do, checks each value against its declaration and fills the defaults, so a validated
Config (and the config.json it writes) lists every option of its method and no other.

Files written before the options moved to their methods (version 0.2, e.g. commit 5b91a6a) held
every option flat for every method, ``"eta": null`` meaning the method's default, and an unused
``"extra": {}``: ``from_dict`` keeps the flat values the method takes and drops the rest, which
those versions ignored too.
"""

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
from .methods import get_method, takers
from .options import flag

OPTIMIZERS = ("adamw", "adam", "sgd")
ORDERS = ("paper", "all", "random")
PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "cosine")
BATCHNORM_STATS = ("global", "local")  # data-parallel BatchNorm: the global batch's, or each shard's


# the flat fields of version 0.2's config.json that are method options now (see from_dict)
LEGACY_OPTIONS = ("head", "posterior_sigma", "head_init", "logit_scale", "T", "eta", "schedule_eps", "steps",
                  "solver", "fm_sigma")


@dataclass(init=False)
class Config:
    """The shared fields below, and the chosen method's options in method_options (module docstring).
    Config(**fields, **options) and Config(**fields, method_options=options) are the same; a keyword
    wins over method_options' entry of the same name."""
    dataset: str = "mnist"
    method: str = "dt"              # a registered method: dt | ct | fm | backprop | adjoint | cnn | yours
    embedding: str = "one-hot"      # one-hot | learned | prototype
    embed_dim: int | None = None    # learned: 20 by default; prototype: C*H*W (fixed)
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
                                    # order divides it among the epoch's block passes (passes.py)
    deterministic: bool = False     # deterministic kernels, and data-parallel noise drawn for the whole
                                    # global batch, so results do not depend on the worker count
    block_groups: int | None = None  # parallel runs: G block groups x (workers / G) data shards;
                                    # None: chosen by parallel.choose_groups
    batchnorm_stats: str = "global"  # data-parallel runs: BatchNorm over the global batch (global:
                                    # the update of one process) or each shard's share (local: faster)
    plugins: list = field(default_factory=list)  # modules / .py files that register methods (--plugin)
    method_options: dict = field(default_factory=dict)  # the method's options: its Method.options

    def __init__(self, method_options: dict | None = None, **fields):
        for f in dataclasses.fields(self):
            if f.name != "method_options":
                default = f.default_factory() if f.default is dataclasses.MISSING else f.default
                object.__setattr__(self, f.name, fields.pop(f.name, default))
        object.__setattr__(self, "method_options", {**(method_options or {}), **fields})

    def __getattr__(self, name: str):
        """A method option: cfg.eta. Before validate() an option left out reads as its default."""
        options = self.__dict__.get("method_options")
        if options is not None and name in options:
            return options[name]
        if not name.startswith("_"):
            try:
                declared = get_method(self.__dict__.get("method")).options
            except ConfigError:  # an unknown method (validate() says so)
                declared = {}
            if name in declared:
                return declared[name].default
        raise AttributeError(f"Config has no field {name!r}, nor is it an option of method "
                             f"{self.__dict__.get('method')!r}")

    def __setattr__(self, name: str, value) -> None:
        """cfg.eta = 0.2 sets a method option; a shared field is set as usual."""
        if name in SHARED_FIELDS or name == "method_options" or name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            self.method_options[name] = value

    def validate(self) -> Config:
        """Check every field and the method's options, and fill the method-dependent defaults (the
        method's options left out, and its optimizer)."""
        def need(cond: bool, option: str, msg: str):
            if not cond:
                raise ConfigError(f"--{option.replace('_', '-')}: {msg}")

        for spec in self.plugins:
            load_plugin(spec)
        need(self.dataset in DATASETS or is_npz(self.dataset), "dataset", f"unknown dataset "
             f"{self.dataset!r}; choose one of {', '.join(DATASETS)} or a path to a .npz file")
        method = get_method(self.method)
        self.method_options = check_options(method, self.method_options)
        for name, value in {"optimizer": "adamw", **method.defaults}.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        need(self.optimizer in OPTIMIZERS, "optimizer", f"unknown optimizer {self.optimizer!r}; choose "
             f"one of {', '.join(OPTIMIZERS)}")
        need(self.embedding in EMBEDDINGS, "embedding", f"unknown embedding {self.embedding!r}; "
             f"choose one of {', '.join(EMBEDDINGS)}")
        need(self.order in ORDERS, "order", f"unknown order {self.order!r}; choose one of {', '.join(ORDERS)}")
        need(valid_device(self.device), "device", f"unknown device {self.device!r}; choose auto, cpu, cuda "
             "or cuda:N")
        need(self.precision in PRECISIONS, "precision", f"unknown precision {self.precision!r}; choose "
             f"one of {', '.join(PRECISIONS)}")
        need(self.epochs >= 0, "epochs", f"must be >= 0, got {self.epochs}")
        need(self.batch_size >= 2, "batch_size", f"must be >= 2 (BatchNorm needs two examples), got "
             f"{self.batch_size}")
        need(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        need(self.lr_schedule in LR_SCHEDULES, "lr_schedule", f"unknown schedule {self.lr_schedule!r}; "
             f"choose one of {', '.join(LR_SCHEDULES)}")
        need(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        need(self.val_size >= 0, "val_size", f"must be >= 0, got {self.val_size}")
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
        """A saved configuration (config.json, a checkpoint's metadata), validated; also one written
        before the options moved to their methods (module docstring)."""
        d = dict(d)
        if "method_options" not in d:  # version 0.2's flat format
            for spec in d.get("plugins") or []:
                load_plugin(spec)
            if not d.get("extra"):
                d.pop("extra", None)
            flat = {k: d.pop(k) for k in LEGACY_OPTIONS if k in d}
            taken = get_method(d.get("method", "dt")).options
            d["method_options"] = {k: v for k, v in flat.items() if k in taken and v is not None}
        unknown = set(d) - SHARED_FIELDS - {"method_options"}
        if unknown:
            raise ConfigError(f"unknown configuration field(s): {', '.join(sorted(unknown))}")
        return cls(**d).validate()  # also fills defaults that older config files lack

    def differences(self, other: Config, ignore=("epochs", "device", "minutes", "plugins", "deterministic",
                                                   "block_groups", "batchnorm_stats", "test_curve",
                                                   "eval_batch_size")) -> list[str]:
        """Fields and method options that differ, but for those a resumed run may change (more epochs,
        another device or time budget, another layout of workers). Validated configs hold exactly
        their method's options, so only those are compared."""
        a, b = self.to_dict(), other.to_dict()
        a.update(a.pop("method_options")); b.update(b.pop("method_options"))  # noqa: E702
        return [k for k in dict.fromkeys([*a, *b]) if k not in ignore and a.get(k) != b.get(k)]


SHARED_FIELDS = frozenset(f.name for f in dataclasses.fields(Config)) - {"method_options"}


def check_options(method, options: dict) -> dict:
    """options checked against method's declarations (Method.options) and completed with their
    defaults, in declaration order; ConfigError names the first option that is wrong, and for one
    the method does not take, the methods that take it."""
    declared = method.options
    for name in options:
        if name not in declared:
            raise ConfigError(not_taken(name, method, takers(name)))
    out = {}
    for name, option in declared.items():
        try:
            out[name] = option.parse(options.get(name, option.default), method.display_name or method.name)
        except ValueError as e:
            raise ConfigError(f"{flag(name)}: {e}") from None
    return out


def taken_by(method: str, fields: dict) -> dict:
    """The entries of fields that a Config of `method` takes: every shared field, and the options the
    method declares. For grids and scripts that give several methods one set of settings (e.g.
    `noprop reproduce --steps`, which reaches the methods that take steps)."""
    options = get_method(method).options
    return {k: v for k, v in fields.items() if k in SHARED_FIELDS or k in options}


def not_taken(name: str, method, others: list[str]) -> str:
    """The one-line error for an option the method does not declare."""
    who = method.display_name or method.name
    if not others:
        return f"{flag(name)}: {who} does not take it, nor does any other method (unknown option)"
    return f"{flag(name)}: {who} does not take it; it is an option of {', '.join(others)}"
