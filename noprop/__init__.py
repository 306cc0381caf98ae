"""noprop: NoProp (Li, Teh, Pascanu, arXiv 2503.24322) in PyTorch.

Data flows one way: data -> method -> trainer -> report.
"""

from .config import Config
from .data import load_dataset
from .dt import NoPropDT
from .embedding import ClassEmbedding
from .schedule import CosineSchedule
from .train import Trainer, load_model

__version__ = "0.1.0"
__all__ = ["Config", "load_dataset", "NoPropDT", "ClassEmbedding", "CosineSchedule", "Trainer",
           "load_model", "__version__"]
