"""Image statistics computed over a whole :class:`~foveal.inference.stream.sources.Source` in row bands (exact order
statistics and percentiles, minimum and maximum), and the band normaliser that uses them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from foveal.data.seg_io import PERCENTILES, check_options
from foveal.inference.stream.sources import Source, SourceError

#: Rows read per pass when computing the image statistics that normalisation needs.
_STAT_ROWS = 1024


def _row_bands(source: Source) -> Iterator[np.ndarray]:
    """The rows of ``source`` in bands of ``_STAT_ROWS`` (read when called, so a test can make the bands small)."""
    for y in range(0, source.height, _STAT_ROWS):
        yield source.read(y, min(source.height, y + _STAT_ROWS))


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
