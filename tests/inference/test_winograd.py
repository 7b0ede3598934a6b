import pytest
import torch
import torch.nn.functional as F
from torch import nn

from foveal.inference import winograd
from foveal.inference.fast import inference_model
from foveal.inference.winograd import (
    WinogradConv2d,
    eligible,
    transform_weight,
    use_winograd,
    winograd_conv2d,
    winograd_conv2d_levels,
)
from foveal.models.retinanet import RetinaNet
from foveal.models.unet import UNet
from foveal.tasks.detect_explain import detection_gradcam


def _relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.detach().double() - ref.detach()).abs().max() / ref.detach().abs().max())


def test_one_dimensional_transform_is_a_correlation_of_four_outputs():
    torch.manual_seed(0)
    for _ in range(5):
        d, g = torch.randn(6, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
        direct = torch.stack([(d[i : i + 3] * g).sum() for i in range(4)])
        fast = winograd._AT @ ((winograd._G @ g) * (winograd._BT @ d))
        torch.testing.assert_close(fast, direct, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("n", "cin", "cout", "h", "w", "padding", "bias"),
    [
        (1, 16, 24, 16, 16, (1, 1), True),  # whole tiles
        (2, 8, 5, 13, 10, (1, 1), True),  # partial tiles in both directions, batch of 2
        (1, 7, 9, 11, 17, (0, 0), False),  # valid convolution (U-Net), no bias
        (1, 4, 4, 3, 3, (2, 1), True),  # one tile, unequal padding
        (1, 3, 6, 1, 1, (1, 1), True),  # 1 × 1 input
    ],
)
def test_equals_direct_convolution(n, cin, cout, h, w, padding, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, 3, padding=padding, bias=bias)
    x = torch.randn(n, cin, h, w)
    ref = conv.double()(x.double())
    conv.float()
    y = winograd_conv2d(x, transform_weight(conv.weight), conv.bias, padding)
    assert y.shape == ref.shape and y.dtype == torch.float32
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert _relative_error(y, ref) < 2e-5
    # a channels-last input gives the same result
    y_cl = winograd_conv2d(
        x.contiguous(memory_format=torch.channels_last), transform_weight(conv.weight), conv.bias, padding
    )
    torch.testing.assert_close(y_cl, y, rtol=0, atol=0)


def test_levels_of_different_sizes_share_one_product_and_equal_one_by_one():
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 10, 3, padding=1)
    u = transform_weight(conv.weight)
    xs = [torch.randn(2, 12, s, s + 3) for s in (17, 9, 5, 3, 1)]
    together = winograd_conv2d_levels(xs, u, conv.bias, (1, 1))
    for x, y in zip(xs, together, strict=True):
        ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        assert y.shape == ref.shape and _relative_error(y, ref) < 2e-5
        torch.testing.assert_close(y, winograd_conv2d(x, u, conv.bias, (1, 1)), rtol=1e-6, atol=1e-6)


def test_module_falls_back_for_other_dtypes_and_for_gradients():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 4, 3, padding=1)
    fast = WinogradConv2d(conv)
    assert not list(fast.parameters())  # an inference copy: buffers only
    x = torch.randn(1, 6, 9, 9)
    with torch.no_grad():
        assert _relative_error(fast(x), conv.double()(x.double())) < 2e-5
        conv.float()
        # bf16 takes the direct convolution with the weights cast (Winograd would lose too much in bf16)
        torch.testing.assert_close(
            fast(x.bfloat16()), F.conv2d(x.bfloat16(), conv.weight.bfloat16(), conv.bias.bfloat16(), padding=1)
        )
    # an input that needs a gradient (Grad-CAM) goes through F.conv2d: the gradient is the direct one's
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    fast(xa).square().sum().backward()
    conv(xb).square().sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    levels = fast.forward_levels([x, torch.randn(1, 6, 4, 4).bfloat16()])
    assert [y.dtype for y in levels] == [torch.float32, torch.bfloat16]


def test_only_plain_3x3_stride_1_convolutions_of_enough_channels_are_replaced():
    model = nn.Sequential(
        nn.Conv2d(128, 128, 3, padding=1),  # yes
        nn.Conv2d(128, 128, 3, padding=0, bias=False),  # yes (valid)
        nn.Conv2d(128, 128, 3, stride=2, padding=1),
        nn.Conv2d(128, 128, 3, padding=2, dilation=2),
        nn.Conv2d(128, 128, 3, padding=1, groups=128),
        nn.Conv2d(128, 128, 1),
        nn.Conv2d(128, 128, 3, padding="same"),
        nn.Conv2d(128, 128, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(64, 128, 3, padding=1),  # too few input channels
        nn.Sequential(nn.Conv2d(256, 819, 3, padding=1)),  # yes, nested
    )
    assert use_winograd(model) == 3
    kinds = [type(m).__name__ for m in model]
    assert kinds[:3] == ["WinogradConv2d", "WinogradConv2d", "Conv2d"]
    assert isinstance(model[9][0], WinogradConv2d) and "F(4x4, 3x3)" in repr(model[9][0])
    assert not eligible(nn.Conv2d(128, 128, 3, padding=3))
    with pytest.raises(ValueError, match="3x3, stride-1"):
        WinogradConv2d(nn.Conv2d(4, 4, 3, stride=2))


def test_retinanet_inference_model_with_winograd_matches_direct_convolution():
    torch.manual_seed(0)
    model = RetinaNet("resnet18", num_classes=3, fpn_channels=128).eval()
    for m in model.modules():  # realistic activations: BatchNorm statistics of a trained network, larger head weights
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 2.0)
        if isinstance(m, nn.Conv2d) and m.out_channels in (128, 3 * 9, 4 * 9):
            nn.init.normal_(m.weight, std=0.05)
    fast, direct = inference_model(model), inference_model(model, winograd=False)
    swapped = sum(isinstance(m, WinogradConv2d) for m in fast.modules())
    assert swapped >= 4 + 4 + 3 + 3  # both subnets' trunks, the FPN outputs, ResNet-18's 128- and 256-channel 3×3s
    assert not any(isinstance(m, WinogradConv2d) for m in direct.modules())
    x = torch.randn(2, 3, 96, 128).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        a, b = direct(x), fast(x)
    for name in ("cls_logits", "box_deltas"):
        ref, got = getattr(a, name), getattr(b, name)
        assert float((got - ref).abs().max()) < 1e-4 * float(ref.abs().max())
    half = inference_model(model, bf16=True)  # bf16 keeps direct convolutions
    assert not any(isinstance(m, WinogradConv2d) for m in half.modules())
    # Grad-CAM of a detection: the layers after the hooked pyramid level need a gradient and fall back to the
    # direct convolution, the others stay Winograd: the maps are the direct model's
    anchors, labels = torch.tensor([5, 1800]), torch.tensor([1, 2])  # on P3 and on P4
    one = x[:1]
    with torch.no_grad():
        out_direct, out_fast = direct(one), fast(one)
    maps_direct = detection_gradcam(direct, one, out_direct, anchors, labels)
    maps_fast = detection_gradcam(fast, one, out_fast, anchors, labels)
    assert float(maps_direct.amax()) > 0
    torch.testing.assert_close(maps_fast, maps_direct, rtol=0, atol=1e-4 * float(maps_direct.amax()))


def test_unet_inference_model_at_the_papers_width_matches_direct_convolution():
    torch.manual_seed(0)
    for batch_norm in (False, True):
        net = UNet(1, 2, depth=2, base_width=64, batch_norm=batch_norm).eval()
        fast = inference_model(net)
        # the convs with >= 128 channels in and out: level 1's second, both of level 2, both of the decoder's level 1
        assert sum(isinstance(m, WinogradConv2d) for m in fast.modules()) == 5
        x = torch.randn(1, 1, net.input_size(20), net.input_size(24))
        with torch.no_grad():
            ref, got = net(x), fast(x)
        assert got.shape == ref.shape and float((got - ref).abs().max()) < 1e-4 * float(ref.abs().max())


def test_state_dict_keys_are_those_of_the_replaced_conv():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    assert set(WinogradConv2d(conv).state_dict()) == set(conv.state_dict()) == {"weight", "bias"}


def test_inputs_winograd_cannot_take_get_the_direct_convolutions_result_or_error():
    conv = nn.Conv2d(4, 4, 3, padding=0)
    fast = WinogradConv2d(conv)
    with torch.no_grad():
        empty = torch.zeros(0, 4, 8, 8)
        assert fast(empty).shape == conv(empty).shape == (0, 4, 6, 6)
        with pytest.raises(RuntimeError):  # too small for a valid 3×3: PyTorch's own message, as without Winograd
            fast(torch.zeros(1, 4, 2, 8))
        sliced = torch.randn(1, 8, 9, 9)[:, ::2]  # a non-contiguous input
        torch.testing.assert_close(fast(sliced), conv(sliced), rtol=1e-4, atol=1e-5)
