"""Synthetic localization sets: small glyphs (MNIST / Fashion-MNIST images) pasted onto larger blank canvases.

A canvas holds one or more *objects* — whole source images resized to a random size — with a tight box and a class
each, plus optional *clutter*. With one object per canvas the image-level label is that object's class, which is the
weakly supervised localization benchmark of CAM (train on labels only, score the map-derived boxes); with several
objects the same canvases serve as a small detection set, written in the COCO format by :func:`write_coco`.

Boxes are (x1, y1, x2, y2) in pixels, x2 and y2 exclusive: the tight box of the object's non-zero pixels after
resizing, i.e. columns x1 … x2 − 1 and rows y1 … y2 − 1 (see :mod:`foveal.explain.boxes`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from foveal.errors import FovealError
from foveal.io import atomic_output

_TRIES = 50  # placements tried for one object or clutter patch before it is left out
_FRAGMENT = 4  # a clutter fragment is 1/4 of a source image's side, shown at 1/4 of an object's size


@dataclass(frozen=True, eq=False)
class Canvas:
    """One synthetic image and its objects.

    Attributes:
        image: (H, W) uint8, background 0.
        boxes: (M, 4) float32 tight boxes (x1, y1, x2, y2), x2 and y2 exclusive.
        labels: (M,) int64 class of each box.
    """

    image: NDArray[np.uint8]
    boxes: NDArray[np.float32]
    labels: NDArray[np.int64]


def make_canvases(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    n: int,
    size: int | tuple[int, int] = 96,
    objects: tuple[int, int] = (1, 1),
    scale: tuple[float, float] = (20, 64),
    clutter: int = 0,
    max_overlap: float = 0.1,
    seed: int = 0,
) -> list[Canvas]:
    """Paste source images onto blank canvases.

    Each object is a whole source image (chosen uniformly), resized bilinearly (Pillow) to a square of side drawn
    uniformly from ``scale``, at a uniform random position where it fits entirely. Objects of one canvas overlap
    little: a new object's box may have IoU at most ``max_overlap`` with every earlier box (overlapping pixels take
    the brighter value); an object that finds no such place in 50 tries is left out, so a crowded canvas can hold
    fewer objects than drawn.

    Clutter is what an object is not: a *fragment*, the crop of a quarter of a random source image's side (turned by a
    random multiple of 90°), shown at a quarter of an object's size, with no label. Fragments are placed only where
    they touch no object box (one pixel of margin), so every box stays tight around its own object and no fragment
    is ever a whole glyph; a fragment that finds no free place in 50 tries is left out.

    Canvas ``i`` depends only on ``seed`` and ``i`` (its own generator), so the first canvases are the same for any
    ``n``.

    Args:
        images: (N, h, w) uint8 source images (e.g. 28 × 28 Fashion-MNIST), dark background.
        labels: (N,) integer class of each source image.
        n: number of canvases.
        size: canvas side, or (height, width).
        objects: (min, max) objects per canvas, inclusive; (1, 1) for weakly supervised localization.
        scale: (min, max) object side in pixels; the max must fit in the canvas.
        clutter: fragments per canvas.
        max_overlap: largest IoU allowed between two object boxes of one canvas, in [0, 1].
        seed: random seed.

    Returns:
        ``n`` :class:`Canvas` objects.
    """
    sources, classes = _check_sources(images, labels)
    height, width = _check_layout(n, size, objects, scale, clutter, max_overlap)
    count = (int(objects[0]), int(objects[1]))
    return [
        _canvas(np.random.default_rng([seed, i]), sources, classes, (height, width), count, scale, clutter, max_overlap)
        for i in range(n)
    ]


def _check_layout(
    n: int,
    size: int | tuple[int, int],
    objects: tuple[int, int],
    scale: tuple[float, float],
    clutter: int,
    max_overlap: float,
) -> tuple[int, int]:
    """(height, width) of the canvases, once the arguments of :func:`make_canvases` are known to fit together."""
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    lo, hi = int(objects[0]), int(objects[1])
    if n < 0 or height < 1 or width < 1 or not 0 <= lo <= hi or clutter < 0:
        raise FovealError(
            f"need n ≥ 0, a positive size, 0 ≤ min ≤ max objects and clutter ≥ 0; got n={n}, size={size}, "
            f"objects={objects}, clutter={clutter}"
        )
    if not 1 <= scale[0] <= scale[1] <= min(height, width):
        raise FovealError(
            f"scale must be (min, max) object sides with 1 ≤ min ≤ max ≤ the canvas side {min(height, width)}, "
            f"got {scale}"
        )
    if not 0.0 <= max_overlap <= 1.0:
        raise FovealError(f"max_overlap is an IoU in [0, 1], got {max_overlap}")
    return height, width


def _canvas(
    rng: np.random.Generator,
    sources: np.ndarray,
    classes: np.ndarray,
    shape: tuple[int, int],
    objects: tuple[int, int],
    scale: tuple[float, float],
    clutter: int,
    max_overlap: float,
) -> Canvas:
    """One canvas of ``shape`` (height, width): its objects first, then its clutter, all drawn from ``rng``."""
    image = np.zeros(shape, dtype=np.uint8)
    boxes: list[np.ndarray] = []
    names: list[int] = []
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        pick = int(rng.integers(len(sources)))
        side = int(round(rng.uniform(scale[0], scale[1])))
        placed = _place_object(rng, image, _resize(sources[pick], side, side), boxes, max_overlap)
        if placed is not None:
            boxes.append(placed)
            names.append(int(classes[pick]))
    for _ in range(clutter):
        _place_fragment(rng, image, sources, scale, boxes)
    return Canvas(
        image=image,
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.array(names, dtype=np.int64),
    )


def write_coco(
    canvases: list[Canvas], out_dir: str | os.PathLike[str], class_names: list[str], split_name: str
) -> Path:
    """Write canvases as a COCO detection set.

    Layout (COCO's own): ``out_dir/<split_name>/000000.png …`` (8-bit grayscale PNGs; ``file_name`` is the name inside
    that folder) and ``out_dir/annotations/instances_<split_name>.json`` with ``images`` (id, file_name, width,
    height), ``annotations`` (id, image_id, category_id, bbox [x, y, w, h], area = w · h, iscrowd 0) and
    ``categories`` (id, name). Ids start at 1; a box of class index c has ``category_id`` c + 1, and category c + 1 is
    named ``class_names[c]``.

    Args:
        canvases: from :func:`make_canvases`.
        out_dir: root folder (created).
        class_names: name of each class index.
        split_name: e.g. "train" or "val".

    Returns:
        Path of the JSON file.
    """
    if not split_name or any(c in split_name for c in "/\\") or split_name.startswith("."):
        raise FovealError(f"split_name must be a plain folder name such as 'train', got {split_name!r}")
    used = [int(label) for c in canvases for label in c.labels]
    if used and not 0 <= min(used) <= max(used) < len(class_names):
        raise FovealError(f"labels run from {min(used)} to {max(used)} but {len(class_names)} class names were given")
    root = Path(out_dir)
    image_dir = root / split_name
    try:
        image_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FovealError(f"cannot create {image_dir}: {exc.strerror or exc}") from None
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index, canvas in enumerate(canvases):
        name = f"{index:06d}.png"
        Image.fromarray(canvas.image).save(image_dir / name)
        height, width = canvas.image.shape
        images.append({"id": index + 1, "file_name": name, "width": width, "height": height})
        annotations.extend(_annotations(canvas, index + 1, len(annotations) + 1))
    document = {
        "info": {"description": f"foveal synthetic canvases, split {split_name}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c + 1, "name": str(name)} for c, name in enumerate(class_names)],
    }
    path = root / "annotations" / f"instances_{split_name}.json"
    with atomic_output(path) as handle:
        json.dump(document, handle)
    return path


def _annotations(canvas: Canvas, image_id: int, first_id: int) -> list[dict[str, Any]]:
    """COCO annotations of ``canvas``'s boxes (``bbox`` [x, y, w, h]), numbered from ``first_id``."""
    found: list[dict[str, Any]] = []
    for (x1, y1, x2, y2), label in zip(canvas.boxes.tolist(), canvas.labels.tolist(), strict=True):
        w, h = x2 - x1, y2 - y1
        found.append(
            {
                "id": first_id + len(found),
                "image_id": image_id,
                "category_id": int(label) + 1,
                "bbox": [x1, y1, w, h],
                "area": w * h,
                "iscrowd": 0,
            }
        )
    return found


def _check_sources(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The non-blank source images and their labels."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise FovealError(f"source images must be (N, h, w) uint8, got shape {images.shape} dtype {images.dtype}")
    if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
        raise FovealError(f"labels must be (N,) integers, one per image; got shape {labels.shape} dtype {labels.dtype}")
    filled = images.reshape(len(images), -1).max(1) > 0
    if not filled.any():
        raise FovealError("every source image is blank (all zero); objects need non-zero pixels")
    return images[filled], labels[filled]


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def _tight(patch: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x1, y1, x2, y2), exclusive ends, of the non-zero pixels of a patch; ``None`` when it is blank."""
    rows, cols = np.flatnonzero(patch.any(1)), np.flatnonzero(patch.any(0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def _iou(box: np.ndarray, boxes: list[np.ndarray]) -> float:
    if not boxes:
        return 0.0
    others = np.array(boxes)
    w = np.clip(np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]), 0, None)
    inter = w * h
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    return float((inter / (area + areas - inter)).max())


def _paste(image: np.ndarray, patch: np.ndarray, x: int, y: int) -> None:
    region = image[y : y + patch.shape[0], x : x + patch.shape[1]]
    np.maximum(region, patch, out=region)


def _place_object(
    rng: np.random.Generator, image: np.ndarray, glyph: np.ndarray, boxes: list[np.ndarray], max_overlap: float
) -> np.ndarray | None:
    """Paste ``glyph`` where its tight box overlaps earlier boxes by IoU ≤ ``max_overlap``; its box, or ``None``."""
    tight = _tight(glyph)
    if tight is None:  # a faint glyph can vanish when shrunk
        return None
    height, width = image.shape
    for _ in range(_TRIES):
        x = int(rng.integers(width - glyph.shape[1] + 1))
        y = int(rng.integers(height - glyph.shape[0] + 1))
        box = np.array([x + tight[0], y + tight[1], x + tight[2], y + tight[3]], dtype=np.float64)
        if _iou(box, boxes) <= max_overlap:
            _paste(image, glyph, x, y)
            return box
    return None


def _place_fragment(
    rng: np.random.Generator,
    image: np.ndarray,
    sources: np.ndarray,
    scale: tuple[float, float],
    boxes: list[np.ndarray],
) -> None:
    """Paste one unlabelled fragment where it touches no object box (margin 1 px); skip it if there is no room."""
    crop_h, crop_w = max(1, sources.shape[1] // _FRAGMENT), max(1, sources.shape[2] // _FRAGMENT)
    for _ in range(_TRIES):  # a crop of the empty margin of a glyph would be invisible: look for one with ink
        source = sources[int(rng.integers(len(sources)))]
        top = int(rng.integers(source.shape[0] - crop_h + 1))
        left = int(rng.integers(source.shape[1] - crop_w + 1))
        crop = source[top : top + crop_h, left : left + crop_w]
        if crop.any():
            break
    crop = np.rot90(crop, int(rng.integers(4)))
    side = max(2, int(round(rng.uniform(scale[0], scale[1]) / _FRAGMENT)))
    fragment = _resize(np.ascontiguousarray(crop), side, side)
    height, width = image.shape
    if side > min(height, width):
        return
    taken = np.array(boxes).reshape(-1, 4)
    for _ in range(_TRIES):
        x = int(rng.integers(width - side + 1))
        y = int(rng.integers(height - side + 1))
        apart = (
            (x + side + 1 <= taken[:, 0])
            | (taken[:, 2] + 1 <= x)
            | (y + side + 1 <= taken[:, 1])
            | (taken[:, 3] + 1 <= y)
        )
        if apart.all():
            _paste(image, fragment, x, y)
            return
