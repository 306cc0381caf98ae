"""The package's version, written once: noprop.__version__, pyproject.toml's, and every result
file's and checkpoint's (machine.provenance). A leaf, so provenance can import it."""

__version__ = "0.2.0"
