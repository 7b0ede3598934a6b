"""Detection evaluation (COCO AP) of a checkpoint, with its figures. Prediction is in
:mod:`foveal.tasks.detect_predict`; both run :func:`foveal.tasks.detect.detect_batch`.

Images are resized and normalised outside the model (:class:`~foveal.data.box_transforms.DetectionTransform`), run in
padded batches, post-processed with the checkpoint's inference settings and mapped back to the pixels of the original
image, so every box written or scored is in original-image coordinates.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from foveal.data.box_transforms import DetectionTransform, collate_detection
from foveal.engine.device import placement
from foveal.engine.runinfo import write_run_info
from foveal.errors import FovealError
from foveal.io import writable_dir, write_json
from foveal.results import DetectionResult
from foveal.tasks.detect import DetectInferenceConfig, detect_batch, load_detector

_SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


@torch.no_grad()
def detect_dataset(
    model: nn.Module, data: Any, transform: DetectionTransform, inference: DetectInferenceConfig, batch_size: int = 8
) -> list[dict[str, Tensor]]:
    """Detections for every image of a :class:`~foveal.data.coco.DetectionData`, in its order (original pixels)."""
    if transform.train:
        raise FovealError("detection needs the evaluation transform (train=False)")
    was_training = model.training
    model.eval()
    out: list[dict[str, Tensor]] = []
    for start in range(0, len(data), batch_size):
        indices = range(start, min(start + batch_size, len(data)))
        samples = []
        for i in indices:
            image, target = data.get(i)
            samples.append(transform(image, target["boxes"], target["labels"])._replace(image_index=i))
        batch = collate_detection(samples)
        originals = [(data.images[i].height, data.images[i].width) for i in indices]
        out += detect_batch(model, batch.images, batch.image_sizes, batch.scales, originals, inference)
    model.train(was_training)
    return out


def evaluate(
    model: nn.Module, data: Any, transform: DetectionTransform, inference: DetectInferenceConfig, batch_size: int = 8
) -> tuple[DetectionResult, list[dict[str, Tensor]]]:
    """COCO box evaluation of ``model`` on ``data``; returns the result and the detections (original pixels)."""
    from foveal.metrics.detection import coco_evaluate

    detections = detect_dataset(model, data, transform, inference, batch_size)
    return coco_evaluate(data, detections), detections


def summary(result: DetectionResult) -> dict[str, Any]:
    """AP, AP50, AP75, APs, APm, APl, AR100 (those defined) and "score" = AP, for logs and the best checkpoint."""
    out: dict[str, Any] = {name: result.stat(name) for name in _SUMMARY if result.stat(name) >= 0}
    out["score"] = result.ap
    return out


def _check_out(out: str | Path | None) -> None:
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise FovealError(f"output folder {out} is a file: pass a folder")


def evaluate_checkpoint(
    path: str | Path,
    data: str | None = None,
    split: str | None = None,
    out: str | Path | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> DetectionResult:
    """Evaluate a detection checkpoint with COCO's protocol, the network on ``device`` in ``precision`` (see
    :func:`load_detector`).

    Args:
        path: checkpoint folder or run directory.
        data: a detection set of any format :func:`foveal.data.formats.open_detection` reads (recognised from its
            files), or "fashion-canvas-sample"; default: the checkpoint's validation data (in its ``data.format``).
        split: the split of a folder; default: the checkpoint's validation split.
        out: folder for ``metrics.json``, ``detections.json`` (COCO results) and ``pr_curve.png``; None writes nothing.

    Returns:
        The :class:`~foveal.results.DetectionResult`.
    """
    from foveal.data.coco import write_results_json
    from foveal.data.formats import open_detection
    from foveal.metrics.detection import plot_pr_curve

    _check_out(out)
    det = load_detector(path, device=device, precision=precision)
    cfg = det.config.data
    spec = data or cfg.val or cfg.train
    fmt = cfg.format if data is None else "auto"
    dataset = open_detection(spec, split=split or cfg.val_split, format=fmt)
    if dataset.channels != det.channels:
        raise FovealError(
            f"dataset {spec} has {dataset.channels}-channel images but the model takes {det.channels}: evaluate on "
            "images like the training images"
        )
    names, theirs = [str(c["name"]) for c in det.categories], dataset.classes
    if names != theirs:
        raise FovealError(
            f"dataset {spec} has categories {theirs[:6]} but the checkpoint was trained on {names[:6]}: evaluate on "
            "data with the categories the model knows"
        )
    started = time.time()
    result, detections = evaluate(det.model, dataset, det.transform(), det.config.inference, cfg.eval_batch_size)
    if out is not None:
        folder = writable_dir(out)
        write_json(folder / "metrics.json", result.to_dict())
        write_results_json(detections, dataset, folder / "detections.json")
        plot_pr_curve(result, folder / "pr_curve.png")
        write_json(folder / "per_image.json", _image_figures(dataset, detections, det.classes, folder))
        data_info = {"spec": spec, "split": split or cfg.val_split, "images": len(dataset)}
        where = placement(device, precision)
        write_run_info(folder, "eval", started, task="detect", checkpoint=str(path), data=data_info, **where)
    return result


SHOWN_WORST, SHOWN_SAMPLE, SHOWN_SCORE = 6, 6, 0.3


def _image_figures(data: Any, detections: list[dict[str, Tensor]], classes: list[str], out: Path) -> dict[str, Any]:
    """TP / FP / FN per image at IoU 0.5 for detections of score ≥ ``SHOWN_SCORE``; for the worst images (most
    errors) and a sample, the image with ground truth and detections coloured TP / FP / FN (``images/``)."""
    from foveal.report.eval_figures import detection_panel, match_detections, pick_shown

    rows: list[dict[str, Any]] = []
    for i, d in enumerate(detections):
        keep = d["scores"] >= SHOWN_SCORE
        _, target = data.get(i)
        boxes, labels = d["boxes"][keep].numpy(), d["labels"][keep].numpy()
        tp, found = match_detections(boxes, labels, d["scores"][keep].numpy(), *_truth(target))
        name = Path(str(data.images[i].path)).name
        rows.append({"file": name, "tp": int(tp.sum()), "fp": int((~tp).sum()), "fn": int((~found).sum())})
    shown = pick_shown([-(r["fp"] + r["fn"]) for r in rows], SHOWN_WORST, SHOWN_SAMPLE)
    for rank, i in enumerate(shown):
        image, target = data.get(i)
        d = detections[i]
        keep = d["scores"] >= SHOWN_SCORE
        dets = {k: d[k][keep].numpy() for k in ("boxes", "labels", "scores")}
        figure = out / "images" / f"{rank:02d}-{Path(rows[i]['file']).stem}.png"
        detection_panel(image.numpy(), dets, *_truth(target), classes, figure)
        rows[i]["figure"] = str(figure.relative_to(out))
    return {"iou": 0.5, "score_thresh": SHOWN_SCORE, "images": rows}


def _truth(target: dict[str, Tensor]) -> tuple[Any, Any]:
    """(G, 4) xyxy boxes and (G,) labels of the ground truth (crowd regions are kept apart, under "ignore")."""
    return target["boxes"].numpy(), target["labels"].numpy()
