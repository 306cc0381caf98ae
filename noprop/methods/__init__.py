"""The training methods, one module each. Importing this package registers them all (each module's
``@register_method``); ``get_method`` and ``method_names`` look a name up among them and the
methods that plugins registered.

Adding a method is one module here (a ``Method`` subclass with ``@register_method``, see
noprop/method.py) and one line below: nothing else in the package names a method.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..method import REGISTRY, Method
from .adjoint import Adjoint
from .backprop import Backprop
from .cnn import CNN
from .ct import NoPropCT
from .dt import NoPropDT
from .fm import NoPropFM

__all__ = ["get_method", "method_names", "takers", "NoPropDT", "NoPropCT", "NoPropFM", "Backprop", "Adjoint", "CNN"]


def get_method(name: str) -> type[Method]:
    """The registered method of that name (--method NAME); a ConfigError naming the choices if none."""
    if name not in REGISTRY:
        raise ConfigError(f"--method: unknown method {name!r}; choose one of {', '.join(method_names())} "
                          "(a method of your own: --plugin FILE.py that registers it)")
    return REGISTRY[name]


def method_names() -> list[str]:
    """Every registered method, the paper's first, in the order lists and tables show them."""
    return sorted(REGISTRY, key=lambda n: (REGISTRY[n].listing_order, n))


def takers(option: str) -> list[str]:
    """The registered methods that declare an option, in listing order."""
    return [n for n in method_names() if option in REGISTRY[n].options]
