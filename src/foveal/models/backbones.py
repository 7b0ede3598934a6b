"""The backbone contract: every backbone returns a list of feature maps with known channels and strides.

U-Net encoders, FPN / RetinaNet and CAM take any object that satisfies :class:`Backbone`, so EfficientNet and ResNet
(and a user's own network) plug into every task the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torchvision
from torch import Tensor, nn

from foveal.errors import FovealError


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map of a backbone: its channel count, its stride with respect to the input, and a name."""

    channels: int
    stride: int
    name: str


@runtime_checkable
class Backbone(Protocol):
    """What every backbone offers.

    ``forward_features(x)`` takes (N, C_in, H, W) and returns one tensor per entry of ``feature_info``, in the same
    order (increasing stride): entry i has shape (N, feature_info[i].channels, ceil(H / stride_i), ceil(W / stride_i)).
    """

    feature_info: tuple[FeatureInfo, ...]

    def forward_features(self, x: Tensor) -> list[Tensor]: ...


_RESNETS = {
    "resnet18": (torchvision.models.resnet18, 64, 512),
    "resnet34": (torchvision.models.resnet34, 64, 512),
    "resnet50": (torchvision.models.resnet50, 256, 2048),
    "resnet101": (torchvision.models.resnet101, 256, 2048),
}


class ResNetBackbone(nn.Module):
    """A torchvision ResNet (18/34/50/101) behind the backbone contract: strides 2, 4, 8, 16, 32."""

    def __init__(self, name: str = "resnet50", in_channels: int = 3) -> None:
        super().__init__()
        if name not in _RESNETS:
            raise FovealError(f"unknown ResNet '{name}': choose one of {', '.join(_RESNETS)}")
        build, c2, c5 = _RESNETS[name]
        net = build(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        self.pool = net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.feature_info = (
            FeatureInfo(64, 2, "stem"),
            FeatureInfo(c2, 4, "layer1"),
            FeatureInfo(c2 * 2, 8, "layer2"),
            FeatureInfo(c2 * 4, 16, "layer3"),
            FeatureInfo(c5, 32, "layer4"),
        )

    def forward_features(self, x: Tensor) -> list[Tensor]:
        c1 = self.stem(x)
        c2 = self.layer1(self.pool(c1))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c1, c2, c3, c4, c5]

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.forward_features(x)


def check_backbone(backbone: Backbone, in_channels: int = 3, size: int = 64) -> None:
    """Run one small input through ``backbone`` and check the returned maps against its ``feature_info``."""
    x = torch.zeros(1, in_channels, size, size)
    feats = backbone.forward_features(x)
    if len(feats) != len(backbone.feature_info):
        raise FovealError(f"backbone returned {len(feats)} maps but declares {len(backbone.feature_info)}")
    for f, info in zip(feats, backbone.feature_info, strict=True):
        expected = -(-size // info.stride)
        if f.shape[1] != info.channels or f.shape[-1] != expected:
            raise FovealError(
                f"backbone map '{info.name}' has shape {tuple(f.shape)}, expected {info.channels} channels "
                f"at stride {info.stride}"
            )
