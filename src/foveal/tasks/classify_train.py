"""Training an EfficientNet classifier: the run set up by :mod:`foveal.tasks.scaffold`, validated (top-1, top-5)
after each epoch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foveal.config import check_data_keys, to_dict
from foveal.errors import FovealError
from foveal.models.hub import weights_record
from foveal.tasks.classify import (
    TASK,
    ClassifyConfig,
    ClassifySamples,
    build_classifier,
    collate,
    eval_transform,
    init_weights,
    open_data,
    resolution_of,
)
from foveal.tasks.classify_eval import evaluate
from foveal.tasks.scaffold import TrainingRun, fit, place_model, run_training


def train(
    cfg: ClassifyConfig | None,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train a classifier as ``cfg`` says; with ``resume``, continue the run in that directory exactly.

    Returns the final validation metrics (a dict with top1, top5, ... and the run directory under "run_dir").
    """
    return run_training(ClassifyConfig, cfg, _train, task=TASK, run_dir=run_dir, resume=resume, device=device)


def train_transform(resolution: int, augment: str) -> Callable[[Tensor], Tensor]:
    """The training augmentation ``augment`` ("autoaugment", "crop-flip", "flip", else none) at ``resolution``."""
    # deferred: torchvision imports torch._dynamo (about a second), which the task's inference does not need; the
    # task table imports this module with the rest of the task
    from torchvision.transforms import v2

    if augment == "autoaugment":
        return v2.Compose(
            [
                v2.RandomResizedCrop(resolution, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET),
            ]
        )
    base = eval_transform(resolution)
    if augment == "crop-flip":
        pad = max(1, resolution // 8)
        return v2.Compose(
            [base, v2.RandomCrop(resolution, padding=pad, padding_mode="reflect"), v2.RandomHorizontalFlip()]
        )
    if augment == "flip":
        return v2.Compose([base, v2.RandomHorizontalFlip()])
    return base


def _check_batch(cfg: ClassifyConfig, world: int, images: int | None = None) -> None:
    """The global batch is positive and divides by the ``world`` processes; with ``images``, one batch fits."""
    batch = cfg.data.batch_size
    if batch < 1:
        raise FovealError(f"data.batch_size={batch}: use a positive batch size, e.g. data.batch_size=64")
    if batch % world:
        raise FovealError(f"data.batch_size={batch} is the global batch and must divide by the {world} processes")
    if images is not None and images < batch:
        raise FovealError(
            f"training data {cfg.data.train} has {images} images, fewer than one batch "
            f"(data.batch_size={batch}): lower data.batch_size, or "
            + ("raise data.limit" if cfg.data.limit is not None else "add images")
        )


def _train(setup: TrainingRun[ClassifyConfig]) -> dict[str, Any]:
    cfg = setup.cfg
    _check_batch(cfg, setup.dist_info.world_size)
    kinds = "a folder of IDX files, or an image folder with one sub-folder per class"
    check_data_keys(cfg.data, ("fashion-mnist", "fashion-mnist-sample"), kinds)
    train_data, val_data = open_data(cfg.data)
    _check_batch(cfg, setup.dist_info.world_size, len(train_data))
    res = resolution_of(cfg.model)
    if res < 1:
        raise FovealError(f"model.resolution={res}: use a positive input size in pixels, e.g. model.resolution=224")
    model = build_classifier(cfg.model, len(train_data.classes), train_data.channels)
    if cfg.model.weights and setup.resume is None:
        model = init_weights(model, cfg.model)
    place_model(model, setup)
    mean, std = cfg.data.mean, cfg.data.std
    val_samples = ClassifySamples(val_data, eval_transform(res), mean, std)
    classes = list(train_data.classes)

    def loss_fn(net: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        images, targets = batch
        logits = net(setup.images(images))
        return F.cross_entropy(logits.float(), targets.to(setup.device), label_smoothing=cfg.label_smoothing)

    def evaluate_fn(net: nn.Module) -> dict[str, Any]:
        result = evaluate(net, val_samples, classes)
        return {"top1": result.top1, "top5": result.top5, "loss": result.loss, "score": result.top1}

    meta = {
        "task": TASK,
        "model": {"arch": "efficientnet", "args": model.args},
        "config": to_dict(cfg),
        "classes": classes,
        "input": {"resolution": res, "channels": train_data.channels, "mean": list(mean), "std": list(std)},
        **weights_record(cfg.model.weights),
    }
    return fit(
        setup,
        model=model,
        train_set=ClassifySamples(train_data, train_transform(res, cfg.data.augment), mean, std),
        collate=collate,
        loss_fn=loss_fn,
        evaluate=evaluate_fn,
        meta=meta,
        batch_size=cfg.data.batch_size,
    )
