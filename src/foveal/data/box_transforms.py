"""Joint image + box transforms for detection, the dataset that applies them, and batch collation.

Images are (C, H, W) tensors, uint8 or float; boxes are (M, 4) float (x1, y1, x2, y2) in pixels, with x2 and y2 the
exclusive right/bottom edges, so a box of the whole image is (0, 0, W, H). Every function returns new tensors.

The paper's recipe (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, Sec. 4.1): horizontal flip as the
only augmentation, images resized so the shorter side is 800 px (Detectron caps the longer side at 1333). Scale jitter
(a shorter side drawn from a list per image) is the usual multi-scale extension. Resizing is that of
:func:`foveal.preprocess.resize_for_detection` (bilinear, antialiased when shrinking) and maps boxes by the same
scalar ``scale``, so :func:`foveal.preprocess.boxes_to_original` inverts it.

Randomness comes only from a ``torch.Generator`` passed in; :class:`DetectionSamples` seeds one per sample from the
trainer's (index, sample_seed), so resumed and distributed runs see the same augmentations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from foveal.errors import FovealError
from foveal.preprocess import IMAGENET_MEAN, IMAGENET_STD, batch_images, normalize

_MAX_EDGE = 65536  # the largest image edge a resize may produce


def hflip(image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror left–right: (C, H, W) image and (M, 4) xyxy boxes; x ↦ W − x (and x1, x2 swap roles)."""
    w = image.shape[-1]
    flipped = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    return image.flip(-1), flipped.reshape(-1, 4)


def resize(image: Tensor, boxes: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Scale an image by ``scale`` to round(H · scale) × round(W · scale) and its boxes by exactly ``scale``, then clip
    the boxes to the new image (rounding the size can cut up to half a pixel).

    Args:
        image: (C, H, W) uint8 or float; a uint8 image is resized in float and rounded back to uint8.
        boxes: (M, 4) xyxy.
        scale: positive factor.

    Returns:
        (resized image, scaled boxes).
    """
    if not (math.isfinite(scale) and scale > 0):
        raise FovealError(f"resize scale must be a positive finite number, got {scale}")
    h, w = image.shape[-2:]
    if min(h, w) < 1:
        raise FovealError(f"cannot resize an empty image of {h}×{w} pixels")
    if h * scale > _MAX_EDGE or w * scale > _MAX_EDGE:
        raise FovealError(f"resize by {scale:g} would make a {h}×{w} image larger than {_MAX_EDGE} px a side")
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    x = image.float() if not image.is_floating_point() else image
    out = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=scale < 1)[0]
    if not image.is_floating_point():
        out = out.round_().clamp_(0, 255).to(image.dtype)
    return out, clip_boxes(boxes * scale, size)


def shorter_side_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """The factor that brings the shorter side to ``min_size`` unless the longer one would exceed ``max_size``."""
    if min_size < 1 or max_size < min_size:
        raise FovealError(f"need 1 ≤ min_size ≤ max_size, got min_size={min_size}, max_size={max_size}")
    if min(height, width) < 1:
        raise FovealError(f"cannot resize an empty image of {height}×{width} pixels")
    return min(min_size / min(height, width), max_size / max(height, width))


def resize_shorter(image: Tensor, boxes: Tensor, min_size: int, max_size: int) -> tuple[Tensor, Tensor, float]:
    """Resize so the shorter side is ``min_size`` with the longer ≤ ``max_size`` (the paper's 800 / 1333).

    Returns:
        (image, boxes, scale); the same image as ``resize_for_detection(image, min_size, max_size)``.
    """
    scale = shorter_side_scale(int(image.shape[-2]), int(image.shape[-1]), min_size, max_size)
    out, moved = resize(image, boxes, scale)
    return out, moved, scale


def scale_jitter(
    image: Tensor, boxes: Tensor, min_sizes: Sequence[int], max_size: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, float]:
    """Multi-scale training: :func:`resize_shorter` to a shorter side drawn uniformly from ``min_sizes``.

    Returns:
        (image, boxes, scale).
    """
    if not min_sizes:
        raise FovealError("scale_jitter needs at least one shorter-side size in min_sizes")
    pick = int(torch.randint(len(min_sizes), (1,), generator=generator))
    return resize_shorter(image, boxes, int(min_sizes[pick]), max_size)


def clip_boxes(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip (M, 4) xyxy boxes to an image of ``size`` = (H, W); a NaN coordinate becomes 0 (an empty box)."""
    h, w = size
    limit = boxes.new_tensor([w, h, w, h])
    return torch.minimum(torch.nan_to_num(boxes, nan=0.0).clamp(min=0), limit)


def drop_empty(boxes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Remove the boxes without area (x2 ≤ x1 or y2 ≤ y1) together with their labels."""
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], labels[keep]


class DetectionSample(NamedTuple):
    """One transformed image and its target.

    Attributes:
        image: (C, H', W') float, normalised, at the network's input size.
        boxes: (M, 4) float32 xyxy in pixels of ``image``.
        labels: (M,) int64.
        scale: H' / H (the original image's boxes are ``boxes / scale``).
        ignore: (G, 4) float32 xyxy crowd regions in pixels of ``image``.
        image_index: the image's index in the dataset (-1 when unknown).
    """

    image: Tensor
    boxes: Tensor
    labels: Tensor
    scale: float
    ignore: Tensor
    image_index: int = -1


@dataclass(frozen=True)
class DetectionTransform:
    """Image + boxes → network input: in training a horizontal flip with probability ``flip_p`` and a resize to a
    shorter side drawn from ``jitter_min_sizes`` (or ``min_size`` when None); in evaluation a resize to ``min_size``.
    Then ``(x / 255 − mean) / std``. Boxes left without area are dropped with their labels.

    Args:
        train: training (random) or evaluation (deterministic) behaviour.
        min_size, max_size: shorter-side size and longer-side cap (the paper: 800, 1333).
        jitter_min_sizes: shorter sides to draw from in training (e.g. (640, 672, …, 800)); None for ``min_size``.
        flip_p: probability of the horizontal flip in training.
        mean, std: per-channel normalisation of values in [0, 1]; one entry serves any number of channels.
    """

    train: bool = False
    min_size: int = 800
    max_size: int = 1333
    jitter_min_sizes: tuple[int, ...] | None = None
    flip_p: float = 0.5
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        shorter_side_scale(1, 1, self.min_size, self.max_size)  # validates the sizes
        if not 0.0 <= self.flip_p <= 1.0:
            raise FovealError(f"flip_p is a probability in [0, 1], got {self.flip_p}")
        if self.jitter_min_sizes is not None and not all(1 <= s <= self.max_size for s in self.jitter_min_sizes):
            raise FovealError(f"jitter_min_sizes must lie in 1..max_size={self.max_size}, got {self.jitter_min_sizes}")

    def __call__(
        self,
        image: Tensor,
        boxes: Tensor,
        labels: Tensor,
        ignore: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> DetectionSample:
        """Transform one image.

        Args:
            image: (C, H, W) uint8 (or float in 0..255).
            boxes: (M, 4) xyxy pixels; labels: (M,) int64.
            ignore: (G, 4) xyxy crowd regions, moved like the boxes.
            generator: source of the random flip and size (training only).

        Returns:
            A :class:`DetectionSample` with ``image_index`` -1.
        """
        boxes = boxes.to(torch.float32).reshape(-1, 4)
        regions = torch.zeros(0, 4) if ignore is None else ignore.to(torch.float32).reshape(-1, 4)
        n = boxes.shape[0]
        image = image.float()  # resize in float once; no rounding back to uint8 in between
        both = torch.cat([boxes, regions])  # boxes and ignore regions move together
        if self.train and self.flip_p > 0 and float(torch.rand((), generator=generator)) < self.flip_p:
            image, both = hflip(image, both)
        if self.train and self.jitter_min_sizes:
            image, both, scale = scale_jitter(image, both, self.jitter_min_sizes, self.max_size, generator)
        else:
            image, both, scale = resize_shorter(image, both, self.min_size, self.max_size)
        kept, labels = drop_empty(both[:n], labels.to(torch.int64).reshape(-1))
        regions, _ = drop_empty(both[n:], torch.zeros(both.shape[0] - n))
        return DetectionSample(normalize(image, self.mean, self.std), kept, labels, scale, regions)


class DetectionSamples(Dataset[DetectionSample]):
    """Transformed samples of a detection dataset (e.g. :class:`foveal.data.coco.DetectionData`).

    Indexed by an int (random draws then come from torch's global generator) or, from the trainer, by ``(index,
    sample_seed)``: the flip and size are then drawn from a generator seeded with ``sample_seed``, a pure function
    of the seed.

    Args:
        data: has ``len`` and ``get(i) -> (uint8 image (C, H, W), {"boxes", "labels", optional "ignore"})``.
        transform: a :class:`DetectionTransform`.
    """

    def __init__(self, data: Any, transform: DetectionTransform) -> None:
        self.data, self.transform = data, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: int | tuple[int, int]) -> DetectionSample:
        index, seed = key if isinstance(key, tuple) else (key, None)
        generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        image, target = self.data.get(int(index))
        sample = self.transform(image, target["boxes"], target["labels"], target.get("ignore"), generator)
        return sample._replace(image_index=int(index))


class DetectionBatch(NamedTuple):
    """A collated batch.

    Attributes:
        images: (N, C, H, W) float, zero-padded at the bottom and right to multiples of 32.
        targets: per image ``{"boxes": (M, 4), "labels": (M,), "ignore": (G, 4)}`` in the padded frame (the padding
            adds no offset), ready for ``retinanet_loss``.
        image_sizes: (H', W') of each image before padding, for ``postprocess``.
        scales: per image, to map detections back with ``boxes_to_original``.
        indices: dataset index of each image.
    """

    images: Tensor
    targets: list[dict[str, Tensor]]
    image_sizes: list[tuple[int, int]]
    scales: list[float]
    indices: list[int]


def collate_detection(batch: Sequence[DetectionSample], size_divisible: int = 32) -> DetectionBatch:
    """Stack samples of different sizes into one padded batch (:func:`foveal.preprocess.batch_images`)."""
    images, sizes = batch_images([s.image for s in batch], size_divisible)
    targets = [{"boxes": s.boxes, "labels": s.labels, "ignore": s.ignore} for s in batch]
    return DetectionBatch(images, targets, sizes, [s.scale for s in batch], [s.image_index for s in batch])
