"""Small building blocks shared by the models: conv + BN + activation, TF-style "same" padding, stochastic depth."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding: the output is ceil(input / stride), extra padding at right/bottom.

    The reference EfficientNet (and every TF-ported checkpoint) uses it; it differs from symmetric padding only for
    strided convolutions on even input sizes.
    """

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.kernel_size
        sh, sw = self.stride
        dh, dw = self.dilation
        ph = max((math.ceil(ih / sh) - 1) * sh + (kh - 1) * dh + 1 - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + (kw - 1) * dw + 1 - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


def make_conv(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False, padding: str = "symmetric"
) -> nn.Conv2d:
    """A k×k conv with ``padding`` "symmetric" (k // 2 on every side) or "same" (TensorFlow SAME)."""
    if padding == "same":
        return Conv2dSame(cin, cout, kernel, stride, padding=0, groups=groups, bias=bias)
    if padding != "symmetric":
        raise ValueError(f"padding must be 'symmetric' or 'same', got {padding!r}")
    return nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=bias)


def records_grad(*tensors: Tensor) -> bool:
    """Whether autograd records an operation on ``tensors``; when it does not, temporaries may be reused in place.

    Inference is dominated by memory traffic on CPU (a fresh large tensor costs page faults), so blocks that own an
    intermediate result overwrite it when no backward pass will need it.
    """
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class SiLU(nn.SiLU):
    """swish, x · sigmoid(x): in place when autograd is not recording, out of place when it is.

    An in-place SiLU under autograd must first copy its input for the backward pass, which costs more than writing a
    new output; without autograd (inference) in place saves the allocation. Use it where the input is a temporary.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(x, inplace=not records_grad(x))


class ConvBNAct(nn.Module):
    """conv → BatchNorm → activation (SiLU by default, none when ``act=False``)."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        padding: str = "symmetric",
        bn_momentum: float = 0.01,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        self.conv = make_conv(cin, cout, kernel, stride, groups, padding=padding)
        self.bn: nn.Module = nn.BatchNorm2d(cout, eps=bn_eps, momentum=bn_momentum)
        self.act: nn.Module = SiLU() if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: global average → 1×1 reduce → SiLU → 1×1 expand → sigmoid gate.

    With ``inplace=True`` the gate is applied to the input tensor itself when autograd is not recording (for callers
    whose input is a temporary, like :class:`~foveal.models.efficientnet.MBConv`).
    """

    def __init__(self, channels: int, reduced: int, inplace: bool = False) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.inplace = inplace

    def forward(self, x: Tensor) -> Tensor:
        # The 1×1 convs see a 1×1 map, so they are matrix products on (N, C): the same maths as conv2d with the same
        # parameters, without a convolution call's overhead (several times faster on CPU).
        s = spatial_mean(x)
        s = F.silu(F.linear(s, self.reduce.weight.flatten(1), self.reduce.bias))
        gate = F.linear(s, self.expand.weight.flatten(1), self.expand.bias).sigmoid()[:, :, None, None]
        return x.mul_(gate) if self.inplace and not records_grad(x, gate) else x * gate


def spatial_mean(x: Tensor) -> Tensor:
    """(N, C, H, W) → (N, C), the mean over H and W (the squeeze of squeeze-and-excitation).

    A bf16 channels-last map on the CPU is averaged as a matrix product, ones (N, 1, H·W) × the map viewed as
    (N, H·W, C), which accumulates in fp32 on the bf16 matrix units: 2–8× faster than ``mean`` there (whose bf16
    reduction is slower than fp32's), the same result up to bf16 rounding of the sum.
    """
    n, c, h, w = x.shape
    if x.dtype != torch.bfloat16 or x.device.type != "cpu" or not x.is_contiguous(memory_format=torch.channels_last):
        return x.mean((2, 3))
    ones = x.new_ones(n, 1, h * w)
    return torch.bmm(ones, x.permute(0, 2, 3, 1).reshape(n, h * w, c)).squeeze(1).div_(h * w)


def drop_path(x: Tensor, drop_prob: float, training: bool) -> Tensor:
    """Stochastic depth ("drop connect"): zero whole samples of a residual branch, rescale the rest.

    Args:
        x: (N, C, H, W) output of the residual branch.
        drop_prob: probability of dropping a sample's branch (1 − survival probability).
    """
    if drop_prob <= 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    if keep <= 0.0:
        return torch.zeros_like(x)
    mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask.div_(keep)


@torch.no_grad()
def fuse_conv_bn(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm of a ``ConvBNAct`` into its conv, in place, for faster inference.

    Only valid for inference: the folded model has no batch statistics to update. Returns ``module``.
    """
    for m in module.modules():
        if isinstance(m, ConvBNAct) and isinstance(m.bn, nn.BatchNorm2d):
            bn, conv = m.bn, m.conv
            assert bn.running_var is not None and bn.running_mean is not None
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            fused = make_conv(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size[0],
                conv.stride[0],
                conv.groups,
                bias=True,
                padding="same" if isinstance(conv, Conv2dSame) else "symmetric",
            ).to(conv.weight.device, conv.weight.dtype)
            fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            assert fused.bias is not None
            fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
            m.conv = fused
            m.bn = nn.Identity()
    return module
