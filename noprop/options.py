"""The options a method declares for itself, as diffusers' schedulers own theirs (register_to_config).

A method lists its options in its own module, beside the code that reads them:

    class NoPropDT(Method):
        options = {"eta": Option(float, 0.1, "weight of the L2 terms (Eq. 61)", check=positive),
                   "head": Option(str, "linear", "output head", choices=("linear", "posterior")), ...}

From these declarations alone ``noprop.Config`` checks and fills ``Config.method_options`` (the
types, choices and ranges, and the defaults of what is left out), ``config.json`` saves them, and
``noprop train`` builds one flag per option name (``--eta``; a one-letter name also gets ``-T``).
An option the chosen method does not declare is an error naming the methods that take it. This
module imports nothing from the package, so every other module may import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """One option of a method: its type (int, float, str or bool), its default, a line of help,
    and optionally the values it may take (choices) or a test its value must pass (check, with
    rule saying what the test asks, e.g. "must be > 0")."""
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    check: Callable[[Any], bool] | None = None
    rule: str = ""

    def parse(self, value: Any, method: str) -> Any:
        """value as this option's type, or ValueError saying what is wrong (method: the display
        name of the method that takes it, for the message)."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ValueError(f"must be {_KIND.get(self.type, self.type.__name__)}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{value!r} does not apply to {method}; choose one of "
                             f"{', '.join(map(str, self.choices))}")
        if self.check is not None and not self.check(value):
            raise ValueError(f"{self.rule or 'is out of range'}, got {value!r}")
        return value


_KIND = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def flag(name: str) -> str:
    """The command-line flag of an option (and the name error messages use): eta -> --eta."""
    return "--" + name.replace("_", "-")

