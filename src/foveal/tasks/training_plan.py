"""A training checked before it starts (:func:`plan_training`: the config, the device and precision, the run
directory) and run (:func:`run_training`) through the task table; ``foveal train`` and :func:`foveal.train` both run
it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from foveal.config import load_config, recipe_path
from foveal.engine.device import resolve_device, resolve_precision
from foveal.errors import FovealError
from foveal.io import writable_dir
from foveal.tasks.table import task_spec


@dataclass(frozen=True)
class TrainPlan:
    """A training to run: the task, its checked config and the run directory (``resume``: continue the run there
    with the config stored in it; ``config`` is then None)."""

    task: str
    config: Any
    run_dir: Path
    resume: bool = False


def plan_training(
    task: str,
    config: str | Path | None = None,
    out: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    overrides: Sequence[str] = (),
    device: str | None = None,
) -> TrainPlan:
    """Check a training before it starts: the config (a YAML path or a bundled recipe such as ``classify_cpu``, with
    ``key=value`` overrides), the config's ``train.device`` when no ``device`` is given, ``train.precision``, and the
    run directory (``out``, default the config's ``out``); ``resume`` continues the run in that directory with its
    stored config."""
    spec = task_spec(task)
    if resume is not None:
        if overrides or config is not None:
            raise FovealError(
                "resume continues a run with its stored configuration: drop config and key=value overrides",
                options=("resume", "config"),
            )
        return TrainPlan(task, None, Path(resume), resume=True)
    cfg = load_config(spec.config, recipe_path(None if config is None else str(config), task), list(overrides))
    # the device (the config's train.device when none is given) and the precision, checked before the run directory
    # is made (a bf16 the device emulates is warned about here)
    resolve_precision(cfg.train.precision_name, resolve_device(device or cfg.train.device), training=True)
    run_dir = Path(out or cfg.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise FovealError(
            f"run directory {run_dir} is a file: pass a folder as out (it is created if missing)", options=("out",)
        )
    writable_dir(run_dir, "run directory")
    if run_dir.exists() and any((run_dir / "checkpoints").glob("step-*")) and not overwrite:
        raise FovealError(
            f"run directory {run_dir} already holds checkpoints: continue it with resume {run_dir}, choose another "
            "out, or pass overwrite to train over it",
            options=("resume", "out", "overwrite"),
        )
    return TrainPlan(task, cfg, run_dir)


def run_training(plan: TrainPlan, device: str | torch.device | None = None) -> dict[str, Any]:
    """Run ``plan``; returns the final validation metrics with "run_dir" and "step" (``device`` None: the config's
    ``train.device``)."""
    train = task_spec(plan.task).train
    if plan.resume:
        return train(plan.config, resume=plan.run_dir, device=device)
    return train(plan.config, run_dir=plan.run_dir, device=device)
