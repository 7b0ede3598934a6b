"""The import graph of ``src/foveal``, read with ``ast``: no circle, lower layers never import upper ones, no private
name crosses a module boundary. Imports inside functions count like those at module level; those under
``if TYPE_CHECKING:`` (annotations only) do not."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LOWER = ("foveal.data", "foveal.models", "foveal.engine", "foveal.losses")
UPPER = ("foveal.tasks", "foveal.report", "foveal.cli", "foveal.demo", "foveal.api")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    return {_module_name(p): (p, ast.parse(p.read_text(), filename=str(p))) for p in sorted(SRC.rglob("*.py"))}


def _base(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    package = package[: len(package) - node.level + 1]
    return ".".join([*package, *([node.module] if node.module else [])])


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Ids of the nodes inside ``if TYPE_CHECKING:`` blocks (imports for annotations only, never run)."""
    hidden: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hidden.update(id(inner) for stmt in node.body for inner in ast.walk(stmt))
    return hidden


def _imports(module: str, path: Path, tree: ast.Module, known: set[str]) -> Iterator[tuple[str, str, ast.stmt]]:
    """Yield ``(imported module, imported name or "", node)`` for every foveal import in ``tree`` that runs
    (at module level or inside a function; not those for type checkers only)."""
    hidden = _type_checking_only(tree)
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("foveal"):
                    yield alias.name, "", node
        elif isinstance(node, ast.ImportFrom):
            base = _base(node, module, path.name == "__init__.py")
            if not base.startswith("foveal"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub, "", node) if sub in known else (base, alias.name, node)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, tree) in modules.items():
        for target, _, _ in _imports(name, path, tree, known):
            if target in known and target != name:
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_cycle_finder_sees_long_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_lower_layers_never_import_upper_ones() -> None:
    arrows = sorted(
        (src, dst) for src, targets in _graph().items() if _within(src, LOWER) for dst in targets if _within(dst, UPPER)
    )
    assert arrows == []


def test_no_private_name_crosses_a_module() -> None:
    modules = _modules()
    known = set(modules)
    crossing = sorted(
        (name, target, imported)
        for name, (path, tree) in modules.items()
        for target, imported, _ in _imports(name, path, tree, known)
        if imported.startswith("_") and not imported.startswith("__") and target != name
    )
    assert crossing == []


def _arrows(sources: tuple[str, ...], targets: tuple[str, ...]) -> list[tuple[str, str]]:
    return sorted(
        (src, dst)
        for src, imported in _graph().items()
        if _within(src, sources)
        for dst in imported
        if _within(dst, targets)
    )


def test_data_never_imports_models() -> None:
    """What data pipelines and models both need (resize, normalisation, batching) lives in foveal.preprocess."""
    assert _arrows(("foveal.data",), ("foveal.models",)) == []


def test_preprocess_is_a_bottom_layer() -> None:
    assert _graph()["foveal.preprocess"] <= {"foveal.errors"}


def test_metrics_never_import_explain() -> None:
    """Metrics score boxes; the callers draw them from maps with foveal.explain.boxes."""
    assert _arrows(("foveal.metrics",), ("foveal.explain",)) == []


RESULTS_MAY_IMPORT = {"foveal.errors", "foveal.api_args", "foveal.version"}


def test_results_is_a_bottom_layer() -> None:
    """Every result type lives in foveal.results, under every layer that makes or reads one; it imports no other
    foveal module (also not for type checkers only) and not torch."""
    modules = _modules()
    path, tree = modules["foveal.results"]
    imported = {target for target, _, _ in _imports("foveal.results", path, tree, set(modules))}
    imported |= {
        node.module or ""
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("foveal")
    }
    assert imported <= RESULTS_MAY_IMPORT
    top = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import) for alias in node.names}
    top |= {(node.module or "").split(".")[0] for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert "torch" not in top


def test_nothing_imports_the_package_root_for_a_name() -> None:
    """``import foveal`` runs the package's ``__init__``; a module that needs the version imports foveal.version."""
    modules = _modules()
    known = set(modules)
    leaks = sorted(
        (name, imported or "import foveal")
        for name, (path, tree) in modules.items()
        if name != "foveal"
        for target, imported, _ in _imports(name, path, tree, known)
        if target == "foveal"
    )
    assert leaks == []


def test_every_package_folder_has_an_init() -> None:
    """A folder of modules without ``__init__.py`` is a namespace package: no docstring, and mypy and setuptools
    treat it differently from its siblings."""
    missing = sorted(
        str(folder.relative_to(SRC))
        for folder in (SRC / "foveal").rglob("*")
        if folder.is_dir() and any(folder.glob("*.py")) and not (folder / "__init__.py").exists()
    )
    assert missing == []


FLAG = re.compile(r"--[A-Za-z]")
QUOTED_COMMAND = re.compile(r"'(?:foveal|ray|\{command\}) [^']*'")


def _message_text(node: ast.expr) -> str:
    """The literal text of a message expression: its string constants and f-string parts, each placeholder written as
    ``{expression}``."""
    if isinstance(node, ast.JoinedStr):
        return "".join(
            part.value if isinstance(part, ast.Constant) else "{" + ast.unparse(part.value) + "}"  # type: ignore[attr-defined]
            for part in node.values
        )
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return " ".join(_message_text(child) for child in ast.iter_child_nodes(node) if isinstance(child, ast.expr))


def _flags_in_errors(source: str) -> list[tuple[int, str]]:
    """``(line, text)`` of every ``FovealError(...)`` whose message names a command-line flag (``--name``) outside a
    quoted command (``'foveal predict … --resume'``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        if name != "FovealError":
            continue
        text = " ".join(_message_text(arg) for arg in node.args)
        if FLAG.search(QUOTED_COMMAND.sub("", text)):
            found.append((node.lineno, text))
    return found


def test_library_errors_name_parameters_not_flags() -> None:
    """A library message names the caller's parameters as the Python API spells them (``batch_size``) and lists them
    in ``options=``; only the CLI writes them as flags (``--batch-size``)."""
    flagged = sorted(
        (str(path.relative_to(SRC)), line, text)
        for path in (SRC / "foveal").rglob("*.py")
        if path.name != "cli.py" or path.parent.name != "foveal"
        for line, text in _flags_in_errors(path.read_text())
    )
    assert flagged == []


@pytest.mark.parametrize(
    ("source", "flagged"),
    [
        ('raise FovealError(f"--batch-size {n}: use a positive number")', True),
        ('raise errors.FovealError("pass " + "--out FOLDER")', True),
        ('raise FovealError(f"{n} images" if n else "see --help")', True),
        ('raise FovealError(f"batch_size {n}: use a positive number", options=("batch_size",))', False),
        ("raise FovealError(\"continue with 'foveal train detect --resume RUN'\")", False),
        ("raise FovealError(f\"continue with '{command} --resume {where}'\")", False),
        ('raise ValueError("--batch-size 0")', False),
    ],
)
def test_flag_guard_sees_flags(source: str, flagged: bool) -> None:
    assert bool(_flags_in_errors(source)) is flagged
