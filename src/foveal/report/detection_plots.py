"""Detections drawn on their image: one PNG with a coloured box, the class name and the score per detection.

Drawn with Pillow (no figure machinery: one image in, one image out). Small images are enlarged by an integer factor
(nearest neighbour, so the pixels stay visible) until their shorter side reaches ``min_side``, so that the labels stay
readable on 128-px canvases; boxes are scaled with them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from foveal.errors import FovealError
from foveal.io import atomic_output

# Colour per class (cycled): a qualitative palette that stays distinct on grey images.
_PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
)
_GROUND_TRUTH = (255, 255, 255)


def class_colour(label: int) -> tuple[int, int, int]:
    """The RGB colour of class ``label`` in every detection figure."""
    return _PALETTE[int(label) % len(_PALETTE)]


def _as_rgb(image: Any) -> np.ndarray:
    """(C, H, W) or (H, W[, C]) uint8 / float in [0, 1] → (H, W, 3) uint8."""
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise FovealError(f"an image to draw on must be (C, H, W) or (H, W[, C]) with 1 or 3 channels, got {arr.shape}")
    if arr.dtype != np.uint8:
        arr = (np.clip(arr.astype(np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)
    return np.repeat(arr, 3, axis=2) if arr.shape[2] == 1 else arr


def _boxes(value: Any, name: str) -> np.ndarray:
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise FovealError(f"{name} must be (D, 4) xyxy boxes, got shape {arr.shape}")
    return arr.astype(np.float64)


def draw_detections(
    image: Any,
    boxes: Any,
    labels: Any,
    scores: Any,
    classes: Sequence[str],
    path: str | os.PathLike[str],
    *,
    ground_truth: Any | None = None,
    min_side: int = 384,
    title: str | None = None,
) -> Path:
    """Save ``image`` with its detections as a PNG.

    Args:
        image: (C, H, W) or (H, W[, C]) with C = 1 or 3; uint8, or float in [0, 1].
        boxes: (D, 4) xyxy in the image's pixels.
        labels: (D,) class indices into ``classes``.
        scores: (D,) in [0, 1], written after the class name.
        classes: class names.
        path: the PNG file (written atomically; parent folders are created).
        ground_truth: optional (M, 4) xyxy boxes, drawn as thin white outlines under the detections.
        min_side: the image is enlarged by the smallest integer factor that brings its shorter side to at least this.
        title: optional line of text at the top left.

    Returns:
        ``path`` as a Path.
    """
    rgb = _as_rgb(image)
    dets, gt = _boxes(boxes, "boxes"), _boxes(ground_truth if ground_truth is not None else [], "ground_truth")
    labs = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64).reshape(-1)
    confs = np.asarray(scores.cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64).reshape(-1)
    if not len(dets) == len(labs) == len(confs):
        raise FovealError(f"got {len(dets)} boxes, {len(labs)} labels and {len(confs)} scores: give one of each")
    if len(labs) and (labs.min() < 0 or labs.max() >= len(classes)):
        raise FovealError(
            f"detection labels must index the {len(classes)} class names, got {labs.min()} … {labs.max()}"
        )
    h, w = rgb.shape[:2]
    factor = max(1, -(-min_side // max(1, min(h, w))))
    canvas = Image.fromarray(rgb).resize((w * factor, h * factor), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for box in gt * factor:
        draw.rectangle(box.tolist(), outline=_GROUND_TRUTH, width=1)
    # lowest score first, so that the most confident boxes and labels end up on top
    for i in np.argsort(confs, kind="stable"):
        text = f"{classes[labs[i]]} {confs[i]:.2f}"
        _labelled_box(draw, (dets[i] * factor).tolist(), text, class_colour(int(labs[i])), font, canvas.width)
    if title:
        draw.text((4, 4), title, fill=(255, 255, 255), font=font, stroke_width=2, stroke_fill=(0, 0, 0))
    with atomic_output(path, "wb") as handle:
        canvas.save(handle, format="PNG")
    return Path(path)


def _labelled_box(
    draw: ImageDraw.ImageDraw, box: list[float], text: str, colour: tuple[int, int, int], font: Any, width: int
) -> None:
    """Outline ``box`` (x1, y1, x2, y2) in ``colour`` with ``text`` on a filled tag above it (just inside it at the
    top edge), kept within an image ``width`` pixels wide."""
    x1, y1, x2, y2 = box
    draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left, bottom - top
    ty = y1 - th - 4 if y1 - th - 4 >= 0 else y1 + 2  # above the box, else just inside it
    tx = min(max(x1, 0), max(0, width - tw - 4))
    draw.rectangle([tx, ty, tx + tw + 4, ty + th + 4], fill=colour)
    draw.text((tx + 2 - left, ty + 2 - top), text, fill=(0, 0, 0), font=font)
