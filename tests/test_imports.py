"""The package's import graph, read from the source with ast (nothing is imported): no cycle among
noprop's modules, no module reaching into another's private (_-prefixed) names, and the library's
core never importing the tools (noprop/tools/) or the CLI.

A cycle counts the imports a module runs when it is imported: those at its top level, not those
inside functions, nor under ``if TYPE_CHECKING:``. A package's own __init__ running before its
submodules is Python's doing, not an import, and does not count; an explicit import of a package
(``from ..methods import get_method``) is an edge to its __init__. The private-name and layering
rules count every import, inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "noprop"  # read, not imported: a cycle may break importing


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the package at root (a package is its __init__)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


class _Imports(ast.NodeVisitor):
    """The import statements of a module: those run on import only (top_level), or all."""

    def __init__(self, top_level: bool):
        self.top_level, self.found = top_level, []

    def visit_FunctionDef(self, node):
        if not self.top_level:
            self.generic_visit(node)

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_If(self, node):
        if "TYPE_CHECKING" in ast.unparse(node.test):  # for type checkers only: never runs
            for stmt in node.orelse:
                self.visit(stmt)
        else:
            self.generic_visit(node)

    def visit_Import(self, node):
        self.found.append(node)

    visit_ImportFrom = visit_Import


def imported(name: str, path: Path, mods: dict[str, Path], top_level: bool) -> list[tuple[str, str | None, str]]:
    """(module, name taken from it or None for the module itself, local name) for each import of
    one of the package's modules."""
    visitor = _Imports(top_level)
    visitor.visit(ast.parse(path.read_text(), str(path)))
    out = []
    for node in visitor.found:
        if isinstance(node, ast.Import):
            out += [(a.name, None, a.asname or a.name) for a in node.names if a.name in mods]
            continue
        base = node.module or ""
        if node.level:
            here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            here = here[:len(here) - node.level + 1]
            base = ".".join(here + ([node.module] if node.module else []))
        for a in node.names:
            if f"{base}.{a.name}" in mods:
                out.append((f"{base}.{a.name}", None, a.asname or a.name))
            elif base in mods:
                out.append((base, a.name, a.asname or a.name))
    return out


def graph(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports when it is imported."""
    mods = modules(root)
    return {m: {t for t, _, _ in imported(m, p, mods, top_level=True) if t != m} for m, p in mods.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path (first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if t not in state and (found := visit(t)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_reaches(root: Path) -> list[str]:
    """Every use of another module's private name: imported by name (`from .models import _x`) or
    read off an imported module (`models._x`)."""
    mods = modules(root)
    out = []
    for m, path in mods.items():
        found = imported(m, path, mods, top_level=False)
        out += [f"{m} imports {t}.{n}" for t, n, _ in found if n is not None and _private(n) and t != m]
        aliases = {local: t for t, n, local in found if n is None and t != m}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and _private(node.attr)):
                out.append(f"{m} reads {aliases[node.value.id]}.{node.attr} (line {node.lineno})")
    return out


def upward_imports(root: Path) -> list[str]:
    """Imports of the tools or the CLI by the library's core (any import, inside functions too)."""
    mods = modules(root)
    pkg = root.name
    above = (f"{pkg}.tools", f"{pkg}.cli", f"{pkg}.__main__")

    def is_above(m):
        return any(m == a or m.startswith(a + ".") for a in above)
    return [f"{m} imports {t}" for m, p in mods.items() if not is_above(m)
            for t, _, _ in imported(m, p, mods, top_level=False) if is_above(t)]


# --- the package ------------------------------------------------------------------------------------
def test_the_package_has_no_import_cycle():
    edges = graph(PACKAGE)
    assert {"noprop.config", "noprop.methods", "noprop.methods.dt", "noprop.tools.bench"} <= set(edges)
    assert "noprop.method" in edges["noprop.methods.dt"] and "noprop.methods" in edges["noprop.config"]
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_reaches_into_another_modules_private_names():
    assert private_reaches(PACKAGE) == []


def test_the_core_never_imports_the_tools_or_the_cli():
    assert upward_imports(PACKAGE) == []


def test_the_errors_module_is_a_leaf():
    assert graph(PACKAGE)["noprop.errors"] == set()


# --- the checks themselves, on a small package written to fail each ----------------------------------
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in {"__init__.py": "", **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_checks_catch_a_cycle_a_private_reach_and_an_upward_import(tmp_path):
    root = _package(tmp_path, {
        "a.py": "from .b import y\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .c import z\n"
                "def f():\n    from .a import x\nfrom .sub.d import w\n",
        "c.py": "from .a import _hidden\nfrom . import b\nb._peek()\nb.__name__\n",
        "sub/__init__.py": "from . import d\n",
        "sub/d.py": "from ..a import x\n",
        "tools/__init__.py": "", "tools/t.py": "from ..c import z\n",
        "e.py": "def g():\n    from .tools import t\n",
    })
    edges = graph(root)
    assert edges["pkg.b"] == {"pkg.sub.d"}  # neither the function's nor the TYPE_CHECKING import
    assert find_cycle(edges) == ["pkg.a", "pkg.b", "pkg.sub.d", "pkg.a"]
    assert find_cycle({**edges, "pkg.sub.d": set()}) is None
    assert private_reaches(root) == ["pkg.c imports pkg.a._hidden", "pkg.c reads pkg.b._peek (line 3)"]
    assert upward_imports(root) == ["pkg.e imports pkg.tools.t"]
