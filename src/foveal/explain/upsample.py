"""Bilinear upsampling of feature-grid maps to image pixels, with the grid's true geometry.

A map of h × w cells from a network of total stride S = H / h has to be placed on the H × W input before it is
thresholded into a box (Zhou et al., CVPR 2016, §3: "upsampling the class activation map to the size of the input
image"). Where the cells sit depends on how the network downsamples:

- ``"stride"``: cell i is centred on pixel S · i. This is what stride-2 convolutions and poolings with an odd kernel
  and symmetric padding k // 2 compute (output j is centred on input 2j): foveal's, timm's and torchvision's
  EfficientNet with symmetric padding, torchvision's ResNet.
- ``"cell"``: cell i is centred in the middle of its S × S block, pixel S · i + (S − 1) / 2. This is what
  ``F.interpolate(align_corners=False)`` and OpenCV's resize assume (and so pytorch-grad-cam), and what 2 × 2
  poolings (VGG) and TensorFlow "same" padding compute.

Upsampling a "stride" grid as if it were a "cell" grid shifts the map by (S − 1) / 2 pixels right and down: 1.5 px at
stride 4, 7.5 px at stride 16, enough to move a box across the IoU 0.5 line for small objects.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from foveal.errors import FovealError
from foveal.models.backbones import GRIDS, FeatureInfo


def grid_of(model: nn.Module) -> str:
    """The geometry of ``model``'s feature grid: the ``grid`` of its deepest map for a model of the backbone contract
    (``feature_info``: foveal's EfficientNet and ResNet, a user's backbone) or of a detector's ``backbone``; "stride"
    for torchvision's ResNet and timm / torchvision EfficientNet (symmetric padding); "cell" for any other (the usual
    assumption)."""
    info = getattr(model, "feature_info", None)
    if isinstance(info, (tuple, list)) and info and isinstance(info[-1], FeatureInfo):
        return info[-1].grid
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module) and backbone is not model:  # a detector: its backbone's grid
        return grid_of(backbone)
    kind = type(model)  # torchvision and timm models are recognised by name: neither is imported for a foveal model
    if kind.__module__.startswith("torchvision.models") and kind.__name__ in ("ResNet", "EfficientNet"):
        return "stride"
    if kind.__module__.startswith("timm.models") and kind.__name__ == "EfficientNet":
        stem = getattr(model, "conv_stem", None)
        return "cell" if type(stem).__name__ == "Conv2dSame" else "stride"
    return "cell"


def check_grid(grid: str) -> None:
    """Raise :class:`FovealError` unless ``grid`` is one of :data:`GRIDS`."""
    if grid not in GRIDS:
        raise FovealError(f"unknown grid {grid!r}: use 'stride' (symmetric-padding nets) or 'cell'")


def upsample_maps(
    maps: Tensor, size: Sequence[int], grid: str = "cell", input_size: Sequence[int] | None = None
) -> Tensor:
    """Bilinear upsampling of (…, h, w) maps to (…, H, W) = ``size``.

    Args:
        maps: (…, h, w) maps on the network's feature grid.
        size: (H, W) of the output.
        grid: "stride" or "cell", where the cells sit (see the module's text and :func:`grid_of`).
        input_size: (R_h, R_w), the network input the grid covers, when the output has another size (a map shown on
            the original image after the network saw it resized); default ``size``. Only "stride" depends on it.

    Returns:
        (…, H, W) maps; with ``grid="cell"`` the same as ``F.interpolate(mode="bilinear", align_corners=False)``.
    """
    check_grid(grid)
    if maps.ndim < 2:
        raise FovealError(f"maps must have shape (..., h, w), got {tuple(maps.shape)}")
    height, width = int(size[0]), int(size[1])
    net_h, net_w = (height, width) if input_size is None else (int(input_size[0]), int(input_size[1]))
    dtype = maps.dtype if maps.is_floating_point() else torch.float32
    rows = _axis_weights(height, maps.shape[-2], net_h, grid, maps.device, dtype)
    cols = _axis_weights(width, maps.shape[-1], net_w, grid, maps.device, dtype)
    return rows @ maps.to(dtype) @ cols.T


def _axis_weights(out: int, cells: int, net: int, grid: str, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(out, cells) linear-interpolation weights of one axis."""
    q = torch.arange(out, device=device, dtype=torch.float64)
    u = (q + 0.5) * cells / out - 0.5 if grid == "cell" else (q + 0.5) * cells / out - 0.5 * cells / net
    u = u.clamp(0, cells - 1)
    lo = u.floor().long().clamp(max=max(cells - 2, 0))
    frac = u - lo  # 0 when there is one cell
    weights = torch.zeros(out, cells, device=device, dtype=torch.float64)
    weights[q.long(), lo] = 1 - frac
    if cells > 1:
        weights[q.long(), lo + 1] += frac
    return weights.to(dtype)
