"""What every task's training and checkpoint loading do the same way, written once.

:func:`run_training` resolves a resumed run (its checkpoint and stored config), the run directory, the device and the
``torchrun`` process group, applies the config's threads, determinism and seed, and hands a :class:`TrainingRun` to
the task's own training function. :func:`fit` builds the shared :class:`~foveal.engine.trainer.Trainer` around what
the task made (model, samples, loss, evaluation, checkpoint record), continues a resumed run and writes
``config.json``. :func:`process_state` restores the caller's process afterwards: a library call to ``train`` leaves
thread count, deterministic-algorithms flag, cuDNN flags and the CPU random generator as it found them.
:func:`load_for_inference` loads any task's checkpoint for inference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from foveal.config import from_dict, to_dict
from foveal.engine import checkpoint as ckpt_io
from foveal.engine.device import resolve_device, resolve_precision, to_device, training_device
from foveal.engine.distributed import (
    DistInfo,
    convert_batchnorm,
    init_distributed,
    is_peer_failure,
    shutdown_distributed,
)
from foveal.engine.optim import OptimConfig
from foveal.engine.trainer import EvalFn, LossFn, TrainConfig, Trainer
from foveal.errors import FovealError
from foveal.inference.fast import inference_model
from foveal.io import write_json
from foveal.models.registry import rebuild
from foveal.tasks.names import NOUNS


class TaskConfig(Protocol):
    """What the scaffolding reads of a task's config (``ClassifyConfig``, ``SegmentConfig``, ``DetectConfig``)."""

    @property
    def out(self) -> str: ...

    @property
    def train(self) -> TrainConfig: ...

    @property
    def optim(self) -> OptimConfig: ...


C = TypeVar("C", bound=TaskConfig)


@dataclass(frozen=True)
class TrainingRun(Generic[C]):
    """One training run as the scaffolding set it up.

    Attributes:
        cfg: the task's config (for a resumed run, the one stored in its checkpoint).
        run: the run directory.
        resume: the checkpoint to continue from, or None for a fresh run.
        dist_info: rank and world size (one process: rank 0 of 1).
        device: where this process trains.
    """

    cfg: C
    run: Path
    resume: ckpt_io.Checkpoint | None
    dist_info: DistInfo
    device: torch.device

    def images(self, images: Tensor) -> Tensor:
        """A batch of images (N, C, H, W) on the training device, channels-last when the config asks for it."""
        return to_device(images, self.device, channels_last=self.cfg.train.channels_last)


@contextmanager
def process_state() -> Iterator[None]:
    """Run a block, then put back torch's thread count, the deterministic-algorithms flag (and its warn-only mode),
    the cuDNN ``deterministic`` / ``benchmark`` flags and the CPU random generator's state."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    rng = torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_rng_state(rng)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def run_training(
    config: type[C],
    cfg: C | None,
    body: Callable[[TrainingRun[C]], dict[str, Any]],
    *,
    task: str,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Set up a run and call ``body`` with it; the process's torch state is restored when this returns.

    Args:
        config: the task's config class.
        cfg: the task's config; None with ``resume`` (the run's stored config is used).
        body: the task's training, given the :class:`TrainingRun`; returns the final metrics.
        task: the task's name (a checkpoint of another task is not resumed; messages name ``foveal train TASK``).
        run_dir: the run directory (default ``cfg.out``); ignored with ``resume``.
        resume: a run directory to continue exactly from its latest step checkpoint.
        device: wins over ``cfg.train.device`` (e.g. from ``--device``); a resumed run may change it.
    """
    command = f"foveal train {task}"
    with process_state():
        checkpoint = None
        if resume is not None:
            checkpoint = ckpt_io.load_resume_point(resume, command)
            check_task(checkpoint, task)
            cfg = from_dict(config, checkpoint.meta["config"])
            run_dir = Path(resume)
        if cfg is None:
            raise FovealError("a training needs its config, or resume: the run directory to continue")
        run = Path(run_dir or cfg.out)
        where = training_device(cfg.train.device if device is None else device)
        dist_info = init_distributed(where)
        try:
            _apply(cfg.train)
            return body(TrainingRun(cfg, run, checkpoint, dist_info, where))
        except RuntimeError as exc:  # torch.distributed.DistError is one too
            if dist_info.enabled and is_peer_failure(exc):
                raise _lost_peer(exc, command, run if dist_info.is_main else None) from None
            raise
        finally:
            shutdown_distributed()


def _lost_peer(exc: BaseException, command: str, run: Path | None) -> FovealError:
    """The error of a rank whose peer died: what happened and how to continue the job."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = str(run) if run is not None else "RUN (the run directory that rank 0 writes)"
    return FovealError(
        f"another process of the job stopped or cannot be reached ({first[:200]}); its node's log says why. When "
        f"every node is up again, continue from the last checkpoint with '{command} --resume {where}' on each node"
    )


def _apply(tcfg: TrainConfig) -> None:
    """Threads, determinism and the seed of ``tcfg`` (undone by :func:`process_state`)."""
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    if tcfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(tcfg.seed)


def place_model(model: nn.Module, setup: TrainingRun[Any], sync_batchnorm: bool = True) -> None:
    """Move ``model`` to the training device (channels-last when configured); under ``torchrun``, turn its
    BatchNorm layers into synchronised ones unless ``sync_batchnorm`` is False (frozen statistics)."""
    if setup.dist_info.enabled and sync_batchnorm:
        convert_batchnorm(model, setup.device)
    model.to(setup.device)
    if setup.cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)


def fit(
    setup: TrainingRun[Any],
    *,
    model: nn.Module,
    train_set: Dataset[Any],
    collate: Callable[[list[Any]], Any],
    loss_fn: LossFn,
    evaluate: EvalFn,
    meta: dict[str, Any],
    batch_size: int,
    fixed_shapes: bool = True,
) -> dict[str, Any]:
    """Train with the shared :class:`~foveal.engine.trainer.Trainer`, continuing ``setup.resume`` when set.

    Returns:
        The final validation metrics without "score", plus "run_dir" and "step".
    """
    from foveal.report.plots import plot_curves  # deferred: matplotlib loads only once a run trains

    cfg = setup.cfg
    trainer = Trainer(
        model=model,
        train_set=train_set,
        collate=collate,
        loss_fn=loss_fn,
        evaluate=evaluate,
        optim=cfg.optim,
        train=cfg.train,
        batch_size=batch_size,
        run_dir=setup.run,
        meta=meta,
        dist_info=setup.dist_info,
        device=setup.device,
        plot_curves=lambda records, path: plot_curves(records, path),
        fixed_shapes=fixed_shapes,
    )
    if setup.resume is not None:
        trainer.resume(setup.resume)
    metrics = trainer.fit()
    if setup.dist_info.is_main:
        write_json(setup.run / "config.json", to_dict(cfg))
    return {**{k: v for k, v in metrics.items() if k != "score"}, "run_dir": str(setup.run), "step": trainer.step}


R = TypeVar("R")


def check_task(checkpoint: ckpt_io.Checkpoint, task: str) -> None:
    """Refuse a checkpoint of another task than ``task``, naming both."""
    found = checkpoint.meta.get("task")
    if found != task:
        raise FovealError(
            f"checkpoint {checkpoint.path} is a '{found}' checkpoint, not a {NOUNS.get(task, task)}; pass a {task} "
            "checkpoint"
        )


def load_for_inference(
    path: str | Path,
    task: str,
    read: Callable[[dict[str, Any]], R],
    *,
    fast: bool,
    device: str | torch.device,
    precision: str,
) -> tuple[nn.Module, R, ckpt_io.Checkpoint]:
    """Load a checkpoint (a checkpoint folder or a run directory) of one task for inference.

    Args:
        path: the checkpoint.
        task: the task it must be of (another task's checkpoint is refused).
        read: what the task needs of the checkpoint's record (classes, input geometry, config), read from its
            ``meta``; a missing or malformed entry is reported as a damaged record.
        fast: use :func:`foveal.inference.fast.inference_model`'s copy (BatchNorm folded, channels-last).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`foveal.engine.device.resolve_device`).
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (CUDA): the weights' format
            (:func:`foveal.engine.device.resolve_precision`); bf16 / fp16 imply ``fast``.

    Returns:
        The model in eval mode on ``device``, what ``read`` returned, and the checkpoint.
    """
    where = resolve_device(device)
    prec = resolve_precision(precision, where)
    checkpoint = ckpt_io.load_checkpoint(path)
    check_task(checkpoint, task)
    with ckpt_io.reading_record(checkpoint):
        model = rebuild(checkpoint.meta["model"])
        record = read(checkpoint.meta)
    ckpt_io.load_checkpoint_weights(model, checkpoint)
    model.eval()
    if fast or prec.reduced:
        model = inference_model(model, dtype=prec.dtype, device=where)
    return model.to(where), record, checkpoint
