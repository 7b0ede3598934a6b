"""EfficientNet with compound scaling.

Reference: Mingxing Tan and Quoc V. Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
ICML 2019 (arXiv:1905.11946). The B0 architecture below is the paper's Table 1, one row per stage; B1–B7 use the
released (width, depth, resolution, dropout) coefficients; :func:`compound_scaling` builds a model for any φ from
α, β, γ as in the paper's Eq. 3.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from foveal.errors import FovealError
from foveal.models.features import FeatureInfo
from foveal.models.layers import Conv2dSame, ConvBNAct, SqueezeExcite, drop_path, records_grad


@dataclass(frozen=True)
class Stage:
    """One row of the paper's Table 1: MBConv{expand}, k{kernel}×{kernel}, stride, output channels, layers."""

    expand: int
    kernel: int
    stride: int
    channels: int
    repeats: int


# EfficientNet-B0, Table 1 of the paper (stages 2–8; stage 1 is the stem, stage 9 the head).
B0_STAGES: tuple[Stage, ...] = (
    Stage(expand=1, kernel=3, stride=1, channels=16, repeats=1),
    Stage(expand=6, kernel=3, stride=2, channels=24, repeats=2),
    Stage(expand=6, kernel=5, stride=2, channels=40, repeats=2),
    Stage(expand=6, kernel=3, stride=2, channels=80, repeats=3),
    Stage(expand=6, kernel=5, stride=1, channels=112, repeats=3),
    Stage(expand=6, kernel=5, stride=2, channels=192, repeats=4),
    Stage(expand=6, kernel=3, stride=1, channels=320, repeats=1),
)
B0_STEM = 32
B0_HEAD = 1280
B0_RESOLUTION = 224


@dataclass(frozen=True)
class Scaling:
    """Compound-scaling coefficients of one variant: width and depth multipliers, input resolution, dropout."""

    width: float
    depth: float
    resolution: int
    dropout: float


# Released coefficients (hand-set in the reference code, close to but not exactly α^φ, β^φ, γ^φ).
VARIANTS: dict[str, Scaling] = {
    "b0": Scaling(1.0, 1.0, 224, 0.2),
    "b1": Scaling(1.0, 1.1, 240, 0.2),
    "b2": Scaling(1.1, 1.2, 260, 0.3),
    "b3": Scaling(1.2, 1.4, 300, 0.3),
    "b4": Scaling(1.4, 1.8, 380, 0.4),
    "b5": Scaling(1.6, 2.2, 456, 0.4),
    "b6": Scaling(1.8, 2.6, 528, 0.5),
    "b7": Scaling(2.0, 3.1, 600, 0.5),
}


def compound_scaling(phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15) -> Scaling:
    """Coefficients for compound coefficient φ: depth α^φ, width β^φ, resolution 224·γ^φ (paper Eq. 3).

    The resolution is rounded to a multiple of 8. The paper gives no dropout rule; we interpolate the released
    B0–B7 rates as 0.2 + 0.05·φ, clipped to [0, 0.5]. Negative φ gives smaller models for small budgets.
    """
    resolution = max(8, int(round(B0_RESOLUTION * gamma**phi / 8)) * 8)
    dropout = min(0.5, max(0.0, 0.2 + 0.05 * phi))
    return Scaling(width=beta**phi, depth=alpha**phi, resolution=resolution, dropout=dropout)


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """The paper's channel rounding: nearest multiple of 8 of c·w, at least 8 and never below 90 % of c·w."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """The paper's depth rounding: ceil(d · L)."""
    return int(math.ceil(depth * repeats))


class MBConv(nn.Module):
    """Mobile inverted bottleneck with squeeze-and-excitation.

    1×1 expansion (skipped when ``expand == 1``) + BN + swish → depthwise k×k + BN + swish → SE (reduced to
    ``se_ratio`` × the block's input channels) → 1×1 projection + BN, no activation → identity skip with stochastic
    depth when the stride is 1 and the channel count is unchanged.
    """

    def __init__(
        self,
        cin: int,
        cout: int,
        expand: int,
        kernel: int,
        stride: int,
        drop_path: float = 0.0,
        se_ratio: float = 0.25,
        padding: str = "symmetric",
        bn_momentum: float = 0.01,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        mid = cin * expand
        bn: dict[str, Any] = {"padding": padding, "bn_momentum": bn_momentum, "bn_eps": bn_eps}
        self.expand = ConvBNAct(cin, mid, 1, **bn) if expand != 1 else nn.Identity()
        self.depthwise = ConvBNAct(mid, mid, kernel, stride, groups=mid, **bn)
        self.se = SqueezeExcite(mid, max(1, int(cin * se_ratio)), inplace=True)
        self.project = ConvBNAct(mid, cout, 1, act=False, **bn)
        self.residual = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        if self.residual:
            y = drop_path(y, self.drop_path, self.training)
            # without autograd, the block's own temporaries are reused in place (the SE gate too): fewer allocations
            y = y + x if records_grad(y, x) else y.add_(x)
        return y


class EfficientNet(nn.Module):
    """EfficientNet classifier and backbone.

    Args:
        width: channel multiplier w (1.0 for B0).
        depth: layer multiplier d (1.0 for B0).
        num_classes: outputs of the final linear layer.
        in_channels: input channels (1 for grayscale).
        dropout: dropout rate before the classifier (0.2 for B0).
        drop_path: stochastic-depth drop rate of the last block (1 − survival 0.8 = 0.2); block i of n drops with
            ``drop_path · i / n``, as in the reference code.
        stages: the architecture table (default: the paper's Table 1).
        stem_stride: stride of the stem conv (2 in the paper; 1 keeps more resolution for tiny images).
        output_stride: total stride of the last conv map (``None``: the table's, 32 with the paper's stem). A smaller
            power of two turns the last downsampling stages into stride-1 stages, so the maps of class activation
            mapping are finer (Zhou et al. remove the last pooling layers for 14 × 14 maps at 224 px).
        padding: "symmetric" (k // 2, the PyTorch convention used by timm and torchvision) or "same" (TensorFlow SAME,
            needed for TF-ported weights).
        bn_momentum: BatchNorm momentum in PyTorch's convention (0.01 = the paper's decay 0.99).
        bn_eps: BatchNorm epsilon (1e-3 in the reference code; timm and torchvision use 1e-5).
        se_ratio: squeeze-and-excitation reduction relative to the block's input channels.
        pool: global pooling before the classifier: "avg" (the paper; what class activation maps assume) or "max"
            (global max pooling, for the GAP-vs-GMP ablation of Zhou et al., CVPR 2016).

    Shapes: ``forward`` maps (N, in_channels, H, W) to logits (N, num_classes); ``forward_features`` returns the
    maps listed in ``feature_info`` (strides 2, 4, 8, 16, 32 with the paper's stem).
    """

    def __init__(
        self,
        width: float = 1.0,
        depth: float = 1.0,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.2,
        drop_path: float = 0.2,
        stages: tuple[Stage, ...] = B0_STAGES,
        stem_stride: int = 2,
        output_stride: int | None = None,
        padding: str = "symmetric",
        bn_momentum: float = 0.01,
        bn_eps: float = 1e-3,
        se_ratio: float = 0.25,
        pool: str = "avg",
    ) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise FovealError(
                f"pool must be 'avg' (global average pooling) or 'max' (global max pooling), got {pool!r}"
            )
        self.args: dict[str, Any] = {
            "width": width,
            "depth": depth,
            "num_classes": num_classes,
            "in_channels": in_channels,
            "dropout": dropout,
            "drop_path": drop_path,
            "stages": [asdict(s) for s in stages],
            "stem_stride": stem_stride,
            "output_stride": output_stride,
            "padding": padding,
            "bn_momentum": bn_momentum,
            "bn_eps": bn_eps,
            "se_ratio": se_ratio,
            "pool": pool,
        }
        self.pool = pool
        bn: dict[str, Any] = {"padding": padding, "bn_momentum": bn_momentum, "bn_eps": bn_eps}
        stem = round_channels(B0_STEM, width)
        self.stem = ConvBNAct(in_channels, stem, 3, stem_stride, **bn)

        self.stages = nn.ModuleList()
        stages = _limit_stride(stages, stem_stride, output_stride)
        cin, infos = self._add_stages(stages, (stem, stem_stride), width, depth, drop_path, se_ratio, bn)
        self.feature_info: tuple[FeatureInfo, ...] = tuple(infos)
        self.num_features = round_channels(B0_HEAD, width)
        self.head = ConvBNAct(cin, self.num_features, 1, **bn)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.num_features, num_classes)
        self._feature_stages = [int(info.name.split(".")[1]) for info in infos]
        self._init_weights()

    def _add_stages(
        self,
        stages: tuple[Stage, ...],
        stem: tuple[int, int],
        width: float,
        depth: float,
        drop_path: float,
        se_ratio: float,
        bn: dict[str, Any],
    ) -> tuple[int, list[FeatureInfo]]:
        """Append the MBConv stages of the table (scaled by ``width`` and ``depth``) after a stem of ``stem``
        (channels, stride) to ``self.stages``; block i of n drops its path with rate ``drop_path · i / n``.

        Returns:
            The channels of the last stage, and the feature map after the last stage of each stride (the backbone
            contract's ``feature_info``).
        """
        repeats = [round_repeats(s.repeats, depth) for s in stages]
        total, index = sum(repeats), 0
        cin, stride = stem
        infos: list[FeatureInfo] = []
        grid = "stride" if bn["padding"] == "symmetric" else "cell"  # where the cells sit (foveal.explain.upsample)
        for i, (s, n) in enumerate(zip(stages, repeats, strict=True)):
            cout = round_channels(s.channels, width)
            blocks = []
            for j in range(n):
                rate = drop_path * index / total
                blocks.append(MBConv(cin, cout, s.expand, s.kernel, s.stride if j == 0 else 1, rate, se_ratio, **bn))
                cin, index = cout, index + 1
            self.stages.append(nn.Sequential(*blocks))
            stride *= s.stride
            last_at_stride = i + 1 == len(stages) or stages[i + 1].stride > 1
            if last_at_stride:
                infos.append(FeatureInfo(cout, stride, f"stages.{i}", grid))
        return cin, infos

    def _init_weights(self) -> None:
        # Reference-code initialisers: conv He-normal over fan-out = k·k·out/groups (a depthwise kernel has fan-out
        # k·k), dense uniform ±1/sqrt(fan_out), BN γ = 1, β = 0.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                fan_out = kh * kw * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """Feature maps at the strides of ``feature_info`` (the backbone contract)."""
        x = self.stem(x)
        out = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self._feature_stages:
                out.append(x)
        return out

    def forward_head_features(self, x: Tensor) -> Tensor:
        """The last conv feature map, (N, num_features, H/32, W/32): what global average pooling sees (CAM's f_k)."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def forward_head(self, features: Tensor) -> Tensor:
        """Global average (or max) pooling → dropout → linear: (N, num_features, h, w) → logits (N, num_classes)."""
        pooled = features.mean((2, 3)) if self.pool == "avg" else features.amax((2, 3))
        return self.classifier(self.dropout(pooled))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_head_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final linear layer (e.g. to fine-tune on another label set)."""
        self.classifier = nn.Linear(self.num_features, num_classes)
        self.args["num_classes"] = num_classes


def _limit_stride(stages: tuple[Stage, ...], stem_stride: int, output_stride: int | None) -> tuple[Stage, ...]:
    """``stages`` with the last downsampling stages made stride 1 until the total stride is ``output_stride``."""
    if output_stride is None:
        return stages
    keep, options = _strides_to(stem_stride, [s.stride for s in stages], output_stride)
    if keep is None:
        listed = ", ".join(str(v) for v in options)
        raise FovealError(
            f"output_stride={output_stride} cannot be reached with stem stride {stem_stride}: use one of {listed}"
        )
    return tuple(replace(s, stride=k) for s, k in zip(stages, keep, strict=True))


def _strides_to(stem: int, strides: list[int], output_stride: int) -> tuple[list[int] | None, list[int]]:
    """``strides`` with the last downsamplings set to 1 so that stem · Π strides = ``output_stride`` (None when no
    such cut exists), and the output strides that can be reached."""
    options = sorted({stem * math.prod(strides[:k]) for k in range(len(strides) + 1)})
    if output_stride not in options:
        return None, options
    keep, total = list(strides), stem * math.prod(strides)
    for i in reversed(range(len(keep))):
        if total <= output_stride:
            break
        total //= keep[i]
        keep[i] = 1
    return keep, options


def dilated_copy(model: EfficientNet, output_stride: int) -> EfficientNet:
    """A copy of ``model`` whose last map has the finer total stride ``output_stride``, with the same weights.

    For denser class activation maps at test time. The last downsampling convolutions run at stride 1 and every later
    k×k convolution is dilated by the stride removed before it ("à trous", as DeepLab turns a classifier into a dense
    predictor), so each conv sees the same pixels as in ``model``: the new map holds the old one at every
    (old stride / ``output_stride``)-th position and fills the positions between. The one difference at the old
    positions: squeeze-and-excitation averages the finer map. ``model`` is not changed.
    """
    strides = [int(block.depthwise.conv.stride[0]) for block in model.modules() if isinstance(block, MBConv)]
    stem = int(model.stem.conv.stride[0])
    keep, options = _strides_to(stem, strides, output_stride)
    if keep is None:
        total, finer = stem * math.prod(strides), ", ".join(str(v) for v in options)
        raise FovealError(f"map stride {output_stride} is not reachable from this model's {total}: use one of {finer}")
    dense = copy.deepcopy(model)
    removed = 1  # product of the strides removed so far: the dilation of every later k×k conv
    blocks = [block for block in dense.modules() if isinstance(block, MBConv)]
    for block, old, new in zip(blocks, strides, keep, strict=True):
        conv = block.depthwise.conv
        conv.stride, conv.dilation = (new, new), (removed, removed)
        if not isinstance(conv, Conv2dSame):  # symmetric padding grows with the dilation; SAME computes its own
            conv.padding = (removed * (conv.kernel_size[0] // 2),) * 2
        removed *= old // new
    dense.args["output_stride"] = output_stride
    dense.feature_info = tuple(replace(f, stride=min(f.stride, output_stride)) for f in dense.feature_info)
    return dense


def efficientnet_variant(name: str, **kwargs: Any) -> EfficientNet:
    """A named variant "b0" … "b7" with its released width, depth and dropout; ``kwargs`` override arguments."""
    s = VARIANTS[name]
    args: dict[str, Any] = {"width": s.width, "depth": s.depth, "dropout": s.dropout}
    args.update(kwargs)
    return EfficientNet(**args)


def efficientnet(phi: float, alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15, **kwargs: Any) -> EfficientNet:
    """A model from compound coefficient φ (any real, negative too) and the paper's α, β, γ."""
    s = compound_scaling(phi, alpha, beta, gamma)
    args: dict[str, Any] = {"width": s.width, "depth": s.depth, "dropout": s.dropout}
    args.update(kwargs)
    return EfficientNet(**args)


def from_args(args: dict[str, Any]) -> EfficientNet:
    """Rebuild a model from the ``args`` dict stored in a checkpoint."""
    args = dict(args)
    if "stages" in args:
        args["stages"] = tuple(Stage(**s) for s in args["stages"])
    return EfficientNet(**args)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: nn.Module, resolution: int, in_channels: int = 3) -> int:
    """Multiply-adds of one forward pass at ``resolution`` (convolutions and linear layers), counted on the meta device.

    The paper's "FLOPs" are multiply-adds; ``torch.utils.flop_counter`` counts 2 per multiply-add, so we halve it.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    meta = _to_meta(model)
    with counter:
        meta(torch.empty(1, in_channels, resolution, resolution, device="meta"))
    return counter.get_total_flops() // 2


def _to_meta(model: nn.Module) -> nn.Module:
    if isinstance(model, EfficientNet):
        with torch.device("meta"):
            m = from_args(model.args)
        return m.eval()
    import copy

    return copy.deepcopy(model).to("meta").eval()
