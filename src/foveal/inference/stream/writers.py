"""Images that arrive in row bands written tile by tile to a tiled BigTIFF or a zarr array."""

from __future__ import annotations

import os
import queue
import secrets
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from foveal.data.images import ZARR_SUFFIXES
from foveal.errors import FovealError
from foveal.inference.stream.sources import zarr_package

#: The label (and probability) tile edge of the written TIFF / zarr chunk.
OUTPUT_TILE = 512


def output_format(path: str | Path) -> str:
    """ "tiff" for a .tif / .tiff path, "zarr" for a .zarr path (FovealError otherwise)."""
    ext = Path(path).suffix.lower()
    if ext in (".tif", ".tiff"):
        return "tiff"
    if ext in ZARR_SUFFIXES:
        return "zarr"
    raise FovealError(f"cannot stream an image to {path}: use a .tif / .tiff (tiled BigTIFF) or .zarr path")


class BandWriter:
    """Writes an (H, W) or (H, W, K) image that arrives in row bands to a tiled BigTIFF (zlib) or a zarr array.

    The bands are cut into rows of ``tile`` output tiles; a TIFF is encoded by a writer thread fed through a bounded
    queue (two rows of tiles), so memory holds a few tile rows. The file is written beside ``dst`` under a hidden name
    and moved over ``dst`` by :meth:`close`; :meth:`abort` (or an exception inside a ``with`` block) removes it.
    """

    def __init__(self, dst: str | Path, shape: tuple[int, ...], dtype: Any, tile: int = OUTPUT_TILE) -> None:
        if tile < 16 or tile % 16:
            raise FovealError(f"output tile {tile} must be a multiple of 16 (a TIFF tile edge)")
        self.dst, self.shape, self.dtype, self.tile = Path(dst), tuple(shape), np.dtype(dtype), tile
        self.format = output_format(self.dst)
        self.tmp = self.dst.with_name(f".{self.dst.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
        self._rows: list[np.ndarray] = []
        self._written = 0
        self._error: BaseException | None = None
        self._ended = False  # the encoder has taken the end marker
        try:
            self.dst.parent.mkdir(parents=True, exist_ok=True)
            if self.format == "zarr":
                chunks = (tile, tile, *self.shape[2:])
                self._zarr = zarr_package().open_array(
                    str(self.tmp), mode="w", shape=self.shape, chunks=chunks, dtype=dtype
                )
            else:
                self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=2)
                self._thread = threading.Thread(target=self._encode, daemon=True)
                self._thread.start()
        except OSError as exc:
            raise FovealError(f"cannot write {self.dst}: {exc.strerror or exc}") from None

    def _tiles(self) -> Iterator[np.ndarray]:
        t = self.tile
        while True:
            strip = self._queue.get()
            if strip is None:
                self._ended = True
                return
            for x in range(0, self.shape[1], t):
                block = strip[:, x : x + t]
                if block.shape[:2] != (t, t):
                    full = np.zeros((t, t, *block.shape[2:]), self.dtype)
                    full[: block.shape[0], : block.shape[1]] = block
                    block = full
                yield block

    def _encode(self) -> None:
        try:
            with tifffile.TiffWriter(self.tmp, bigtiff=True) as tw:
                tw.write(
                    self._tiles(),
                    shape=self.shape,
                    dtype=self.dtype,
                    tile=(self.tile, self.tile),
                    compression="zlib",
                    photometric="minisblack",
                    planarconfig="contig" if len(self.shape) == 3 else None,
                )
        except BaseException as exc:  # reported by close()
            self._error = exc
            while not self._ended:  # take strips until the end marker so the producer never blocks
                self._ended = self._queue.get() is None

    def write(self, band: np.ndarray) -> None:
        """Append rows (h, W[, K]) below those written so far."""
        if band.shape[1:] != self.shape[1:] or self._written + band.shape[0] > self.shape[0]:
            raise FovealError(f"band of shape {band.shape} does not continue an image of shape {self.shape}")
        self._rows.append(np.asarray(band, self.dtype))
        self._written += band.shape[0]
        held = sum(r.shape[0] for r in self._rows)
        while held >= self.tile or (self._written == self.shape[0] and held > 0):
            rows = np.concatenate(self._rows) if len(self._rows) > 1 else self._rows[0]
            strip, rest = rows[: self.tile], rows[self.tile :]
            self._put(self._written - held, strip)
            self._rows = [rest] if len(rest) else []
            held = len(rest)

    def _put(self, y0: int, strip: np.ndarray) -> None:
        if self.format == "zarr":
            self._zarr[y0 : y0 + strip.shape[0]] = strip
        else:
            self._queue.put(strip)

    def close(self) -> Path:
        """Finish the file and move it over ``dst``; returns ``dst``."""
        if self._written != self.shape[0]:
            self.abort()
            raise FovealError(f"{self.dst}: {self._written} of {self.shape[0]} rows were written")
        if self.format == "tiff":
            self._queue.put(None)
            self._thread.join()
            if self._error is not None:
                self.abort()
                raise FovealError(f"cannot write {self.dst}: {self._error}") from None
        try:
            if self.dst.is_dir() and self.format == "zarr":
                shutil.rmtree(self.dst)
            os.replace(self.tmp, self.dst)
        except OSError as exc:
            self.abort()
            raise FovealError(f"cannot write {self.dst}: {exc.strerror or exc}") from None
        return self.dst

    def abort(self) -> None:
        """Stop and remove the partial file."""
        if self.format == "tiff" and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self.tmp.is_dir():
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif self.tmp.exists():
            self.tmp.unlink()

    def __enter__(self) -> BandWriter:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None:
            self.abort()


def label_dtype(max_label: int) -> np.dtype:
    """The stored dtype of a label image, as :func:`foveal.data.seg_io.write_label_image` chooses it."""
    return np.dtype(np.uint16 if max_label <= 65535 else np.uint32)


def write_labels_streaming(
    dst: str | Path, bands: Iterable[np.ndarray], shape: tuple[int, int], max_label: int, tile: int = OUTPUT_TILE
) -> Path:
    """Write a label image that arrives as row bands (h, W) to ``dst`` (.tif / .tiff: tiled zlib BigTIFF; .zarr).

    The file appears at ``dst`` only when complete (written under a hidden name beside it, then moved). Labels are
    stored as uint16, or uint32 when ``max_label`` exceeds 65535, as for whole-image label files.

    Returns:
        ``dst`` as a Path.
    """
    with BandWriter(dst, shape, label_dtype(max_label), tile) as writer:
        for band in bands:
            writer.write(band)
        return writer.close()
