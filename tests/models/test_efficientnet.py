"""EfficientNet against the paper (Table 1 / Table 2) and timm, the backbone contract, and the building blocks."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from foveal.errors import FovealError
from foveal.models.backbones import Backbone, ResNetBackbone, check_backbone
from foveal.models.efficientnet import (
    VARIANTS,
    EfficientNet,
    MBConv,
    Scaling,
    compound_scaling,
    count_flops,
    count_parameters,
    dilated_copy,
    efficientnet,
    efficientnet_variant,
    from_args,
    round_channels,
    round_repeats,
)
from foveal.models.layers import Conv2dSame, ConvBNAct, SiLU, SqueezeExcite, drop_path, fuse_conv_bn, spatial_mean

# Paper Table 2: parameters (millions, as printed) and FLOPs (billions of multiply-adds, as printed).
PAPER = {
    "b0": ("5.3", "0.39"),
    "b1": ("7.8", "0.70"),
    "b2": ("9.2", "1.0"),
    "b3": ("12", "1.8"),
    "b4": ("19", "4.2"),
    "b5": ("30", "9.9"),
    "b6": ("43", "19"),
    "b7": ("66", "37"),
}


def _last_digit_unit(printed: str) -> float:
    """0.1 for "5.3", 1 for "12": one unit of the last printed digit."""
    return 10.0 ** -len(printed.split(".")[1]) if "." in printed else 1.0


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Unit-gain random conv weights and random BN statistics, so eval outputs are O(1) and BN folding is tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=g)
                if m.bias is not None:
                    m.bias.uniform_(-0.1, 0.1, generator=g)
            elif isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
    return model


# -- sizes against timm and the paper ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameters_match_timm_and_paper(name: str) -> None:
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        ours = count_parameters(efficientnet_variant(name))
        theirs = count_parameters(timm.create_model(f"efficientnet_{name}"))
    assert ours == theirs
    # Within one unit of the paper's last printed digit. B2 is the loosest: 9.11M against the printed 9.2M.
    printed = PAPER[name][0]
    assert abs(ours / 1e6 - float(printed)) <= _last_digit_unit(printed) + 1e-9


def test_b0_has_exactly_the_papers_parameter_count() -> None:
    with torch.device("meta"):
        assert count_parameters(efficientnet_variant("b0", num_classes=1000)) == 5_288_548


@pytest.mark.parametrize("name", list(VARIANTS))
def test_flops_within_five_percent_of_paper(name: str) -> None:
    macs = count_flops(efficientnet_variant(name), VARIANTS[name].resolution)
    paper = float(PAPER[name][1]) * 1e9
    assert abs(macs - paper) / paper < 0.05


# -- scaling rules ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "width", "expected"),
    [
        (32, 1.0, 32),  # unchanged at w = 1
        (32, 1.1, 32),  # 35.2 → int(39.2) // 8 · 8 = 32, and 32 ≥ 0.9 · 35.2
        (1280, 1.1, 1408),  # 1408 exactly
        (16, 1.4, 24),  # 22.4 → int(26.4) // 8 · 8 = 24
        (40, 1.8, 72),  # 72 exactly
        (112, 1.4, 160),  # 156.8 → int(160.8) // 8 · 8 = 160
        (199, 0.1, 24),  # 19.9 → 16 < 0.9 · 19.9 = 17.91, so one more step of 8
        (8, 0.1, 8),  # 0.8 → 0, floored at 8
    ],
)
def test_round_channels(channels: int, width: float, expected: int) -> None:
    assert round_channels(channels, width) == expected


@pytest.mark.parametrize(
    ("repeats", "depth", "expected"),
    [(1, 1.0, 1), (2, 1.1, 3), (3, 1.4, 5), (4, 3.1, 13), (1, 0.5, 1), (4, 0.6, 3)],
)
def test_round_repeats(repeats: int, depth: float, expected: int) -> None:
    assert round_repeats(repeats, depth) == expected


def test_compound_scaling_at_zero_is_b0() -> None:
    assert compound_scaling(0) == Scaling(width=1.0, depth=1.0, resolution=224, dropout=0.2)
    s1 = compound_scaling(1)
    assert (s1.width, s1.depth, s1.resolution) == (pytest.approx(1.1), pytest.approx(1.2), 256)  # 224·1.15 = 257.6
    with torch.device("meta"):
        a, b = efficientnet(0), efficientnet_variant("b0")
    assert [tuple(p.shape) for p in a.parameters()] == [tuple(p.shape) for p in b.parameters()]


def test_negative_phi_builds_a_smaller_working_model() -> None:
    model = efficientnet(-2, num_classes=7).eval()
    s = compound_scaling(-2)
    assert s.width < 1 and s.depth < 1 and s.resolution < 224
    with torch.device("meta"):
        b0 = count_parameters(efficientnet_variant("b0", num_classes=7))
    assert count_parameters(model) < b0
    assert count_flops(model, s.resolution) < count_flops(efficientnet_variant("b0"), 224)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_grayscale_input() -> None:
    model = efficientnet_variant("b0", in_channels=1, num_classes=5).eval()
    assert model.stem.conv.weight.shape[1] == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2, 5)


def test_output_stride_turns_the_last_downsamplings_into_stride_one() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 1, 64, 64)
    plain = efficientnet(-4, in_channels=1, num_classes=3, stem_stride=1).eval()
    fine = efficientnet(-4, in_channels=1, num_classes=3, stem_stride=1, output_stride=4).eval()
    fine.load_state_dict(plain.state_dict())  # same parameters: only strides change
    assert plain.forward_head_features(x).shape[-1] == 4
    assert fine.forward_head_features(x).shape[-1] == 16
    assert [f.stride for f in fine.feature_info] == [1, 2, 4]
    strides = [blocks[0].depthwise.conv.stride[0] for blocks in fine.stages]
    assert strides == [1, 2, 2, 1, 1, 1, 1]  # stages 4 and 6 of Table 1 lose their stride 2
    rebuilt = from_args(fine.args)
    rebuilt.load_state_dict(fine.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), fine(x))


def test_output_stride_that_cannot_be_reached_names_the_options() -> None:
    with pytest.raises(FovealError, match=r"output_stride=3 .* use one of 2, 4, 8, 16, 32"):
        EfficientNet(output_stride=3)


# -- training ----------------------------------------------------------------------------------------------------------


def test_forward_backward_every_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    model = efficientnet(-1, num_classes=4, drop_path=0.0, dropout=0.0).train()
    logits = model(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 4)
    F.cross_entropy(logits, torch.tensor([0, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_drop_path_is_identity_in_eval() -> None:
    x = torch.randn(16, 4, 3, 3)
    assert drop_path(x, 0.5, training=False) is x
    assert drop_path(x, 0.0, training=True) is x


def test_drop_path_drops_whole_samples_in_train() -> None:
    torch.manual_seed(0)
    x = torch.ones(2000, 3, 2, 2)
    y = drop_path(x, 0.25, training=True)
    per_sample = y.flatten(1)
    # every sample is either all zero (dropped) or all 1 / keep (kept, rescaled)
    dropped = (per_sample == 0).all(1)
    kept = (per_sample == 1 / 0.75).all(1)
    assert bool((dropped | kept).all())
    assert 0.2 < dropped.float().mean().item() < 0.3
    assert y.mean().item() == pytest.approx(1.0, abs=0.1)  # the expectation is preserved


def test_mbconv_stochastic_depth_skips_whole_branches() -> None:
    torch.manual_seed(0)
    block = MBConv(16, 16, expand=6, kernel=3, stride=1, drop_path=0.5)
    x = torch.randn(64, 16, 8, 8)
    block.eval()
    with torch.no_grad():
        assert torch.equal(block(x), block(x))  # no randomness in eval
        block.train()
        delta = (block(x) - x).flatten(1).abs().amax(1)
    assert (delta == 0).any() and (delta > 0).any()  # some samples skip the branch entirely, others do not


# -- inference helpers -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["symmetric", "same"])
def test_fuse_conv_bn_keeps_eval_output(padding: str) -> None:
    model = _randomize(efficientnet(-2, num_classes=10, padding=padding)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        fused = fuse_conv_bn(model)
        got = fused(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert want.abs().max() > 0.1  # a meaningful signal, not vanishing activations
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_same_padding_gives_ceil_of_input_over_stride() -> None:
    model = efficientnet_variant("b0", padding="same").eval()
    h, w = 65, 46
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, h, w))
    for f, info in zip(feats, model.feature_info, strict=True):
        assert f.shape[-2:] == (math.ceil(h / info.stride), math.ceil(w / info.stride))


def test_same_padding_puts_the_extra_pixel_bottom_right() -> None:
    torch.manual_seed(0)
    conv = Conv2dSame(2, 3, 3, stride=2, padding=0, bias=False)
    x = torch.randn(1, 2, 6, 7)
    # TF SAME for 6 rows: total padding (3 − 1)·2 + 3 − 6 = 1, all at the bottom; 7 columns: 2, one each side.
    want = F.conv2d(F.pad(x, [1, 1, 0, 1]), conv.weight, stride=2)
    with torch.no_grad():
        got = conv(x)
    assert got.shape[-2:] == (3, 4)
    torch.testing.assert_close(got, want)


# -- the backbone contract -------------------------------------------------------------------------------------------


def _backbones() -> list[tuple[str, Any]]:
    return [
        ("efficientnet_b0", efficientnet_variant("b0")),
        ("efficientnet_phi-2_same", efficientnet(-2, padding="same")),
        ("resnet18", ResNetBackbone("resnet18")),
        ("resnet34", ResNetBackbone("resnet34")),
        ("resnet50", ResNetBackbone("resnet50")),
    ]


with torch.device("meta"):  # cheap: only the feature_info tables are needed to list the entries
    _ENTRIES = [(name, i) for name, model in _backbones() for i in range(len(model.feature_info))]


@pytest.fixture(scope="module")
def backbone_maps() -> dict[str, tuple[Any, list[torch.Tensor], tuple[int, int]]]:
    h, w = 70, 45  # odd, non-square: every map must still be ceil(size / stride)
    out = {}
    for name, model in _backbones():
        model.eval()
        with torch.no_grad():
            out[name] = (model, model.forward_features(torch.randn(1, 3, h, w)), (h, w))
    return out


@pytest.mark.parametrize(("name", "index"), _ENTRIES, ids=[f"{n}-{i}" for n, i in _ENTRIES])
def test_feature_info_entry(backbone_maps: dict, name: str, index: int) -> None:
    model, feats, (h, w) = backbone_maps[name]
    info = model.feature_info[index]
    assert len(feats) == len(model.feature_info)
    assert feats[index].shape == (1, info.channels, math.ceil(h / info.stride), math.ceil(w / info.stride))
    assert model.get_submodule(info.name) is not None  # the name points at the module that produces the map
    if index > 0:
        assert info.stride > model.feature_info[index - 1].stride


@pytest.mark.parametrize("name", ["efficientnet_b0", "resnet18", "resnet34", "resnet50"])
def test_check_backbone_accepts(backbone_maps: dict, name: str) -> None:
    model = backbone_maps[name][0]
    assert isinstance(model, Backbone)
    check_backbone(model, size=64)
    if isinstance(model, EfficientNet):
        assert [i.stride for i in model.feature_info] == [2, 4, 8, 16, 32]
        assert [i.channels for i in model.feature_info] == [16, 24, 40, 112, 320]


def test_conv_bn_act_structure() -> None:
    block = ConvBNAct(4, 8, 3, stride=2, act=False, bn_eps=1e-5)
    assert isinstance(block.bn, nn.BatchNorm2d) and block.bn.eps == 1e-5
    assert isinstance(block.act, nn.Identity)
    assert block(torch.randn(2, 4, 9, 9)).shape == (2, 8, 5, 5)


def test_silu_in_place_only_without_autograd() -> None:
    act = SiLU()
    x = torch.randn(4, 3, requires_grad=True)
    y = act(x)
    assert y.data_ptr() != x.data_ptr()  # under autograd: a new output, the input is kept for backward
    y.sum().backward()
    ref = x.detach().clone().requires_grad_()
    F.silu(ref).sum().backward()
    torch.testing.assert_close(x.grad, ref.grad)
    with torch.no_grad():
        z = torch.randn(4, 3)
        want = F.silu(z)
        assert act(z).data_ptr() == z.data_ptr()  # without autograd: in place, no allocation
        torch.testing.assert_close(z, want)


def test_squeeze_excite_equals_its_convolution_form() -> None:
    torch.manual_seed(0)
    se = SqueezeExcite(24, 6)
    x = torch.randn(3, 24, 5, 7)
    s = se.expand(F.silu(se.reduce(x.mean((2, 3), keepdim=True))))
    torch.testing.assert_close(se(x), x * s.sigmoid(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("fused", [False, True])
def test_inference_reuses_temporaries_without_changing_results(fused: bool) -> None:
    model = _randomize(efficientnet(-2, num_classes=10)).eval()
    if fused:
        fuse_conv_bn(model)
    x = torch.randn(2, 3, 64, 64)
    x_before = x.clone()
    recorded = model(x)  # autograd records: out-of-place path
    with torch.inference_mode():
        reused = model(x)  # in-place path
    assert torch.equal(x, x_before)  # the caller's input is never overwritten
    torch.testing.assert_close(reused, recorded.detach(), atol=0, rtol=0)


def test_init_follows_reference_fan_out_including_depthwise():
    torch.manual_seed(0)
    model = efficientnet_variant("b0", num_classes=10)
    dw = model.stages[1][0].depthwise.conv  # a depthwise kernel has fan-out k·k
    k = dw.kernel_size[0]
    assert dw.groups == dw.out_channels
    assert float(dw.weight.detach().std()) == pytest.approx(math.sqrt(2.0 / (k * k)), rel=0.1)
    pw = model.stages[1][0].project.conv
    assert float(pw.weight.detach().std()) == pytest.approx(math.sqrt(2.0 / pw.out_channels), rel=0.1)


def test_dilated_copy_holds_the_original_map_on_its_grid_and_fills_between() -> None:
    torch.manual_seed(0)
    model = efficientnet(-4, in_channels=1, num_classes=3, stem_stride=1, output_stride=8).eval()
    for m in model.modules():  # BatchNorm statistics of a trained net, so that every layer matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dense = dilated_copy(model, 2)
    assert dense.args["output_stride"] == 2 and model.args["output_stride"] == 8
    assert [f.stride for f in dense.feature_info] == [1, 2, 2, 2]
    assert [f.stride for f in model.feature_info] == [1, 2, 4, 8]
    x = torch.randn(2, 1, 32, 40)
    with torch.no_grad():
        coarse, fine = model.forward_head_features(x), dense.forward_head_features(x)
    assert coarse.shape[-2:] == (4, 5) and fine.shape[-2:] == (16, 20)
    # squeeze-and-excitation averages the finer map: close, not equal, at the original positions
    torch.testing.assert_close(fine[..., ::4, ::4], coarse, rtol=0, atol=1e-3 * float(coarse.abs().max()))
    for net in (model, dense):  # without it the copy is exact there ("à trous")
        for block in net.modules():
            if isinstance(block, MBConv):
                block.se = nn.Identity()
    with torch.no_grad():
        coarse, fine = model.forward_head_features(x), dense.forward_head_features(x)
    torch.testing.assert_close(fine[..., ::4, ::4], coarse, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(fine[..., 1::4, ::4], fine[..., ::4, ::4])  # new positions carry new values
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched


def test_dilated_copy_names_the_reachable_strides() -> None:
    model = efficientnet(-4, in_channels=1, num_classes=3, stem_stride=1, output_stride=8)
    with pytest.raises(FovealError, match=r"map stride 3 is not reachable from this model's 8: use one of 1, 2, 4, 8"):
        dilated_copy(model, 3)
    with pytest.raises(FovealError, match="map stride 16 is not reachable"):
        dilated_copy(model, 16)


@pytest.mark.parametrize("shape", [(2, 96, 56, 56), (3, 1152, 7, 7), (1, 8, 1, 1)])
def test_spatial_mean_of_bf16_channels_last_is_the_mean(shape):
    """The squeeze's matrix-product path for bf16 channels-last maps gives the fp32 mean up to bf16 rounding; other
    inputs take ``mean`` itself."""
    torch.manual_seed(0)
    x = (torch.randn(*shape) + 2).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    exact = x.float().mean((2, 3))
    got = spatial_mean(x)
    assert got.dtype == torch.bfloat16 and got.shape == exact.shape
    torch.testing.assert_close(got.float(), exact, rtol=2 * 2**-8, atol=0)
    plain = x.float().contiguous()
    assert torch.equal(spatial_mean(plain), plain.mean((2, 3)))
