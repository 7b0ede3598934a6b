"""The network on a streamed image: mirror-padded input bands, overlap-tile logits one band of tile rows at a time,
and their class map."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from foveal.errors import FovealError
from foveal.inference.stream.sources import Source
from foveal.inference.tiling import TileGeometry, check_tile, net_device, reflect_indices


def _input_band(source: Source, norm: Callable[[np.ndarray], np.ndarray], geom: TileGeometry, row: int) -> Tensor:
    """The mirror-padded input rows of tile row ``row``: (C, input tile, padded width) float32."""
    top, bottom, left, right = geom.pads
    rows = reflect_indices(geom.height, top, bottom)[row * geom.step : row * geom.step + geom.input_size]
    lo, hi = int(rows.min()), int(rows.max()) + 1
    x = torch.from_numpy(np.ascontiguousarray(norm(source.read(lo, hi)).transpose(2, 0, 1)))
    cols = reflect_indices(geom.width, left, right)
    return x.index_select(1, rows - lo).index_select(2, cols)


def logit_bands(
    net: Callable[[Tensor], Tensor],
    source: Source,
    norm: Callable[[np.ndarray], np.ndarray],
    geom: TileGeometry,
    batch: int = 2,
    progress: bool = False,
) -> Iterator[tuple[int, Tensor]]:
    """Overlap-tile logits of ``source``, one band of tile rows at a time.

    The tiles and their batches are those of :func:`~foveal.inference.tiling.predict_tiled` on the whole image (tile
    row by tile row, ``batch`` consecutive tiles per forward pass, across row ends), so every logit is the one the
    whole-image path computes. At most two input bands and two output bands are held.

    Yields:
        (y0, logits) with logits (K, h, W) float, rows [y0, y0 + h) of the image, h = step except at the bottom.
    """
    if batch < 1:
        raise FovealError(f"batch must be ≥ 1, got {batch}")
    check_tile(net, geom)
    device = net_device(net, torch.device("cpu"))
    jobs = [(i, j) for i in range(geom.rows) for j in range(geom.cols)]
    size, step, ctx = geom.input_size, geom.step, geom.context
    inputs: dict[int, Tensor] = {}
    outputs: dict[int, Tensor] = {}
    buffer = torch.empty(min(batch, len(jobs)), source.channels, size, size, device=device)
    bar = tqdm(total=len(jobs), unit="tile", disable=not progress, desc="tiles")
    next_row = 0
    try:
        with torch.no_grad():
            for start in range(0, len(jobs), batch):
                chunk = jobs[start : start + batch]
                for b, (i, j) in enumerate(chunk):
                    if i not in inputs:
                        inputs[i] = _input_band(source, norm, geom, i)
                    buffer[b].copy_(inputs[i][:, :, j * step : j * step + size])
                pred = net(buffer[: len(chunk)])
                _check_logits(pred, geom)
                for b, (i, j) in enumerate(chunk):
                    h, w, x0 = min(step, geom.height - i * step), min(step, geom.width - j * step), j * step
                    if i not in outputs:
                        outputs[i] = torch.empty(pred.shape[1], h, geom.width, dtype=pred.dtype)
                    outputs[i][:, :, x0 : x0 + w] = pred[b, :, ctx : ctx + h, ctx : ctx + w].cpu()
                bar.update(len(chunk))
                done = chunk[-1][0] if chunk[-1][1] == geom.cols - 1 else chunk[-1][0] - 1
                while next_row <= done:
                    inputs.pop(next_row, None)
                    yield next_row * step, outputs.pop(next_row)
                    next_row += 1
    finally:
        bar.close()


def class_map(logits: Tensor) -> np.ndarray:
    """``logits.argmax(0)`` of (K, h, W) logits as an (h, W) int64 array, computed class by class (the reduction over
    a short first axis is slow): the first largest class wins ties, and a NaN counts as largest, as in ``argmax``."""
    best, index = logits[0], torch.zeros(logits.shape[1:], dtype=torch.int64)
    for k in range(1, logits.shape[0]):
        better = (logits[k] > best) | (logits[k].isnan() & ~best.isnan())
        best = torch.where(better, logits[k], best)
        index[better] = k
    return index.numpy()


def _check_logits(pred: Tensor, geom: TileGeometry) -> None:
    expected = geom.tile + 2 * geom.context
    if pred.ndim != 4 or tuple(pred.shape[-2:]) != (expected, expected):
        raise FovealError(
            f"the network maps {geom.input_size}² input tiles to {tuple(pred.shape)}, but tile {geom.tile} with border "
            f"{geom.border} and context {geom.context} needs {expected}² outputs: check tile, border and context"
        )
