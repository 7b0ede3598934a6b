"""COCO box evaluation: AP over IoU 0.50:0.05:0.95, AP50, AP75, AP small / medium / large and AR, per class too.

The numbers are COCO's own (T.-Y. Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014; the protocol
of the RetinaNet paper's tables): detections are matched to ground truth greedily by score per image and category,
precision is interpolated at 101 recall points, a category without ground truth is left out of the means, at most
100 detections per image count, and crowd regions (``iscrowd``) are ignored — a detection on one is neither a true nor
a false positive. Values that are undefined (e.g. AP small when no object is small) are −1, as in COCO.

The evaluation itself runs in faster-coco-eval (C++; the default) or pycocotools, on ground truth and detections
built in memory from :class:`foveal.data.coco.DetectionData` and per-image tensors (no files); both give the same
numbers.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from foveal.data.coco import DetectionData, detections_to_coco
from foveal.errors import FovealError
from foveal.io import atomic_output
from foveal.results import STAT_NAMES, DetectionResult

BACKENDS = ("faster", "pycocotools")
_AREA_ALL, _MAX_DETS_100 = 0, -1  # indices into the precision array's area and max-detections axes


def coco_evaluate(
    data: DetectionData, detections: Sequence[dict[str, Tensor]], backend: str = "faster"
) -> DetectionResult:
    """Evaluate detections on a COCO dataset with COCO's box protocol.

    Args:
        data: the ground truth (boxes, classes, crowd regions as ``ignore``).
        detections: one dict per image of ``data``, in its order: ``{"boxes": (D, 4) xyxy in the original image's
            pixels, "scores": (D,), "labels": (D,) int64 in 0..K-1}`` (tensors or arrays; e.g. ``postprocess``
            output mapped back with ``boxes_to_original``).
        backend: "faster" (faster-coco-eval) or "pycocotools".

    Returns:
        The :class:`DetectionResult`.
    """
    if backend not in BACKENDS:
        raise FovealError(f"unknown COCO backend '{backend}': choose one of {', '.join(BACKENDS)}")
    with _gc_paused():
        dets = detections_to_coco(detections, data)
        gt = ground_truth_dict(data)
        dt = {"images": gt["images"], "categories": gt["categories"], "annotations": dets}
        run = _run_faster if backend == "faster" else _run_pycocotools
        stats, precision, iou_thrs, rec_thrs = run(gt, dt)
    valid = np.where(precision > -1, precision, np.nan)[..., _AREA_ALL, _MAX_DETS_100]
    return DetectionResult(
        stats=tuple(float(s) for s in stats[: len(STAT_NAMES)]),
        classes=tuple(data.classes),
        per_class_ap=_mean_or_minus_one(valid.reshape(-1, valid.shape[2])),
        per_class_ap50=_mean_or_minus_one(valid[int(np.argmin(np.abs(iou_thrs - 0.5)))]),
        precision=precision,
        iou_thresholds=iou_thrs,
        recall_thresholds=rec_thrs,
        backend=backend,
        num_images=len(data),
        num_boxes=data.num_boxes(),
        num_detections=len(dets),
    )


def ground_truth_dict(data: DetectionData) -> dict[str, Any]:
    """``data`` as a COCO annotation dict (images, annotations with ids from 1, categories); crowd regions become
    annotations with ``iscrowd`` 1 and their box area."""
    images = [{"id": r.id, "width": r.width, "height": r.height, "file_name": r.file_name} for r in data.images]
    image_ids = torch.tensor([r.id for r in data.images], dtype=torch.int64)
    category_ids = torch.tensor(data.label_to_category_id, dtype=torch.int64)
    parts: list[tuple[int, list[int], list[int], list[list[float]], list[float]]] = []
    for crowd, box_key, label_key in ((0, "boxes", "labels"), (1, "ignore", "ignore_labels")):
        counts = torch.tensor([len(t[label_key]) for t in data.targets], dtype=torch.int64)
        if int(counts.sum()) == 0:
            continue
        boxes = torch.cat([t[box_key].reshape(-1, 4) for t in data.targets]).to(torch.float64)
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
        # COCO's area of an object (its segment's, when the file gives one); a crowd region's area is unused
        areas = torch.cat([t["areas"] for t in data.targets]).double() if not crowd else xywh[:, 2] * xywh[:, 3]
        owners = torch.repeat_interleave(image_ids, counts)
        labels = category_ids[torch.cat([t[label_key] for t in data.targets])]
        parts.append((crowd, owners.tolist(), labels.tolist(), xywh.tolist(), areas.tolist()))
    annotations: list[dict[str, Any]] = []
    for crowd, owner_ids, cat_ids, bbox, area in parts:
        start = len(annotations) + 1
        annotations += [
            {"id": n, "image_id": i, "category_id": c, "bbox": b, "area": a, "iscrowd": crowd}
            for n, (i, c, b, a) in enumerate(zip(owner_ids, cat_ids, bbox, area, strict=True), start=start)
        ]
    categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in data.categories]
    return {"images": images, "annotations": annotations, "categories": categories}


def _mean_or_minus_one(values: np.ndarray) -> np.ndarray:
    """Column means of (n, K) values ignoring NaN; −1 for all-NaN columns."""
    counts = np.sum(~np.isnan(values), axis=0)
    sums = np.nansum(values, axis=0)
    return np.where(counts > 0, sums / np.maximum(counts, 1), -1.0)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while the evaluation builds ~10⁵ small dicts and lists: the collector
    would otherwise walk them again and again (a third of the run time at COCO sizes). They hold no reference
    cycles, so reference counting frees them; the collector's previous state is restored."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _silent(*args: Any, **kwargs: Any) -> None:
    return None


def _run_faster(gt: dict[str, Any], dt: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from faster_coco_eval import COCO, COCOeval_faster
    except ImportError:
        raise FovealError(
            "the default COCO backend needs faster-coco-eval: pip install faster-coco-eval (or pass "
            "backend='pycocotools')"
        ) from None
    coco_gt, coco_dt = COCO(print_function=_silent), COCO(print_function=_silent)
    coco_gt.dataset, coco_dt.dataset = gt, dt
    coco_gt.createIndex()
    coco_dt.createIndex()
    evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=_silent)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    p = evaluator.params
    return (
        np.asarray(evaluator.stats, np.float64),
        np.asarray(evaluator.eval["precision"], np.float64),
        np.asarray(p.iouThrs),
        np.asarray(p.recThrs),
    )


def _run_pycocotools(gt: dict[str, Any], dt: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise FovealError("backend 'pycocotools' needs pycocotools: pip install pycocotools") from None
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco_gt, coco_dt = COCO(), COCO()
        coco_gt.dataset, coco_dt.dataset = gt, dt
        coco_gt.createIndex()
        coco_dt.createIndex()
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    p = evaluator.params
    return (
        np.asarray(evaluator.stats, np.float64),
        np.asarray(evaluator.eval["precision"], np.float64),
        np.asarray(p.iouThrs),
        np.asarray(p.recThrs),
    )


def plot_pr_curve(result: DetectionResult, path: str | os.PathLike[str]) -> Path:
    """Precision–recall curves at IoU 0.5 and 0.75 (area all, 100 detections) as a PNG: one thin line per class
    with ground truth and the mean over those classes as a thick line.

    Args:
        result: from :func:`coco_evaluate`.
        path: output PNG (written atomically; parent folders are created).

    Returns:
        ``path`` as a Path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.5), dpi=100)  # Agg canvas, no pyplot state
    FigureCanvasAgg(fig)
    recall = result.recall_thresholds
    show_names = len(result.classes) <= 12
    for panel, iou in enumerate((0.5, 0.75), start=1):
        t = int(np.argmin(np.abs(result.iou_thresholds - iou)))
        curves = result.precision[t, :, :, _AREA_ALL, _MAX_DETS_100]  # (R, K)
        ax = fig.add_subplot(1, 2, panel)
        present = [k for k in range(curves.shape[1]) if (curves[:, k] > -1).any()]
        for k in present:
            label = result.classes[k] if show_names else None
            ax.plot(recall, curves[:, k], linewidth=0.8, alpha=0.6, label=label)
        if present:
            mean = curves[:, present].mean(axis=1)
            ap = float(np.mean(mean))
            ax.plot(recall, mean, color="black", linewidth=2.2, label=f"mean (AP{round(iou * 100)} = {ap:.3f})")
            ax.legend(loc="lower left", fontsize=7)
        else:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"IoU {iou:.2f}")
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"Precision–recall, {result.num_images} images, {result.num_detections} detections")
    fig.tight_layout()
    with atomic_output(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=100)
    return Path(path)
