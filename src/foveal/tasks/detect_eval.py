"""Detection inference: loading a checkpoint, evaluation (COCO AP), prediction on new images.

Images are resized and normalised outside the model (:class:`~foveal.data.box_transforms.DetectionTransform`), run in
padded batches, post-processed with the checkpoint's inference settings and mapped back to the pixels of the original
image, so every box written or scored is in original-image coordinates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from foveal.config import from_dict
from foveal.data.box_transforms import DetectionTransform, collate_detection
from foveal.engine.device import placement, to_device, uses_channels_last
from foveal.engine.runinfo import write_run_info
from foveal.errors import FovealError
from foveal.io import staged_output, writable_dir, write_json
from foveal.models.anchors import AnchorGenerator
from foveal.models.retinanet import RetinaOutput, postprocess
from foveal.preprocess import boxes_to_original
from foveal.results import DetectionResult
from foveal.tasks.detect import DetectConfig, DetectInferenceConfig, check_task, eval_transform
from foveal.tasks.scaffold import load_for_inference

_SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")


# -- loading for inference --------------------------------------------------------------------------------------------
@dataclass
class LoadedDetector:
    """A detector ready for inference and what its inputs must look like.

    Attributes:
        model: the RetinaNet in eval mode (BatchNorm folded and channels-last when loaded with ``fast``).
        classes: class names; label k is ``classes[k]``.
        categories: ``[{"id", "name"}]``; label k has category id ``categories[k]["id"]``.
        channels: image channels the model takes (1 or 3).
        min_size, max_size: the resize of :func:`foveal.preprocess.resize_for_detection`.
        mean, std: the normalisation of :func:`foveal.preprocess.normalize`.
        config: the training recipe (its ``inference`` section holds the post-processing settings).
        meta: the checkpoint record.
    """

    model: nn.Module
    classes: list[str]
    categories: list[dict[str, Any]]
    channels: int
    min_size: int
    max_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    config: DetectConfig
    meta: dict[str, Any]

    def transform(self) -> DetectionTransform:
        """The evaluation transform (resize + normalise) of the model's inputs."""
        return eval_transform(self.min_size, self.max_size, self.mean, self.std)


def load_detector(
    path: str | Path,
    fast: bool = True,
    bf16: bool = False,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> LoadedDetector:
    """Load a detection checkpoint (a checkpoint folder or a run directory) for inference.

    Args:
        path: the checkpoint.
        fast: fold BatchNorm into the convolutions and use channels-last (:func:`inference_model`).
        bf16: bfloat16 weights, the same as ``precision="bf16"`` (with ``fast``; see :func:`inference_model`).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`foveal.engine.device.resolve_device`).
        precision: ``auto`` (fp32 for inference), ``fp32``, ``bf16`` or ``fp16`` (CUDA) weights; anchors, box
            decoding and NMS stay fp32.
    """
    precision = "bf16" if bf16 and precision in ("auto", "fp32") else precision
    model, (classes, categories, config, geometry, mean, std), ckpt = load_for_inference(
        path, check_task, _read_record, fast=fast, device=device, precision=precision
    )
    return LoadedDetector(model, classes, categories, *geometry, mean, std, config, ckpt.meta)


def _read_record(
    meta: dict[str, Any],
) -> tuple[list[str], list[dict[str, Any]], DetectConfig, tuple[int, int, int], tuple[float, ...], tuple[float, ...]]:
    """Classes, categories, config, input geometry (channels, min_size, max_size), mean and std of a detection
    checkpoint's record."""
    inp = meta["input"]
    categories = [dict(c) for c in meta["categories"]]
    config = from_dict(DetectConfig, meta["config"])
    geometry = (int(inp["channels"]), int(inp["min_size"]), int(inp["max_size"]))
    mean, std = tuple(float(v) for v in inp["mean"]), tuple(float(v) for v in inp["std"])
    return list(meta["classes"]), categories, config, geometry, mean, std


def fp32_output(model: nn.Module, output: RetinaOutput) -> RetinaOutput:
    """``output`` of a bf16 / fp16 RetinaNet with fp32 logits, deltas and anchors (anchors made anew in fp32: in
    bf16 they and the deltas would put boxes off by pixels); an fp32 output as it is."""
    if output.cls_logits.dtype == torch.float32:
        return output
    generator = cast(AnchorGenerator, model.anchor_generator)
    anchors = torch.cat(generator(output.level_sizes, output.cls_logits.device, torch.float32))
    return output._replace(cls_logits=output.cls_logits.float(), box_deltas=output.box_deltas.float(), anchors=anchors)


@torch.no_grad()
def detect_batch(
    model: nn.Module,
    images: Tensor,
    image_sizes: Sequence[tuple[int, int]],
    scales: Sequence[float],
    original_sizes: Sequence[tuple[int, int]],
    inference: DetectInferenceConfig,
) -> list[dict[str, Tensor]]:
    """Detections of one padded batch, in the original images' pixels.

    Args:
        model: a RetinaNet in eval mode.
        images: (N, C, H, W) resized, normalised, zero-padded images (:func:`collate_detection`).
        image_sizes: (H', W') of each image before padding.
        scales: resize factor of each image (resized = original · scale).
        original_sizes: (H, W) of each original image; boxes are clipped to it.
        inference: the post-processing settings.

    Returns:
        Per image ``{"boxes": (D, 4) xyxy, "scores": (D,), "labels": (D,) int64}`` on the CPU, by decreasing score.
    """
    weight = next(model.parameters())
    output = fp32_output(model, model(to_device(images, weight.device, weight.dtype, uses_channels_last(model))))
    dets = postprocess(
        output, image_sizes, inference.score_thresh, inference.topk, inference.nms, inference.max_detections
    )
    results = []
    for det, scale, (h, w) in zip(dets, scales, original_sizes, strict=True):
        boxes = boxes_to_original(det["boxes"].float(), scale).cpu()
        limit = boxes.new_tensor([w, h, w, h])
        boxes = torch.minimum(boxes.clamp(min=0), limit)
        results.append({"boxes": boxes, "scores": det["scores"].float().cpu(), "labels": det["labels"].cpu()})
    return results


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


class _PrepareDetect:
    """Path → (original (C, H, W) uint8 image, its resized and normalised sample); runs in DataLoader workers."""

    def __init__(self, det: LoadedDetector) -> None:
        self.channels, self.transform = det.channels, det.transform()

    def __call__(self, path: Path) -> tuple[Tensor, Any]:
        from foveal.data.images import load_image

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
        from dataclasses import replace

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
        from foveal.report.detection_plots import draw_detections

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
        from foveal.inference.batch_predict import write_json_array

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


@torch.no_grad()
def predict(
    path: str | Path,
    inputs: Sequence[str],
    out: str | Path,
    *,
    score_thresh: float | None = None,
    show_thresh: float = 0.3,
    batch_size: int = 4,
    bf16: bool = False,
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> list[dict[str, Any]]:
    """Detect objects in each image of ``inputs`` (files, folders, glob patterns, list files) and write
    :class:`DetectWriter`'s files to ``out`` as one unit (:func:`foveal.io.staged_output`); an unreadable image is
    skipped and listed in ``errors.jsonl``.

    Returns:
        One record per image (:class:`DetectWriter`'s, with ``"file"``) with boxes in the image's own pixels.
    """
    from foveal.inference.batch_predict import PREDICTIONS, iter_records, predict_stream

    _check_out(out)
    predictor = DetectPredictor(path, score_thresh, bf16, device, precision)
    writer = DetectWriter(predictor.det.classes, predictor.det.categories, show_thresh)
    settings = {"checkpoint": str(path), "score_thresh": score_thresh, "show_thresh": show_thresh}
    with staged_output(out) as staged:
        predict_stream(predictor, writer, [str(i) for i in inputs], staged, settings, batch_size=batch_size, workers=0)
    return list(iter_records(Path(out) / PREDICTIONS))


def _shown(det: dict[str, Tensor], thresh: float) -> Tensor:
    """Indices of the detections a figure shows: score ≥ ``thresh``, and of boxes overlapping by IoU > 0.5 only the
    best one, whatever its class (the results keep every class; a figure shows each object once)."""
    from torchvision.ops import nms

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
