"""Optimizer construction and weight EMA, shared by every task."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from torch import nn

from foveal.config import POSITIVE, at_least, between
from foveal.engine.schedules import Schedule


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and learning-rate schedule.

    ``lr`` is the rate for a global batch of ``lr_batch`` images and is scaled linearly to the actual global batch
    (EfficientNet: 0.256 for 4096, i.e. 0.016 per 256). Weight decay is applied to conv and linear weights only.
    """

    name: Literal["rmsprop", "sgd", "adamw"] = "rmsprop"
    lr: Annotated[float, POSITIVE] = 0.256
    lr_batch: Annotated[int, at_least(1)] = 4096
    momentum: Annotated[float, between(0, 1, high_open=True)] = 0.9
    rmsprop_decay: Annotated[float, between(0, 1, high_open=True)] = 0.9
    eps: Annotated[float, POSITIVE] = 1e-3
    weight_decay: float = 1e-5
    nesterov: bool = False
    schedule: Literal["step_exponential", "cosine", "multistep", "constant"] = "step_exponential"
    decay_rate: Annotated[float, POSITIVE] = 0.97
    decay_epochs: Annotated[float, POSITIVE] = 2.4
    milestones: tuple[float, ...] = ()
    warmup_epochs: float = 0.0
    grad_clip: Annotated[float | None, POSITIVE] = None


def build_optimizer(model: nn.Module, cfg: OptimConfig, global_batch: int) -> torch.optim.Optimizer:
    """The optimizer of ``cfg`` over ``model``'s parameters, with decay on ≥2-D weights only."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    lr = scaled_lr(cfg, global_batch)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=cfg.rmsprop_decay, eps=cfg.eps, momentum=cfg.momentum)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=lr, eps=min(cfg.eps, 1e-8))


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    return cfg.lr * global_batch / cfg.lr_batch


def build_schedule(cfg: OptimConfig, global_batch: int, steps_per_epoch: int, total_steps: int) -> Schedule:
    return Schedule(
        base_lr=scaled_lr(cfg, global_batch),
        kind=cfg.schedule,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup_steps=int(round(cfg.warmup_epochs * steps_per_epoch)),
        decay_rate=cfg.decay_rate,
        decay_epochs=cfg.decay_epochs,
        milestones=cfg.milestones,
    )


class ModelEMA:
    """Exponential moving average of a model's weights, with the reference code's warm-up of the decay.

    decay_n = min(decay, (1 + n) / (10 + n)) at update n; buffers (BN statistics) are copied.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for e, p in zip(self.module.parameters(), model.parameters(), strict=True):
            e.lerp_(p.detach(), 1 - d)
        for eb, b in zip(self.module.buffers(), model.buffers(), strict=True):
            eb.copy_(b)
