"""Images read in row bands without loading them whole: TIFF / BigTIFF (tifffile's memory map when the pixels are
stored contiguously, else its zarr view), zarr stores and in-memory or zarr arrays."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from foveal.data.images import check_tiff_series, is_zarr_path
from foveal.data.seg_io import convert_hint
from foveal.errors import FovealError

_ALPHA_SAMPLES = (1, 2)


class SourceError(FovealError):
    """The image being streamed cannot be used: missing, corrupt or truncated (found while opening or reading it), not
    a 2-D image of numbers, or not the model's channel count. A caller streaming many images skips that one; an error
    writing the outputs (a full disk) is a plain :class:`FovealError`."""


@dataclass
class Source:
    """A 2-D image read in row bands without loading it whole.

    ``read(y0, y1)`` returns rows [y0, y1) as a (y1 − y0, W, C) array in the stored dtype (native byte order).
    """

    name: str
    height: int
    width: int
    channels: int
    dtype: np.dtype
    read: Callable[[int, int], np.ndarray]
    close: Callable[[], None]


def zarr_package() -> Any:
    """The zarr package, or a FovealError naming the install command when it is missing (an optional dependency)."""
    try:
        import zarr  # deferred: an optional dependency (foveal[large])
    except ImportError:
        raise FovealError(
            "reading compressed TIFF tiles and zarr arrays needs the zarr package: pip install 'foveal[large]'"
        ) from None
    return zarr


def _layout(shape: tuple[int, ...], channels: int | None, name: str) -> str:
    """Axes of an array without axis names: "YX", "YXC" (channels last) or "CYX"."""
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        if channels is not None and shape[-1] == channels:
            return "YXC"
        if channels is not None and shape[0] == channels:
            return "CYX"
        if channels is None:
            return "YXC" if shape[-1] <= 4 else "CYX"
        if min(shape[0], shape[-1]) <= 4:
            c = min(shape[0], shape[-1])
            raise SourceError(
                f"image {name} of shape {shape} has {c} channel(s) but the model takes {channels}: "
                + convert_hint(c, channels, shape[0] == c)
            )
    raise SourceError(
        f"image {name} has shape {shape}: expected (H, W), (H, W, C) or (C, H, W)"
        + (f" with C = {channels} channels" if channels is not None else "")
    )


def _array_source(arr: Any, axes: str, name: str, alpha: int = 0, close: Callable[[], None] | None = None) -> Source:
    """A :class:`Source` over an array-like with named axes (Y and X, optionally S / C; other axes of size 1)."""
    shape = tuple(int(s) for s in arr.shape)
    if "Y" not in axes or "X" not in axes:
        raise SourceError(f"image {name} has axes {axes} (shape {shape}): a 2-D image needs Y and X axes")
    extra = [a for a, s in zip(axes, shape, strict=True) if a not in "YXSC" and s > 1]
    if extra:
        raise SourceError(
            f"image {name} has axes {axes} of shape {shape}: a stack cannot be streamed; pass a single 2-D image"
        )
    if np.dtype(arr.dtype).kind not in "biuf":
        raise SourceError(
            f"image {name} holds {np.dtype(arr.dtype)} values, not pixel intensities: pass an image of integer, "
            "floating-point or boolean pixels"
        )
    chan = [i for i, a in enumerate(axes) if a in "SC"]
    n_chan = int(np.prod([shape[i] for i in chan])) if chan else 1
    keep = n_chan - alpha if 0 < alpha < n_chan and len(chan) == 1 else n_chan
    y_axis, x_axis = axes.index("Y"), axes.index("X")
    order = [y_axis, x_axis, *chan]
    others = [i for i in range(len(axes)) if i not in order]

    def read(y0: int, y1: int) -> np.ndarray:
        index: list[Any] = [slice(None)] * len(axes)
        index[y_axis] = slice(y0, y1)
        for i in others:
            index[i] = 0
        try:
            block = np.asarray(arr[tuple(index)])
        except MemoryError:
            raise
        except Exception as exc:  # decoders raise their own types (zlib, imagecodecs, tifffile, zarr)
            raise SourceError(
                f"cannot read rows {y0}…{y1 - 1} of image {name}: {str(exc) or type(exc).__name__} (the file is "
                "corrupt or truncated)"
            ) from None
        dims = [i for i in range(len(axes)) if i not in others]
        block = block.transpose([dims.index(i) for i in order]).reshape(y1 - y0, shape[x_axis], n_chan)
        block = block[..., :keep]
        return block.astype(block.dtype.newbyteorder("="), copy=False) if block.dtype.byteorder not in "=|" else block

    dtype = np.dtype(arr.dtype).newbyteorder("=")
    return Source(name, shape[y_axis], shape[x_axis], keep, dtype, read, close or (lambda: None))


def _tiff_source(path: Path) -> Source:
    """The first series of a TIFF (its full-resolution level for a pyramid), memory-mapped or read through zarr."""
    try:
        tif = tifffile.TiffFile(path)
    except (OSError, tifffile.TiffFileError, ValueError) as exc:
        raise SourceError(f"cannot read image {path}: {exc} (the TIFF file is corrupt or truncated)") from None
    try:
        if not tif.series:
            raise SourceError(f"image {path} holds no image data: fix or remove it")
        check_tiff_series(tif, path, error=SourceError)
        series = tif.series[0]
        axes = series.axes
        extras = tuple(getattr(series.keyframe, "extrasamples", ()) or ())
        alpha = sum(e in _ALPHA_SAMPLES for e in extras) if axes.count("S") == 1 else 0
        if series.dataoffset is not None:
            arr: Any = tifffile.memmap(path, series=0, mode="r")
        else:
            arr = zarr_package().open(series.aszarr(level=0), mode="r")
    except FovealError:
        tif.close()
        raise
    except (OSError, tifffile.TiffFileError, ValueError, KeyError) as exc:
        tif.close()
        raise SourceError(f"cannot read image {path}: {exc} (the TIFF file is corrupt or truncated)") from None
    return _array_source(arr, axes, str(path), alpha, tif.close)


def _zarr_source(path: Path, channels: int | None) -> Source:
    """A zarr array, or the first (full-resolution) array "0" of a zarr group such as an OME-Zarr image."""
    zarr = zarr_package()
    try:
        node = zarr.open(str(path), mode="r")
    except (OSError, ValueError, KeyError) as exc:
        raise SourceError(f"cannot open zarr store {path}: {exc}") from None
    if not hasattr(node, "shape"):
        if "0" not in node:
            raise SourceError(f"zarr store {path} is a group without an array '0': pass the image array's path")
        node = node["0"]
    return _array_source(node, _layout(node.shape, channels, str(path)), str(path))


def open_source(src: str | Path | np.ndarray | Any, channels: int | None = None) -> Source:
    """A :class:`Source` for a TIFF / BigTIFF path, a zarr store path, or an in-memory / zarr array.

    Arrays without axis names are (H, W), (H, W, C) or (C, H, W); ``channels`` (the model's) decides between the last
    two, else a last axis of at most 4 is taken for channels.
    """
    if isinstance(src, str | Path):
        p = Path(src)
        if is_zarr_path(p):
            return _zarr_source(p, channels)
        if not p.exists():
            raise SourceError(f"image not found: {p} (check the path)")
        if p.suffix.lower() not in (".tif", ".tiff"):
            raise SourceError(f"image {p} cannot be streamed: pass a TIFF / BigTIFF file or a zarr array")
        source = _tiff_source(p)
    else:
        source = _array_source(src, _layout(tuple(src.shape), channels, "array"), "array")
    return source


def image_size(path: str | Path) -> tuple[int, int] | None:
    """(H, W) of a TIFF or zarr image from its header alone; None for other files or unreadable ones."""
    p = Path(path)
    if not (is_zarr_path(p) or p.suffix.lower() in (".tif", ".tiff")):
        return None
    try:
        source = open_source(p)
    except FovealError:
        return None
    source.close()
    return source.height, source.width
