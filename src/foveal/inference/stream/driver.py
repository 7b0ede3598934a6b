"""Segmenting an image of any size: open it, compute its normalisation, run the network band by band, and write the
class map or the instance labels (and optionally the probabilities) tile by tile."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from foveal.data.seg_io import convert_hint
from foveal.errors import FovealError
from foveal.inference.stream.bands import class_map, logit_bands
from foveal.inference.stream.seams import SeamLabeler, expand_bands
from foveal.inference.stream.sources import Source, SourceError, open_source
from foveal.inference.stream.statistics import normalizer
from foveal.inference.stream.writers import OUTPUT_TILE, BandWriter, output_format, write_labels_streaming
from foveal.inference.tiling import TileGeometry


@dataclass(frozen=True)
class StreamResult:
    """What :func:`segment_large` wrote: the image size, the number of objects (instances, or classes present), the
    foreground fraction, and the paths of the label image and of the probability map (None when not asked)."""

    height: int
    width: int
    objects: int
    foreground: float
    labels: Path
    probabilities: Path | None


class _Probabilities:
    """Soft-max probabilities (H, W, K) float32 of the logit bands, written when a path is given."""

    def __init__(self, dst: str | Path | None, shape: tuple[int, int], tile: int) -> None:
        self.dst, self.shape, self.tile = dst, shape, tile
        self.writer: BandWriter | None = None

    def write(self, logits: Tensor) -> None:
        if self.dst is None:
            return
        if self.writer is None:
            self.writer = BandWriter(self.dst, (*self.shape, int(logits.shape[0])), np.float32, self.tile)
        self.writer.write(logits.float().softmax(0).permute(1, 2, 0).numpy())

    def close(self) -> Path | None:
        return self.writer.close() if self.writer is not None else None

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def segment_large(
    model: nn.Module,
    src: str | Path | np.ndarray | Any,
    dst: str | Path,
    *,
    tile: int,
    instances: bool = True,
    normalize: str = "percentile",
    channels: int | None = None,
    min_size: int = 8,
    expand: int = 0,
    batch: int = 2,
    probabilities: str | Path | None = None,
    progress: bool = False,
    out_tile: int = OUTPUT_TILE,
    tmp_dir: str | Path | None = None,
) -> StreamResult:
    """Segment an image of any size without holding it: read tiles, predict, write labels tile by tile.

    The labels equal those of the whole-image path (:func:`foveal.tasks.segment.predict_logits`, arg-max, and
    :func:`foveal.data.instances.instances_from_classes` with 4-connectivity, ``min_size``, ``expand``) bit for bit.

    Args:
        model: a segmentation network in eval mode with ``border`` and ``stride`` (a U-Net of :mod:`foveal.models`).
        src: TIFF / BigTIFF path (its first series, full-resolution level), zarr store path, or an array-like
            (H, W), (H, W, C) or (C, H, W) with numpy slicing (zarr, numpy memmap).
        dst: the label image, .tif / .tiff (tiled BigTIFF) or .zarr.
        tile: output tile edge of the network (its eval tile).
        instances: label instances (connected components of the foreground); False writes the class map.
        normalize: the checkpoint's normalisation (``percentile``, ``dtype``, ``minmax``), computed over the image.
        channels: the channel count the model takes (checked), None to accept the image's.
        min_size: instances of fewer pixels are dropped.
        expand: instances are grown by this many pixels into the background.
        batch: tiles per forward pass.
        probabilities: optional path (.tif / .zarr) for the soft-max probabilities (H, W, K) float32.
        progress: show a progress bar in tiles.
        out_tile: tile edge (TIFF) or chunk edge (zarr) of the written files.
        tmp_dir: folder for the temporary one-bit foreground file (default: the system's).

    Returns:
        A :class:`StreamResult`.
    """
    source = _open_for_model(src, channels)
    probs = _Probabilities(probabilities, (source.height, source.width), out_tile)
    try:
        geom = TileGeometry(source.height, source.width, tile, int(model.border), int(model.stride))  # type: ignore[arg-type]
        bands = logit_bands(model, source, normalizer(source, normalize), geom, batch, progress)
        shape = (source.height, source.width)
        if instances:
            objects, fg, path = _write_instances(bands, dst, shape, probs, min_size, expand, out_tile, tmp_dir)
        else:
            objects, fg, path = _write_classes(bands, dst, shape, probs, out_tile)
        prob_path = probs.close()
    except BaseException:
        probs.abort()
        raise
    finally:
        source.close()
    return StreamResult(*shape, objects, fg / (shape[0] * shape[1]), path, prob_path)


def check_source(src: str | Path, channels: int | None) -> None:
    """Open ``src`` as :func:`segment_large` will and close it: a :class:`SourceError` for an image that cannot be
    streamed into a model of ``channels`` (read from the header alone, before any pixel)."""
    _open_for_model(src, channels).close()


def _open_for_model(src: str | Path | np.ndarray | Any, channels: int | None) -> Source:
    """:func:`open_source`, and an error naming the fix when the image has not the model's ``channels``."""
    source = open_source(src, channels)
    if channels is not None and source.channels != channels:
        source.close()
        raise SourceError(
            f"image {source.name} has {source.channels} channel(s) but the model takes {channels}: "
            + convert_hint(source.channels, channels, source.channels > 1)
        )
    return source


def _write_instances(
    bands: Iterator[tuple[int, Tensor]],
    dst: str | Path,
    shape: tuple[int, int],
    probs: _Probabilities,
    min_size: int,
    expand: int,
    out_tile: int,
    tmp_dir: str | Path | None,
) -> tuple[int, int, Path]:
    if min_size < 0 or expand < 0:
        raise FovealError(f"min_size and expand must be ≥ 0, got min_size={min_size}, expand={expand}")
    output_format(dst)
    labeler = SeamLabeler(shape[1], tmp_dir)
    try:
        fg = 0
        for _, logits in bands:
            mask = class_map(logits) > 0
            fg += int(mask.sum())
            labeler.add(mask, min_size)
            probs.write(logits)
        objects = labeler.finish()
        path = write_labels_streaming(dst, expand_bands(labeler.labels(), expand), shape, objects, out_tile)
    finally:
        labeler.close()
    return objects, fg, path


def _write_classes(
    bands: Iterator[tuple[int, Tensor]], dst: str | Path, shape: tuple[int, int], probs: _Probabilities, out_tile: int
) -> tuple[int, int, Path]:
    present: set[int] = set()
    fg = 0

    def class_bands() -> Iterator[np.ndarray]:
        nonlocal fg
        for _, logits in bands:
            cls = class_map(logits)
            fg += int((cls > 0).sum())
            present.update(int(c) for c in np.unique(cls) if c > 0)
            probs.write(logits)
            yield cls

    path = write_labels_streaming(dst, class_bands(), shape, 0, out_tile)  # class maps are uint16, as on whole images
    return len(present), fg, path
