import numpy as np
import pytest
import torch
from torch import nn

from foveal.errors import FovealError
from foveal.inference.tiling import (
    TileGeometry,
    predict_tiled,
    reflect_indices,
    reflect_pad,
    whole_image_reference,
)
from foveal.models.unet import UNet


@pytest.fixture(scope="module")
def valid_net() -> UNet:
    """Valid depth-3 U-Net: stride 8, border 44; output sizes 4, 12, 20, 28, … are never multiples of the stride."""
    torch.manual_seed(0)
    return UNet(1, 3, depth=3, base_width=4).eval()


@pytest.fixture(scope="module")
def padded_net() -> UNet:
    torch.manual_seed(1)
    net = UNet(2, 2, depth=2, base_width=4, padding="same", batch_norm=True).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial running statistics
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    return net


def test_geometry_of_the_benchmark_setting() -> None:
    g = TileGeometry(2048, 2048, tile=516, border=92, stride=16)
    assert (g.step, g.input_size, g.rows, g.cols, g.count) == (512, 700, 4, 4, 16)
    assert g.padded_height == 3 * 512 + 700
    assert g.pads == (92, 96, 92, 96)
    assert list(g.origins())[:5] == [(0, 0), (0, 512), (0, 1024), (0, 1536), (512, 0)]
    g = TileGeometry(100, 75, tile=28, border=44, stride=8, context=3)
    assert (g.step, g.margin, g.input_size, g.rows, g.cols) == (24, 47, 122, 5, 4)


@pytest.mark.parametrize("size", [(100, 75), (48, 72)])  # 48 × 72 = 2·step × 3·step for step 24
def test_stitched_valid_unet_equals_one_pass_over_the_padded_image(valid_net: UNet, size: tuple[int, int]) -> None:
    torch.manual_seed(2)
    image = torch.randn(1, *size)
    kw = {"border": valid_net.border, "stride": valid_net.stride}
    tiled = predict_tiled(valid_net, image, 28, batch=3, **kw)
    reference = whole_image_reference(valid_net, image, 28, **kw)
    assert tuple(tiled.shape) == (1, 3, *size)
    assert reference.abs().max() > 0.1  # a meaningful comparison
    torch.testing.assert_close(tiled, reference, atol=1e-5, rtol=0)


def test_padded_net_with_context_and_several_images(padded_net: UNet) -> None:
    torch.manual_seed(3)
    images = torch.randn(2, 2, 50, 37)
    kw = {"border": 0, "stride": padded_net.stride, "context": 24}  # 20 + 2·24 = 68, a multiple of 4
    tiled = predict_tiled(padded_net, images, 20, **kw)
    reference = whole_image_reference(padded_net, images, 20, **kw)
    torch.testing.assert_close(tiled, reference, atol=1e-5, rtol=0)
    # without enough context the padded net's zero padding shows at the seams
    no_context = predict_tiled(padded_net, images, 20, border=0, stride=4, context=4)
    assert (no_context - reference).abs().max() > 1e-2


def test_batch_size_does_not_change_the_result(valid_net: UNet) -> None:
    torch.manual_seed(4)
    image = torch.randn(1, 40, 52)
    kw = {"border": valid_net.border, "stride": valid_net.stride}
    one = predict_tiled(valid_net, image, 20, batch=1, **kw)
    many = predict_tiled(valid_net, image, 20, batch=5, **kw)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=0)


def test_writes_into_the_given_output(valid_net: UNet) -> None:
    image = torch.randn(1, 1, 20, 20)
    out = torch.full((1, 3, 20, 20), float("nan"))
    result = predict_tiled(valid_net, image, 12, border=44, stride=8, out=out, progress=True)
    assert result is out and not out.isnan().any()
    with pytest.raises(FovealError, match="out has shape"):
        predict_tiled(valid_net, image, 12, border=44, stride=8, out=torch.empty(1, 2, 20, 20))


@pytest.mark.parametrize("size", [1, 2, 5])
@pytest.mark.parametrize("pads", [(0, 0), (1, 3), (4, 11), (13, 2)])
def test_reflect_indices_match_numpy_reflect(size: int, pads: tuple[int, int]) -> None:
    expected = np.pad(np.arange(size), pads, mode="reflect")
    np.testing.assert_array_equal(reflect_indices(size, *pads).numpy(), expected)


def test_reflect_pad_matches_numpy_for_pads_smaller_and_larger_than_the_image() -> None:
    x = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    for top, bottom, left, right in [(2, 1, 1, 2), (7, 12, 9, 4)]:
        expected = np.pad(x.numpy(), ((0, 0), (top, bottom), (left, right)), mode="reflect")
        np.testing.assert_array_equal(reflect_pad(x, (top, bottom, left, right)).numpy(), expected)
    expected = np.pad(x.numpy(), ((0, 0), (6, 6), (6, 6)), mode="reflect")
    np.testing.assert_array_equal(reflect_pad(x, 6).numpy(), expected)


def test_user_errors(valid_net: UNet) -> None:
    image = torch.randn(1, 30, 30)
    with pytest.raises(FovealError, match="28 and 36"):
        predict_tiled(valid_net, image, 30, border=44, stride=8)
    with pytest.raises(FovealError, match="smaller than the network's stride"):
        predict_tiled(valid_net, image, 4, border=44, stride=8)
    with pytest.raises(FovealError, match="use a smaller tile"):  # refused before a padded copy is allocated
        predict_tiled(valid_net, image, 10**9, border=44, stride=8)
    with pytest.raises(FovealError, match=r"\(C, H, W\) or a batch"):
        predict_tiled(valid_net, torch.randn(30, 30), 12, border=44, stride=8)
    with pytest.raises(FovealError, match="floating-point"):
        predict_tiled(valid_net, torch.zeros(1, 30, 30, dtype=torch.uint8), 12, border=44, stride=8)
    # a plain callable whose output does not match the declared geometry
    conv = nn.Conv2d(1, 2, 3).eval()  # loses 1 px per side, not 44
    with pytest.raises(FovealError, match="check tile, border and context"):
        predict_tiled(conv, image, 12, border=44, stride=8)
