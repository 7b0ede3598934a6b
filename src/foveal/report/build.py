"""``foveal report``: which kind of folder a path is (run, eval, localization, explain, demo) and its
``report.html``, built from the page pieces of :mod:`foveal.report.html` by the section builders."""

from __future__ import annotations

import os
from pathlib import Path

from foveal.engine.runinfo import RUN_INFO
from foveal.errors import FovealError
from foveal.io import atomic_output
from foveal.report import sections, task_sections
from foveal.report.html import REPORT, Page, read_json
from foveal.tasks.table import TASK_NAMES, spec_of_metrics, task_spec


def report_kind(folder: Path) -> str:
    """ "demo", "train", "explain" or "eval", from what ``folder`` holds."""
    info = read_json(folder / RUN_INFO, "the run record") if (folder / RUN_INFO).is_file() else {}
    if info.get("kind") == "demo":
        return "demo"
    if (folder / "checkpoints").is_dir() or (folder / "metrics.jsonl").is_file():
        return "train"
    if (folder / "explanations.json").is_file():
        return "explain"
    if (folder / "metrics.json").is_file():
        return "eval"
    if (folder / "localization.json").is_file():
        return "localization"
    raise FovealError(
        f"{folder} holds no foveal results (no checkpoints/, metrics.json, localization.json, explanations.json or a "
        "demo's run_info.json): pass a run directory of foveal train, the out folder of eval or explain, or the "
        "demo's folder",
        options=("out",),
    )


def build_report(folder: str | os.PathLike[str]) -> str:
    """The HTML text of the report of ``folder``."""
    root = Path(folder)
    if not root.exists():
        raise FovealError(
            f"{root} does not exist: pass a run directory or a folder written by foveal eval, explain or demo"
        )
    if not root.is_dir():
        raise FovealError(
            f"{root} is a file, not a folder: pass a run directory or a folder written by eval, explain or demo"
        )
    kind = report_kind(root)
    builders = {
        "train": sections.training_page,
        "eval": _evaluation_page,
        "localization": task_sections.localization_page,
        "explain": _explanation_page,
        "demo": task_sections.demo_page,
    }
    page = builders[kind](root)
    return page.render()


def _evaluation_page(folder: Path) -> Page:
    """The report of an ``eval --out`` folder, with the section of its task (from its run record, else recognised by
    the keys of its metrics)."""
    task = sections.run_info(folder).get("task")
    spec = task_spec(task) if task in TASK_NAMES else spec_of_metrics(read_json(folder / "metrics.json", "the metrics"))
    return task_sections.evaluation_page(folder, spec.name if spec else task, spec.report_section if spec else None)


def _explanation_page(folder: Path) -> Page:
    """The report of an ``explain --out`` folder, its rows named as the task explains them."""
    return task_sections.explanation_page(
        folder, lambda task: task_spec(task).explained if task in TASK_NAMES else "class"
    )


def write_report(folder: str | os.PathLike[str]) -> Path:
    """Write ``folder/report.html`` (atomically) and return its path."""
    text = build_report(folder)
    path = Path(folder) / REPORT
    with atomic_output(path) as handle:
        handle.write(text)
    return path
