"""The task table is the one place that knows the tasks: every task has the same files and a full row, and no other
module compares a task's name, keys a table by task names, or imports a module by a string."""

from __future__ import annotations

import ast
from dataclasses import fields
from pathlib import Path

import pytest

from foveal.errors import FovealError
from foveal.tasks.names import TASK_NAMES
from foveal.tasks.table import TaskSpec, all_specs, checkpoint_spec, spec_of_metrics, task_spec

SRC = Path(__file__).resolve().parents[1] / "src" / "foveal"
TABLE = {SRC / "tasks" / "table.py", SRC / "tasks" / "names.py"}
FILES = ("{}.py", "{}_train.py", "{}_predict.py", "{}_eval.py", "{}_explain.py")


def _is_task(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value in TASK_NAMES


def task_knowledge(tree: ast.AST) -> list[tuple[int, str]]:
    """Where ``tree`` knows a task by its name: a comparison with a task's name, a dict keyed by two or more task
    names, a subscript or ``.get`` by a task's name, or an import by a string (``importlib.import_module``,
    ``__import__``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(_is_task(n) for n in (node.left, *node.comparators)):
            found.append((node.lineno, "compares a task name"))
        elif isinstance(node, ast.Dict) and sum(_is_task(k) for k in node.keys if k is not None) >= 2:
            found.append((node.lineno, "a dict keyed by task names"))
        elif isinstance(node, ast.Subscript) and _is_task(node.slice):
            found.append((node.lineno, "looks up by a task name"))
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("import_module", "__import__") and any(isinstance(a, ast.Constant) for a in node.args):
                found.append((node.lineno, "imports by a string"))
            elif name == "get" and node.args and _is_task(node.args[0]):
                found.append((node.lineno, "looks up by a task name"))
    return found


def test_no_module_outside_the_table_knows_a_task_by_name() -> None:
    known = {
        f"{p.relative_to(SRC)}:{line}: {what}"
        for p in sorted(SRC.rglob("*.py"))
        if p not in TABLE and p != SRC / "__init__.py"  # the package root imports the API lazily by module name
        for line, what in task_knowledge(ast.parse(p.read_text()))
    }
    assert known == set()


@pytest.mark.parametrize(
    ("code", "count"),
    [
        ("if task == 'segment': pass", 1),
        ("x = {'classify': 1, 'detect': 2}", 1),
        ("y = BATCH['detect']", 1),
        ("z = SIZES.get('classify', 1)", 1),
        ("import importlib\nm = importlib.import_module('foveal.tasks.classify')", 1),
        ("if spec.name != kind: pass\nx = {'train': 1}", 0),
    ],
)
def test_the_guard_sees_each_kind_of_task_knowledge(code: str, count: int) -> None:
    assert len(task_knowledge(ast.parse(code))) == count


@pytest.mark.parametrize("task", TASK_NAMES)
def test_every_task_has_the_same_files_and_a_full_row(task: str) -> None:
    missing = [name.format(task) for name in FILES if not (SRC / "tasks" / name.format(task)).is_file()]
    assert missing == []
    spec = task_spec(task)
    assert spec.name == task and spec.batch_size >= 1 and spec.noun
    for f in fields(TaskSpec):
        value = getattr(spec, f.name)
        if f.name in ("csv", "default_out"):  # optional by design
            continue
        assert value is not None, f.name
        if f.name in ("train", "load", "predictor", "writer", "evaluate", "explain", "export_spec", "result"):
            assert callable(value), f.name


def test_lookups_by_name_checkpoint_and_metrics(tiny_checkpoints: dict[str, str]) -> None:
    assert [s.name for s in all_specs()] == list(TASK_NAMES)
    for task, path in tiny_checkpoints.items():
        assert checkpoint_spec(path).name == task
    assert spec_of_metrics({"AP50": 0.1, "per_class": [], "AP": 0.0}) is task_spec("detect")
    assert spec_of_metrics({"loss": 1.0}) is None
    with pytest.raises(FovealError, match="unknown task 'track': use one of classify, segment, detect"):
        task_spec("track")
