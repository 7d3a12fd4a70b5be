"""The shape of the package: no import cycle among studio's modules, and Gradio (and the browser
driver) only where they belong. Every import statement counts, wherever it sits: at the top,
inside a function, or under `if TYPE_CHECKING:`.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "studio"
FRONT_ENDS = ("studio.ui", "studio.bench")  # the only places that may import gradio or playwright
UI_LIBRARIES = ("gradio", "playwright")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_names(path: Path) -> list[str]:
    """Every module an import statement in `path` names, absolute, with `from x import y`
    giving `x.y` when that is a module of its own (as in `from studio import data`)."""
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_in(source: str, name: str, is_package: bool) -> list[str]:
    package = name if is_package else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            # `from studio.ui import plots` needs studio/ui/plots.py, not what studio/ui/__init__.py
            # defines (a parent package is loaded first anyway); `from studio import ROOT` needs both
            out += submodules if len(submodules) == len(node.names) else [base] + submodules
    return out


def studio_graph() -> dict[str, set[str]]:
    """module -> the studio modules it imports (a `from studio.x import y` that names no module
    of its own imports `studio.x`)."""
    graph = {}
    for name, path in MODULES.items():
        targets = set()
        for imported in imported_names(path):
            while imported and imported not in MODULES:  # `import studio.x.y` of a name inside x
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None."""
    done, path = set(), []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for nxt in sorted(graph[node]):
            cycle = visit(nxt)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


SAMPLE = """
from typing import TYPE_CHECKING
import studio.data
from studio import models, checkpoints_dir
if TYPE_CHECKING:
    from studio.decoding import Column

def later():
    from . import runs
    import gradio as gr
"""


def test_the_walk_sees_every_kind_of_import():
    found = set(imports_in(SAMPLE, "studio.chat", is_package=False))
    assert {"studio.data", "studio.models", "studio", "studio.decoding", "studio.runs", "gradio"} <= found
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "d"}, "b": {"d"}, "d": set()}) is None


def test_the_shared_bottom_modules_import_nothing_from_the_studio():
    # every other module may build on these, so they must not build on any
    graph = studio_graph()
    for name in ("studio.corpus", "studio.config", "studio.atomic", "studio.hub"):
        assert graph[name] == set(), f"{name} imports {sorted(graph[name])}"


def test_no_import_cycle_in_the_package():
    cycle = find_cycle(studio_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.startswith(FRONT_ENDS)))
def test_the_engine_imports_no_ui_library(name):
    ui = [m for m in imported_names(MODULES[name]) if m.split(".")[0] in UI_LIBRARIES]
    assert not ui, f"{name} imports {ui}: only {' and '.join(FRONT_ENDS)} may"
