"""U-Net: the paper's network (unpadded convolutions, cropped skips) and a U-Net decoder over any backbone.

Reference: Olaf Ronneberger, Philipp Fischer and Thomas Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015 (arXiv:1505.04597). :class:`UNet` is the paper's Fig. 1 generalised to any depth and width:
per level two 3×3 convolutions + ReLU and a 2×2 max-pool; the expansive path up-samples with a 2×2 up-convolution that
halves the channels, concatenates the center-cropped skip map and applies two 3×3 convolutions + ReLU; a 1×1
convolution gives the class logits. With ``padding="valid"`` (the paper) a depth-4 net maps 572² to 388²: it loses
``border = 92`` pixels per side and takes the input sizes 16k + 60 only (see :func:`unet_output_size`).

:class:`BackboneUNet` is the common modern variant: a padded U-Net decoder (conv + BN + ReLU) over the strides 2…32 of
any backbone of :mod:`foveal.models.backbones` (EfficientNet, ResNet), with output at the input's resolution.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import Tensor, nn

from foveal.errors import FovealError
from foveal.models.backbones import Backbone, backbone_names, build_backbone, describe

_PADDINGS = ("valid", "same")
_ROUNDING = ("up", "down", "nearest")


# ---------------------------------------------------------------------------------------------------- size arithmetic
def _check_geometry(depth: int, padding: str) -> None:
    if depth < 1:
        raise FovealError(f"U-Net depth must be at least 1, got {depth}")
    if padding not in _PADDINGS:
        raise FovealError(f"U-Net padding must be 'valid' or 'same', got {padding!r}")


def _min_bottom(depth: int) -> int:
    """The smallest bottom map (after its two convs) whose expansive path keeps every map at least 1 px wide."""
    bottom = 1
    while True:
        size, ok = bottom, True
        for _ in range(depth):
            size = 2 * size - 4
            ok = ok and size >= 1
        if ok:
            return bottom
        bottom += 1


def _valid_sizes(depth: int, padding: str) -> tuple[int, int, int]:
    """(first valid input, its output, step between valid sizes) of a U-Net of this depth and padding."""
    stride = 2**depth
    if padding == "same":
        return stride, stride, stride
    b = _min_bottom(depth)
    # down: input t_0, t_{l+1} = (t_l - 4) / 2, bottom b + 4 → t_0 = S·b + 8S − 4; up: u ← 2u − 4 → S·b − 4(S − 1)
    return stride * b + 8 * stride - 4, stride * b - 4 * (stride - 1), stride


def _neighbours(size: int, first: int, step: int) -> tuple[int | None, int]:
    """The valid sizes first + step·m just below (None when there is none) and at or above ``size``."""
    if size <= first:
        return None, first
    m = (size - first) // step
    below = first + m * step
    return below, below if below == size else below + step


def _describe(sizes: tuple[int | None, int], first: int, step: int, what: str) -> str:
    below, above = sizes
    if below is None:
        return f"the smallest valid {what} is {first}"
    return f"the nearest valid {what}s are {below} and {above} ({first}, {first + step}, {first + 2 * step}, …)"


def unet_output_size(input_size: int, depth: int = 4, padding: str = "valid") -> int:
    """The output edge of a U-Net for an input edge (572 → 388 for the paper's valid depth-4 net).

    Args:
        input_size: height or width of the input.
        depth: number of 2×2 poolings.
        padding: "valid" (unpadded 3×3 convs, the paper) or "same" (padded, output size = input size).

    Returns:
        The output height or width. Raises FovealError naming the nearest valid input sizes when ``input_size`` is not
        one (valid: 16k + 60 with k ≥ 8 for depth 4; a multiple of 2**depth for "same").
    """
    _check_geometry(depth, padding)
    first_in, first_out, step = _valid_sizes(depth, padding)
    below, above = _neighbours(input_size, first_in, step)
    if above != input_size:
        hint = _describe((below, above), first_in, step, "input size")
        raise FovealError(f"input size {input_size} does not fit a depth-{depth} U-Net with {padding} padding: {hint}")
    return first_out + (input_size - first_in)


def unet_input_size(output_size: int, depth: int = 4, padding: str = "valid") -> int:
    """The input edge that gives exactly ``output_size`` (388 → 572 for the paper's net).

    Raises FovealError naming the nearest valid output sizes when no input gives ``output_size``.
    """
    _check_geometry(depth, padding)
    first_in, first_out, step = _valid_sizes(depth, padding)
    below, above = _neighbours(output_size, first_out, step)
    if above != output_size:
        hint = _describe((below, above), first_out, step, "output size")
        raise FovealError(
            f"no input gives output size {output_size} for a depth-{depth} U-Net with {padding} padding: {hint}"
        )
    return first_in + (output_size - first_out)


def valid_input_size(size: int, depth: int = 4, padding: str = "valid", round: str = "up") -> int:
    """The valid input edge nearest to ``size``: the next one up, the one below, or the nearest (ties go up).

    Raises FovealError for ``round="down"`` when no valid size is at or below ``size``.
    """
    _check_geometry(depth, padding)
    first_in, _, step = _valid_sizes(depth, padding)
    return _round_to_grid(size, first_in, step, round)


def _round_to_grid(size: int, first: int, step: int, round: str) -> int:
    if round not in _ROUNDING:
        raise FovealError(f"round must be one of {', '.join(_ROUNDING)}, got {round!r}")
    below, above = _neighbours(size, first, step)
    if above == size:
        return size
    if round == "up":
        return above
    if below is None:
        if round == "down":
            raise FovealError(f"no valid input size is at or below {size}: the smallest is {first}")
        return above
    if round == "down":
        return below
    return above if above - size <= size - below else below


# ------------------------------------------------------------------------------------------------------------- U-Net
def _he_init(module: nn.Module) -> None:
    """Gaussian weights with std sqrt(2 / N), N = k·k·in_channels (the paper's "incoming nodes"); biases zero.

    For a 2×2 up-convolution N = 2·2·in_channels as well. BatchNorm: γ = 1, β = 0.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            kh, kw = m.kernel_size
            cin = m.in_channels // m.groups
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / (kh * kw * cin)))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _double_conv(cin: int, cout: int, pad: int, batch_norm: bool) -> nn.Sequential:
    """Two 3×3 convolutions, each followed by (BatchNorm and) ReLU."""
    layers: list[nn.Module] = []
    for c in (cin, cout):
        layers.append(nn.Conv2d(c, cout, 3, padding=pad, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _center_crop(x: Tensor, height: int, width: int) -> Tensor:
    top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


class UNet(nn.Module):
    """The paper's U-Net (Fig. 1), of any depth and width.

    Args:
        in_channels: input channels (1 for the paper's grayscale microscopy).
        num_classes: output channels K (2 in the paper: cell and background).
        depth: number of 2×2 max-poolings (4 in the paper); ``stride = 2**depth``.
        base_width: channels of the first level; level l has ``base_width · 2**l`` (64 … 1024 in the paper).
        padding: "valid" (unpadded 3×3 convs as in the paper: the output is smaller than the input, skips are
            center-cropped) or "same" (padded: output size = input size; inputs must be multiples of ``stride``).
        batch_norm: BatchNorm after every 3×3 conv (convs then have no bias); with "same" padding this is the
            common modern variant.
        dropout: drop rate at the end of the contracting path. As in the released Caffe model, dropout acts on the
            output of the deepest two levels: the last level before the bottom (so the skip connection of that level
            sees it too) and the bottom level. 0 disables it.

    Shapes: ``forward`` maps (N, in_channels, H, W) to raw logits (N, num_classes, H − 2·border, W − 2·border), in
    train and eval mode alike (572² → 388², border 92, for the valid depth-4 net). Each of H and W must be a valid
    input size (:meth:`valid_input_size`).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        depth: int = 4,
        base_width: int = 64,
        padding: str = "valid",
        batch_norm: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        _check_geometry(depth, padding)
        self.args: dict[str, Any] = {
            "kind": "unet",
            "in_channels": in_channels,
            "num_classes": num_classes,
            "depth": depth,
            "base_width": base_width,
            "padding": padding,
            "batch_norm": batch_norm,
            "dropout": dropout,
        }
        self.depth, self.padding = depth, padding
        pad = 1 if padding == "same" else 0
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for width in widths:
            self.down.append(_double_conv(cin, width, pad, batch_norm))
            cin = width
        self.pool = nn.MaxPool2d(2, 2)
        self.dropout = nn.Dropout(dropout)
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.upconv.append(nn.ConvTranspose2d(2 * width, width, 2, stride=2))
            self.up.append(_double_conv(2 * width, width, pad, batch_norm))
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        _he_init(self)

    @property
    def stride(self) -> int:
        """Total down-sampling, 2**depth: tiles must be offset by multiples of it for exact translation equivariance."""
        return int(2**self.depth)

    @property
    def border(self) -> int:
        """Pixels lost on each side: 92 for the valid depth-4 net (6·stride − 4), 0 for "same" padding."""
        return 0 if self.padding == "same" else 6 * self.stride - 4

    def output_size(self, input_size: int) -> int:
        """Output edge for an input edge (see :func:`unet_output_size`)."""
        return unet_output_size(input_size, self.depth, self.padding)

    def input_size(self, output_size: int) -> int:
        """Input edge that gives exactly ``output_size`` (see :func:`unet_input_size`)."""
        return unet_input_size(output_size, self.depth, self.padding)

    def valid_input_size(self, size: int, round: str = "up") -> int:
        """Nearest valid input edge (see :func:`valid_input_size`)."""
        return valid_input_size(size, self.depth, self.padding, round)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise FovealError(f"U-Net takes a (N, C, H, W) batch, got a tensor of shape {tuple(x.shape)}")
        for size in x.shape[-2:]:
            self.output_size(int(size))
        skips = []
        for level, block in enumerate(self.down):
            if level > 0:
                x = self.pool(x)
            x = block(x)
            if level >= self.depth - 1:
                x = self.dropout(x)
            skips.append(x)
        skips.pop()
        for upconv, block in zip(self.upconv, self.up, strict=True):
            x = upconv(x)
            skip = _center_crop(skips.pop(), x.shape[-2], x.shape[-1])
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)


# ------------------------------------------------------------------------------------------------- backbone U-Net
ENCODERS: tuple[str, ...] = tuple(backbone_names())


class _DecoderBlock(nn.Module):
    """×2 nearest up-sampling, concatenation with the skip map (if any), two 3×3 conv + BN + ReLU."""

    def __init__(self, cin: int, skip: int, cout: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.convs = _double_conv(cin + skip, cout, 1, batch_norm=True)

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        x = self.up(x)
        return self.convs(x if skip is None else torch.cat([x, skip], dim=1))


class BackboneUNet(nn.Module):
    """A U-Net decoder over a backbone's feature maps at strides 2, 4, 8, 16 and 32.

    Each decoder stage up-samples ×2 with nearest-neighbour interpolation (no parameters, no checkerboard artefacts;
    the following 3×3 convs learn the interpolation), concatenates the encoder map of that stride and applies two
    padded 3×3 conv + BN + ReLU; the fifth stage brings the map back to the input's resolution without a skip, and a
    1×1 conv gives the logits.

    Args:
        encoder: "efficientnet_b0" … "efficientnet_b7", "efficientnet" (with ``encoder_args={"phi": φ}``),
            "resnet18", "resnet34", "resnet50", "resnet101", or an ``nn.Module`` of the backbone contract
            (``forward_features`` + ``feature_info`` at strides 2, 4, 8, 16, 32), used as it is; the ``args`` then
            record ``"module:<class>"`` and :func:`from_args` needs the module again.
        in_channels: input channels (the encoder's first conv takes them).
        num_classes: output channels K.
        decoder_channels: channels of the five decoder stages, from the deepest (stride 16) to full resolution.
        encoder_args: extra keyword arguments of the encoder's builder (e.g. ``{"drop_path": 0.1}``).

    Shapes: ``forward`` maps (N, in_channels, H, W), H and W multiples of 32, to raw logits (N, num_classes, H, W).
    """

    def __init__(
        self,
        encoder: str | nn.Module = "efficientnet_b0",
        in_channels: int = 3,
        num_classes: int = 2,
        decoder_channels: tuple[int, ...] | list[int] = (256, 128, 64, 32, 16),
        encoder_args: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        encoder_args = dict(encoder_args or {})
        self.args: dict[str, Any] = {
            "kind": "backbone_unet",
            "encoder": describe(encoder),
            "in_channels": in_channels,
            "num_classes": num_classes,
            "decoder_channels": list(decoder_channels),
            "encoder_args": encoder_args,
        }
        self.encoder = build_backbone(encoder, in_channels, **encoder_args)
        info = cast(Backbone, self.encoder).feature_info
        if [i.stride for i in info] != [2, 4, 8, 16, 32]:
            strides = [i.stride for i in info]
            raise FovealError(f"encoder '{describe(encoder)}' gives strides {strides}, expected 2, 4, 8, 16, 32")
        if len(decoder_channels) != len(info):
            raise FovealError(
                f"decoder_channels needs {len(info)} entries (one per stage), got {len(decoder_channels)}"
            )
        skips = [i.channels for i in reversed(info[:-1])] + [0]
        cin = info[-1].channels
        self.decoder = nn.ModuleList()
        for skip, cout in zip(skips, decoder_channels, strict=True):
            self.decoder.append(_DecoderBlock(cin, skip, cout))
            cin = cout
        self.head = nn.Conv2d(cin, num_classes, 1)
        _he_init(self.decoder)
        _he_init(self.head)

    stride = 32
    border = 0

    def output_size(self, input_size: int) -> int:
        """Output edge = input edge (a multiple of 32; otherwise FovealError naming the nearest valid sizes)."""
        below, above = _neighbours(input_size, self.stride, self.stride)
        if above != input_size:
            hint = _describe((below, above), self.stride, self.stride, "input size")
            raise FovealError(f"input size {input_size} does not fit a U-Net over a stride-32 encoder: {hint}")
        return input_size

    def input_size(self, output_size: int) -> int:
        """Input edge giving ``output_size``: the same (a multiple of 32)."""
        return self.output_size(output_size)

    def valid_input_size(self, size: int, round: str = "up") -> int:
        """The multiple of 32 nearest to ``size`` (rounded up, down or to the nearest)."""
        return _round_to_grid(size, self.stride, self.stride, round)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise FovealError(f"U-Net takes a (N, C, H, W) batch, got a tensor of shape {tuple(x.shape)}")
        for size in x.shape[-2:]:
            self.output_size(int(size))
        feats = cast(Backbone, self.encoder).forward_features(x)
        y = feats.pop()
        for block in self.decoder:
            y = block(y, feats.pop() if feats else None)
        return self.head(y)


def from_args(args: dict[str, Any], encoder: nn.Module | None = None) -> nn.Module:
    """Rebuild a :class:`UNet` or :class:`BackboneUNet` from its ``args`` dict (as stored in a checkpoint);
    ``encoder``: the module again for a model that was built around a user's backbone module."""
    args = dict(args)
    kind = args.pop("kind", "unet")
    if kind == "unet":
        return UNet(**args)
    if kind == "backbone_unet":
        return BackboneUNet(**(args if encoder is None else {**args, "encoder": encoder}))
    raise FovealError(f"unknown U-Net kind '{kind}': expected 'unet' or 'backbone_unet'")
