import json
import math

import pytest
import torch
from torch import nn

from foveal.errors import FovealError
from foveal.models.unet import (
    BackboneUNet,
    UNet,
    from_args,
    unet_input_size,
    unet_output_size,
    valid_input_size,
)


@pytest.fixture(scope="module")
def paper_net() -> UNet:
    with torch.device("meta"):
        return UNet(in_channels=1, num_classes=2)


def test_paper_net_shape_layers_and_parameters(paper_net: UNet) -> None:
    out = paper_net(torch.empty(1, 1, 572, 572, device="meta"))
    assert tuple(out.shape) == (1, 2, 388, 388)
    convs = [m for m in paper_net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert len(convs) == 23
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in convs) == 4
    assert sum(p.numel() for p in paper_net.parameters()) == 31_030_658
    widths = [block[0].out_channels for block in paper_net.down]
    assert widths == [64, 128, 256, 512, 1024]
    assert paper_net.border == 92 and paper_net.stride == 16


def test_he_init_std_and_zero_bias() -> None:
    torch.manual_seed(0)
    net = UNet(depth=2, base_width=32)
    conv = net.down[1][2]  # second 3×3 conv of level 1: 64 → 64 channels
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (9 * 64)), rel=0.03)
    up = net.upconv[0]  # 2×2 up-conv 128 → 64: N = 2·2·128
    assert up.weight.std().item() == pytest.approx(math.sqrt(2 / (4 * 128)), rel=0.03)
    assert all(torch.all(m.bias == 0) for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d))


def test_size_helpers_paper_formula_and_round_trip() -> None:
    for k in range(8, 40):
        assert unet_output_size(16 * k + 60) == 16 * k - 124
        assert unet_input_size(16 * k - 124) == 16 * k + 60
    for depth in (1, 2, 3, 5):
        for padding in ("valid", "same"):
            size = valid_input_size(3 * 2**depth + 7, depth, padding)
            out = unet_output_size(size, depth, padding)
            assert unet_input_size(out, depth, padding) == size
            assert out == size - 2 * UNet(depth=depth, base_width=1, padding=padding).border
    assert valid_input_size(570) == 572
    assert valid_input_size(570, round="down") == 556
    assert valid_input_size(566, round="nearest") == 572
    assert valid_input_size(562, round="nearest") == 556
    assert valid_input_size(10) == 188  # the smallest: output 4
    assert valid_input_size(33, 3, "same", round="nearest") == 32


def test_invalid_sizes_name_their_neighbours() -> None:
    with pytest.raises(FovealError, match="556 and 572"):
        unet_output_size(570)
    with pytest.raises(FovealError, match="388 and 404"):
        unet_input_size(390)
    with pytest.raises(FovealError, match="smallest valid input size is 188"):
        unet_output_size(100)
    with pytest.raises(FovealError, match="smallest"):
        valid_input_size(100, round="down")
    with pytest.raises(FovealError, match="32 and 48"):
        unet_output_size(40, depth=4, padding="same")
    net = UNet(depth=2, base_width=2)
    with pytest.raises(FovealError, match="60 and 64"):
        net(torch.zeros(1, 1, 62, 60))


def test_valid_net_is_translation_equivariant_for_stride_shifts() -> None:
    torch.manual_seed(0)
    net = UNet(1, 2, depth=2, base_width=4).eval()
    x = torch.randn(1, 1, 76, 76)
    with torch.no_grad():
        full = net(x)  # 76 → 36
        shifted = net(x[..., 8:68, 4:64])  # 60 → 20, offset (8, 4): multiples of stride 4
        off_grid = net(x[..., 2:62, 4:64])  # offset 2 is not a multiple of the stride
    assert full.shape[-1] == 36 and shifted.shape[-1] == 20
    torch.testing.assert_close(shifted, full[..., 8:28, 4:24], atol=1e-5, rtol=0)
    assert not torch.allclose(off_grid, full[..., 2:22, 4:24], atol=1e-3)


def test_padded_batchnorm_variant_keeps_the_size() -> None:
    net = UNet(3, 4, depth=3, base_width=4, padding="same", batch_norm=True)
    assert net.border == 0 and net.stride == 8
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert tuple(net(torch.randn(2, 3, 40, 48)).shape) == (2, 4, 40, 48)
    with pytest.raises(FovealError, match="40 and 48"):
        net(torch.randn(1, 3, 42, 48))


def test_dropout_acts_on_the_deepest_two_levels_in_training_only() -> None:
    torch.manual_seed(0)
    net = UNet(depth=2, base_width=4, dropout=0.5)
    x = torch.randn(1, 1, 60, 60)
    net.train()
    assert not torch.equal(net(x), net(x))
    net.eval()
    assert torch.equal(net(x), net(x))
    seen: list[int] = []
    net.dropout.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    net(x)
    assert seen == [8, 16]  # level 1 (base·2) and the bottom (base·4)


@pytest.mark.parametrize("encoder", ["efficientnet_b0", "resnet18"])
def test_backbone_unet_shape_and_gradients(encoder: str) -> None:
    torch.manual_seed(0)
    net = BackboneUNet(encoder, in_channels=1, num_classes=3, decoder_channels=(32, 16, 16, 8, 8))
    out = net(torch.randn(2, 1, 64, 64))
    assert tuple(out.shape) == (2, 3, 64, 64)
    out.square().mean().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert missing == []
    assert net.stride == 32 and net.border == 0


def test_backbone_unet_errors() -> None:
    net = BackboneUNet("resnet18", in_channels=1, decoder_channels=(8, 8, 8, 8, 8))
    with pytest.raises(FovealError, match="64 and 96"):
        net(torch.zeros(1, 1, 70, 64))
    with pytest.raises(FovealError, match="resnet34"):
        BackboneUNet("resnet19")
    with pytest.raises(FovealError, match="phi"):
        BackboneUNet("efficientnet")
    with pytest.raises(FovealError, match="5 entries"):
        BackboneUNet("resnet18", decoder_channels=(8, 8))


@pytest.mark.parametrize(
    "build",
    [
        lambda: UNet(2, 3, depth=2, base_width=4, padding="same", batch_norm=True),
        lambda: BackboneUNet("efficientnet", 1, 2, (16, 8, 8, 8, 8), encoder_args={"phi": -3.0}),
    ],
)
def test_from_args_rebuilds_an_identical_model(build: object) -> None:
    torch.manual_seed(0)
    net = build().eval()  # type: ignore[operator]
    args = json.loads(json.dumps(net.args))
    torch.manual_seed(1)
    copy = from_args(args).eval()
    copy.load_state_dict(net.state_dict())
    x = torch.randn(1, net.args["in_channels"], 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(copy(x), net(x), atol=0, rtol=0)
    assert copy.args == net.args
