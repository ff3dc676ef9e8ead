"""The layout docs/ARCHITECTURE.md describes: subpackages by concern, imports that flow one way,
no import cycle, no CLI in the core, short modules.

Imports are read from the source (every ``import`` and ``from ... import``, also inside
functions and ``TYPE_CHECKING`` blocks), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "sjc_core"
CLI_LAYER = {"sjc_core.cli", "sjc_core.__main__"}
TOP = "<top>"  # the top-level modules of sjc_core

# What each subpackage may import (besides itself and the top-level modules): the one-way flow
# commands -> runs -> training -> render, with files, recipes, native and sampling as leaves.
ALLOWED = {
    "files": set(),
    "recipes": set(),
    "native": set(),
    "sampling": set(),
    "render": {"files", "recipes"},
    "training": {"render", "sampling", "native", "recipes", "files"},
    "runs": {"training", "render", "files", "recipes"},
    "fit": {"runs", "training", "render", "files", "recipes"},
    "mesh": {"runs", "training", "render", "files", "recipes"},
    "batch": {"runs", "files", "recipes"},
    "viewer": {"runs", "training", "render", "files", "recipes"},
}


def module_name(path: Path) -> str:
    parts = ("sjc_core", *path.relative_to(CORE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in CORE.rglob("*.py")}


def imported(path: Path) -> set[str]:
    """Every module of the repository's packages (and typer) that ``path`` imports, anywhere."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


GRAPH = {name: {m for m in imported(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (CORE / parts[-1]).is_dir() else TOP


def subpackages() -> list[str]:
    return sorted(p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").is_file())


def test_a_handful_of_top_level_modules_and_subpackages_by_concern() -> None:
    top = sorted(p.name for p in CORE.glob("*.py"))
    assert len(top) <= 12, top
    assert {"contracts.py", "hookspecs.py", "errors.py", "cli.py"} <= set(top)
    others = [name for name in subpackages() if name != "commands"]
    assert len(others) >= 6, others
    assert set(others) == set(ALLOWED), "a new subpackage needs its place in ALLOWED and docs/ARCHITECTURE.md"


def test_no_import_cycle() -> None:
    # Tarjan's strongly connected components over the module graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    assert cycles == []


def test_imports_flow_one_way_between_subpackages() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        source = package(module)
        if source == TOP and module not in CLI_LAYER:  # contracts, hookspecs, errors, plugins, devices
            wrong += [f"{module} -> {target}" for target in targets if package(target) != TOP]
        if source not in ALLOWED:
            continue
        for target in targets:
            other = package(target)
            if other not in (source, TOP) and other not in ALLOWED[source]:
                wrong.append(f"{module} -> {target}")
            if other == TOP and target in CLI_LAYER:
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_the_core_never_imports_the_cli_layer_or_typer() -> None:
    wrong = []
    for module, path in MODULES.items():
        if module in CLI_LAYER or module.startswith("sjc_core.commands"):
            continue
        for target in imported(path):
            if target in CLI_LAYER or target.startswith("sjc_core.commands") or target.split(".")[0] == "typer":
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_module_over_400_lines() -> None:
    long = {
        str(path.relative_to(REPO)): count
        for folder in ("sjc_core", "plugins")
        for path in (REPO / folder).rglob("*.py")
        if (count := len(path.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert long == {}


def test_architecture_page_names_every_subpackage_and_the_readme_links_it() -> None:
    page = (REPO / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    missing = [name for name in subpackages() if f"`{name}/`" not in page]
    assert missing == []
    named_files = set(re.findall(r"`((?:[a-z_]+/)+[a-z_]+\.py)", page))
    absent = sorted(f for f in named_files if not (CORE / f).is_file() and not (REPO / f).is_file())
    assert absent == [], "files the architecture page names that do not exist"
    assert "docs/ARCHITECTURE.md" in (REPO / "README.md").read_text(encoding="utf-8")
