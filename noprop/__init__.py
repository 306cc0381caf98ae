"""noprop: NoProp (Li, Teh, Pascanu, arXiv 2503.24322) in PyTorch.

    import noprop
    run = noprop.train(noprop.Config(method="dt", epochs=1))   # every method: noprop.METHODS
    noprop.evaluate(run.model, "test", runs=5)

Data flows one way: data -> method -> trainer -> report.
"""

__version__ = "0.2.0"

from .adjoint import Adjoint  # noqa: E402  (each method registers itself on import)
from .api import TrainedRun, evaluate, load, predict, train  # noqa: E402
from .backprop import Backprop  # noqa: E402
from .cnn import CNN  # noqa: E402
from .config import Config, ConfigError  # noqa: E402
from .ct import NoPropCT  # noqa: E402
from .data import Dataset, Split, load_cifar, load_dataset, load_idx_dataset, load_mnist, load_npz  # noqa: E402
from .dt import NoPropDT  # noqa: E402
from .embedding import ClassEmbedding  # noqa: E402
from .fm import NoPropFM  # noqa: E402
from .method import REGISTRY as METHODS  # noqa: E402
from .method import ChainStep, Method, get_method, load_plugin, method_names, register_method  # noqa: E402
from .options import Option  # noqa: E402
from .schedule import CosineSchedule, DiscreteSchedule, LearnedSchedule  # noqa: E402

__all__ = ["__version__", "train", "load", "evaluate", "predict", "TrainedRun", "Config", "ConfigError",
           "Dataset", "Split", "load_dataset", "load_mnist", "load_idx_dataset", "load_cifar", "load_npz",
           "ClassEmbedding", "METHODS", "Method", "ChainStep", "Option", "register_method", "get_method",
           "method_names", "load_plugin", "CosineSchedule", "DiscreteSchedule", "LearnedSchedule",
           "NoPropDT", "NoPropCT", "NoPropFM", "Backprop", "Adjoint", "CNN"]
