"""Pre- and post-processing of images around a model, which data pipelines and models alike need: the ImageNet
normalisation constants and :func:`normalize`, the detection resize :func:`resize_for_detection` and its inverse on
boxes :func:`boxes_to_original`, and :func:`batch_images`, which pads images of different sizes into one batch.

Images are (C, H, W) tensors (a batch (N, C, H, W)); boxes are (D, 4) float (x1, y1, x2, y2) in pixels. This module
sits on the ground floor: it imports torch and :mod:`foveal.errors` only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from foveal.errors import FovealError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(image: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (or float in 0..255) (C, H, W) → float ``(x / 255 − mean) / std``; a 1-channel image uses ``mean[0]``."""
    if not all(math.isfinite(v) for v in mean) or not all(math.isfinite(v) and v > 0 for v in std):
        raise FovealError(f"normalize needs finite means and positive finite stds, got mean={mean}, std={std}")
    c = image.shape[-3]
    m = torch.tensor(list(mean) if len(mean) == c else list(mean[:1]) * c, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(list(std) if len(std) == c else list(std[:1]) * c, dtype=torch.float32).view(-1, 1, 1)
    return (image.float() / 255.0 - m) / s


def resize_for_detection(image: Tensor, min_size: int = 800, max_size: int = 1333) -> tuple[Tensor, float]:
    """Scale an image so its shorter side is ``min_size`` unless its longer side would exceed ``max_size``.

    The paper trains and tests at a shorter side of 800; the 1333 cap is Detectron's. Bilinear, antialiased when
    shrinking.

    Args:
        image: (C, H, W) or (N, C, H, W) float image.

    Returns:
        (resized image, scale): the new size is round(H · scale) × round(W · scale); map boxes back with
        :func:`boxes_to_original`.
    """
    if image.dim() not in (3, 4) or not image.is_floating_point():
        raise FovealError(f"resize_for_detection needs a float (C, H, W) or (N, C, H, W) image, got {image.shape}")
    h, w = image.shape[-2:]
    scale = min(min_size / min(h, w), max_size / max(h, w))
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    batch = image if image.dim() == 4 else image[None]
    resized = F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    return (resized if image.dim() == 4 else resized[0]), scale


def boxes_to_original(boxes: Tensor, scale: float) -> Tensor:
    """Map (D, 4) xyxy boxes from the resized image back to the original image's pixels (divide by ``scale``)."""
    return boxes / scale


def batch_images(images: Sequence[Tensor], size_divisible: int = 32) -> tuple[Tensor, list[tuple[int, int]]]:
    """Stack (C, H_i, W_i) images into one (N, C, H, W) batch, zero-padded at the bottom and right to a common size
    rounded up to ``size_divisible``; returns the batch and each image's (H_i, W_i) for :func:`postprocess`."""
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    h = -(-max(s[0] for s in sizes) // size_divisible) * size_divisible
    w = -(-max(s[1] for s in sizes) // size_divisible) * size_divisible
    batch = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    for b, im in zip(batch, images, strict=True):
        b[:, : im.shape[-2], : im.shape[-1]].copy_(im)
    return batch, sizes


def resize_square(image: Tensor, resolution: int) -> Tensor:
    """Resize the shorter side of ``image`` ((C, H, W) or (N, C, H, W); uint8 or float) to ``resolution`` (bilinear,
    antialiased) and centre-crop a ``resolution`` square; an image already that size is returned as it is.

    The classifiers' evaluation transform: the sizes, the rounding of the crop's corner and the uint8 kernel are
    torchvision's ``Resize(resolution, antialias=True)`` then ``CenterCrop(resolution)``, so training (which uses
    those) and inference agree pixel for pixel, without importing torchvision for inference.
    """
    height, width = int(image.shape[-2]), int(image.shape[-1])
    if (height, width) == (resolution, resolution):
        return image
    if height <= width:
        size = (resolution, int(resolution * width / height))
    else:
        size = (int(resolution * height / width), resolution)
    if size != (height, width):
        batch = image if image.dim() == 4 else image.unsqueeze(0)
        batch = torch.nn.functional.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)
        image = batch if image.dim() == 4 else batch.squeeze(0)
        height, width = size
    top, left = int(round((height - resolution) / 2.0)), int(round((width - resolution) / 2.0))
    return image[..., top : top + resolution, left : left + resolution]
