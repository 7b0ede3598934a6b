"""Read and write IDX files, the format of MNIST and Fashion-MNIST.

Layout (all integers big-endian): two zero bytes, one dtype code, one byte with the number of dimensions ``ndim``,
then ``ndim`` unsigned 32-bit sizes, then the values in C order. Files may be gzipped; :func:`read_idx` recognises gzip
by its magic bytes (``1f 8b``), whatever the file's extension says.

Reference: Y. LeCun, C. Cortes, C. J. C. Burges, "The MNIST database of handwritten digits" (file format section).
"""

from __future__ import annotations

import gzip as _gzip
import io
import zlib
from pathlib import Path

import numpy as np

from foveal.errors import FovealError

#: IDX dtype code → numpy dtype (big-endian, as stored on disk).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise FovealError(f"IDX file not found: {path} (check the path, or pass the folder that holds the IDX files)")
    if path.is_dir():
        raise FovealError(f"expected an IDX file but {path} is a folder: pass the file itself")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FovealError(f"cannot read IDX file {path}: {exc.strerror or exc} (check its permissions)") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return _gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        # BadGzipFile is an OSError; a cut-off stream raises EOFError; damaged deflate data raises zlib.error.
        raise FovealError(
            f"IDX file {path} is a corrupt or truncated gzip file ({exc}): download or copy it again"
        ) from None


def _parse(data: bytes, path: Path) -> np.ndarray:
    if len(data) < 4:
        raise FovealError(f"{path} is not an IDX file: it holds only {len(data)} bytes, fewer than the 4-byte header")
    if data[0] != 0 or data[1] != 0:
        raise FovealError(
            f"{path} is not an IDX file: it starts with bytes 0x{data[0]:02x} 0x{data[1]:02x}, expected 0x00 0x00 "
            "(pass an MNIST-style IDX file such as train-images-idx3-ubyte.gz)"
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        valid = ", ".join(f"0x{c:02x}" for c in IDX_DTYPES)
        raise FovealError(f"IDX file {path} has unknown dtype code 0x{code:02x} (valid codes: {valid}); it is corrupt")
    if ndim == 0:
        raise FovealError(f"IDX file {path} declares 0 dimensions; it is corrupt")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise FovealError(
            f"IDX file {path} is truncated: its header declares {ndim} dimensions but the file ends after "
            f"{len(data)} bytes"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got < expected:
        raise FovealError(
            f"IDX file {path} is truncated: dims {dims} of {dtype.name} need {expected} bytes of data but it holds "
            f"{got}; download or copy the file again"
        )
    if got > expected:
        raise FovealError(
            f"IDX file {path} has {got - expected} bytes after the data that its header declares (dims {dims} of "
            f"{dtype.name}, {expected} bytes); the file is corrupt or its header is wrong"
        )
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzipped or not.

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte.gz``. Gzip is recognised by its magic bytes.

    Returns:
        A writable array in native byte order, with the file's dims, e.g. (N, 28, 28) uint8 for images and (N,) uint8
        for labels.

    Raises:
        FovealError: the file is missing, is not IDX (wrong magic), has an unknown dtype code, is a corrupt gzip file,
            or its data is shorter or longer than its dims declare.
    """
    p = Path(path)
    return _parse(_read_bytes(p), p)


def _dtype_code(dtype: np.dtype) -> int:
    for code, idx_dtype in IDX_DTYPES.items():
        if idx_dtype.kind == dtype.kind and idx_dtype.itemsize == dtype.itemsize:
            return code
    names = ", ".join(d.name for d in IDX_DTYPES.values())
    raise FovealError(f"cannot write dtype {dtype} to IDX: convert the array to one of {names}")


def write_idx(path: str | Path, array: np.ndarray, gzip: bool = True) -> Path:
    """Write ``array`` as an IDX file.

    Args:
        path: the file to write; its folder must exist. The name is used as given (add ``.gz`` yourself).
        array: any shape with 1 to 255 dims, each below 2**32; dtype uint8, int8, int16, int32, float32 or float64.
        gzip: compress with gzip (with a zero timestamp, so the same array always gives the same bytes).

    Returns:
        The path written.
    """
    p = Path(path)
    arr = np.asarray(array)
    code = _dtype_code(arr.dtype)
    if not 1 <= arr.ndim <= 255 or any(d >= 2**32 for d in arr.shape):
        raise FovealError(f"cannot write an array of shape {arr.shape} to IDX: it needs 1 to 255 dims below 2**32")
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(arr, dtype=IDX_DTYPES[code]).tobytes()
    if gzip:
        buffer = io.BytesIO()
        with _gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as gz:
            gz.write(payload)
        payload = buffer.getvalue()
    try:
        p.write_bytes(payload)
    except OSError as exc:
        raise FovealError(f"cannot write IDX file {p}: {exc.strerror or exc} (check that its folder exists)") from None
    return p
