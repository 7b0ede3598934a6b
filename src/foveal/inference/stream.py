"""Streaming overlap-tile segmentation of images larger than memory.

The image is read one band of tile rows at a time (a TIFF / BigTIFF through tifffile's memory map when its pixels are
stored contiguously, else through its zarr view; a zarr array directly), the network runs on the same tiles, in the
same batches, as :func:`foveal.inference.tiling.predict_tiled` on the whole image, and the label image is written tile
by tile to a tiled BigTIFF or a zarr array. Memory holds one band of input and output rows (the tile height times the
image width) and the tile batch; it does not grow with the image height.

Instances are the connected components of the predicted foreground, as :func:`foveal.data.instances.
instances_from_classes` finds them on the whole image, and numbered the same:

1. Pass 1 labels the foreground of each band (4-connected), records each piece's pixel count, and the pairs of pieces
   that touch across the seam between two bands; the band's foreground is kept, one bit per pixel, in a temporary
   file.
2. The pieces are merged over the seam pairs (connected components of the piece graph). Pieces are numbered band by
   band in raster order of their first pixel, so a merged object's first pixel is that of its lowest piece, and
   numbering the objects by their lowest piece is the whole-image raster numbering; objects under ``min_size``
   pixels are dropped before numbering, as on the whole image.
3. Pass 2 labels each band again, maps its pieces to the final numbers, and grows them by ``expand`` pixels with the
   ``expand`` rows above and below as context, which are all the rows a grown pixel can reach.
"""

from __future__ import annotations

import os
import queue
import secrets
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from scipy import ndimage as ndi
from torch import Tensor, nn
from tqdm import tqdm

from foveal.data.images import ZARR_SUFFIXES, check_tiff_series, is_zarr_path
from foveal.data.seg_io import PERCENTILES, check_options, convert_hint
from foveal.errors import FovealError
from foveal.inference.tiling import TileGeometry, check_tile, net_device, reflect_indices

#: The label (and probability) tile edge of the written TIFF / zarr chunk.
OUTPUT_TILE = 512
#: Rows read per pass when computing the image statistics that normalisation needs.
_STAT_ROWS = 1024
_ALPHA_SAMPLES = (1, 2)


# ------------------------------------------------------------------------------------------------------------ sources


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


def _zarr() -> Any:
    try:
        import zarr
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
            arr = _zarr().open(series.aszarr(level=0), mode="r")
    except FovealError:
        tif.close()
        raise
    except (OSError, tifffile.TiffFileError, ValueError, KeyError) as exc:
        tif.close()
        raise SourceError(f"cannot read image {path}: {exc} (the TIFF file is corrupt or truncated)") from None
    return _array_source(arr, axes, str(path), alpha, tif.close)


def _zarr_source(path: Path, channels: int | None) -> Source:
    """A zarr array, or the first (full-resolution) array "0" of a zarr group such as an OME-Zarr image."""
    zarr = _zarr()
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


# ------------------------------------------------------------------------------------------------------ normalising


def _row_bands(source: Source, rows: int = _STAT_ROWS) -> Iterator[np.ndarray]:
    for y in range(0, source.height, rows):
        yield source.read(y, min(source.height, y + rows))


def _keys(a: np.ndarray) -> np.ndarray:
    """Unsigned integer keys that sort as the values of ``a`` do (integers, floats without NaN, bools)."""
    if a.dtype == np.bool_:
        return a.view(np.uint8)
    unsigned = np.dtype(f"u{a.dtype.itemsize}")
    u = np.ascontiguousarray(a).view(unsigned)
    top = unsigned.type(1 << (8 * a.dtype.itemsize - 1))
    if a.dtype.kind == "u":
        return u
    if a.dtype.kind == "i":
        return u ^ top
    return np.where(u & top, ~u, u | top)


def _from_key(key: int, dtype: np.dtype) -> Any:
    """The value of ``dtype`` whose :func:`_keys` is ``key``."""
    if dtype == np.bool_:
        return np.bool_(key)
    unsigned = np.dtype(f"u{dtype.itemsize}")
    top = 1 << (8 * dtype.itemsize - 1)
    if dtype.kind == "i":
        key ^= top
    elif dtype.kind == "f":
        key = key ^ top if key & top else ~key & ((top << 1) - 1)
    return np.array([key], unsigned).view(dtype)[0]


def order_statistics(source: Source, ranks: list[int]) -> np.ndarray:
    """The ``ranks``-th smallest values (0-based) of every channel of ``source``, exactly, in a few passes.

    A radix selection on 16-bit digits of order-preserving keys: one pass for 8- and 16-bit images, two for 32-bit,
    four for 64-bit; each pass holds one histogram of 65536 bins per channel and rank.

    Returns:
        (C, len(ranks)) array of the source's dtype.
    """
    bits = source.dtype.itemsize * 8
    width = min(16, bits)
    n_ranks, chans = len(ranks), source.channels
    prefix = np.zeros((chans, n_ranks), np.int64).tolist()
    remaining = [[int(r) for r in ranks] for _ in range(chans)]
    for d in range(bits // width):
        shift = bits - width * (d + 1)
        hist = np.zeros((chans, n_ranks, 1 << width), np.int64)
        for band in _row_bands(source):
            keys = _keys(band.reshape(-1, chans))
            for c in range(chans):
                k = keys[:, c]
                digit = ((k >> shift) & ((1 << width) - 1)).astype(np.intp)
                if d == 0:
                    hist[c] += np.bincount(digit, minlength=1 << width)
                    continue
                high = k >> (shift + width)
                for r in range(n_ranks):
                    hist[c, r] += np.bincount(digit[high == prefix[c][r]], minlength=1 << width)
        for c in range(chans):
            for r in range(n_ranks):
                cum = np.cumsum(hist[c, r])
                dig = int(np.searchsorted(cum, remaining[c][r], side="right"))
                remaining[c][r] -= int(cum[dig - 1]) if dig > 0 else 0
                prefix[c][r] = (prefix[c][r] << width) | dig
    return np.array([[_from_key(k, source.dtype) for k in row] for row in prefix], dtype=source.dtype)


def _percentiles(source: Source, percentiles: tuple[float, ...]) -> np.ndarray:
    """``np.percentile(x, percentiles, axis=(0, 1))`` of the float32 image x, exactly as numpy computes it.

    numpy's linear method: the virtual index (n − 1)·q between the order statistics at its floor and ceiling, with
    numpy's own interpolation arithmetic (float32 neighbours, float64 weight). The float32 cast keeps the order, so the
    order statistics of x are those of the stored values, cast.

    Returns:
        (len(percentiles), C) float64.
    """
    n = source.height * source.width
    q = np.true_divide(np.asanyarray(percentiles, dtype=np.float64), 100)
    virtual = (n - 1) * q
    prev = np.floor(virtual)
    nxt = prev + 1
    above = virtual >= n - 1
    prev[above], nxt[above] = n - 1, n - 1
    ranks = sorted({int(v) for v in (*prev, *nxt)})
    values = order_statistics(source, ranks).astype(np.float32)  # (C, R)
    pos = {r: i for i, r in enumerate(ranks)}
    a = values[:, [pos[int(v)] for v in prev]].T  # (Q, C) float32
    b = values[:, [pos[int(v)] for v in nxt]].T
    gamma = np.asanyarray(virtual - prev, dtype=np.float64).reshape(-1, 1)
    diff = b - a
    out = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5, casting="unsafe", dtype=out.dtype.type)
    return out


def _min_max(source: Source) -> tuple[np.ndarray, np.ndarray]:
    lo = np.full(source.channels, np.inf, np.float32)
    hi = np.full(source.channels, -np.inf, np.float32)
    for band in _row_bands(source):
        x = band.astype(np.float32)
        if not np.isfinite(x).all():
            raise SourceError(f"image {source.name} holds NaN or infinite values: fix or remove it")
        lo, hi = np.minimum(lo, x.min(axis=(0, 1))), np.maximum(hi, x.max(axis=(0, 1)))
    return lo, hi


def normalizer(source: Source, normalize: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function of a raw (h, W, C) band giving float32 (h, W, C), exactly as :func:`foveal.data.seg_io.to_float`
    normalises the whole image (its statistics computed over the whole source first, when it needs any)."""

    check_options(normalize, None)
    dtype = source.dtype
    if dtype == np.uint8:
        return lambda raw: raw.astype(np.float32) / 255.0
    if normalize == "dtype" and dtype.kind in "iu":
        scale = float(np.iinfo(dtype).max)
        return lambda raw: raw.astype(np.float32) / scale
    lo_v, hi_v = _min_max(source)
    if normalize == "dtype":
        if lo_v.min() < 0.0 or hi_v.max() > 1.0:
            raise SourceError(
                f"float image {source.name} holds values in [{lo_v.min():g}, {hi_v.max():g}], outside [0, 1], so "
                "normalize='dtype' cannot scale it: use normalize='percentile' or 'minmax'"
            )
        return lambda raw: raw.astype(np.float32)
    low: np.ndarray = lo_v
    high: np.ndarray = hi_v
    if normalize == "percentile":
        p_lo, p_hi = _percentiles(source, PERCENTILES)
        flat = p_hi <= p_lo
        low, high = np.where(flat, lo_v, p_lo), np.where(flat, hi_v, p_hi)
    span = (high - low).astype(np.float32)
    offset, divisor = low.astype(np.float32), np.where(span > 0, span, 1.0).astype(np.float32)

    def scale_band(raw: np.ndarray) -> np.ndarray:
        x = raw.astype(np.float32)
        if not np.isfinite(x).all():
            raise SourceError(f"image {source.name} holds NaN or infinite values: fix or remove it")
        return (x - offset) / divisor

    return scale_band


# -------------------------------------------------------------------------------------------------------- inference


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


# -------------------------------------------------------------------------------------------------------- instances

_FOUR = ndi.generate_binary_structure(2, 1)


class SeamLabeler:
    """Connected components (4-connected) of a foreground mask that arrives in row bands, numbered as
    ``scipy.ndimage.label`` numbers them on the whole mask (raster order of each object's first pixel).

    :meth:`add` takes the bands in order (pass 1); :meth:`finish` merges the pieces across seams and drops objects
    under ``min_size``; :meth:`labels` gives the final labels of the stored bands again (pass 2). Pieces are numbered
    band by band in the order ``ndi.label`` finds them, which is the raster order of their first pixels, so an object's
    first pixel is that of its lowest-numbered piece (its root). Memory: the bands are kept one bit per pixel in a
    temporary file under ``tmp_dir``; a piece inside its band (touching neither its first nor its last row) is a whole
    object, decided at once and kept as one bit; only pieces on band rims are remembered (number, size, seam contacts).
    """

    def __init__(self, width: int, tmp_dir: str | Path | None = None) -> None:
        self.width = width
        self._file = tempfile.TemporaryFile(dir=tmp_dir)  # noqa: SIM115 (closed by close())
        self._bands: list[tuple[int, int, int, int]] = []  # (height, file offset, pieces before, pieces in band)
        self._kept: list[np.ndarray] = []  # per band: packed bits, set for a kept whole piece inside the band
        self._rim: list[np.ndarray] = []  # numbers of the pieces on band rims (ascending)
        self._rim_size: list[np.ndarray] = []
        self._pairs: list[np.ndarray] = []
        self._last: np.ndarray | None = None
        self._min_size = 0
        self.pieces = 0

    def add(self, mask: np.ndarray, min_size: int = 0) -> None:
        """Label the next band (h, W) of the mask; record its rim pieces and seam contacts (``min_size`` decides
        the pieces inside the band, and must be the same for every band and :meth:`finish`)."""
        self._min_size = min_size
        packed = np.packbits(mask, axis=1)
        lab, n = ndi.label(mask, structure=_FOUR)
        self._bands.append((mask.shape[0], self._file.tell(), self.pieces, n))
        self._file.write(packed.tobytes())
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        rim = np.union1d(lab[0], lab[-1])
        rim = rim[rim > 0]
        inside = sizes >= min_size
        inside[0] = False
        inside[rim] = False
        self._kept.append(np.packbits(inside[1:]))
        self._rim.append(rim.astype(np.int64) + self.pieces)
        self._rim_size.append(sizes[rim].astype(np.int64))
        top = np.where(lab[0] > 0, lab[0].astype(np.int64) + self.pieces, 0)
        if self._last is not None:
            both = (self._last > 0) & (top > 0)
            if both.any():
                self._pairs.append(np.unique(np.stack([self._last[both], top[both]], 1), axis=0))
        self._last = np.where(lab[-1] > 0, lab[-1].astype(np.int64) + self.pieces, 0)
        self.pieces += n

    def finish(self) -> int:
        """Merge the rim pieces over the seam contacts; the number of objects kept."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        rim = np.concatenate(self._rim) if self._rim else np.zeros(0, np.int64)
        sizes = np.concatenate(self._rim_size) if self._rim else np.zeros(0, np.int64)
        m = len(rim)
        if self._pairs:
            pairs = np.searchsorted(rim, np.concatenate(self._pairs))
            graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(m, m))
            _, comp = connected_components(graph, directed=False)
        else:
            comp = np.arange(m)
        _, first, comp = np.unique(comp, return_index=True, return_inverse=True)
        self._root = rim[first][comp]  # each rim piece's root: the lowest piece of its object
        keep = np.bincount(comp, weights=sizes, minlength=len(first)) >= self._min_size
        self._kept_roots = rim[first][keep]  # ascending: rim is sorted and first picks each object's lowest piece
        self._rim_all = rim
        inside = sum(int(np.unpackbits(k).sum()) for k in self._kept)
        return inside + len(self._kept_roots)

    def labels(self) -> Iterator[np.ndarray]:
        """The final labels (h, W) int32 of every band, in order (after :meth:`finish`)."""
        kept_before = 0
        root_number: dict[int, int] = {}
        for (h, offset, base, n), kept_bits in zip(self._bands, self._kept, strict=True):
            self._file.seek(offset)
            packed = np.frombuffer(self._file.read(h * ((self.width + 7) // 8)), np.uint8).reshape(h, -1)
            lab, _ = ndi.label(np.unpackbits(packed, axis=1, count=self.width).astype(bool), structure=_FOUR)
            kept = np.unpackbits(kept_bits, count=n).astype(bool)
            lo, hi = np.searchsorted(self._kept_roots, [base + 1, base + n + 1])
            kept[self._kept_roots[lo:hi] - base - 1] = True
            number = np.where(kept, kept_before + np.cumsum(kept), 0)
            kept_before += int(kept.sum())
            lo, hi = np.searchsorted(self._rim_all, [base + 1, base + n + 1])
            for piece, root in zip(self._rim_all[lo:hi].tolist(), self._root[lo:hi].tolist(), strict=True):
                if root > base:
                    root_number[root] = int(number[root - base - 1])
                number[piece - base - 1] = root_number[root]
            lookup = np.concatenate([[0], number]).astype(np.int64)
            yield lookup[lab].astype(np.int32)

    def close(self) -> None:
        self._file.close()


def expand_bands(bands: Iterable[np.ndarray], distance: int) -> Iterator[np.ndarray]:
    """``skimage.segmentation.expand_labels`` of the image made of ``bands`` (row bands in order), band by band.

    A grown pixel takes the label of the nearest labelled pixel within ``distance``, which lies at most ``distance``
    rows away, so each band is grown inside a window with ``distance`` rows of context above and below.
    """
    from skimage.segmentation import expand_labels

    if distance <= 0:
        yield from bands
        return
    held: list[np.ndarray] = []  # bands from the first one a pending band's window needs
    pending = 0  # index into held of the next band to grow
    iterator = iter(bands)
    exhausted = False
    while True:
        if not exhausted:
            band = next(iterator, None)
            if band is None:
                exhausted = True
            else:
                held.append(band)
        rows = np.cumsum([0] + [b.shape[0] for b in held])
        while pending < len(held) and (exhausted or rows[-1] - rows[pending + 1] >= distance):
            lo, hi = max(0, rows[pending] - distance), min(rows[-1], rows[pending + 1] + distance)
            window = np.concatenate(held)[lo:hi] if len(held) > 1 else held[0][lo:hi]
            grown = expand_labels(window, distance=distance)
            yield grown[rows[pending] - lo : rows[pending + 1] - lo].astype(np.int32)
            pending += 1
            while pending > 0 and rows[1] <= rows[pending] - distance:
                held.pop(0)
                rows = rows[1:] - rows[1]
                pending -= 1
        if exhausted and pending >= len(held):
            return


# ---------------------------------------------------------------------------------------------------------- writing


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
                self._zarr = _zarr().open_array(str(self.tmp), mode="w", shape=self.shape, chunks=chunks, dtype=dtype)
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


# ----------------------------------------------------------------------------------------------------------- driver


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

    The labels equal those of the whole-image path (:func:`foveal.tasks.segment_eval.predict_logits`, arg-max, and
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
