"""Winograd F(4×4, 3×3) convolution for CPU inference (Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks", CVPR 2016).

A 3×3, stride-1 convolution computes each 4×4 output tile from a 6×6 input tile with 36 multiplications per
(input, output) channel pair instead of 144: input tiles and kernels are moved into the transform domain
(V = Bᵀ d B, U = G g Gᵀ), multiplied there as 36 independent matrix products over channels (M = V · U), and brought
back (Y = Aᵀ M A). Here the two tile transforms are single matrix products with the Kronecker matrices Bᵀ⊗Bᵀ
(36 × 36) and Aᵀ⊗Aᵀ (16 × 36), the kernels are transformed once, and the 36 channel products are one batched matrix
multiply, so every step runs in a BLAS / oneDNN kernel.

On this kind of CPU (``bench/winograd_speed.py``) a single 256 → 256 convolution at 32² … 100² runs 1.25–1.6×
faster than PyTorch's direct (oneDNN) convolution and the 256 → 9·91 class output of a RetinaNet head ≈ 2×; with
fewer than 128 channels the transforms cost more than they save. Whole networks: the paper's U-Net 1.43×,
RetinaNet R50-FPN (with its subnets' pyramid levels batched, :meth:`WinogradConv2d.forward_levels`) 1.3–1.4×
(``bench/retinanet_speed.py``). The transform points (0, ±1, ±2, ∞) amplify rounding: results differ from the direct
convolution by ≈ 1e-5 of the output's range in fp32, so this is used for fp32 only (bf16 would lose too much) and only
where nothing needs a gradient.

Large temporary tensors are allocated on every call; with glibc's default malloc these are returned to the system and
page-faulted back each time, which costs more than the arithmetic saves. The ``foveal`` command keeps freed memory
(:func:`foveal.engine.allocator.keep_freed_memory`); a program using the library should call it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# F(4, 3) with the points 0, ±1, ±2, ∞ (the paper's eq. 9–11 family): y = Aᵀ[(G g) ⊙ (Bᵀ d)] for d of length 6
_BT = torch.tensor(
    [
        [4, 0, -5, 0, 1, 0],
        [0, -4, -4, 1, 1, 0],
        [0, 4, -4, -1, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 2, -1, -2, 1, 0],
        [0, 4, 0, -5, 0, 1],
    ],
    dtype=torch.float64,
)
_G = torch.tensor(
    [
        [1 / 4, 0, 0],
        [-1 / 6, -1 / 6, -1 / 6],
        [-1 / 6, 1 / 6, -1 / 6],
        [1 / 24, 1 / 12, 1 / 6],
        [1 / 24, -1 / 12, 1 / 6],
        [0, 0, 1],
    ],
    dtype=torch.float64,
)
_AT = torch.tensor(
    [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], dtype=torch.float64
)
TILE = 4  # output tile side
MIN_CHANNELS = 128  # below this the transforms cost more than the 4× fewer multiplications save


def transform_weight(weight: Tensor) -> Tensor:
    """(C_out, C_in, 3, 3) kernels → (36, C_in, C_out) in the transform domain, U = G g Gᵀ (computed in float64)."""
    u = torch.einsum("aj,oijk,bk->abio", _G, weight.detach().double().cpu(), _G)
    return u.reshape(36, weight.shape[1], weight.shape[0]).to(torch.float32).contiguous()


def winograd_conv2d(x: Tensor, u: Tensor, bias: Tensor | None, padding: tuple[int, int]) -> Tensor:
    """A 3×3, stride-1 convolution of ``x`` (N, C_in, H, W) with kernels ``u`` from :func:`transform_weight`.

    Returns (N, C_out, H + 2·ph − 2, W + 2·pw − 2) in channels-last memory, equal to
    ``F.conv2d(x, weight, bias, padding=padding)`` up to fp32 rounding.
    """
    return winograd_conv2d_levels([x], u, bias, padding)[0]


@torch.no_grad()
def winograd_conv2d_levels(
    xs: Sequence[Tensor], u: Tensor, bias: Tensor | None, padding: tuple[int, int]
) -> list[Tensor]:
    """:func:`winograd_conv2d` of several inputs of any sizes (e.g. the levels of a feature pyramid) with the same
    kernels: the tiles of all of them go through one set of matrix products, so the transformed kernels are read
    once and small inputs cost little. Inference only (no gradient)."""
    ph, pw = padding
    c, cout = u.shape[1], u.shape[2]
    shapes, offsets = [], [0]
    for x in xs:
        n, _, h, w = x.shape
        ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
        th, tw = -(-ho // TILE), -(-wo // TILE)
        shapes.append((n, h, w, ho, wo, th, tw))
        offsets.append(offsets[-1] + n * th * tw)
    d = xs[0].new_empty(36, offsets[-1], c)
    for x, (n, h, w, _, _, th, tw), start, stop in zip(xs, shapes, offsets[:-1], offsets[1:], strict=True):
        # zero-padded NHWC input covering every 6×6 tile (tiles overlap by 2); the interior is the image
        xp = x.new_zeros(n, TILE * th + 2, TILE * tw + 2, c)
        xp[:, ph : ph + h, pw : pw + w] = x.permute(0, 2, 3, 1)
        s = xp.stride()
        tiles = xp.as_strided((6, 6, n, th, tw, c), (s[1], s[2], s[0], TILE * s[1], TILE * s[2], s[3]))
        d[:, start:stop].view(6, 6, n, th, tw, c).copy_(tiles)  # element (i, j) of every tile
    kb, ka = _kron_matrices(d.device)
    v = (kb @ d.view(36, -1)).view(36, -1, c)
    m = torch.bmm(v, u)  # (36, tiles, C_out)
    y = (ka @ m.view(36, -1)).view(TILE, TILE, -1, cout)
    outs = []
    for (n, _, _, ho, wo, th, tw), start, stop in zip(shapes, offsets[:-1], offsets[1:], strict=True):
        out = xs[0].new_empty(n, th, TILE, tw, TILE, cout)
        tile_out = y[:, :, start:stop].view(TILE, TILE, n, th, tw, cout).permute(2, 3, 0, 4, 1, 5)
        if bias is None:
            out.copy_(tile_out)
        else:
            torch.add(tile_out, bias, out=out)
        nhwc = out.view(n, TILE * th, TILE * tw, cout)
        if (TILE * th, TILE * tw) != (ho, wo):
            nhwc = nhwc[:, :ho, :wo].contiguous()
        outs.append(nhwc.permute(0, 3, 1, 2))
    return outs


_KRON: dict[torch.device, tuple[Tensor, Tensor]] = {}


def _kron_matrices(device: torch.device) -> tuple[Tensor, Tensor]:
    """Bᵀ⊗Bᵀ (36 × 36) and Aᵀ⊗Aᵀ (16 × 36) as fp32 on ``device``: tile transforms as one matrix product each."""
    if device not in _KRON:
        _KRON[device] = (
            torch.kron(_BT, _BT).to(device, torch.float32),
            torch.kron(_AT, _AT).to(device, torch.float32),
        )
    return _KRON[device]


def eligible(conv: nn.Module, min_channels: int = MIN_CHANNELS) -> TypeGuard[nn.Conv2d]:
    """Whether ``conv`` is a plain 3×3, stride-1, undilated, ungrouped ``nn.Conv2d`` with numeric zero padding of at
    most 2 and at least ``min_channels`` input and output channels."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
        and all(0 <= p <= 2 for p in conv.padding)
        and min(conv.in_channels, conv.out_channels) >= min_channels
    )


class WinogradConv2d(nn.Module):
    """Inference stand-in for a 3×3 stride-1 ``nn.Conv2d`` (see :func:`eligible`) computed with F(4×4, 3×3).

    Keeps the original weight: inputs that are not fp32 on the CPU, or that need a gradient (Grad-CAM), go through
    ``F.conv2d`` unchanged. Its weights are buffers, not parameters: it belongs to an inference copy of a model.
    """

    weight: Tensor
    bias: Tensor | None
    u: Tensor

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if not eligible(conv, min_channels=1):
            raise ValueError(f"Winograd F(4x4, 3x3) needs a 3x3, stride-1, ungrouped conv, got {conv}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.padding = (int(conv.padding[0]), int(conv.padding[1]))
        self.register_buffer("weight", conv.weight.detach().clone())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        # derived from weight: not part of the state dict, so the copy's keys stay those of the conv it replaced
        self.register_buffer("u", transform_weight(conv.weight).to(conv.weight.device), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_levels([x])[0]

    def forward_levels(self, xs: Sequence[Tensor]) -> list[Tensor]:
        """The convolution of each of ``xs``; the ones that take the Winograd path share one set of products."""
        outs: list[Tensor | None] = [None] * len(xs)
        batch = []
        for i, x in enumerate(xs):
            if self._winograd_applies(x):
                batch.append(i)
            else:
                bias = None if self.bias is None else self.bias.to(x.dtype)
                outs[i] = F.conv2d(x, self.weight.to(x.dtype), bias, padding=self.padding)
        if batch:
            done = winograd_conv2d_levels([xs[i] for i in batch], self.u, self.bias, self.padding)
            for i, y in zip(batch, done, strict=True):
                outs[i] = y
        return [y for y in outs if y is not None]

    def _winograd_applies(self, x: Tensor) -> bool:
        ph, pw = self.padding
        return (
            x.dtype == torch.float32
            and x.device.type == "cpu"
            and self.weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and x.requires_grad)
            and x.ndim == 4
            and x.shape[0] > 0
            and min(x.shape[-2] + 2 * ph, x.shape[-1] + 2 * pw) >= 3  # else F.conv2d's own error (or empty result)
        )

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size=(3, 3), padding={self.padding}, F(4x4, 3x3)"


def use_winograd(model: nn.Module, min_channels: int = MIN_CHANNELS) -> int:
    """Replace every eligible ``nn.Conv2d`` of ``model`` (in place) by a :class:`WinogradConv2d`; returns how many.

    Meant for an eval-mode inference copy (e.g. after BatchNorm folding): the replacements hold no parameters.
    """
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if eligible(child, min_channels):
                setattr(parent, name, WinogradConv2d(child))
                count += 1
    return count
