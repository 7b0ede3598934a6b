"""Segmentation evaluation (pixel and instance metrics, the figures of each image) and the weight-map figure (the
paper's Fig. 3). Prediction is in :mod:`foveal.tasks.segment_predict`; both run the overlap-tile inference of
:func:`foveal.tasks.segment.predict_logits`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from foveal.engine.device import placement
from foveal.engine.runinfo import write_run_info
from foveal.errors import FovealError
from foveal.io import writable_dir, write_json
from foveal.results import SegEvaluation
from foveal.tasks.segment import (
    PostConfig,
    Prepared,
    attach_context,
    load_segmenter,
    predict_logits,
    prepare,
    to_instances,
)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    samples: list[Prepared],
    num_classes: int,
    tile: int,
    post: PostConfig,
    with_rand: bool = True,
    progress: bool = False,
    on_image: Callable[[Prepared, np.ndarray, np.ndarray | None], None] | None = None,
) -> SegEvaluation:
    """Evaluate ``model`` on prepared samples (targets with separation borders as background, as trained);
    ``on_image(sample, predicted classes (H, W), predicted instances or None)`` sees each scored prediction."""
    from foveal.metrics.instances import InstanceMeter, merged_pairs
    from foveal.metrics.segmentation import SegmentationMeter, rand_error

    was_training = model.training
    model.eval()
    meter = SegmentationMeter(num_classes)
    inst = InstanceMeter()
    merged, touching, rand, has_instances = 0, 0, [], False
    for s in samples:
        if s.context is None:
            pred = predict_logits(model, s.image, tile, progress=progress, tta=post.tta).argmax(0)
        else:
            width = s.target.shape[1]
            logits = predict_logits(model, s.context, tile, progress=progress, tta=post.tta)
            pred = logits.argmax(0)[:, s.offset : s.offset + width]
        meter.update(pred, s.target)
        pred_inst = to_instances(pred.numpy(), post) if s.instances is not None else None
        if on_image is not None:
            on_image(s, pred.numpy(), pred_inst)
        if s.instances is not None and pred_inst is not None:
            has_instances = True
            inst.update(pred_inst, s.instances)
            m, t = merged_pairs(pred_inst, s.instances)
            merged, touching = merged + m, touching + t
            if with_rand:
                rand.append(rand_error(pred_inst, s.instances))
    model.train(was_training)
    return SegEvaluation(
        pixels=meter.result(),
        instances=inst.result() if has_instances else None,
        merged=(merged, touching) if has_instances else None,
        rand_error=float(np.mean(rand)) if rand else None,
    )


def evaluate_checkpoint(
    path: str | Path,
    data: str | None,
    out: str | Path | None,
    tta: str | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> SegEvaluation:
    """Evaluate a segmentation checkpoint on ``data`` (default: the validation part of its own training data) and
    write metrics.json to ``out``. ``tta`` overrides the checkpoint's ``post.tta`` ("none" or "dihedral"); the
    network runs on ``device`` in ``precision`` (see :func:`foveal.tasks.segment.load_segmenter`)."""
    from dataclasses import replace

    from foveal.data.segmentation import open_segmentation
    from foveal.tasks.segment import open_data

    out_dir = writable_dir(out) if out is not None else None
    seg = load_segmenter(path, fast=True, device=device, precision=precision)
    cfg = seg.config
    if data is None:
        _, dataset = open_data(cfg.data)
    else:
        dataset = open_segmentation(
            data, channels=seg.channels, masks=cfg.data.masks, num_classes=cfg.data.num_classes, normalize=seg.normalize
        )
    if dataset.channels != seg.channels:
        raise FovealError(
            f"dataset {data} has {dataset.channels}-channel images but the model takes {seg.channels}: "
            "evaluate on images like the training images"
        )
    if dataset.num_classes != len(seg.classes):
        raise FovealError(
            f"dataset {data} has {dataset.num_classes} classes but the checkpoint has {len(seg.classes)}: "
            "evaluate on masks with the classes the model was trained on"
        )
    samples = prepare(dataset, cfg.weights, len(seg.classes))
    if data is None:
        samples = attach_context(samples, cfg.data)
    post = cfg.post if tta is None else replace(cfg.post, tta=tta)
    started, kept = time.time(), list[tuple[Prepared, np.ndarray, np.ndarray | None]]()
    on_image = None if out_dir is None else lambda s, c, i: kept.append((s, c, i))
    result = evaluate(seg.model, samples, len(seg.classes), cfg.data.eval_tile, post, on_image=on_image)
    if out_dir is not None:
        write_json(out_dir / "metrics.json", result.to_dict())
        write_json(out_dir / "per_image.json", _image_figures(kept, out_dir))
        spec = data or cfg.data.val or cfg.data.train
        data_info = {"spec": spec, "images": len(samples), "pixels": int(sum(s.target.numel() for s in samples))}
        where = placement(device, precision)
        write_run_info(out_dir, "eval", started, task="segment", checkpoint=str(path), data=data_info, **where)
    return result


SHOWN_WORST, SHOWN_SAMPLE, WEIGHT_MAPS_SHOWN = 4, 4, 2


def _image_figures(kept: list[tuple[Prepared, np.ndarray, np.ndarray | None]], out: Path) -> list[dict[str, Any]]:
    """Per-image pixel and instance metrics; for the worst and a sample of the images (by F1 at IoU 0.5, else
    foreground IoU), the image / prediction / ground-truth panel (``images/``) and for a few the border weight map."""
    from foveal.metrics.instances import match_instances, merged_pairs
    from foveal.metrics.segmentation import SegmentationMeter
    from foveal.report.eval_figures import pick_shown, segmentation_panel
    from foveal.report.segmentation_plots import plot_weight_map_figure

    rows: list[dict[str, Any]] = []
    for s, classes, inst in kept:
        meter = SegmentationMeter(max(2, int(s.target.max()) + 1, int(classes.max()) + 1))
        meter.update(classes, s.target)
        row: dict[str, Any] = {"name": s.name, "fg_iou": meter.result().foreground_iou}
        if inst is not None and s.instances is not None:
            match = match_instances(inst, s.instances, (0.5,))
            row.update({"f1_50": match.f1_at(0.5), "instances": int(len(np.unique(s.instances[s.instances > 0])))})
            row["merged_pairs"], row["touching_pairs"] = merged_pairs(inst, s.instances)
        rows.append(row)
    keys = [r.get("f1_50", r["fg_iou"]) for r in rows]
    shown = pick_shown([-1.0 if k is None else float(k) for k in keys], SHOWN_WORST, SHOWN_SAMPLE)
    for rank, i in enumerate(shown):
        s, classes, inst = kept[i]
        image = s.image[0] if s.image.shape[0] == 1 else s.image[:3].permute(1, 2, 0)
        shown_image = image.numpy().astype(np.float64)
        shown_image = (shown_image - shown_image.min()) / max(float(np.ptp(shown_image)), 1e-12)
        true = s.instances if s.instances is not None else s.target.numpy().astype(np.int32)
        pred = inst if inst is not None else classes.astype(np.int32)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in s.name)
        path, outcome = segmentation_panel(shown_image, pred, true, out / "images" / f"{rank:02d}-{safe}.png")
        rows[i].update({"figure": str(path.relative_to(out)), **{k: len(v) for k, v in outcome.items()}})
        if rank < WEIGHT_MAPS_SHOWN and s.instances is not None:
            wpath = out / "images" / f"{rank:02d}-{safe}_weightmap.png"
            plot_weight_map_figure(shown_image, s.instances, s.weight.numpy(), wpath, title=f"{s.name}: border weights")
            rows[i]["weight_map"] = str(wpath.relative_to(out))
    return rows


def weightmap_figures(
    spec: str, out: str | Path, *, w0: float = 10.0, sigma: float = 5.0, limit: int = 4
) -> list[Path]:
    """The paper's Fig. 3 for the first ``limit`` images of a dataset with instance masks: image, instances, class
    mask with separation borders, and the weight map."""
    from foveal.data import weightmap
    from foveal.data.segmentation import open_segmentation
    from foveal.report.segmentation_plots import plot_weight_map_figure

    data = open_segmentation(spec, masks="instances")
    out_dir = writable_dir(out)
    paths = []
    for name, image, mask in list(zip(data.names, data.images, data.masks, strict=True))[:limit]:
        m = mask.numpy()
        w = weightmap.weight_map(m, w0=w0, sigma=sigma)
        img = image[0].numpy() if image.shape[0] == 1 else image[:3].permute(1, 2, 0).numpy()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        paths.append(
            plot_weight_map_figure(
                np.clip(img, 0, 1),
                m,
                w,
                out_dir / f"{safe}_weightmap.png",
                borders=weightmap.separation_borders(m),
                title=f"{name}: w0={w0:g}, σ={sigma:g}",
            )
        )
    return paths
