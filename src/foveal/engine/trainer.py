"""The training loop shared by every task.

A task hands the trainer a model, a dataset of training samples, a collate function, a loss function and an
evaluation function; the trainer owns the rest: data order, learning-rate schedule, warm-up, gradient clipping, EMA,
mixed precision (bf16 / fp16 autocast), distributed data-parallel, progress bars, metric logs, curves and atomic
checkpoints with exact resume.

Safety: the configs' ranges are checked before anything runs; a fresh run into a folder that holds an earlier run is
trained in a staging folder inside it and replaces the earlier run only once it has written its first checkpoint, so
a run that fails early leaves the earlier one as it was; a loss or weights that become NaN or infinite stop the run
before anything non-finite is saved; ``best`` is written before the step checkpoint that records it, so a kill
between the two never leaves a ``best`` older than the recorded best score.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from foveal.config import POSITIVE, at_least, between, check_ranges
from foveal.engine import checkpoint as ckpt_io
from foveal.engine.device import resolve_precision
from foveal.engine.distributed import DistInfo, barrier
from foveal.engine.logging import MetricLog
from foveal.engine.optim import ModelEMA, OptimConfig, build_optimizer, build_schedule
from foveal.engine.runinfo import write_run_info
from foveal.errors import FovealError
from foveal.io import umask


@dataclass(frozen=True)
class TrainConfig:
    """How long and how to train; shared by every task.

    ``max_steps`` stops the run early without changing the schedule (which is planned for ``epochs``);
    ``max_minutes`` stops it after that much wall-clock training time. ``checkpoint_every`` (steps) adds resume points
    between evaluations. ``device``: ``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``;
    ``precision``: ``auto`` (bf16 autocast where the device computes bf16 natively, else fp32; see
    :func:`foveal.engine.device.resolve_precision`), ``fp32``, ``bf16`` (autocast; warned about where it is emulated)
    or ``fp16`` (autocast with a gradient scaler, CUDA only); ``bf16: true`` is the older spelling of
    ``precision: bf16`` (a bf16 asked for, also where it is emulated; ``bf16: false`` turns it off).
    """

    epochs: Annotated[float, POSITIVE] = 350.0
    max_steps: Annotated[int | None, at_least(1)] = None
    max_minutes: Annotated[float | None, POSITIVE] = None
    seed: Annotated[int, between(0, 2**32 - 1)] = 0
    deterministic: bool = False
    bf16: bool = False
    ema_decay: Annotated[float | None, between(0, 1, high_open=True)] = None
    eval_every: Annotated[float, POSITIVE] = 1.0
    checkpoint_every: Annotated[int | None, at_least(1)] = None
    keep_last: Annotated[int, at_least(1)] = 2
    log_every: Annotated[int, at_least(1)] = 20
    channels_last: bool = True
    progress: bool = True
    workers: Annotated[int, between(0, 256)] = 0
    threads: Annotated[int | None, between(1, 1024)] = None
    device: str = "auto"
    precision: str = "auto"

    @property
    def precision_name(self) -> str:
        """``precision``, with the older ``bf16: true`` read as ``bf16`` unless ``precision`` names bf16 or fp16 (as
        before ``auto``: the configs stored in older checkpoints say ``bf16: true, precision: fp32`` for bf16)."""
        return "bf16" if self.bf16 and self.precision.strip().lower() in ("auto", "fp32") else self.precision


class EpochBatches:
    """Global batches of (index, sample_seed) for one epoch, this process's share of each.

    The permutation depends only on (seed, epoch), the per-sample augmentation seed only on (seed, epoch, index), so
    a resumed or distributed run sees exactly the samples an uninterrupted single-process run sees.
    """

    def __init__(self, n: int, global_batch: int, seed: int, epoch: int, start: int, dist_info: DistInfo) -> None:
        self.n, self.gb, self.seed, self.epoch, self.start, self.dist = n, global_batch, seed, epoch, start, dist_info

    def __len__(self) -> int:
        return self.n // self.gb - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g).tolist()
        local = self.gb // self.dist.world_size
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        for b in range(self.start, self.n // self.gb):
            chunk = perm[b * self.gb : (b + 1) * self.gb]
            mine = chunk[self.dist.rank * local : (self.dist.rank + 1) * local]
            yield [(i, (base + i) % (2**63)) for i in mine]


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with the CPU generator seeded to ``seed``, then put the global RNG back as it was.

    For per-sample augmentation: ~100× cheaper than ``torch.random.fork_rng`` + ``torch.manual_seed``, which also
    touch every accelerator's generator.
    """
    state = torch.get_rng_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


#: What a run writes into its directory; a fresh run over an earlier one replaces exactly these.
RUN_FILES = ("checkpoints", "metrics.jsonl", "metrics.csv", "curves.png", "config.json")

LossFn = Callable[[nn.Module, Any], Tensor]
EvalFn = Callable[[nn.Module], dict[str, Any]]


class Trainer:
    """Runs training for one task.

    Args:
        model: the network (on ``device``); wrapped in DDP when distributed.
        train_set: dataset indexed by (index, sample_seed) tuples, see :class:`EpochBatches`.
        collate: batch collation for the DataLoader.
        loss_fn: (model, batch) → scalar loss.
        evaluate: model → metrics dict with a "score" entry (higher is better) used to keep the best checkpoint.
        optim: optimizer config; train: loop config; batch_size: global batch.
        run_dir: where checkpoints, logs and curves go.
        meta: JSON-able record stored in every checkpoint (task, model spec, config, classes).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        train_set: Dataset[Any],
        collate: Callable[[list[Any]], Any],
        loss_fn: LossFn,
        evaluate: EvalFn,
        optim: OptimConfig,
        train: TrainConfig,
        batch_size: int,
        run_dir: str | Path,
        meta: dict[str, Any],
        dist_info: DistInfo | None = None,
        device: torch.device | None = None,
        plot_curves: Callable[[list[dict[str, Any]], Path], object] | None = None,
        fixed_shapes: bool = True,
    ) -> None:
        check_ranges(train, "train.")
        check_ranges(optim, "optim.")
        self.dist = dist_info or DistInfo()
        self.device = device or torch.device("cpu")
        self.precision = resolve_precision(train.precision_name, self.device, training=True)
        self.fixed_shapes = fixed_shapes  # every batch the same shape: let cuDNN pick its fastest kernels once
        self.model, self.train_set, self.collate = model, train_set, collate
        self.loss_fn, self.evaluate = loss_fn, evaluate
        self.ocfg, self.cfg = optim, train
        self.run_dir = Path(run_dir)
        self.final_dir: Path | None = None  # where a staged fresh run goes once it has a checkpoint
        self._log: MetricLog | None = None
        self.meta = meta
        self.plot_curves = plot_curves
        self.global_batch = batch_size
        n = len(train_set)  # type: ignore[arg-type]
        if n < batch_size:
            raise FovealError(
                f"the training data has {n} samples, fewer than one batch of {batch_size}: lower data.batch_size"
            )
        self.steps_per_epoch = n // batch_size
        self.total_steps = int(math.ceil(train.epochs * self.steps_per_epoch))
        self.optimizer = build_optimizer(model, optim, batch_size)
        self.schedule = build_schedule(optim, batch_size, self.steps_per_epoch, self.total_steps)
        self.ema = ModelEMA(model, train.ema_decay) if train.ema_decay else None
        self.scaler = self.precision.grad_scaler()  # fp16 only; its scale is part of the resume state
        self.eval_interval = max(1, int(round(train.eval_every * self.steps_per_epoch)))
        self.step = 0
        self.best: float | None = None
        self.ddp: nn.Module = model
        if self.dist.enabled:
            self.ddp = nn.parallel.DistributedDataParallel(model)

    # -- state -------------------------------------------------------------------------------------------------------
    def resume(self, ckpt: ckpt_io.Checkpoint) -> None:
        """Restore everything from ``ckpt`` (written by this trainer) so the run continues exactly."""
        ckpt_io.restore_training(
            ckpt, self.model, self.optimizer, self.ema.module if self.ema else None, grad_scaler=self.scaler
        )
        self.step = ckpt.step
        self.best = ckpt.meta.get("best_score")
        if self.ema is not None:
            self.ema.updates = int(ckpt.meta.get("ema_updates", self.step))

    def _save(self, name: str, metrics: dict[str, Any] | None = None, resumable: bool = True) -> Path:
        self._check_finite_weights()
        meta = {
            **self.meta,
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "best_score": self.best,
            "metrics": metrics or {},
            "ema_updates": self.ema.updates if self.ema else 0,
        }
        path = ckpt_io.save_checkpoint(
            self.run_dir / "checkpoints" / name,
            model=self.model,
            meta=meta,
            ema=self.ema.module if self.ema else None,
            optimizer=self.optimizer if resumable else None,
            with_rng=resumable,
            grad_scaler=self.scaler if resumable else None,
        )
        if name.startswith("step-"):
            self._promote()
        return path

    def _check_finite_weights(self) -> None:
        """Refuse to save weights that became NaN / infinite (the loss can stay finite for the step that broke them)."""
        tensors = [p.detach() for p in self.model.parameters()]
        if self.ema is not None:
            tensors += [p.detach() for p in self.ema.module.parameters()]
        if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            self._stop_non_finite("the weights")

    def _stop_non_finite(self, what: str) -> None:
        latest = ckpt_io.latest_checkpoint(self.final_dir or self.run_dir)
        kept = f"the last good checkpoint, {latest}, is intact" if latest else "no checkpoint was written"
        resume = f"; continue from it with resume {self.final_dir or self.run_dir}" if latest else ""
        raise FovealError(
            f"training stopped at step {self.step}: {what} became NaN or infinite; {kept}. Lower optim.lr or set "
            f"optim.grad_clip (e.g. 1.0) and train again{resume}",
            options=("resume",),
        )

    # -- run directory -----------------------------------------------------------------------------------------------
    def _prepare_run_dir(self) -> None:
        """Clear what interrupted writes left; stage a fresh run that would replace an earlier run's checkpoints."""
        ckpt_io.remove_interrupted(self.run_dir)
        folder = self.run_dir / "checkpoints"
        if self.step == 0 and folder.is_dir() and any(folder.iterdir()):
            staging = Path(tempfile.mkdtemp(prefix=".new-run.tmp-", dir=self.run_dir))
            os.chmod(staging, 0o777 & ~umask())
            self.final_dir, self.run_dir = self.run_dir, staging

    def _promote(self) -> None:
        """Move a staged fresh run over the earlier run it replaces, now that it has written a checkpoint."""
        if self.final_dir is None:
            return
        staged, final = self.run_dir, self.final_dir
        aside = Path(tempfile.mkdtemp(prefix=".old-run.tmp-", dir=final))
        for name in RUN_FILES:
            if (final / name).exists():
                os.replace(final / name, aside / name)
            if (staged / name).exists():
                os.replace(staged / name, final / name)
        shutil.rmtree(aside, ignore_errors=True)
        shutil.rmtree(staged, ignore_errors=True)
        self.run_dir, self.final_dir = final, None
        if self._log is not None:
            self._log.jsonl, self._log.csv = final / "metrics.jsonl", final / "metrics.csv"

    # -- loop --------------------------------------------------------------------------------------------------------
    def _loader(self, epoch: int, start: int) -> DataLoader[Any]:
        batches = EpochBatches(len(self.train_set), self.global_batch, self.cfg.seed, epoch, start, self.dist)  # type: ignore[arg-type]
        return DataLoader(
            self.train_set,
            batch_sampler=batches,
            collate_fn=self.collate,
            num_workers=self.cfg.workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(self.cfg.seed + epoch),
        )

    def _should_stop(self, started: float) -> bool:
        stop = self.step >= self.total_steps or (self.cfg.max_steps is not None and self.step >= self.cfg.max_steps)
        if self.cfg.max_minutes is not None and not stop:
            over = (time.perf_counter() - started) / 60 >= self.cfg.max_minutes
            if self.dist.enabled:
                flag = torch.tensor([float(over)], device=self.device)  # nccl reduces on the GPU
                dist.broadcast(flag, 0)
                over = bool(flag.item())
            stop = over
        return stop

    def _evaluate_and_save(self, log: MetricLog | None, train_time: float) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        if log is not None:
            model = self.ema.module if self.ema else self.model
            was_training = model.training
            model.eval()
            with torch.no_grad():
                metrics = self.evaluate(model)
            model.train(was_training)
            score = metrics.get("score")
            improved = score is not None and (self.best is None or score > self.best)
            if improved:
                self.best = float(score)  # type: ignore[arg-type]
            record = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4), "time_s": train_time}
            record.update({f"val_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            log.append(record)
            if improved:  # best first: a kill between the two writes never leaves best older than the record
                self._save("best", metrics, resumable=False)
            self._save(f"step-{self.step:08d}", metrics)
            ckpt_io.prune_checkpoints(self.run_dir, self.cfg.keep_last)
            log.write_csv()
            if self.plot_curves is not None:
                self.plot_curves(log.records, self.run_dir / "curves.png")
        barrier()
        return metrics

    def fit(self) -> dict[str, Any]:
        """Train until the planned steps (or ``max_steps`` / ``max_minutes``), evaluating and checkpointing."""
        if self.dist.is_main:
            self._prepare_run_dir()
        log = MetricLog(self.run_dir, resume_step=self.step) if self.dist.is_main else None
        self._log = log
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.device.type == "cuda" and self.fixed_shapes
        try:
            return self._fit(log)
        except BaseException:
            if self.final_dir is not None:  # the fresh run failed before its first checkpoint: the earlier run stays
                shutil.rmtree(self.run_dir, ignore_errors=True)
                self.run_dir, self.final_dir = self.final_dir, None
            raise
        finally:
            torch.backends.cudnn.benchmark = benchmark

    def _fit(self, log: MetricLog | None) -> dict[str, Any]:
        cfg = self.cfg
        self.model.train()
        scaler = self.scaler
        started, wall_started, first_step = time.perf_counter(), time.time(), self.step
        metrics: dict[str, Any] = {}
        last_eval_step = self.step if self.step > 0 else -1
        running, seen, t_log = 0.0, 0, time.perf_counter()
        bar = self._progress_bar()
        while not self._should_stop(started):
            epoch, start = divmod(self.step, self.steps_per_epoch)
            for batch in self._loader(epoch, start):
                value, lr = self._train_step(batch, scaler)
                running += value
                seen += 1
                bar.update(1)
                if log is not None and (self.step % cfg.log_every == 0 or self.step == 1):
                    now = time.perf_counter()
                    rate = seen * self.global_batch / max(now - t_log, 1e-9)
                    rec = {
                        "step": self.step,
                        "epoch": round(self.step / self.steps_per_epoch, 4),
                        "train_loss": running / seen,
                        "lr": lr,
                        "images_per_s": round(rate, 2),
                    }
                    log.append(rec)
                    bar.set_postfix(loss=f"{running / seen:.4f}", lr=f"{lr:.3g}")
                    running, seen, t_log = 0.0, 0, now
                if self.step % self.eval_interval == 0:
                    metrics = self._evaluate_and_save(log, time.perf_counter() - started)
                    last_eval_step = self.step
                elif cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self._save_resume_point()
                if self._should_stop(started):
                    break
        bar.close()
        if last_eval_step != self.step:
            metrics = self._evaluate_and_save(log, time.perf_counter() - started)
        if self.dist.is_main:
            self._write_run_info(wall_started, first_step)
        return metrics

    def _progress_bar(self) -> Any:
        """A tqdm bar over this run's steps, shown on rank 0 when ``train.progress`` asks for it."""
        from tqdm import tqdm

        cfg = self.cfg
        return tqdm(
            total=self.total_steps if cfg.max_steps is None else min(cfg.max_steps, self.total_steps),
            initial=self.step,
            disable=not (cfg.progress and self.dist.is_main),
            unit="step",
            dynamic_ncols=True,
            mininterval=1.0,
        )

    def _train_step(self, batch: Any, scaler: torch.amp.GradScaler) -> tuple[float, float]:
        """One optimizer step on ``batch`` at the scheduled learning rate (EMA updated, ``step`` advanced).

        Returns:
            The batch's loss and the learning rate used.
        """
        lr = self.schedule(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with self.precision.autocast():
            loss = self.loss_fn(self.ddp, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            self._stop_non_finite(f"the training loss ({value})")
        self.optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if self.ocfg.grad_clip:
            scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.ocfg.grad_clip)
        scaler.step(self.optimizer)
        scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return value, lr

    def _save_resume_point(self) -> None:
        """A step checkpoint between evaluations (``train.checkpoint_every``), keeping the last ``keep_last``."""
        if self.dist.is_main:
            self._save(f"step-{self.step:08d}")
            ckpt_io.prune_checkpoints(self.run_dir, max(self.cfg.keep_last, 1))
        barrier()

    def _write_run_info(self, wall_started: float, first_step: int) -> None:
        data = dict(self.meta.get("config", {}).get("data", {}))
        write_run_info(
            self.run_dir,
            "train",
            wall_started,
            task=self.meta.get("task"),
            data={
                "train": data.get("train"),
                "val": data.get("val") or data.get("train"),
                "train_samples": len(self.train_set),  # type: ignore[arg-type]
            },
            batch_size=self.global_batch,
            steps=self.step,
            steps_per_epoch=self.steps_per_epoch,
            resumed=first_step > 0,
            processes=self.dist.world_size,
            device=str(self.device),
            precision=self.precision.record(),
        )
