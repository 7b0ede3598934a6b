"""FPN: output shapes and strides (odd sizes too), the top-down sum, both P6 sources."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from foveal.errors import FovealError
from foveal.models.fpn import FPN

IN_CHANNELS = (12, 20, 28)


def _c_maps(height: int, width: int, seed: int = 0) -> list[torch.Tensor]:
    """C3, C4, C5 as a stride-8/16/32 backbone gives them for a height × width image (sizes rounded up)."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(2, c, math.ceil(height / s), math.ceil(width / s), generator=g)
        for c, s in zip(IN_CHANNELS, (8, 16, 32), strict=True)
    ]


@pytest.mark.parametrize("p6_from", ["c5", "p5"])
@pytest.mark.parametrize("size", [(128, 128), (128, 160), (100, 75), (33, 257)])
def test_shapes_follow_strides(p6_from, size):
    fpn = FPN(IN_CHANNELS, channels=16, p6_from=p6_from)
    outs = fpn(_c_maps(*size))
    assert len(outs) == 5
    for p, stride in zip(outs, (8, 16, 32, 64, 128), strict=True):
        assert p.shape == (2, 16, math.ceil(size[0] / stride), math.ceil(size[1] / stride))


def test_top_down_sum_is_nearest_times_two_cropped():
    fpn = FPN(IN_CHANNELS, channels=8)
    c3, c4, c5 = _c_maps(100, 75)  # C4 7 × 5, C5 4 × 3: odd sizes, ×2 then crop
    p3, p4, p5, _, _ = fpn([c3, c4, c5])

    def up(x, like):
        doubled = x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
        return doubled[..., : like.shape[-2], : like.shape[-1]]

    m5 = fpn.lateral[2](c5)
    m4 = fpn.lateral[1](c4) + up(m5, c4)
    m3 = fpn.lateral[0](c3) + up(m4, c3)
    torch.testing.assert_close(p5, fpn.output[2](m5))
    torch.testing.assert_close(p4, fpn.output[1](m4))
    torch.testing.assert_close(p3, fpn.output[0](m3))


@pytest.mark.parametrize("p6_from", ["c5", "p5"])
def test_p6_p7_sources(p6_from):
    fpn = FPN(IN_CHANNELS, channels=8, p6_from=p6_from)
    c = _c_maps(128, 160)
    _, _, p5, p6, p7 = fpn(c)
    source = c[2] if p6_from == "c5" else p5
    assert fpn.p6.in_channels == source.shape[1]
    torch.testing.assert_close(p6, fpn.p6(source))
    torch.testing.assert_close(p7, fpn.p7(F.relu(p6)))
    assert fpn.p6.stride == (2, 2) and fpn.p7.stride == (2, 2) and fpn.p6.kernel_size == (3, 3)


def test_init_and_options():
    fpn = FPN(IN_CHANNELS, channels=8)
    # Xavier ("c2_xavier_fill"): uniform in ±√(3 / fan_in), zero bias
    w = fpn.lateral[2].weight
    bound = math.sqrt(3 / 28)
    assert w.abs().max() <= bound and w.abs().max() > 0.8 * bound
    assert all(not m.bias.detach().any() for m in (fpn.lateral[0], fpn.output[1], fpn.p6, fpn.p7))
    with pytest.raises(FovealError, match="p6_from"):
        FPN(IN_CHANNELS, p6_from="c6")
    with pytest.raises(FovealError, match="input maps"):
        fpn(_c_maps(64, 64)[:2])
