"""Feature pyramid network with RetinaNet's extra levels P6 and P7.

References: Tsung-Yi Lin, Piotr Dollár, Ross Girshick, Kaiming He, Bharath Hariharan and Serge Belongie, "Feature
Pyramid Networks for Object Detection", CVPR 2017 (arXiv:1612.03144); Lin et al., "Focal Loss for Dense Object
Detection", ICCV 2017 (arXiv:1708.02002), Sec. 4: P3–P5 from C3–C5, P6 = 3×3 stride-2 conv on C5, P7 = ReLU then
3×3 stride-2 conv on P6, 256 channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from foveal.errors import FovealError

P6_SOURCES = ("c5", "p5")


class FPN(nn.Module):
    """Top-down pyramid over backbone maps C3 … C5, plus P6 and P7.

    Each input gets a lateral 1×1 conv; going down from the coarsest level, the running map is upsampled by nearest
    ×2 (to the lateral's exact size, which for odd sizes is ×2 cropped) and added to the lateral; a 3×3 conv then
    gives the output level. P6 is a 3×3 stride-2 conv on C5 (the paper) or on P5 (torchvision); P7 a 3×3 stride-2
    conv on ReLU(P6). New layers use the FPN reference initialisation (Xavier / "c2_xavier_fill": uniform with
    bound √(3 / fan_in), bias 0), as the RetinaNet paper prescribes for FPN layers.

    Args:
        in_channels: channels of the input maps, finest first (C3, C4, C5).
        channels: channels of every output level (256 in the paper).
        p6_from: "c5" (paper) or "p5" (torchvision's RetinaNet).

    Shapes: ``forward`` takes maps (N, in_channels[i], H_i, W_i) with H_{i+1} = ceil(H_i / 2) and returns
    [P3, P4, P5, P6, P7], each (N, channels, ·, ·); P6 and P7 halve (rounding up) the size of the level before.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 256, p6_from: str = "c5") -> None:
        super().__init__()
        if p6_from not in P6_SOURCES:
            raise FovealError(f"unknown p6_from '{p6_from}': choose 'c5' (the paper) or 'p5' (torchvision)")
        if len(in_channels) == 0:
            raise FovealError("FPN needs at least one input level")
        self.p6_from = p6_from
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)
        self.p6 = nn.Conv2d(in_channels[-1] if p6_from == "c5" else channels, channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        if len(features) != len(self.lateral):
            raise FovealError(f"FPN built for {len(self.lateral)} input maps got {len(features)}")
        running = self.lateral[-1](features[-1])
        outs = [self.output[-1](running)]
        for i in range(len(features) - 2, -1, -1):
            lateral = self.lateral[i](features[i])
            running = lateral + F.interpolate(running, size=lateral.shape[-2:], mode="nearest")
            outs.insert(0, self.output[i](running))
        p6 = self.p6(features[-1] if self.p6_from == "c5" else outs[-1])
        p7 = self.p7(F.relu(p6))
        return [*outs, p6, p7]
