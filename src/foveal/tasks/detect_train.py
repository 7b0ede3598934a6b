"""Training a RetinaNet: the run set up by :mod:`foveal.tasks.scaffold`, validated with COCO AP after each epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from foveal.config import check_data_keys, to_dict
from foveal.data.box_transforms import DetectionBatch, DetectionSamples, collate_detection
from foveal.errors import FovealError
from foveal.models.hub import weights_record
from foveal.tasks.detect import (
    TASK,
    DetectConfig,
    build_detector,
    detection_loss,
    eval_transform,
    freeze_batchnorm,
    init_weights,
    open_data,
    train_transform,
)
from foveal.tasks.detect_eval import evaluate, summary
from foveal.tasks.scaffold import TrainingRun, fit, place_model, run_training


def train(
    cfg: DetectConfig | None,
    run_dir: str | Path | None = None,
    resume: str | Path | None = None,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Train a RetinaNet as ``cfg`` says; with ``resume``, continue the run in that directory exactly.

    Returns the final validation metrics (AP, AP50, AP75, APs, APm, APl, AR100 where defined), "run_dir", "step".
    """
    return run_training(DetectConfig, cfg, _train, task=TASK, run_dir=run_dir, resume=resume, device=device)


def _check_config(setup: TrainingRun[DetectConfig]) -> None:
    d, inf, world = setup.cfg.data, setup.cfg.inference, setup.dist_info.world_size
    if d.batch_size < 1 or d.batch_size % world:
        raise FovealError(
            f"data.batch_size={d.batch_size}: use a positive global batch that divides by the {world} processes"
        )
    if d.eval_batch_size < 1:
        raise FovealError(f"data.eval_batch_size={d.eval_batch_size}: use a positive batch size")
    if not 0.0 <= inf.score_thresh < 1.0 or inf.topk < 1 or inf.max_detections < 1 or not 0.0 < inf.nms <= 1.0:
        raise FovealError(
            f"inference settings {inf}: need 0 <= score_thresh < 1, topk >= 1, max_detections >= 1, 0 < nms <= 1"
        )


def _train(setup: TrainingRun[DetectConfig]) -> dict[str, Any]:
    cfg, d = setup.cfg, setup.cfg.data
    _check_config(setup)
    kinds = "a COCO JSON file, a folder with annotations/instances_<split>.json, or a VOC / YOLO / LabelMe / CVAT / "
    kinds += "Label Studio / CSV dataset (data.format)"
    check_data_keys(d, ("fashion-canvas-sample",), kinds)
    train_data, val_data = open_data(d)
    if setup.dist_info.is_main:
        for role, data in (("training", train_data), ("validation", val_data)):
            if data.summary:
                print(f"{role} data: {data.summary}")
    model = build_detector(cfg.model, train_data.num_classes, train_data.channels)
    if cfg.model.weights and setup.resume is None:
        init_weights(model, cfg.model)
    if cfg.model.freeze_bn:
        freeze_batchnorm(model)
    place_model(model, setup, sync_batchnorm=not cfg.model.freeze_bn)
    val_transform = eval_transform(d.min_size, d.max_size, d.mean, d.std)

    def loss_fn(net: nn.Module, batch: DetectionBatch) -> Tensor:
        if cfg.model.freeze_bn:
            freeze_batchnorm(net)
        targets = [{k: v.to(setup.device) for k, v in t.items()} for t in batch.targets]
        losses = detection_loss(net(setup.images(batch.images)), targets, cfg.loss)
        return losses["cls"] + losses["box"]

    def evaluate_fn(net: nn.Module) -> dict[str, Any]:
        result, _ = evaluate(net, val_data, val_transform, cfg.inference, d.eval_batch_size)
        return summary(result)

    return fit(
        setup,
        model=model,
        train_set=DetectionSamples(train_data, train_transform(d)),
        collate=collate_detection,
        loss_fn=loss_fn,
        evaluate=evaluate_fn,
        meta=_meta(cfg, model.args, train_data),
        batch_size=d.batch_size,
        fixed_shapes=False,  # batches are padded to their largest image
    )


def _meta(cfg: DetectConfig, args: dict[str, Any], train_data: Any) -> dict[str, Any]:
    """The record every checkpoint of the run stores: task, model arguments, config, classes, input geometry."""
    d = cfg.data
    return {
        "task": TASK,
        "model": {"arch": "retinanet", "args": args},
        "config": to_dict(cfg),
        "classes": train_data.classes,
        "categories": [{"id": int(c["id"]), "name": str(c["name"])} for c in train_data.categories],
        "input": {
            "channels": train_data.channels,
            "min_size": d.min_size,
            "max_size": d.max_size,
            "mean": list(d.mean),
            "std": list(d.std),
        },
        **weights_record(cfg.model.weights),
    }
