"""Classification evaluation: top-1 / top-5 / per-class accuracy of a checkpoint, or with a box file its weakly
supervised localization (:mod:`foveal.tasks.localize_eval`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from foveal.data.classification import open_dataset
from foveal.engine.device import placement, to_device, uses_channels_last
from foveal.engine.runinfo import write_run_info
from foveal.errors import FovealError
from foveal.io import write_json
from foveal.metrics.classification import ClassificationMeter
from foveal.report.eval_figures import thumbnail
from foveal.report.plots import plot_confusion
from foveal.report.tables import write_metrics_json
from foveal.tasks.classify import TASK, ClassifySamples, collate, eval_transform, load_classifier
from foveal.tasks.localize_eval import localization_eval_folder


def evaluate_checkpoint(
    path: str | Path,
    data: str | None = None,
    split: str = "test",
    out: str | Path | None = None,
    *,
    boxes: str | Path | None = None,
    box_format: str | None = None,
    map_stride: int | None = None,
    map_scales: Sequence[float] | None = None,
    flip: bool = False,
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> Any:
    """Accuracy on ``data`` (default: the checkpoint's validation data), or with ``boxes`` the localization errors
    and MaxBoxAccV2 of the CAM boxes against the box file's (``data``: the folder of its images)."""
    if boxes is None:
        if box_format is not None or map_stride is not None or map_scales is not None or flip:
            raise FovealError(
                "box_format, map_stride, map_scales and flip apply to localization: pass boxes",
                options=("box_format", "map_stride", "map_scales", "flip", "boxes"),
            )
        return evaluate_accuracy(path, data, split, out, device=device, precision=precision)
    if data is None:
        raise FovealError(
            "boxes needs data FOLDER: the folder that holds the box file's images", options=("boxes", "data")
        )
    return localization_eval_folder(
        path,
        data,
        boxes,
        box_format=box_format,
        split=split,
        map_stride=map_stride,
        map_scales=map_scales,
        flip=flip,
        out=out,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    samples: Dataset[Any],
    classes: list[str],
    batch_size: int = 128,
    outcomes: list[Any] | None = None,
) -> Any:
    """Top-1, top-5, per-class accuracy and confusion matrix of ``model`` on ``samples``; with ``outcomes``, also
    appends (top-1 probability, predicted class, true class) for each sample, in order."""
    meter = ClassificationMeter(len(classes), classes)
    # A generator of its own keeps evaluation from drawing on the global RNG (exact resume depends on it).
    weight = next(model.parameters())
    loader = DataLoader(
        samples,
        batch_size=batch_size,
        collate_fn=collate,
        generator=torch.Generator(),
        pin_memory=weight.device.type == "cuda",  # non-blocking copies to the GPU
    )
    channels_last = uses_channels_last(model)
    for images, targets in loader:
        # on the model's device and in its dtype (bf16 / fp16 weights); logits and metrics in fp32 on the CPU
        logits = model(to_device(images, weight.device, weight.dtype, channels_last)).float().cpu()
        meter.update(logits, targets, loss=F.cross_entropy(logits, targets, reduction="sum") / len(targets))
        if outcomes is not None:
            conf, pred = logits.softmax(1).max(1)
            outcomes.extend(zip(conf.tolist(), pred.tolist(), targets.tolist(), strict=True))
    return meter.compute()


def evaluate_accuracy(
    path: str | Path,
    data: str | None,
    split: str,
    out: str | Path | None,
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> Any:
    """Evaluate a checkpoint on a dataset (default: its own validation data); write metrics and confusion PNG.

    The network runs on ``device`` in ``precision`` (see :func:`load_classifier`); metrics are computed in fp32."""
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise FovealError(f"output folder {out} is a file: pass a folder for metrics.json and confusion.png")
    clf = load_classifier(path, fast=True, device=device, precision=precision)
    cfg_data = clf.meta.get("config", {}).get("data", {})
    spec = data or cfg_data.get("val") or cfg_data.get("train")
    if spec is None:
        raise FovealError("the checkpoint names no dataset: pass data", options=("data",))
    dataset = open_dataset(spec, split, channels=clf.channels)
    if len(dataset.classes) != len(clf.classes):
        raise FovealError(
            f"dataset {spec} has {len(dataset.classes)} classes but checkpoint has {len(clf.classes)}: "
            "evaluate on data with the classes the model was trained on"
        )
    samples = ClassifySamples(dataset, eval_transform(clf.resolution), clf.mean, clf.std)
    started, outcomes = time.time(), list[Any]()
    result = evaluate(clf.model, samples, clf.classes, outcomes=outcomes)
    if out is not None:
        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FovealError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
        write_metrics_json(result, out / "metrics.json")
        plot_confusion(result.confusion, clf.classes, out / "confusion.png")
        _write_mistakes(dataset, outcomes, clf.classes, out)
        data_info = {"data": {"spec": spec, "split": split, "samples": len(dataset)}}
        where = placement(device, precision)
        write_run_info(out, "eval", started, task=TASK, checkpoint=str(path), **data_info, **where)
    return result


MISTAKES_SHOWN = 16


def _write_mistakes(dataset: Any, outcomes: list[Any], classes: list[str], out: Path) -> None:
    """``mistakes.json`` and thumbnails (``mistakes/``) of the most confident misclassifications."""
    wrong = sorted((i for i, (_, p, t) in enumerate(outcomes) if p != t), key=lambda i: (-outcomes[i][0], i))
    records = []
    for rank, i in enumerate(wrong[:MISTAKES_SHOWN]):
        conf, pred, true = outcomes[i]
        image, _ = dataset.get(i)
        thumb = thumbnail(image.numpy(), out / "mistakes" / f"{rank:02d}-{i}.png")
        row = {"index": i, "true": classes[true], "predicted": classes[pred], "confidence": round(conf, 4)}
        records.append({**row, "thumbnail": str(thumb.relative_to(out))})
    write_json(out / "mistakes.json", {"errors": len(wrong), "samples": len(outcomes), "shown": records})
