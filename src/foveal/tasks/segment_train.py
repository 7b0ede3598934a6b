"""Training a U-Net: the run set up by :mod:`foveal.tasks.scaffold`, validated tile by tile after each epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from foveal.config import check_data_keys, to_dict
from foveal.errors import FovealError
from foveal.losses.segmentation import segmentation_loss
from foveal.models.hub import weights_record
from foveal.tasks.scaffold import TrainingRun, fit, place_model, run_training
from foveal.tasks.segment import (
    TASK,
    TTA_MODES,
    SegmentConfig,
    TrainingTiles,
    attach_context,
    build_segmenter,
    class_names,
    collate,
    init_encoder,
    open_data,
    prepare,
    tile_input,
)
from foveal.tasks.segment_eval import evaluate


def train(
    cfg: SegmentConfig | None,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train a U-Net as ``cfg`` says; with ``resume``, continue the run in that directory exactly.

    Returns the final validation metrics (fg_iou, f1_50, ... and "run_dir").
    """
    return run_training(SegmentConfig, cfg, _train, task=TASK, run_dir=run_dir, resume=resume, device=device)


def _check_config(setup: TrainingRun[SegmentConfig]) -> None:
    cfg, world = setup.cfg, setup.dist_info.world_size
    if cfg.post.tta not in TTA_MODES:
        raise FovealError(f"post.tta={cfg.post.tta!r}: use 'none' (one pass) or 'dihedral' (8 rotations / flips)")
    if cfg.data.batch_size < 1 or cfg.data.batch_size % world:
        raise FovealError(
            f"data.batch_size={cfg.data.batch_size}: use a positive global batch that divides by the {world} processes"
        )
    if cfg.data.samples_per_epoch < cfg.data.batch_size:
        raise FovealError(
            f"data.samples_per_epoch={cfg.data.samples_per_epoch} is less than one batch: raise it or lower "
            "data.batch_size"
        )


def _train(setup: TrainingRun[SegmentConfig]) -> dict[str, Any]:
    cfg = setup.cfg
    _check_config(setup)
    kinds = "a folder with images/ and masks/ sub-folders, or a .tif stack with <stem>_labels.tif beside it"
    check_data_keys(cfg.data, ("nuclei-sample",), kinds)
    train_data, val_data = open_data(cfg.data)
    num_classes = train_data.num_classes
    model = build_segmenter(cfg.model, train_data.channels, num_classes)
    if cfg.model.weights and setup.resume is None:
        init_encoder(model, cfg.model)
    in_tile = tile_input(model, cfg.data.tile)
    tile_input(model, cfg.data.eval_tile)
    train_set = TrainingTiles(
        prepare(train_data, cfg.weights, num_classes),
        cfg.data.tile,
        in_tile,
        cfg.data.samples_per_epoch,
        cfg.augment,
    )
    val_set = attach_context(prepare(val_data, cfg.weights, num_classes), cfg.data)
    place_model(model, setup)

    def loss_fn(net: nn.Module, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        images, target, weight = batch
        target, weight = (t.to(setup.device, non_blocking=True) for t in (target, weight))
        logits = net(setup.images(images)).float()
        return segmentation_loss(logits, target, weight, kind=cfg.loss, focal_gamma=cfg.focal_gamma)

    def evaluate_fn(net: nn.Module) -> dict[str, Any]:
        result = evaluate(net, val_set, num_classes, cfg.data.eval_tile, cfg.post, with_rand=False)
        return result.summary()

    meta = {
        "task": TASK,
        "model": {"arch": "unet", "args": model.args},
        "config": to_dict(cfg),
        "classes": ["background", "foreground"] if train_data.kind == "instances" else class_names(num_classes),
        "input": {"channels": train_data.channels, "normalize": cfg.data.normalize, "masks": train_data.kind},
        **weights_record(cfg.model.weights),
    }
    return fit(
        setup,
        model=model,
        train_set=train_set,
        collate=collate,
        loss_fn=loss_fn,
        evaluate=evaluate_fn,
        meta=meta,
        batch_size=cfg.data.batch_size,
    )
