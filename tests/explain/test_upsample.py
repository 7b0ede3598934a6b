"""Upsampling feature-grid maps with the grid's geometry: "cell" is F.interpolate, "stride" follows strided convs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from foveal.errors import FovealError
from foveal.explain.cam import CAM, GradCAM
from foveal.explain.upsample import grid_of, upsample_maps
from foveal.models.efficientnet import efficientnet
from foveal.models.retinanet import RetinaNet


def _center_tap_net(levels: int) -> nn.Sequential:
    """Stride-2 3 × 3 convs with symmetric padding whose only weight is the centre tap: output j = input 2j."""
    convs = []
    for _ in range(levels):
        conv = nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False)
        with torch.no_grad():
            conv.weight.zero_()
            conv.weight[0, 0, 1, 1] = 1.0
        convs.append(conv)
    return nn.Sequential(*convs)


@pytest.mark.parametrize(("size", "out"), [((4, 4), (16, 16)), ((5, 3), (37, 20)), ((8, 8), (3, 5)), ((1, 2), (6, 7))])
def test_cell_grid_is_bilinear_interpolation_without_aligned_corners(size, out) -> None:
    maps = torch.randn(2, 3, *size)
    want = F.interpolate(maps, size=out, mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsample_maps(maps, out, "cell"), want, rtol=0, atol=1e-5)


def test_stride_grid_puts_each_cell_on_the_pixel_a_strided_conv_stack_reads() -> None:
    # a horizontal ramp through two symmetric-padding stride-2 convs: cell k holds the value of pixel 4k
    ramp = torch.arange(64, dtype=torch.float32).expand(1, 1, 64, 64)
    with torch.no_grad():
        cells = _center_tap_net(2)(ramp)
    assert cells.shape[-1] == 16
    torch.testing.assert_close(cells[0, 0, 0], torch.arange(0, 64, 4, dtype=torch.float32))
    pixels = torch.arange(64, dtype=torch.float32)
    stride = upsample_maps(cells, (64, 64), "stride")[0, 0, 5]
    cell = upsample_maps(cells, (64, 64), "cell")[0, 0, 5]
    inside = pixels <= 60  # past the last cell's pixel the map is held constant
    torch.testing.assert_close(stride[inside], pixels[inside])
    torch.testing.assert_close(stride[~inside], torch.full((3,), 60.0))
    # the usual interpolation shifts the map by (S − 1) / 2 = 1.5 px to the right
    torch.testing.assert_close(cell[8:56], pixels[8:56] - 1.5)


def test_stride_grid_shown_on_an_image_of_another_size_uses_the_network_input_size() -> None:
    ramp = torch.arange(32, dtype=torch.float32).expand(1, 1, 32, 32)  # the network saw 32 px
    with torch.no_grad():
        cells = _center_tap_net(2)(ramp)  # 8 cells, cell k = network pixel 4k
    shown = upsample_maps(cells, (64, 64), "stride", input_size=(32, 32))[0, 0, 0]
    q = torch.arange(64, dtype=torch.float32)
    network_pixel = (q + 0.5) * 32 / 64 - 0.5
    inside = (network_pixel >= 0) & (network_pixel <= 28)
    torch.testing.assert_close(shown[inside], network_pixel[inside])


def test_grid_of_known_models() -> None:
    assert grid_of(efficientnet(-6, num_classes=3)) == "stride"
    assert grid_of(efficientnet(-6, num_classes=3, padding="same")) == "cell"
    assert grid_of(torchvision.models.resnet18(num_classes=3)) == "stride"
    assert grid_of(torchvision.models.efficientnet_b0(num_classes=3)) == "stride"
    assert grid_of(RetinaNet("resnet18", num_classes=2)) == "stride"
    assert grid_of(RetinaNet("efficientnet_b0", num_classes=2, backbone_kwargs={"padding": "same"})) == "cell"
    assert grid_of(nn.Sequential(nn.Conv2d(3, 4, 2, 2), nn.Flatten())) == "cell"


def test_cam_and_gradcam_take_the_models_grid_or_a_given_one() -> None:
    model = efficientnet(-6, num_classes=3, in_channels=1)
    assert CAM(model).grid == "stride" and GradCAM(model, "head").grid == "stride"
    assert CAM(model, grid="cell").grid == "cell"
    x = torch.randn(2, 1, 64, 64)
    coarse = CAM(model)(x, top_k=2, upsample=False).maps
    torch.testing.assert_close(CAM(model)(x, top_k=2).maps, upsample_maps(coarse, (64, 64), "stride"))
    with pytest.raises(FovealError, match="unknown grid 'corner'"):
        CAM(model, grid="corner")
    with pytest.raises(FovealError, match="unknown grid"):
        upsample_maps(coarse, (64, 64), "corner")
