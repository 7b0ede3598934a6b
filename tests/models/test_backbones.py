"""One backbone factory: backbones by name, a user's own module in RetinaNet and the U-Net, the contract's errors."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from foveal.errors import FovealError
from foveal.explain.upsample import grid_of
from foveal.models.backbones import FeatureInfo, backbone_names, build_backbone
from foveal.models.efficientnet import EfficientNet
from foveal.models.registry import build_model, rebuild
from foveal.models.retinanet import RetinaNet, from_args, retinanet_loss
from foveal.models.unet import BackboneUNet
from foveal.models.unet import from_args as unet_from_args


class MobileNetBackbone(nn.Module):
    """torchvision's MobileNetV3-Small adapted to the contract in a few lines: the last map at each stride."""

    def __init__(self, grid: str = "stride") -> None:
        super().__init__()
        self.body = torchvision.models.mobilenet_v3_small(weights=None).features[:12]
        self.taps = (0, 1, 3, 8, 11)
        channels = (16, 16, 24, 48, 96)
        pairs = enumerate(zip(channels, self.taps, strict=True))
        self.feature_info = tuple(FeatureInfo(c, 2 ** (i + 1), f"body.{t}", grid) for i, (c, t) in pairs)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        out = []
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i in self.taps:
                out.append(x)
        return out


pytestmark = pytest.mark.usefixtures("one_thread")


def _train(model: nn.Module, loss_of, steps: int = 3) -> list[float]:
    """A few Adam steps on one fixed batch; checks that every parameter gets a gradient and changes, that every loss
    is finite and that the loss falls at every step."""
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(steps):
        opt.zero_grad()
        loss = loss_of(model)
        loss.backward()
        if step == 0:
            missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not missing, f"parameters without gradient: {missing[:5]}"
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses), losses
    assert all(b < a for a, b in pairwise(losses)), losses
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert not unchanged, f"parameters that did not change: {unchanged[:5]}"
    return losses


def test_own_backbone_trains_in_retinanet() -> None:
    torch.manual_seed(0)
    backbone = MobileNetBackbone()
    model = RetinaNet(backbone, num_classes=2, fpn_channels=16, head_convs=1, anchor_sizes=(16, 32, 64, 128, 256))
    assert model.backbone is backbone
    assert model.args["backbone"] == "module:MobileNetBackbone"
    x = torch.randn(2, 3, 32, 32)
    targets = [
        {"boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0]]), "labels": torch.tensor([0])},
        {"boxes": torch.tensor([[10.0, 5.0, 30.0, 25.0]]), "labels": torch.tensor([1])},
    ]
    model.train()
    losses = _train(model, lambda m: sum(retinanet_loss(m(x), targets).values()))
    assert losses[-1] < 0.97 * losses[0], losses
    model.eval()
    output = model(x)
    assert torch.isfinite(output.cls_logits).all() and torch.isfinite(output.box_deltas).all()
    assert grid_of(model) == "stride"


def test_own_backbone_trains_in_backbone_unet() -> None:
    torch.manual_seed(0)
    model = BackboneUNet(MobileNetBackbone(grid="cell"), num_classes=3, decoder_channels=(16, 16, 8, 8, 8))
    assert model.args["encoder"] == "module:MobileNetBackbone"
    x = torch.randn(2, 3, 32, 32)
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    target[:, 8:24, 4:20] = 1
    target[:, 20:, 20:] = 2
    model.train()
    losses = _train(model, lambda m: F.cross_entropy(m(x), target))
    logits = model(x)
    assert logits.shape == (2, 3, 32, 32) and torch.isfinite(logits).all()
    assert losses[-1] < 0.95 * losses[0], losses
    assert grid_of(model.encoder) == "cell"


def test_module_models_rebuild_with_the_module_again() -> None:
    model = RetinaNet(MobileNetBackbone(), num_classes=2, fpn_channels=8, head_convs=0).eval()
    with pytest.raises(FovealError, match="own backbone module \\(MobileNetBackbone\\)"):
        from_args(model.args)
    again = from_args(model.args, backbone=MobileNetBackbone()).eval()
    again.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x).cls_logits, model(x).cls_logits)
    unet = BackboneUNet(MobileNetBackbone(), num_classes=2, decoder_channels=(8, 8, 8, 8, 8))
    with pytest.raises(FovealError, match="own backbone module"):
        unet_from_args(unet.args)
    assert isinstance(unet_from_args(unet.args, encoder=MobileNetBackbone()), BackboneUNet)


def test_names_build_backbones_with_their_grid() -> None:
    assert {"resnet18", "resnet50", "efficientnet_b0", "efficientnet"} <= set(backbone_names())
    with torch.device("meta"):
        resnet = build_backbone("resnet18", in_channels=1)
        eff = build_backbone("efficientnet_b0", drop_path=0.0)
        same = build_backbone("efficientnet", phi=-2, padding="same")
    assert [i.stride for i in resnet.feature_info] == [2, 4, 8, 16, 32]
    assert {i.grid for i in resnet.feature_info} == {"stride"}
    assert grid_of(eff) == "stride" and grid_of(same) == "cell"
    assert isinstance(eff.classifier, nn.Identity)  # unused by a backbone: no untrained parameters
    with pytest.raises(FovealError, match="unknown backbone 'vgg16'"):
        build_backbone("vgg16")
    with pytest.raises(FovealError, match="phi"):
        build_backbone("efficientnet")
    with pytest.raises(FovealError, match="bad backbone arguments"):
        build_backbone("resnet18", width=2)


def test_contract_errors_name_what_is_missing() -> None:
    class NoFeatures(nn.Module):
        feature_info = (FeatureInfo(8, 2, "conv"),)

    class NoInfo(nn.Module):
        def forward_features(self, x: Tensor) -> list[Tensor]:
            return [x]

    wrong = MobileNetBackbone()
    wrong.feature_info = (*wrong.feature_info[:-1], FeatureInfo(95, 32, "body.11"))
    disordered = MobileNetBackbone()
    disordered.feature_info = disordered.feature_info[::-1]
    with pytest.raises(FovealError, match="NoFeatures has no forward_features"):
        build_backbone(NoFeatures())
    with pytest.raises(FovealError, match="NoInfo has no feature_info"):
        build_backbone(NoInfo())
    with pytest.raises(FovealError, match="expected 95 channels at stride 32"):
        RetinaNet(wrong, num_classes=2)
    with pytest.raises(FovealError, match="increasing stride"):
        build_backbone(disordered)
    with pytest.raises(FovealError, match="fails on a 64 × 64 input"):
        build_backbone(MobileNetBackbone(), in_channels=1)
    with pytest.raises(FovealError, match="apply to a backbone built by name"):
        build_backbone(MobileNetBackbone(), drop_path=0.1)


def test_contract_check_leaves_the_module_as_it_was() -> None:
    module = MobileNetBackbone().train()
    stats = {k: v.clone() for k, v in module.state_dict().items()}
    build_backbone(module)
    assert module.training
    assert all(torch.equal(v, stats[k]) for k, v in module.state_dict().items())  # BatchNorm statistics untouched


def test_checkpoints_rebuild_every_architecture_through_the_registry() -> None:
    with torch.device("meta"):
        models = {
            "efficientnet": build_model("efficientnet", phi=-3, num_classes=3),
            "unet": build_model("backbone_unet", encoder="resnet18", num_classes=2),
            "retinanet": build_model("retinanet", backbone="resnet18", num_classes=2, fpn_channels=8),
        }
        for arch, model in models.items():
            again = rebuild({"arch": arch, "args": model.args})
            assert type(again) is type(model)
            assert again.args == model.args
    assert isinstance(models["efficientnet"], EfficientNet)
