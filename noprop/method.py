"""What every training method provides, and the registry that names them.

A method is an ``nn.Module`` subclass of ``Method``. Its ``forward(x, y)`` is its training loss
(lucidrains-style: the module *is* the objective) and ``predict(x)`` its inference, which sees
images only. The trainer, the evaluation, the CLI and the Python API talk to methods through this
interface alone, so adding a method is one module plus one ``@register_method``:

    @register_method
    class MyMethod(Method):
        name = "mine"                       # --method mine
        display_name = "My method"
        options = {"width": Option(int, 64, "hidden width", check=lambda v: v >= 1, rule="must be >= 1")}
        @classmethod
        def from_config(cls, cfg, image_shape, num_classes, embedding): ...
        def loss(self, x, y, blocks=None): ...          # Loss(scalar, {name: part to log})
        def final_latent(self, x, noise=True, generator=None, steps=None, solver=None): ...
        def classify(self, z): ...                      # class scores from the final latent

**Blocks.** A method is trained as ``num_blocks`` parts that learn independently (NoProp-DT: its T
blocks; every one-network method: a single block). Block t's parameters (``block_parameters(t)``)
get their own optimizer; ``shared_parameters()`` (NoProp-DT's head and a learned embedding) one more.
``loss(x, y, blocks)`` is the loss of the listed blocks (1-based; None: all of them). The trainer's
orders (paper: block by block; all; random), the block-parallel and data-parallel modes and the
checkpoints follow from these few facts, for any method.

**Options.** A method declares the options it reads in ``options`` (name -> ``noprop.Option``: type,
default, help, choices, check), in its own module. ``Config`` keeps the fields every method shares
(data, optimizer, run) and holds the chosen method's options in ``Config.method_options``, checked
against these declarations and filled with their defaults; ``cfg.eta`` reads one. ``noprop train``
makes a flag of every declared option, and refuses one the chosen method does not declare, naming
the methods that do. Several methods may declare the same name (``steps``: ct, fm, adjoint), each
with its own default and choices; ``solver``'s choices are the method's inference solvers, the first
its default.

**Plugins.** A method defined outside the package registers itself when its module is imported.
``--plugin PATH.py|module`` (or ``Config.plugins``) imports it; the run's config.json records it,
so ``noprop evaluate``, ``noprop train --config`` and ``noprop.load`` find the method again.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from .errors import ConfigError
from .ode import last
from .options import Option

if TYPE_CHECKING:
    from .config import Config
    from .embedding import ClassEmbedding


@dataclass
class ChainStep:
    """One step of an inference chain: the step index (1-based), the latent after it, and the
    class logits of the network evaluated at that step (None where a step has none)."""
    t: int
    z: torch.Tensor
    logits: torch.Tensor | None = None


@dataclass
class Loss:
    """What a method's loss returns: the scalar to minimise and the parts to log.

    total        the scalar the trainer back-propagates; logged as "loss".
    parts        named parts to log, in metrics.jsonl's order after "loss": scalars, or for a name
                 in the method's per_block_metrics a vector with one entry per block trained.
    shared_part  optional, with block_part: total = shared_part + block_part, where shared_part
    block_part   alone gives the shared parameters their gradient and block_part only the blocks'.
                 Parallel training then averages the shared gradients while block_part is still
                 back-propagated (parallel.Collectives.backward); a single process uses total.

    A method of your own may still return the older dict {"loss": scalar, name: part, ...,
    optionally "shared_part" and "block_part"}: the trainer reads it through Loss.of."""
    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    shared_part: torch.Tensor | None = None
    block_part: torch.Tensor | None = None

    def __post_init__(self):
        if (self.shared_part is None) != (self.block_part is None):
            raise ValueError("Loss: give both shared_part and block_part (their sum is total) or neither")

    @classmethod
    def of(cls, value: Loss | dict[str, torch.Tensor]) -> Loss:
        """A method's return value as a Loss (a dict: {"loss": total, ...} as above)."""
        if isinstance(value, Loss):
            return value
        parts = dict(value)
        total, shared, block = parts.pop("loss"), parts.pop("shared_part", None), parts.pop("block_part", None)
        return cls(total, parts, shared, block)

    def logged(self) -> dict[str, torch.Tensor]:
        """Everything to log: "loss" (the total) first, then the parts."""
        return {"loss": self.total, **self.parts}


class Method(nn.Module):
    # --- what the registry and the configuration need to know --------------------------------
    name: ClassVar[str] = ""                 # registry key: --method NAME
    display_name: ClassVar[str] = ""         # in tables and reports, e.g. "NoProp-DT"
    in_paper: ClassVar[bool] = True          # False: a reference method the paper does not have
    listing_order: ClassVar[int] = 100       # where it stands in lists and tables (the paper's order first)
    options: ClassVar[dict[str, Option]] = {}  # the options this method takes (see **Options.** above)
    defaults: ClassVar[dict] = {}            # shared Config fields this method fills when left None (optimizer)
    per_block_metrics: ClassVar[tuple[str, ...]] = ()  # loss parts logged per block (vectors)
    find_unused_parameters: ClassVar[bool] = False      # DDP: some parameters may get no gradient

    embed: ClassEmbedding
    num_classes: int

    @classmethod
    def from_config(cls, cfg: Config, image_shape: tuple[int, int, int], num_classes: int,
                    embedding: ClassEmbedding) -> Method:
        """Build the method for a validated Config (the embedding is built by the caller)."""
        raise NotImplementedError(f"{cls.__name__} must define from_config")

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """Refuse option values this method cannot work with (raise ConfigError naming the option)."""

    # --- training -------------------------------------------------------------------------------
    @classmethod
    def blocks_for(cls, cfg: Config) -> int:
        """num_blocks of the model cfg builds, known before building it (parallel layouts need it)."""
        return 1

    @classmethod
    def network_blocks(cls, cfg: Config) -> int:
        """How many blocks the model's network holds, the unit the bench counts work in
        (block-samples): NoProp-DT's T, the backprop baseline's T chained blocks, 1 for one network.
        An image passes each once an epoch; a step of the baseline updates all of them, a step of
        NoProp-DT one of its blocks_for(cfg), which train apart."""
        return cls.blocks_for(cfg)

    @property
    def num_blocks(self) -> int:
        return 1

    def block_parameters(self, t: int) -> list[nn.Parameter]:
        """Parameters trained by block t (1-based) alone. One-network methods: all but the shared."""
        shared = {id(p) for p in self.shared_parameters()}
        return [p for p in self.parameters() if id(p) not in shared]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters every block's loss trains (averaged over all ranks in parallel training)."""
        return []

    def loss(self, x: torch.Tensor, y: torch.Tensor, blocks: list[int] | None = None) -> Loss:
        """The training loss of the given blocks and the parts to log (see Loss)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, y: torch.Tensor, blocks: list[int] | None = None) -> Loss:
        return self.loss(x, y, blocks)

    # --- inference: images only ----------------------------------------------------------------
    def image_features(self, x: torch.Tensor):
        """What inference computes from the images alone, before any noise enters (the image paths).
        In eval mode it is the same for every inference run and rule, so the evaluation computes it
        once per batch and passes it to chain() and final_latent() as `features`: R runs then cost
        one pass of the convolutions instead of R. None (the default): nothing to share, and
        `features` is never passed (a method of your own need not accept it)."""
        return None

    def final_latent(self, x: torch.Tensor, noise: bool = True, generator: torch.Generator | None = None,
                     steps: int | None = None, solver: str | None = None, features=None) -> torch.Tensor:
        """The latent the classifier reads (NoProp-DT: z_T of Eq. 3; CT/FM: z_1) from z_0 ~ N(0, I).
        Default: the last step of chain(). A method overrides this, chain(), or both."""
        if type(self).chain is Method.chain:
            raise NotImplementedError(f"{type(self).__name__} must define final_latent or chain (or both): "
                                      "inference has neither")
        shared = {} if features is None else {"features": features}
        return last(self.chain(x, noise, generator, steps, solver, **shared)).z

    def chain(self, x: torch.Tensor, noise: bool = True, generator: torch.Generator | None = None,
              steps: int | None = None, solver: str | None = None) -> Iterator[ChainStep]:
        """The inference chain step by step, for diagnostics. Default: the final latent only."""
        if type(self).final_latent is Method.final_latent:
            raise NotImplementedError(f"{type(self).__name__} must define chain or final_latent (or both): "
                                      "inference has neither")
        return iter([ChainStep(1, self.final_latent(x, noise, generator, steps, solver))])

    def is_legacy_key(self, key: str) -> bool:
        """Whether a key of a checkpoint's state dict that this model lacks is one an older version
        of this method saved and this one dropped (models.legacy_keys then leaves it out). Default:
        none."""
        return False

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Class scores (logits) from a final latent; their argmax is the prediction and their
        softmax what the ensemble rule averages."""
        raise NotImplementedError(f"{type(self).__name__} must define classify")

    @torch.no_grad()
    def predict_logits(self, x: torch.Tensor, noise: bool = True, generator: torch.Generator | None = None,
                       steps: int | None = None, solver: str | None = None, features=None) -> torch.Tensor:
        """Class scores of one inference run; features: image_features(x), where the caller has it."""
        shared = {} if features is None else {"features": features}
        return self.classify(self.final_latent(x, noise, generator, steps, solver, **shared))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, noise: bool = True, generator: torch.Generator | None = None,
                steps: int | None = None, solver: str | None = None) -> torch.Tensor:
        """Predicted labels for a batch of (normalised) images."""
        return self.predict_logits(x, noise, generator, steps, solver).argmax(-1)


# ------------------------------------------------------------------------------------------------
REGISTRY: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make a Method available as --method cls.name and in noprop.METHODS."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"{cls!r} is not a subclass of noprop.Method")
    if not cls.name or not cls.name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"{cls.__name__}.name must be a short identifier (letters, digits, - or _), "
                         f"got {cls.name!r}")
    old = REGISTRY.get(cls.name)
    if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"method name {cls.name!r} is taken by {old.__module__}.{old.__qualname__}")
    REGISTRY[cls.name] = cls
    return cls


def load_plugin(spec: str) -> None:
    """Import a module that registers methods: a path to a .py file or a module name. Importing the
    same one twice is a no-op."""
    if spec.endswith(".py"):
        path = Path(spec).resolve()
        name = "noprop_plugin_" + "".join(c if c.isalnum() else "_" for c in str(path))
        loaded = {Path(f).resolve() for m in list(sys.modules.values())
                  if isinstance(f := getattr(m, "__file__", None), str)}
        if name in sys.modules or path in loaded:  # already imported (by this name or another)
            return
        if not path.is_file():
            raise ConfigError(f"--plugin: {path} does not exist; give the .py file that registers the method")
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    else:
        try:
            importlib.import_module(spec)
        except ImportError as e:
            raise ConfigError(f"--plugin: cannot import module {spec!r} ({e})") from e
