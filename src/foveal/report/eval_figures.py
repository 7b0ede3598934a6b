"""Per-image evaluation figures for the HTML report: what each prediction got right and wrong.

- segmentation: image | prediction | ground truth side by side, instances coloured TP (green), FP (red, predicted
  with no true instance at IoU ≥ 0.5) and FN (orange, a true instance nobody found), predicted instances that fused
  two touching true instances outlined in magenta;
- detection: ground truth and detections on the image, detections TP (green) or FP (red), missed boxes FN (orange);
- classification: a thumbnail of a misclassified image.

Drawn with Pillow (one image in, one image out); small images are enlarged by an integer factor, nearest neighbour.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from foveal.io import atomic_output

TP, FP, FN = (40, 200, 60), (235, 40, 40), (255, 150, 0)
MERGED = (230, 0, 230)
MATCH_IOU = 0.5
"""IoU at which a prediction counts as a true positive in the figures (instances and boxes)."""


def _rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, C) or (C, H, W) uint8 or float in [0, 1] → (H, W, 3) uint8."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    return np.repeat(a, 3, axis=-1) if a.shape[-1] == 1 else a[..., :3]


def _save(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    with atomic_output(path, "wb") as handle:
        image.save(handle, format="PNG")
    return Path(path)


def _factor(h: int, w: int, min_side: int) -> int:
    return max(1, -(-min_side // max(1, min(h, w))))


def thumbnail(image: np.ndarray, path: str | os.PathLike[str], min_side: int = 96) -> Path:
    """``image`` enlarged (nearest) to a shorter side of at least ``min_side`` px, as a PNG (grey stays grey)."""
    a = np.asarray(image)
    grey = a.ndim == 2 or (a.ndim == 3 and 1 in (a.shape[0], a.shape[-1]))
    rgb = _rgb(image)
    picture = Image.fromarray(rgb[..., 0] if grey else rgb)
    f = _factor(rgb.shape[0], rgb.shape[1], min_side)
    return _save(picture.resize((rgb.shape[1] * f, rgb.shape[0] * f), Image.Resampling.NEAREST), path)


# -- segmentation ----------------------------------------------------------------------------------------------------
def instance_outcomes(pred: np.ndarray, true: np.ndarray) -> dict[str, Any]:
    """Which instances are TP / FP / FN at IoU ≥ 0.5 (one-to-one: above 0.5 a match is unique) and which predicted
    instances merge touching true ones.

    Returns:
        ``{"tp_pred", "fp", "tp_true", "fn", "merging"}``: lists of labels (predicted labels for tp_pred, fp and
        merging; true labels for tp_true and fn).
    """
    from foveal.metrics.instances import instance_overlaps, touching_pairs

    p_ids, t_ids = np.unique(pred[pred > 0]), np.unique(true[true > 0])
    overlaps = instance_overlaps(pred, true)  # sparse: many instances need no true × predicted table
    rows, cols, iou = overlaps.ious()
    hit = iou >= MATCH_IOU
    tp_pred = [int(p_ids[i]) for i in np.unique(cols[hit])]
    tp_true = [int(t_ids[i]) for i in np.unique(rows[hit])]
    merging: set[int] = set()
    if len(t_ids):
        index = np.searchsorted(t_ids, true) + 1
        pairs = touching_pairs(np.where(true > 0, index, 0))
        majority = overlaps.majority()
        for a, b in pairs:
            if majority[a] == majority[b] != 0:
                merging.add(int(p_ids[majority[a] - 1]))
    return {
        "tp_pred": tp_pred,
        "fp": [int(p) for p in p_ids if p not in set(tp_pred)],
        "tp_true": tp_true,
        "fn": [int(t) for t in t_ids if t not in set(tp_true)],
        "merging": sorted(merging),
    }


def _paint(rgb: np.ndarray, labels: np.ndarray, colours: dict[int, tuple[int, int, int]], alpha: float) -> np.ndarray:
    out = rgb.astype(np.float64)
    for label, colour in colours.items():
        m = labels == label
        out[m] = (1 - alpha) * out[m] + alpha * np.asarray(colour, dtype=np.float64)
    return out.round().astype(np.uint8)


def _edges(labels: np.ndarray, keep: Sequence[int]) -> np.ndarray:
    m = np.isin(labels, list(keep))
    inner = m.copy()
    inner[1:-1, 1:-1] = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return m & ~inner


def segmentation_panel(
    image: np.ndarray, pred: np.ndarray, true: np.ndarray, path: str | os.PathLike[str], min_side: int = 256
) -> tuple[Path, dict[str, Any]]:
    """Image | prediction (TP green, FP red, merging outlined magenta) | ground truth (TP green, FN orange).

    Args:
        image: the image, (H, W[, C]) or (C, H, W), uint8 or float in [0, 1].
        pred, true: (H, W) instance labels, 0 = background.
        path: the PNG to write.

    Returns:
        The path and :func:`instance_outcomes`.
    """
    rgb = _rgb(image)
    outcome = instance_outcomes(pred, true)
    left = _paint(rgb, pred, {**{p: TP for p in outcome["tp_pred"]}, **{p: FP for p in outcome["fp"]}}, 0.5)
    left[_edges(pred, outcome["merging"])] = MERGED
    right = _paint(rgb, true, {**{t: TP for t in outcome["tp_true"]}, **{t: FN for t in outcome["fn"]}}, 0.5)
    gap = np.full((rgb.shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([rgb, gap, left, gap, right], axis=1)
    f = _factor(rgb.shape[0], rgb.shape[1], min_side)
    big = Image.fromarray(row).resize((row.shape[1] * f, row.shape[0] * f), Image.Resampling.NEAREST)
    draw, font = ImageDraw.Draw(big), ImageFont.load_default()
    for i, text in enumerate(("image", "prediction", "ground truth")):
        x = i * (rgb.shape[1] + 4) * f + 3
        draw.text((x, 3), text, fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    return _save(big, path), outcome


# -- detection -------------------------------------------------------------------------------------------------------
def match_detections(
    boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy matching by decreasing score, same class, IoU ≥ 0.5 (COCO's rule at one threshold).

    Args:
        boxes: (D, 4) xyxy detections; labels (D,); scores (D,).
        gt_boxes: (G, 4) xyxy; gt_labels (G,).

    Returns:
        (D,) bool: detection is a TP; (G,) bool: ground-truth box was found.
    """
    import torch
    from torchvision.ops import box_iou

    tp, found = np.zeros(len(boxes), bool), np.zeros(len(gt_boxes), bool)
    if len(boxes) == 0 or len(gt_boxes) == 0:
        return tp, found
    iou = box_iou(torch.as_tensor(boxes, dtype=torch.float64), torch.as_tensor(gt_boxes, dtype=torch.float64)).numpy()
    for d in np.argsort(-scores, kind="stable"):
        cand = np.where((gt_labels == labels[d]) & ~found & (iou[d] >= MATCH_IOU))[0]
        if len(cand):
            g = cand[np.argmax(iou[d, cand])]
            tp[d], found[g] = True, True
    return tp, found


def detection_panel(
    image: np.ndarray,
    det: dict[str, np.ndarray],
    gt_boxes: np.ndarray,
    gt_labels: np.ndarray,
    classes: Sequence[str],
    path: str | os.PathLike[str],
    min_side: int = 320,
) -> tuple[Path, dict[str, int]]:
    """Detections (``det``: boxes (D, 4) xyxy, labels, scores; already thresholded) coloured TP / FP, missed
    ground-truth boxes FN, on the image. Returns the path and the counts ``{"tp", "fp", "fn"}``."""
    tp, found = match_detections(det["boxes"], det["labels"], det["scores"], gt_boxes, gt_labels)
    rgb = _rgb(image)
    f = _factor(rgb.shape[0], rgb.shape[1], min_side)
    big = Image.fromarray(rgb).resize((rgb.shape[1] * f, rgb.shape[0] * f), Image.Resampling.NEAREST)
    draw, font = ImageDraw.Draw(big), ImageFont.load_default()
    for box, label, ok in zip(gt_boxes * f, gt_labels, found, strict=True):
        if not ok:
            draw.rectangle(box.tolist(), outline=FN, width=2)
            _label(draw, font, box, f"missed {classes[int(label)]}", FN)
    order = np.argsort(det["scores"], kind="stable")
    for i in order:
        colour = TP if tp[i] else FP
        box = det["boxes"][i] * f
        draw.rectangle(box.tolist(), outline=colour, width=2)
        _label(draw, font, box, f"{classes[int(det['labels'][i])]} {float(det['scores'][i]):.2f}", colour)
    counts = {"tp": int(tp.sum()), "fp": int((~tp).sum()), "fn": int((~found).sum())}
    return _save(big, path), counts


def _label(draw: ImageDraw.ImageDraw, font: Any, box: np.ndarray, text: str, colour: tuple[int, int, int]) -> None:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x, y = float(box[0]), float(box[1]) - (bottom - top) - 4
    y = y if y >= 0 else float(box[1]) + 2
    draw.rectangle([x, y, x + right - left + 4, y + bottom - top + 4], fill=colour)
    draw.text((x + 2 - left, y + 2 - top), text, fill=(0, 0, 0), font=font)


def pick_shown(scores: Sequence[float], worst: int, sample: int, seed: int = 0) -> list[int]:
    """Indices to draw: the ``worst`` lowest-scoring items, then ``sample`` others drawn at random (a bounded number
    of figures however large the evaluation)."""
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    chosen = order[:worst]
    rest = order[worst:]
    rng = np.random.default_rng(seed)
    if rest:
        chosen += sorted(int(rest[i]) for i in rng.choice(len(rest), min(sample, len(rest)), replace=False))
    return chosen
