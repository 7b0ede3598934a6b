"""Overlap-tile inference (Ronneberger et al., MICCAI 2015, Fig. 2): predict an image of any size tile by tile.

Each output tile of edge ``tile`` needs its input tile with ``border`` pixels of context on every side (92 for the
paper's valid depth-4 U-Net); context missing at the image border is extrapolated by mirroring the image. Tiles are
offset by multiples of the network's ``stride`` (2**depth), so the network is exactly translation-equivariant across
them and stitching gives what one pass over the whole mirror-padded image gives (:func:`whole_image_reference`).

Geometry along one axis (the same for rows and columns), with ``margin = border + context``::

    step        = tile rounded down to a multiple of stride   (516 → 512; 388 → 384)
    input tile  = tile + 2·margin                              (516 → 700 for the valid depth-4 U-Net)
    tile i      : input rows [i·step − margin, i·step − margin + input tile) of the image,
                  output rows [i·step, i·step + step)

A valid U-Net's output edges (16k − 124) are never multiples of 16, so each tile's output is cropped to the step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

from foveal.errors import FovealError

MAX_TILE_INPUT = 4096
"""Largest input tile edge (px): the valid U-Net's first feature maps of a 4096² tile take 4 GB each in fp32."""


@dataclass(frozen=True)
class TileGeometry:
    """Where the tiles of one image lie.

    Args:
        height: image height H.
        width: image width W.
        tile: edge of the network's output for one tile, context excluded (516 → step 512 for the valid U-Net).
        border: pixels the network loses on each side (92 for the valid depth-4 U-Net, 0 for a padded net).
        stride: the network's total down-sampling (2**depth); tile offsets are multiples of it.
        context: extra input margin on each side, cropped away from the network's output (for padded nets, so that
            their zero padding does not reach the kept pixels).
    """

    height: int
    width: int
    tile: int
    border: int
    stride: int
    context: int = 0

    def __post_init__(self) -> None:
        if self.height < 1 or self.width < 1:
            raise FovealError(f"cannot tile an empty image of size {self.height}×{self.width}")
        if self.border < 0 or self.context < 0:
            raise FovealError(f"border and context must be ≥ 0, got border={self.border}, context={self.context}")
        if self.stride < 1:
            raise FovealError(f"stride must be ≥ 1, got {self.stride}")
        if self.tile < self.stride:
            raise FovealError(f"tile {self.tile} is smaller than the network's stride {self.stride}: use a larger tile")
        if self.input_size > MAX_TILE_INPUT:
            raise FovealError(
                f"tile {self.tile} needs input tiles of {self.input_size} px a side, over the {MAX_TILE_INPUT} px "
                "foveal tiles at (one such tile's activations alone fill tens of GB): use a smaller tile (516 or 388 "
                "for the paper's U-Net); results do not depend on the tile"
            )

    @property
    def step(self) -> int:
        """Distance between tile origins and edge of the output kept per tile: ``tile`` rounded down to the stride."""
        return self.tile // self.stride * self.stride

    @property
    def margin(self) -> int:
        """Input pixels before a tile's first output pixel: ``border + context``."""
        return self.border + self.context

    @property
    def input_size(self) -> int:
        """Edge of one input tile: ``tile + 2·margin``."""
        return self.tile + 2 * self.margin

    @property
    def rows(self) -> int:
        return -(-self.height // self.step)

    @property
    def cols(self) -> int:
        return -(-self.width // self.step)

    @property
    def count(self) -> int:
        """Tiles per image."""
        return self.rows * self.cols

    @property
    def padded_height(self) -> int:
        return (self.rows - 1) * self.step + self.input_size

    @property
    def padded_width(self) -> int:
        return (self.cols - 1) * self.step + self.input_size

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """Mirror padding (top, bottom, left, right) that makes every input tile lie inside the padded image."""
        m = self.margin
        return m, self.padded_height - m - self.height, m, self.padded_width - m - self.width

    def origins(self) -> Iterator[tuple[int, int]]:
        """Output origin (y, x) of every tile, row by row; the input tile starts at (y, x) in the padded image."""
        for i in range(self.rows):
            for j in range(self.cols):
                yield i * self.step, j * self.step


def reflect_indices(size: int, before: int, after: int, device: torch.device | str | None = None) -> Tensor:
    """Indices into an axis of ``size`` that mirror it by ``before`` / ``after`` elements (any amount).

    Reflection without repeating the edge element (numpy's ``mode="reflect"``), repeated as often as needed: the
    extension is periodic with period 2·(size − 1). A single element is repeated.

    Returns:
        int64 tensor of shape (before + size + after,).
    """
    idx = torch.arange(-before, size + after, device=device)
    if size == 1:
        return torch.zeros_like(idx)
    period = 2 * (size - 1)
    idx = idx.remainder(period)
    return torch.where(idx < size, idx, period - idx)


def reflect_pad(x: Tensor, pad: int | tuple[int, int, int, int]) -> Tensor:
    """Mirror-pad the last two axes of ``x`` (any leading shape) by any amounts, larger than the image too.

    Args:
        x: (..., H, W) tensor.
        pad: pixels on every side, or (top, bottom, left, right).

    Returns:
        Tensor of shape (..., H + top + bottom, W + left + right), mirrored as numpy's ``mode="reflect"``.
    """
    top, bottom, left, right = (pad,) * 4 if isinstance(pad, int) else pad
    h, w = x.shape[-2:]
    rows = reflect_indices(h, top, bottom, x.device)
    cols = reflect_indices(w, left, right, x.device)
    return x.index_select(-2, rows).index_select(-1, cols)


def _as_batch(image: Tensor) -> Tensor:
    if image.ndim not in (3, 4):
        raise FovealError(
            f"expected an image (C, H, W) or a batch (N, C, H, W), got a tensor of shape {tuple(image.shape)}"
        )
    if not image.is_floating_point():
        raise FovealError(f"expected a floating-point image, got dtype {image.dtype}: convert it with .float()")
    return image.unsqueeze(0) if image.ndim == 3 else image


def check_tile(net: Callable[[Tensor], Tensor], geom: TileGeometry) -> None:
    """Check the input tile of networks that know their valid input sizes (``valid_input_size``); name neighbours."""
    valid = getattr(net, "valid_input_size", None)
    if valid is None:
        return
    size = geom.input_size
    if valid(size, round="nearest") == size:
        return
    extra = 2 * geom.margin
    up = valid(size, round="up") - extra
    try:
        down: int | None = valid(size, round="down") - extra
    except FovealError:
        down = None
    nearest = f"tiles are {down} and {up}" if down is not None and down >= geom.stride else f"tile is {up}"
    raise FovealError(
        f"tile {geom.tile} needs an input of {size} px (tile + 2·(border {geom.border} + context {geom.context})), "
        f"which the network cannot take: the nearest valid {nearest}"
    )


def net_device(net: Callable[[Tensor], Tensor], default: torch.device) -> torch.device:
    """Device of ``net``'s first parameter, else ``default``."""
    if isinstance(net, nn.Module):
        param = next(net.parameters(), None)
        if param is not None:
            return param.device
    return default


def _net_placement(net: Callable[[Tensor], Tensor], image: Tensor) -> tuple[torch.device, torch.dtype]:
    """Device and input dtype of ``net``: those of its first floating-point parameter, else the image's."""
    if isinstance(net, nn.Module):
        param = next((p for p in net.parameters() if p.is_floating_point()), None)
        if param is not None:
            return param.device, param.dtype
    return image.device, image.dtype


def predict_tiled(
    net: Callable[[Tensor], Tensor],
    image: Tensor,
    tile: int,
    *,
    border: int,
    stride: int,
    context: int = 0,
    batch: int = 4,
    progress: bool = False,
    out: Tensor | None = None,
) -> Tensor:
    """Overlap-tile prediction of an image of any size; equals one pass over the whole mirror-padded image.

    The network sees input tiles of ``tile + 2·(border + context)`` px, cut from the image mirror-padded by
    ``border + context`` (more at the bottom / right so the last tile fits), ``batch`` tiles at a time. Its output,
    ``tile + 2·context`` px, is cropped by ``context`` on each side, and the first ``step`` px (``tile`` rounded down
    to a multiple of ``stride``) are written into the result; tile origins are multiples of ``step``. Memory beyond the
    image and the result is one batch of tiles. Runs without autograd; the caller puts ``net`` in eval mode (dropout in
    train mode makes tiles disagree). Tiles go to the device of ``net``'s parameters (or the image's), the result stays
    on the image's device in at least fp32 (a bf16 / fp16 network's logits are widened). The image is padded on the
    network's device, so tiles are cut there and never cross the bus.

    Args:
        net: maps (B, C, I, I) to logits (B, K, tile + 2·context, tile + 2·context), I = tile + 2·(border + context).
            A :class:`~foveal.models.unet.UNet` or any callable; one that has ``valid_input_size`` gets its tile
            size checked up front.
        image: (C, H, W) or (N, C, H, W) float tensor, any H and W.
        tile: output tile edge, context excluded (a valid output size of the network: 388 or 516 for the valid
            depth-4 U-Net; for a padded net, tile + 2·context must be a valid input size).
        border: pixels the network loses per side (``net.border``: 92 for the valid depth-4 U-Net, 0 when padded).
        stride: the network's total down-sampling (``net.stride`` = 2**depth).
        context: extra margin per side given to the network and cropped from its output (padded nets).
        batch: tiles per forward pass.
        progress: show a progress bar over tiles (tqdm).
        out: optional preallocated result (N, K, H, W) to write into.

    Returns:
        (N, K, H, W) logits (N = 1 for a (C, H, W) image), dtype of the network's output.
    """
    x = _as_batch(image)
    if batch < 1:
        raise FovealError(f"batch must be ≥ 1, got {batch}")
    n_images, channels, height, width = x.shape
    geom = TileGeometry(height, width, tile, border, stride, context)
    check_tile(net, geom)
    padded, dtype = _padded_on_net(net, x, geom)
    jobs = [(n, y, xo) for n in range(n_images) for y, xo in geom.origins()]
    size = geom.input_size
    buffer = padded.new_empty(min(batch, len(jobs)), channels, size, size, dtype=dtype)
    bar = tqdm(total=len(jobs), unit="tile", disable=not progress, desc="tiles")
    with torch.no_grad():
        for first, chunk, pred in _tile_outputs(net, padded, jobs, buffer, batch):
            if out is None or first:
                out = _check_output(pred, out, geom, n_images, x.device)
            _paste(out, pred, chunk, geom)
            bar.update(len(chunk))
    bar.close()
    assert out is not None
    return out


def _padded_on_net(net: Callable[[Tensor], Tensor], x: Tensor, geom: TileGeometry) -> tuple[Tensor, torch.dtype]:
    """(N, C, H', W') ``x`` mirror-padded by ``geom.pads`` on ``net``'s device (in ``x``'s dtype), and the input
    dtype of ``net`` (its tiles are cast to it)."""
    device, dtype = _net_placement(net, x)
    return reflect_pad(x.to(device, non_blocking=device.type == "cuda"), geom.pads), dtype


def _tile_outputs(
    net: Callable[[Tensor], Tensor], padded: Tensor, jobs: list[tuple[int, int, int]], buffer: Tensor, batch: int
) -> Iterator[tuple[bool, list[tuple[int, int, int]], Tensor]]:
    """The network's output for ``batch`` tiles at a time, each tile (image n, top y, left x) of the ``padded``
    (N, C, H', W') images copied into ``buffer`` (B, C, I, I) first.

    Yields:
        Whether this is the first batch, the batch's tiles, and the network's output for them (B', K, O, O).
    """
    size = buffer.shape[-1]
    for start in range(0, len(jobs), batch):
        chunk = jobs[start : start + batch]
        for b, (n, y, xo) in enumerate(chunk):
            buffer[b].copy_(padded[n, :, y : y + size, xo : xo + size])
        yield start == 0, chunk, net(buffer[: len(chunk)])


def _paste(out: Tensor, pred: Tensor, chunk: list[tuple[int, int, int]], geom: TileGeometry) -> None:
    """Write the first ``step`` px (context cropped) of each tile's prediction (B, K, O, O) into ``out`` (N, K, H, W)
    at the tile's origin (image n, top y, left x), cut at the image's edge."""
    ctx = geom.context
    for b, (n, y, xo) in enumerate(chunk):
        h, w = min(geom.step, geom.height - y), min(geom.step, geom.width - xo)
        out[n, :, y : y + h, xo : xo + w] = pred[b, :, ctx : ctx + h, ctx : ctx + w]


def _check_output(pred: Tensor, out: Tensor | None, geom: TileGeometry, n_images: int, device: torch.device) -> Tensor:
    """Check the first batch's output against the geometry; allocate the result unless the caller gave one."""
    expected = geom.tile + 2 * geom.context
    if pred.ndim != 4 or tuple(pred.shape[-2:]) != (expected, expected):
        raise FovealError(
            f"the network maps {geom.input_size}² input tiles to {tuple(pred.shape)}, but tile {geom.tile} with border "
            f"{geom.border} and context {geom.context} needs {expected}² outputs: check tile, border and context"
        )
    shape = (n_images, pred.shape[1], geom.height, geom.width)
    if out is None:
        return torch.empty(shape, dtype=torch.promote_types(pred.dtype, torch.float32), device=device)
    if tuple(out.shape) != shape:
        raise FovealError(f"out has shape {tuple(out.shape)}, the result needs {shape}")
    return out


def whole_image_reference(
    net: Callable[[Tensor], Tensor], image: Tensor, tile: int, *, border: int, stride: int, context: int = 0
) -> Tensor:
    """One pass of ``net`` over the whole image, mirror-padded exactly as :func:`predict_tiled` pads it, cropped.

    What overlap-tile inference must reproduce (it is exact when tile origins respect the stride); memory grows with
    the image, so use it to check, not to predict large images.

    Returns:
        (N, K, H, W) logits for a (C, H, W) or (N, C, H, W) image.
    """
    x = _as_batch(image)
    geom = TileGeometry(x.shape[-2], x.shape[-1], tile, border, stride, context)
    with torch.no_grad():
        pred = net(reflect_pad(x, geom.pads))
    return pred[..., context : context + geom.height, context : context + geom.width]
