"""Anchors, box encoding and anchor-to-box matching for RetinaNet.

Reference: Tsung-Yi Lin, Priya Goyal, Ross Girshick, Kaiming He and Piotr Dollár, "Focal Loss for Dense Object
Detection", ICCV 2017 (arXiv:1708.02002), Sec. 4: anchors of areas 32² … 512² on P3 … P7, three aspect ratios × three
scales per location; IoU ≥ 0.5 foreground, < 0.4 background, in between ignored. The box parameterisation is Faster
R-CNN's (Ren et al., NeurIPS 2015, Eq. 2).

All boxes are (x1, y1, x2, y2) in input-image pixels, x to the right and y down.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from foveal.errors import FovealError


class AnchorGenerator:
    """Anchors of every pyramid level, computed for the feature-map sizes of one forward pass.

    Anchor order (the order of the detector's outputs): level by level (P3 first); within a level row-major over the
    feature map (y, then x); at each location ratio-major, scale-minor, i.e. ``(r0 s0, r0 s1, r0 s2, r1 s0, …)``.
    This is torchvision's order, so imported torchvision weights line up channel for channel.

    An anchor of level l, scale s and ratio r (height / width) has side ``size_l · s`` for r = 1, width
    ``size_l · s / √r`` and height ``size_l · s · √r`` (area (size_l · s)² for every ratio), and is centred at
    ``((x + offset) · stride_l, (y + offset) · stride_l)``.

    Args:
        sizes: base anchor side per level (the paper's 32 … 512 for P3 … P7).
        strides: feature-map stride per level (8 … 128 for P3 … P7).
        scales: scale multipliers at each location (the paper's 2^0, 2^(1/3), 2^(2/3)).
        ratios: aspect ratios height / width (the paper's 1:2, 1:1, 2:1).
        offset: anchor centre within a cell, in strides: 0 puts it on the cell's top-left corner (torchvision and
            detectron2), 0.5 on the cell's centre.
        round_to_pixels: torchvision's integer anchors: each side ``size · scale`` truncated to an integer and the
            corner offsets from the centre rounded to whole pixels. Off by default (exact areas, as in the paper);
            on for weights trained with torchvision.
    """

    def __init__(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        scales: Sequence[float] = (2**0, 2 ** (1 / 3), 2 ** (2 / 3)),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        offset: float = 0.0,
        round_to_pixels: bool = False,
    ) -> None:
        if len(sizes) != len(strides):
            raise FovealError(f"anchor sizes {tuple(sizes)} and strides {tuple(strides)} must have one entry per level")
        if min(sizes) <= 0 or min(scales) <= 0 or min(ratios) <= 0 or min(strides) <= 0:
            raise FovealError("anchor sizes, strides, scales and ratios must all be positive")
        self.sizes = tuple(float(s) for s in sizes)
        self.strides = tuple(int(s) for s in strides)
        self.scales = tuple(float(s) for s in scales)
        self.ratios = tuple(float(r) for r in ratios)
        self.offset = float(offset)
        self.round_to_pixels = round_to_pixels

    @property
    def num_anchors(self) -> int:
        """Anchors per location, A = len(ratios) · len(scales)."""
        return len(self.scales) * len(self.ratios)

    def cell_anchors(self, level: int) -> Tensor:
        """The A anchors of one location of ``level`` centred on (0, 0): (A, 4) xyxy, float64."""
        sides = torch.tensor([self.sizes[level] * s for s in self.scales], dtype=torch.float64)
        if self.round_to_pixels:
            sides = sides.trunc()
        root = torch.tensor(self.ratios, dtype=torch.float64).sqrt()
        half_w = (sides[None, :] / root[:, None]).reshape(-1) / 2
        half_h = (sides[None, :] * root[:, None]).reshape(-1) / 2
        cell = torch.stack([-half_w, -half_h, half_w, half_h], dim=1)
        return cell.round() if self.round_to_pixels else cell

    def grid_anchors(
        self,
        level: int,
        height: int,
        width: int,
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Anchors of one level for a (height, width) feature map: (height · width · A, 4) xyxy."""
        stride = self.strides[level]
        xs = (torch.arange(width, dtype=torch.float64) + self.offset) * stride
        ys = (torch.arange(height, dtype=torch.float64) + self.offset) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
        anchors = (centres + self.cell_anchors(level)[None]).reshape(-1, 4)
        return anchors.to(device=device, dtype=dtype)

    def __call__(
        self,
        feature_sizes: Sequence[tuple[int, int]],
        device: torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> list[Tensor]:
        """Anchors of every level.

        Args:
            feature_sizes: (H_l, W_l) of each level's feature map, P3 first; one entry per level.

        Returns:
            One (H_l · W_l · A, 4) xyxy tensor per level.
        """
        if len(feature_sizes) != len(self.sizes):
            raise FovealError(
                f"got {len(feature_sizes)} feature maps for {len(self.sizes)} anchor levels; give one size and stride "
                "per pyramid level"
            )
        return [self.grid_anchors(i, int(h), int(w), device, dtype) for i, (h, w) in enumerate(feature_sizes)]


class BoxCoder:
    """Faster R-CNN box parameterisation: boxes ⇄ deltas (tx, ty, tw, th) relative to anchors.

    ``tx = wx · (x − xa) / wa``, ``ty = wy · (y − ya) / ha``, ``tw = ww · log(w / wa)``, ``th = wh · log(h / ha)``
    with centres (x, y) and sizes (w, h) = (x2 − x1, y2 − y1). Decoding clamps tw, th at ``clamp`` so that exp() stays
    finite (log(1000 / 16), as in Detectron and torchvision).

    Args:
        weights: (wx, wy, ww, wh); RetinaNet uses (1, 1, 1, 1).
        clamp: upper bound of the decoded tw / th before exp().
    """

    def __init__(
        self, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0), clamp: float = math.log(1000 / 16)
    ) -> None:
        self.weights = tuple(float(w) for w in weights)
        self.clamp = float(clamp)

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """Deltas that turn ``anchors`` into ``boxes``.

        Args:
            boxes: (..., 4) xyxy target boxes.
            anchors: (..., 4) xyxy anchors, broadcastable against ``boxes``.

        Returns:
            (..., 4) deltas (tx, ty, tw, th).
        """
        wx, wy, ww, wh = self.weights
        aw, ah, ax, ay = _size_centre(anchors)
        bw, bh, bx, by = _size_centre(boxes)
        return torch.stack(
            [wx * (bx - ax) / aw, wy * (by - ay) / ah, ww * torch.log(bw / aw), wh * torch.log(bh / ah)], dim=-1
        )

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes from deltas: the inverse of :meth:`encode`.

        Args:
            deltas: (..., 4) (tx, ty, tw, th).
            anchors: (..., 4) xyxy anchors, broadcastable against ``deltas``.

        Returns:
            (..., 4) xyxy boxes.
        """
        wx, wy, ww, wh = self.weights
        aw, ah, ax, ay = _size_centre(anchors.to(deltas.dtype))
        dx, dy, dw, dh = deltas.unbind(-1)
        cx = dx / wx * aw + ax
        cy = dy / wy * ah + ay
        half_w = torch.exp((dw / ww).clamp(max=self.clamp)) * aw / 2
        half_h = torch.exp((dh / wh).clamp(max=self.clamp)) * ah / 2
        return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)


def _size_centre(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x1, y1, x2, y2 = boxes.unbind(-1)
    w, h = x2 - x1, y2 - y1
    return w, h, x1 + w / 2, y1 + h / 2


class Matcher:
    """Assigns each anchor to at most one ground-truth box by IoU.

    For each anchor with best IoU ``m`` (over the boxes) and best box ``j``: ``m ≥ high`` → j (foreground);
    ``m < low`` → :attr:`NEGATIVE` (−1, background); otherwise :attr:`IGNORE` (−2, left out of the loss).

    Args:
        high: foreground threshold (the paper's 0.5).
        low: background threshold (the paper's 0.4); ``low == high`` leaves no ignored band.
        allow_low_quality: also make foreground, for each box, the anchors with that box's highest IoU (ties
            included, IoU > 0), even below ``high``, so that every box gets an anchor; such an anchor keeps its own
            best box. Off in the paper; torchvision, detectron2 and mmdetection switch it on.
    """

    NEGATIVE = -1
    IGNORE = -2

    def __init__(self, high: float = 0.5, low: float = 0.4, allow_low_quality: bool = False) -> None:
        if not 0.0 <= low <= high <= 1.0:
            raise FovealError(f"matcher thresholds need 0 <= low <= high <= 1, got low={low}, high={high}")
        self.high = high
        self.low = low
        self.allow_low_quality = allow_low_quality

    def __call__(self, iou: Tensor) -> Tensor:
        """Match anchors to boxes.

        Args:
            iou: (M, A) IoU of each of M ground-truth boxes with each of A anchors (M may be 0).

        Returns:
            (A,) int64: the matched box index in [0, M), or −1 (negative), or −2 (ignored).
        """
        if iou.shape[0] == 0:
            return torch.full((iou.shape[1],), self.NEGATIVE, dtype=torch.int64, device=iou.device)
        best, matches = iou.max(dim=0)
        result = matches.clone()
        result[best < self.high] = self.IGNORE
        result[best < self.low] = self.NEGATIVE
        if self.allow_low_quality:
            per_box = iou.max(dim=1, keepdim=True).values
            chosen = ((iou == per_box) & (per_box > 0)).any(dim=0)
            result[chosen] = matches[chosen]
        return result
