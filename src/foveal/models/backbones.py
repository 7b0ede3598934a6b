"""The backbone contract and the one factory that builds backbones.

Every backbone returns a list of feature maps with known channels, strides and cell geometry (:class:`FeatureInfo`),
so U-Net encoders, FPN / RetinaNet and CAM take any object that satisfies :class:`Backbone`: EfficientNet and ResNet
by name, or a user's own ``nn.Module`` through :func:`build_backbone`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from foveal.errors import FovealError
from foveal.models import efficientnet as _eff
from foveal.models.features import GRIDS, Backbone, FeatureInfo

__all__ = ["GRIDS", "Backbone", "FeatureInfo", "ResNetBackbone", "backbone_names", "build_backbone", "check_backbone"]

#: torchvision's ResNets: the channels of their first and last stages.
_RESNETS = {"resnet18": (64, 512), "resnet34": (64, 512), "resnet50": (256, 2048), "resnet101": (256, 2048)}
CUSTOM_PREFIX = "module:"  # what a model's args record in place of a backbone passed as a module


class ResNetBackbone(nn.Module):
    """A torchvision ResNet (18/34/50/101) behind the backbone contract: strides 2, 4, 8, 16, 32."""

    def __init__(self, name: str = "resnet50", in_channels: int = 3) -> None:
        super().__init__()
        if name not in _RESNETS:
            raise FovealError(f"unknown ResNet '{name}': choose one of {', '.join(_RESNETS)}")
        # deferred: importing torchvision imports torch._dynamo (about a second), which only a ResNet backbone needs
        import torchvision

        c2, c5 = _RESNETS[name]
        net = getattr(torchvision.models, name)(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu)
        self.pool = net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        # odd kernels with symmetric padding: output j is centred on input 2j at every stride-2 step
        self.feature_info = (
            FeatureInfo(64, 2, "stem", "stride"),
            FeatureInfo(c2, 4, "layer1", "stride"),
            FeatureInfo(c2 * 2, 8, "layer2", "stride"),
            FeatureInfo(c2 * 4, 16, "layer3", "stride"),
            FeatureInfo(c5, 32, "layer4", "stride"),
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


def _efficientnet(name: str) -> Callable[..., nn.Module]:
    def build(in_channels: int, **kwargs: Any) -> nn.Module:
        if name == "efficientnet":
            if "phi" not in kwargs:
                raise FovealError("backbone 'efficientnet' needs its compound coefficient: give it phi=...")
            net = _eff.efficientnet(in_channels=in_channels, **kwargs)
        else:
            net = _eff.efficientnet_variant(name.removeprefix("efficientnet_"), in_channels=in_channels, **kwargs)
        # a backbone is read through forward_features only: drop the classifier so that every parameter is trained
        net.head, net.classifier = nn.Identity(), nn.Identity()  # type: ignore[assignment]
        return net

    return build


def _resnet(name: str) -> Callable[..., nn.Module]:
    return lambda in_channels, **kwargs: ResNetBackbone(name, in_channels, **kwargs)


_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    **{name: _resnet(name) for name in _RESNETS},
    **{f"efficientnet_{v}": _efficientnet(f"efficientnet_{v}") for v in _eff.VARIANTS},
    "efficientnet": _efficientnet("efficientnet"),  # any φ: phi=...
}


def backbone_names() -> list[str]:
    """The backbones :func:`build_backbone` builds by name."""
    return list(_BACKBONES)


def build_backbone(backbone: str | nn.Module, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """One backbone of the contract, by name or from a module.

    Args:
        backbone: a name of :func:`backbone_names` ("resnet18" … "resnet101", "efficientnet_b0" … "efficientnet_b7",
            "efficientnet" with ``phi=``), or an ``nn.Module`` with ``forward_features`` and ``feature_info``
            (checked on a (1, in_channels, 64, 64) input; used as it is, not copied).
        in_channels: image channels the backbone's first layer takes.
        kwargs: arguments of the named backbone's builder (e.g. ``drop_path=0.0`` for EfficientNet).

    Returns:
        The backbone: ``forward_features`` maps (N, in_channels, H, W) to the maps its ``feature_info`` lists.
    """
    if isinstance(backbone, nn.Module):
        if kwargs:
            raise FovealError(f"backbone arguments {sorted(kwargs)} apply to a backbone built by name, not to a module")
        _check_contract(backbone, in_channels)
        return backbone
    if not isinstance(backbone, str):
        raise FovealError(f"a backbone is a name or an nn.Module, got {type(backbone).__name__}")
    if backbone.startswith(CUSTOM_PREFIX):
        raise FovealError(
            f"this model was built around its own backbone module ({backbone.removeprefix(CUSTOM_PREFIX)}): "
            "build that module again and pass it as the backbone, then load the weights"
        )
    if backbone not in _BACKBONES:
        raise FovealError(f"unknown backbone '{backbone}': choose one of {', '.join(_BACKBONES)} or pass an nn.Module")
    try:
        return _BACKBONES[backbone](in_channels, **kwargs)
    except TypeError as exc:
        raise FovealError(f"bad backbone arguments {sorted(kwargs)} for '{backbone}': {exc}") from None


def describe(backbone: str | nn.Module) -> str:
    """How a model's ``args`` record its backbone: the name, or ``module:<class name>`` for a module."""
    return backbone if isinstance(backbone, str) else f"{CUSTOM_PREFIX}{type(backbone).__name__}"


def _check_contract(module: nn.Module, in_channels: int) -> None:
    """Raise :class:`FovealError` naming what ``module`` lacks to be a backbone; then check it on a small input."""
    kind = type(module).__name__
    fix = "(see foveal.models.backbones.Backbone)"
    if not callable(getattr(module, "forward_features", None)):
        raise FovealError(f"backbone module {kind} has no forward_features(x) returning the list of feature maps {fix}")
    info = getattr(module, "feature_info", None)
    if not isinstance(info, (tuple, list)) or not info:
        raise FovealError(
            f"backbone module {kind} has no feature_info: set a tuple of FeatureInfo(channels, stride, name, grid), "
            f"one per map of forward_features {fix}"
        )
    for i, entry in enumerate(info):
        if not isinstance(entry, FeatureInfo):
            raise FovealError(f"feature_info[{i}] of {kind} is a {type(entry).__name__}, not a FeatureInfo {fix}")
        if entry.grid not in GRIDS:
            raise FovealError(f"feature_info[{i}] of {kind} has grid {entry.grid!r}: use 'stride' or 'cell'")
    strides = [entry.stride for entry in info]
    if any(b <= a for a, b in zip(strides, strides[1:], strict=False)) or strides[0] < 1:
        raise FovealError(f"feature_info of {kind} must list its maps by increasing stride, got strides {strides}")
    _dry_run(module, in_channels)


@torch.no_grad()
def _dry_run(module: nn.Module, in_channels: int) -> None:
    """Run the contract check in eval mode (BatchNorm statistics untouched) and restore the module's mode."""
    training = module.training
    param = next(module.parameters(), None)
    module.eval()
    try:
        check_backbone(module, in_channels, device=None if param is None else param.device)  # type: ignore[arg-type]
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise FovealError(f"backbone module {type(module).__name__} fails on a 64 × 64 input: {first}") from None
    finally:
        module.train(training)


def check_backbone(
    backbone: Backbone, in_channels: int = 3, size: int = 64, device: torch.device | None = None
) -> None:
    """Run one small input through ``backbone`` and check the returned maps against its ``feature_info``."""
    x = torch.zeros(1, in_channels, size, size, device=device)
    feats = backbone.forward_features(x)
    if not isinstance(feats, (list, tuple)) or len(feats) != len(backbone.feature_info):
        got = f"{len(feats)} maps" if isinstance(feats, (list, tuple)) else f"a {type(feats).__name__}"
        raise FovealError(f"backbone returned {got} but declares {len(backbone.feature_info)} in feature_info")
    for f, info in zip(feats, backbone.feature_info, strict=True):
        expected = -(-size // info.stride)
        if f.shape[1] != info.channels or f.shape[-1] != expected:
            raise FovealError(
                f"backbone map '{info.name}' has shape {tuple(f.shape)}, expected {info.channels} channels "
                f"at stride {info.stride}"
            )
