"""The backbone contract's data: what each feature map of a backbone is, and the protocol every backbone follows.

This module sits below every architecture (EfficientNet declares its maps with :class:`FeatureInfo`);
:mod:`foveal.models.backbones` re-exports it together with the factory that builds backbones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

# Where the cells of a feature map sit on the input (see foveal.explain.upsample): "stride" puts cell i on pixel
# S·i (odd kernels with symmetric padding), "cell" in the middle of its S × S block (2×2 poolings, TF "same").
GRIDS = ("stride", "cell")


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map of a backbone.

    Attributes:
        channels: C of the map (N, C, h, w).
        stride: S, the map's down-sampling with respect to the input (h = ceil(H / S)).
        name: dotted path of the sub-module whose output is this map (Grad-CAM hooks it).
        grid: "stride" (cell i centred on input pixel S·i) or "cell" (centred on S·i + (S − 1) / 2); class activation
            maps are upsampled with it. "cell" is the usual assumption of bilinear resizing.
    """

    channels: int
    stride: int
    name: str
    grid: str = "cell"


@runtime_checkable
class Backbone(Protocol):
    """What every backbone offers.

    ``forward_features(x)`` takes (N, C_in, H, W) and returns one tensor per entry of ``feature_info``, in the same
    order (increasing stride): entry i has shape (N, feature_info[i].channels, ceil(H / stride_i), ceil(W / stride_i)).
    """

    feature_info: tuple[FeatureInfo, ...]

    def forward_features(self, x: Tensor) -> list[Tensor]: ...
