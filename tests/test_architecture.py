"""The package's import rules, read from the source with `ast` (nothing is imported): the rooms of
spectrum/ (sources: weights in; scoring: weights -> scores; cache: scores on disk; selection: scores ->
what to train; report: what a person sees) depend on each other only one way, nothing imports the
public API in spectrum/__init__.py, rich stays with what prints, torch is imported at module level
only where tensors are read or decomposed, and no modules import each other in a cycle.

Every import statement counts: module level, inside functions and classes, and under
`if TYPE_CHECKING:`. A type-only import is still a dependency of the design, so the room rules, the
rule on `spectrum/__init__` and the rule on rich count it. The torch rule and the cycle rule are about
what runs when a module is imported, so they count only imports made at module level, outside
`if TYPE_CHECKING:` (a function-level `import torch` is the intended way to keep torch lazy).
`importlib.import_module` (the lazy names of spectrum/__init__.py) is not an import statement and is
not seen.

Violations the code has today are listed in KNOWN_VIOLATIONS, so that the rules hold from now on while
they are fixed; a fixed one must leave the list (a test says so).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

from helpers import REPO_ROOT

PACKAGE = "spectrum"
ROOMS = ("sources", "scoring", "cache", "selection", "report")

# What each room may not import (rooms and top-level modules of spectrum/, by their name under spectrum.).
# The modules above the rooms (workflow, training, callback, cli) join them; no room imports them.
_ABOVE = {"workflow", "training", "callback", "cli"}
FORBIDDEN = {
    "scoring": {"cache", "selection", "report", *_ABOVE},
    "cache": {"scoring", *_ABOVE},
    "selection": {"sources", "scoring", *_ABOVE},
    "report": {"scoring", "sources", *_ABOVE},
}
# sources/ is the bottom room: it imports nothing of spectrum's but these and itself.
SOURCES_MAY_IMPORT = {"sources", "errors", "naming", "files"}
# Where rich may be imported: the modules that print.
RICH_ROOMS = {"report", "cli"}
# The modules that may import torch at module level: the torch SVD route, and the sources that read
# torch tensors with module-level torch, which today is only sources/gguf.py (dequantized GGUF arrays
# become torch tensors; sources/local.py imports it only when a GGUF is opened). sources/safetensors.py,
# torch_bin.py, quantized.py and base.py import torch inside functions (and under TYPE_CHECKING), so
# that a cached run never loads it; scoring/checkpoint.py and pipeline.py likewise.
TORCH_AT_MODULE_LEVEL = {
    "spectrum.scoring.svd_torch",
    "spectrum.sources.gguf",
}

# Violations tolerated for a while, as `found_violations()` names them (rule: importer -> imported; line
# numbers left out so that edits elsewhere in a file do not matter). Empty since the restructure landed:
# a new entry needs a reason beside it and a plan to remove it.
KNOWN_VIOLATIONS: set[str] = set()


@dataclass(frozen=True)
class Import:
    importer: str  # the module with the import statement, e.g. "spectrum.scoring.checkpoint"
    target: str  # the module imported, absolute: "spectrum.sources.base", "spectrum" (the API), "torch.nn"
    line: int
    module_level: bool  # runs when `importer` is imported (not inside a function)
    type_checking: bool  # under `if TYPE_CHECKING:`

    def where(self) -> str:
        place = "module level" if self.module_level else "in a function"
        return f"line {self.line}, {place}" + (", TYPE_CHECKING" if self.type_checking else "")


def modules() -> dict[str, Path]:
    """Every module of the package in this checkout, by dotted name (a package by its own name)."""
    found = {}
    for path in sorted((REPO_ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = modules()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str) -> list[Import]:
    """Every import statement of module `name`, with relative imports made absolute."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"), filename=str(MODULES[name]))
    package = name if is_package(name) else name.rpartition(".")[0]
    found: list[Import] = []

    def resolve(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = package.split(".")
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def visit(node: ast.AST, module_level: bool, type_checking: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(name, alias.name, node.lineno, module_level, type_checking))
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node)
            for alias in node.names:
                # `from . import cli` imports the submodule; `from . import scan` takes a name of the package.
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                found.append(Import(name, target, node.lineno, module_level, type_checking))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for child in ast.iter_child_nodes(node):
                visit(child, False, type_checking)
        elif isinstance(node, ast.If) and is_type_checking(node.test):
            visit(node.test, module_level, type_checking)
            for child in node.body:
                visit(child, module_level, True)
            for child in node.orelse:
                visit(child, module_level, type_checking)
        else:
            for child in ast.iter_child_nodes(node):
                visit(child, module_level, type_checking)

    visit(tree, True, False)
    return found


IMPORTS = [item for name in MODULES for item in imports_of(name)]


def room(module: str) -> str:
    """`spectrum.scoring.snr` -> "scoring", `spectrum.cli` -> "cli", `spectrum` -> "" (the API)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def top(module: str) -> str:
    return module.split(".")[0]


def violations() -> dict[str, list[Import]]:
    """Each broken rule, as "rule: importer -> imported", with the statements that break it."""
    found: dict[str, list[Import]] = {}

    def add(rule: str, item: Import) -> None:
        found.setdefault(f"{rule}: {item.importer} -> {item.target}", []).append(item)

    for item in IMPORTS:
        own, external = room(item.importer), top(item.target) != PACKAGE
        if not external and item.importer != PACKAGE and item.target == PACKAGE:
            add("imports the package API (spectrum/__init__.py)", item)
        if not external and own == "sources" and room(item.target) not in SOURCES_MAY_IMPORT | {""}:
            add(f"sources/ imports {room(item.target)}", item)
        if not external and room(item.target) in FORBIDDEN.get(own, ()):
            add(f"{own}/ imports {room(item.target)}", item)
        if top(item.target) == "rich" and own not in RICH_ROOMS:
            add("rich outside report/ and cli.py", item)
        if (top(item.target) == "torch" and item.module_level and not item.type_checking
                and item.importer not in TORCH_AT_MODULE_LEVEL):
            add("torch at module level", item)
    return found


def module_level_graph() -> dict[str, set[str]]:
    """Which modules of the package each one imports when it is imported: module-level statements
    outside TYPE_CHECKING, plus the packages above an imported module (their __init__ runs first)
    unless the importer is inside that package (then it is already being imported)."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for item in IMPORTS:
        if top(item.target) != PACKAGE or not item.module_level or item.type_checking:
            continue
        parts = item.target.split(".")
        for depth in range(2, len(parts) + 1):
            target = ".".join(parts[:depth])
            inside = item.importer == target or item.importer.startswith(target + ".")
            if target in MODULES and target != item.importer and (depth == len(parts) or not inside):
                graph[item.importer].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for after in sorted(graph[node]):
            if after not in index:
                connect(after)
                low[node] = min(low[node], low[after])
            elif after in on_stack:
                low[node] = min(low[node], index[after])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(components)


def found_violations() -> dict[str, list[str]]:
    found = {rule: [f"{item.importer} {item.where()}" for item in items] for rule, items in violations().items()}
    for component in cycles(module_level_graph()):
        found[f"import cycle at module level: {' <-> '.join(component)}"] = []
    return found


def describe(keys) -> str:
    found = found_violations()
    return "\n".join(f"  {key}   ({'; '.join(found.get(key, []))})" for key in sorted(keys))


def test_the_scan_sees_the_whole_package():
    assert {"spectrum", "spectrum.cli", "spectrum.workflow", *(f"spectrum.{name}" for name in ROOMS)} <= set(MODULES)
    assert any(item.target == "spectrum.sources.base" for item in IMPORTS)


def test_the_import_rules_hold_apart_from_the_known_violations():
    found = found_violations()
    print("Import-rule violations in spectrum/ today:\n" + (describe(found) or "  none"))
    new = set(found) - KNOWN_VIOLATIONS
    assert not new, "imports that break the package's rules (see this file's docstring):\n" + describe(new)


def test_every_known_violation_is_still_there():
    fixed = KNOWN_VIOLATIONS - set(found_violations())
    assert not fixed, "fixed, so delete from KNOWN_VIOLATIONS:\n" + "\n".join(f"  {key}" for key in sorted(fixed))


def test_cycles_are_found():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_rule_reader_sees_each_kind_of_import(tmp_path):
    """The reader itself, on the forms the rules depend on."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "import torch.nn\n"
        "from .. import errors, scan\n"
        "from ..scoring.snr import x\n"
        "from .base import TensorInfo\n"
        "if TYPE_CHECKING:\n"
        "    from rich.console import Console\n"
        "class C:\n"
        "    def f(self):\n"
        "        import torch\n"
    )
    name = "spectrum.sources.example"
    MODULES[name] = tmp_path / "example.py"
    MODULES[name].write_text(source)
    try:
        seen = {(item.target, item.module_level, item.type_checking) for item in imports_of(name)}
    finally:
        del MODULES[name]
    assert seen == {
        ("typing", True, False),
        ("torch.nn", True, False),
        ("spectrum.errors", True, False),  # a submodule
        ("spectrum", True, False),  # `scan` is a name of the package API: spectrum/__init__.py is imported
        ("spectrum.scoring.snr", True, False),
        ("spectrum.sources.base", True, False),
        ("rich.console", True, True),
        ("torch", False, False),
    }
