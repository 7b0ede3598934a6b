"""Detection inference: the batched predictor and writer of ``foveal predict`` and the API, the API's typed result,
the printed table, and what ``export`` writes.

Images are resized and normalised outside the model (:class:`~foveal.data.box_transforms.DetectionTransform`), run in
padded batches (:func:`foveal.tasks.detect.detect_batch`), post-processed with the checkpoint's inference settings
and mapped back to the pixels of the original image, so every box written is in original-image coordinates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import nms

from foveal.data.box_transforms import collate_detection
from foveal.data.images import load_image
from foveal.errors import FovealError
from foveal.inference.batch_predict import write_json_array
from foveal.inference.export import DETECTOR_OUTPUTS, DetectorGraph, ExportSpec
from foveal.inference.inputs import InMemory, uint8_pixels
from foveal.report.detection_plots import draw_detections
from foveal.results import Detections
from foveal.tasks.detect import LoadedDetector, detect_batch, load_detector


class _PrepareDetect:
    """Path → (original (C, H, W) uint8 image, its resized and normalised sample); runs in DataLoader workers."""

    def __init__(self, det: LoadedDetector) -> None:
        self.channels, self.transform = det.channels, det.transform()

    def __call__(self, path: Path) -> tuple[Tensor, Any]:
        return self.image(load_image(path, self.channels))

    def image(self, pixels: Tensor) -> tuple[Tensor, Any]:
        """(C, H, W) uint8 pixels (:func:`foveal.data.images.load_image`'s) → (them, their resized sample)."""
        return pixels, self.transform(pixels, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))


class DetectPredictor:
    """Batched detection (a :class:`foveal.inference.batch_predict.Predictor`): each result is ``{"boxes" (D, 4)
    xyxy in the original image's pixels, "scores" (D,), "labels" (D,)}`` by decreasing score.

    Args:
        checkpoint: checkpoint folder or run directory, or a detector loaded with :func:`load_detector`.
        score_thresh: overrides the checkpoint's inference score threshold.
        bf16: run the network in bfloat16 (see :func:`inference_model`).
        device, precision: where and in which format the network runs (see :func:`load_detector`).
    """

    def __init__(
        self,
        checkpoint: str | Path | LoadedDetector,
        score_thresh: float | None = None,
        bf16: bool = False,
        device: str | torch.device = "auto",
        precision: str = "auto",
    ) -> None:
        if score_thresh is not None and not 0.0 <= score_thresh < 1.0:
            raise FovealError(f"score_thresh={score_thresh}: use a detection score in [0, 1), e.g. 0.05")
        if isinstance(checkpoint, LoadedDetector):  # already loaded (device and precision as it was loaded)
            self.det = checkpoint
        else:
            self.det = load_detector(checkpoint, bf16=bf16, device=device, precision=precision)
        inference = self.det.config.inference
        self.inference = inference if score_thresh is None else replace(inference, score_thresh=score_thresh)
        self.prepare = _PrepareDetect(self.det)

    @torch.no_grad()
    def predict_batch(self, prepared: Sequence[tuple[Tensor, Any]]) -> list[dict[str, Tensor]]:
        batch = collate_detection([sample for _, sample in prepared])
        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image, _ in prepared]
        return detect_batch(self.det.model, batch.images, batch.image_sizes, batch.scales, sizes, self.inference)


class DetectWriter:
    """Per image ``<stem>_detections.png`` (detections of score ≥ ``show_thresh``; where boxes of different classes
    overlap by IoU > 0.5 only the best is drawn) and the record ``{"image_id", "width", "height", "figure",
    "detections": [{"label", "category_id", "score", "box": [x1, y1, x2, y2]}]}``; image ids are the images'
    positions in the stream from 1. At the end ``detections.json`` (COCO results) and ``images.json``
    (``[{"id", "file_name", "width", "height"}]``)."""

    def __init__(self, classes: list[str], categories: list[dict[str, Any]], show_thresh: float = 0.3) -> None:
        if not 0.0 <= show_thresh <= 1.0:
            raise FovealError(f"show_thresh={show_thresh}: use a score in [0, 1]")
        self.classes, self.show_thresh = classes, show_thresh
        self.category_ids = [int(c["id"]) for c in categories]

    def write(self, item: Any, prepared: tuple[Tensor, Any], result: dict[str, Tensor], out: Any) -> dict[str, Any]:
        image = prepared[0]
        name = f"{item.stem}_detections.png"
        shown = _shown(result, self.show_thresh)
        boxes, scores, labels = result["boxes"], result["scores"], result["labels"]
        draw_detections(image, boxes[shown], labels[shown], scores[shown], self.classes, out.staged(name))
        return {
            "image_id": item.index + 1,
            "width": int(image.shape[-1]),
            "height": int(image.shape[-2]),
            "figure": str(out.published(name)),
            "detections": [
                {"label": self.classes[k], "category_id": self.category_ids[k], "score": s, "box": b}
                for b, s, k in zip(boxes.tolist(), scores.tolist(), labels.tolist(), strict=True)
            ],
        }

    def finish(self, records: Callable[[], Iterator[dict[str, Any]]], out: Any) -> None:
        results = (
            {"image_id": r["image_id"], "category_id": d["category_id"], "bbox": _xywh(d["box"]), "score": d["score"]}
            for r in records()
            for d in r["detections"]
        )
        write_json_array(out.staged("detections.json"), results)
        images = (
            {"id": r["image_id"], "file_name": r["file"], "width": r["width"], "height": r["height"]} for r in records()
        )
        write_json_array(out.staged("images.json"), images)


def _xywh(box: list[float]) -> list[float]:
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def _shown(det: dict[str, Tensor], thresh: float) -> Tensor:
    """Indices of the detections a figure shows: score ≥ ``thresh``, and of boxes overlapping by IoU > 0.5 only the
    best one, whatever its class (the results keep every class; a figure shows each object once)."""
    candidates = (det["scores"] >= thresh).nonzero().squeeze(1)
    keep = nms(det["boxes"][candidates], det["scores"][candidates], 0.5)
    return candidates[keep]


def format_predictions(records: Sequence[dict[str, Any]], show_thresh: float = 0.3) -> str:
    """A text table: image, size, detections with score ≥ ``show_thresh``, and the best one."""
    lines = [f"{'image':<40} {'size':>9} {'detections':>10}  best"]
    for r in records:
        name = r["file"] if len(r["file"]) <= 40 else "…" + r["file"][-39:]
        shown = [d for d in r["detections"] if d["score"] >= show_thresh]
        best = f"{shown[0]['label']} {shown[0]['score']:.2f}" if shown else "-"
        lines.append(f"{name:<40} {r['width']:>4}×{r['height']:<4} {len(shown):>10}  {best}")
    return "\n".join(lines)


def predictor(loaded: LoadedDetector, score_thresh: float | None = None, **options: Any) -> DetectPredictor:
    """The batched predictor of a loaded detector (``score_thresh``: the lowest score kept; None: the checkpoint's)."""
    return DetectPredictor(loaded, score_thresh)


def writer(predictor: DetectPredictor, show_thresh: float = 0.3, **options: Any) -> DetectWriter:
    """The writer of detection figures (boxes of score ≥ ``show_thresh`` drawn), ``detections.json`` (COCO results)
    and ``images.json``."""
    return DetectWriter(predictor.det.classes, predictor.det.categories, show_thresh)


def prepare_memory(predictor: DetectPredictor, item: InMemory) -> tuple[torch.Tensor, Any]:
    """An in-memory image prepared as a file is: uint8 pixels with the detector's channels and their resized sample."""
    return predictor.prepare.image(uint8_pixels(item, predictor.det.channels))


def file_pixels(item: InMemory, loaded: LoadedDetector) -> np.ndarray:
    """An in-memory image as the (H, W, C) uint8 pixels of an image file with the detector's channels."""
    return uint8_pixels(item, loaded.channels).permute(1, 2, 0).numpy()


def result(source: str, prepared: Any, output: Any, loaded: LoadedDetector) -> Detections:
    """The API's result of one image: its boxes in its own pixels, by decreasing score."""
    size = (int(prepared[0].shape[-2]), int(prepared[0].shape[-1]))
    labels = output["labels"].numpy()
    names = tuple(loaded.classes[k] for k in labels.tolist())
    return Detections(source, size, output["boxes"].numpy(), output["scores"].numpy(), labels, names)


def format_records(records: list[dict[str, Any]]) -> str:
    """The table of prediction records: each image's best detections."""
    return format_predictions(records)


def export_spec(path: Path, device: Any) -> ExportSpec:
    """The network without post-processing: outputs cls_logits (N, A, K), box_deltas (N, A, 4), anchors (A, 4)."""
    det = load_detector(path, fast=False, device=device)
    edge = -(-det.min_size // 32) * 32
    note = "; resize and normalise outside the graph, post-process its outputs (foveal.models.retinanet.postprocess)"
    return ExportSpec(DetectorGraph(det.model), det.channels, (edge, edge), DETECTOR_OUTPUTS, ("anchors",), note)
