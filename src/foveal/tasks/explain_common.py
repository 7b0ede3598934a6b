"""What every task's explainer shares: the checked options, the per-image record, figure names, and placing images
on the network and its crop on the original pixels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from foveal.data.images import load_image
from foveal.engine.device import to_device, uses_channels_last
from foveal.errors import FovealError

METHODS = ("cam", "gradcam")
RESULTS_FILE = "explanations.json"
#: The largest image scale of ``map_scales`` (a 224-px image becomes 3584 px a side).
MAX_MAP_SCALE = 16.0


@dataclass(frozen=True)
class ExplainOptions:
    """What :func:`foveal.tasks.explain.explain` was asked for, checked (:func:`check_options`), as every task's
    explainer receives it."""

    top_k: int
    method: str
    threshold: float
    relative_to: str
    score_thresh: float | None = None
    map_stride: int | None = None
    map_scales: tuple[float, ...] | None = None
    flip: bool = False
    true_boxes: dict[str, list[list[float]]] | None = None
    device: str | torch.device = "auto"
    precision: str = "auto"


def check_options(
    top_k: int,
    method: str,
    threshold: float,
    relative_to: str,
    score_thresh: float | None = None,
    map_stride: int | None = None,
    map_scales: Sequence[float] | None = None,
    flip: bool = False,
) -> ExplainOptions:
    """The options of an explanation checked one by one (an error names the bad value and a good one).

    Raises:
        FovealError: an unknown method, top_k < 1, a threshold outside [0, 1], an unknown ``relative_to``, a
            detection score outside [0, 1), a map stride < 1, scales outside (0, MAX_MAP_SCALE] or a non-bool flip.
    """
    if method not in METHODS:
        raise FovealError(f"unknown method {method!r}: use 'cam' (class activation maps) or 'gradcam'")
    if not isinstance(top_k, int) or top_k < 1:
        raise FovealError(f"top_k={top_k!r}: explain at least one class per image, e.g. top_k=5", options=("top_k",))
    if not 0.0 <= threshold <= 1.0:
        raise FovealError(f"threshold={threshold}: use a fraction of the map in [0, 1] (the paper uses 0.2)")
    if relative_to not in ("max", "range"):
        raise FovealError(f"relative_to={relative_to!r}: use 'max' (the paper) or 'range'")
    if score_thresh is not None and not 0.0 <= score_thresh < 1.0:
        raise FovealError(f"score_thresh={score_thresh}: use a detection score in [0, 1), e.g. 0.05 (the paper's)")
    if map_stride is not None and (not isinstance(map_stride, int) or map_stride < 1):
        raise FovealError(f"map_stride={map_stride!r}: use a stride finer than the network's, e.g. 2")
    scales = None if map_scales is None else tuple(float(v) for v in map_scales)
    if scales is not None and (not scales or not all(math.isfinite(v) and 0 < v <= MAX_MAP_SCALE for v in scales)):
        raise FovealError(
            f"map_scales={map_scales!r}: give one or more image scales > 0 and ≤ {MAX_MAP_SCALE:g}, e.g. 1 2.5"
        )
    if not isinstance(flip, bool):
        raise FovealError(f"flip={flip!r}: use True (average with the mirrored image) or False (the paper)")
    return ExplainOptions(top_k, method, float(threshold), relative_to, score_thresh, map_stride, scales, flip)


def unique_stem(path: Path, used: set[str]) -> str:
    """A figure name for ``path`` not yet in ``used`` (its stem, else ``<stem>_2``, ``<stem>_3``, …), added to it."""
    stem, i = path.stem, 2
    while stem in used:
        stem, i = f"{path.stem}_{i}", i + 1
    used.add(stem)
    return stem


def on_model(x: Tensor, model: nn.Module) -> Tensor:
    """``x`` (N, C, H, W) on ``model``'s device, in its dtype and memory layout (fp32 inputs for bf16 weights are
    cast here)."""
    weight = next(p for p in model.parameters() if p.ndim == 4)
    return to_device(x, weight.device, weight.dtype, uses_channels_last(model))


def crop_region(height: int, width: int, resolution: int) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of the original pixels that the evaluation transform's centre square covers.

    The transform resizes the shorter side to ``resolution`` (the longer to ``int(resolution · long / short)``, as
    torchvision does) and crops ``resolution`` px from the middle (offset ``round((size − resolution) / 2)``).
    """
    short, long = min(height, width), max(height, width)
    resized_long = int(resolution * long / short)
    rh, rw = (resolution, resized_long) if height <= width else (resized_long, resolution)
    top, left = int(round((rh - resolution) / 2.0)), int(round((rw - resolution) / 2.0))
    x1, x2 = round(left * width / rw), round((left + resolution) * width / rw)
    y1, y2 = round(top * height / rh), round((top + resolution) * height / rh)
    return max(0, x1), max(0, y1), min(width, max(x2, x1 + 1)), min(height, max(y2, y1 + 1))


def load_with_channels(path: Path, channels: int, what: str = "model") -> Tensor:
    """(C, H, W) uint8 image of ``path``; an error naming the fix when its channel count is not ``channels``."""

    image = load_image(path, None)
    if image.shape[0] != channels:
        raise FovealError(
            f"image {path} has {image.shape[0]} channel(s) but the {what} takes {channels}: convert it "
            f"({'to grayscale' if channels == 1 else 'to RGB'}) or use a {what} trained on such images"
        )
    return image
