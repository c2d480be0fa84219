"""The package's layout, kept by a test: imports run one way, down, and the commands stay thin.

The import graph is read from the source (AST), not by importing: every ``import`` and ``from ... import`` of
``avatar_lightning``, ``datamodules`` and ``callbacks``, at module top or inside a function (a lazy import is still
a dependency), but not under ``if TYPE_CHECKING:`` (annotations only). Rules:

- nothing outside ``avatar_lightning/stages/`` imports from it, and no command module but ``demo`` imports
  another one (the commands are the top: a library function belongs below them);
- no import circle, but the rasteriser's backend registry (``render.rasterizer`` picks a backend module, which
  implements its interface);
- a command module (``stages/*.py`` but ``demo.py``) has at most :data:`COMMAND_LINES` lines: it parses, makes one
  library call and prints;
- no file of the three packages is longer than :data:`FILE_LINES` lines unless its docstring says why in a line
  ``Why one file: ...``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

PACKAGES = ("avatar_lightning", "datamodules", "callbacks")
STAGES = "avatar_lightning.stages"
ORCHESTRATOR = "avatar_lightning.stages.demo"
ALLOWED_CIRCLES = [{"avatar_lightning.render.rasterizer", "avatar_lightning.render.torch_backend",
                    "avatar_lightning.render.nvdiffrast_backend"}]
COMMAND_LINES = 150
FILE_LINES = 450


def module_files(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """``{dotted module name: file}`` of every ``.py`` file in ``packages`` under ``root``."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Line numbers of imports inside ``if TYPE_CHECKING:`` blocks."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                for child in ast.walk(inner):
                    if isinstance(child, ast.Import | ast.ImportFrom):
                        lines.add(child.lineno)
    return lines


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: the project modules it imports}``; ``from package import name`` counts as importing the submodule
    ``package.name`` where one exists, else the package."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skip = _type_checking_only(tree)
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom) or node.lineno in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the module's package upwards
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def upward_imports(graph: dict[str, set[str]], stages: str = STAGES, orchestrator: str = ORCHESTRATOR) -> list[str]:
    """Imports that run up into ``stages``: from outside it, or from one command into another (but the
    orchestrator's)."""
    return [f"{module} imports {target}" for module, targets in sorted(graph.items()) for target in sorted(targets)
            if target.startswith(f"{stages}.") and module != orchestrator]


def _why_one_file(path: Path) -> bool:
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    return any(line.strip().startswith("Why one file:") for line in docstring.splitlines())


# ---------------------------------------------------------------------------------------------- the checker itself
def _write_tree(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_files(root, ["pkg"])


def test_the_checker_finds_a_circle_an_upward_import_and_ignores_type_checking(tmp_path: Path) -> None:
    modules = _write_tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "def f():\n    from pkg.a import x\n",  # a lazy import closes the circle all the same
        "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.d import Y\n",
        "pkg/d.py": "from . import c\n",
        "pkg/stages/__init__.py": "",
        "pkg/stages/run.py": "from pkg.stages.other import main\n",
        "pkg/stages/other.py": "",
        "pkg/stages/demo.py": "from pkg.stages import other\n",  # the orchestrator may
        "pkg/low.py": "import pkg.stages.run\n",
    })
    graph = import_graph(modules)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"} and graph["pkg.c"] == set()
    assert graph["pkg.d"] == {"pkg.c"}  # a relative import resolves to the sibling module
    assert circles(graph) == [{"pkg.a", "pkg.b"}]
    assert graph["pkg.stages.demo"] == {"pkg.stages.other"}
    assert upward_imports(graph, "pkg.stages", "pkg.stages.demo") == [
        "pkg.low imports pkg.stages.run", "pkg.stages.run imports pkg.stages.other"]


# ---------------------------------------------------------------------------------------------- the project
@pytest.fixture(scope="module")
def project() -> tuple[dict[str, Path], dict[str, set[str]]]:
    modules = module_files(REPO_ROOT)
    return modules, import_graph(modules)


def test_nothing_imports_up_into_the_commands(project: tuple[dict[str, Path], dict[str, set[str]]]) -> None:
    _, graph = project
    assert upward_imports(graph) == [], "a library function belongs below stages/; move it down and import it there"


def test_no_import_circle_but_the_rasteriser_registry(project: tuple[dict[str, Path], dict[str, set[str]]]) -> None:
    _, graph = project
    found = [sorted(c) for c in circles(graph) if c not in ALLOWED_CIRCLES]
    assert found == [], f"import circles: {found}"


def test_commands_are_thin_and_files_small(project: tuple[dict[str, Path], dict[str, set[str]]]) -> None:
    modules, _ = project
    lines = {name: len(path.read_text().splitlines()) for name, path in modules.items()}
    fat_commands = {name: n for name, n in lines.items()
                    if name.startswith(f"{STAGES}.") and name != ORCHESTRATOR and n > COMMAND_LINES}
    assert fat_commands == {}, f"command modules over {COMMAND_LINES} lines: move the work into the library"
    long_files = {name: n for name, n in lines.items() if n > FILE_LINES and not _why_one_file(modules[name])}
    assert long_files == {}, f"files over {FILE_LINES} lines without a 'Why one file:' line in their docstring"


def test_old_import_paths_still_work() -> None:
    """``avatar_lightning.cache`` and ``avatar_lightning.avatar`` were single modules; outside code may use them."""
    from avatar_lightning.avatar import Avatar, export_avatar, load_avatar
    from avatar_lightning.cache import CacheError, CameraRecord, CaptureCache, SequenceRecord, atomic_write_text
    from avatar_lightning.cache.store import CaptureCache as Store

    assert CaptureCache is Store and callable(export_avatar) and callable(load_avatar) and Avatar
    assert issubclass(CacheError, RuntimeError) and CameraRecord and SequenceRecord and atomic_write_text
