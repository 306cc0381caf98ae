"""noprop: NoProp (Li, Teh, Pascanu, arXiv 2503.24322) in PyTorch.

    import noprop
    run = noprop.train(noprop.Config(method="dt", epochs=1))   # every method: noprop.METHODS
    noprop.evaluate(run.model, "test", runs=5)

Data flows one way: data -> method -> trainer -> report.
"""

from .api import TrainedRun, evaluate, load, predict, train
from .config import Config, ConfigError
from .data import Dataset, Split, load_cifar, load_dataset, load_idx_dataset, load_mnist, load_npz
from .embedding import ClassEmbedding
from .method import REGISTRY as METHODS
from .method import ChainStep, Loss, Method, load_plugin, register_method
from .methods import CNN, Adjoint, Backprop, NoPropCT, NoPropDT, NoPropFM, get_method, method_names
from .options import Option
from .schedule import CosineSchedule, DiscreteSchedule, LearnedSchedule
from .version import __version__

__all__ = ["__version__", "train", "load", "evaluate", "predict", "TrainedRun", "Config", "ConfigError",
           "Dataset", "Split", "load_dataset", "load_mnist", "load_idx_dataset", "load_cifar", "load_npz",
           "ClassEmbedding", "METHODS", "Method", "Loss", "ChainStep", "Option", "register_method", "get_method",
           "method_names", "load_plugin", "CosineSchedule", "DiscreteSchedule", "LearnedSchedule",
           "NoPropDT", "NoPropCT", "NoPropFM", "Backprop", "Adjoint", "CNN"]
