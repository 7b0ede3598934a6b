"""IDX reading and writing: round trips, golden bytes, and every way a file can be broken."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from foveal.data.idx import read_idx, write_idx
from foveal.errors import FovealError


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_round_trip(tmp_path: Path, compress: bool, dtype: str) -> None:
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((5, 4, 3)) * 100).astype(dtype)
    path = write_idx(tmp_path / "a.idx", array, gzip=compress)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype).newbyteorder("=")
    assert back.shape == (5, 4, 3)
    np.testing.assert_array_equal(back, array)
    back[0, 0, 0] = 1  # writable, unlike a frombuffer view


def test_golden_bytes_big_endian(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x", np.array([1, 258], dtype=np.int16), gzip=False)
    assert path.read_bytes() == bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0, 1, 1, 2])


def test_gzip_detected_by_magic_not_extension(tmp_path: Path) -> None:
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "no-extension", array, gzip=True)), array)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "raw-but-named.gz", array, gzip=False)), array)


def test_gzip_output_is_reproducible(tmp_path: Path) -> None:
    array = np.arange(100, dtype=np.uint8)
    a = write_idx(tmp_path / "a.gz", array).read_bytes()
    b = write_idx(tmp_path / "b.gz", array).read_bytes()
    assert a == b


def _raw(tmp_path: Path, data: bytes, name: str = "bad-idx1-ubyte") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_wrong_magic(tmp_path: Path) -> None:
    path = _raw(tmp_path, b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(FovealError, match=r"not an IDX file.*0x89 0x50.*expected 0x00 0x00") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_unknown_dtype_code(tmp_path: Path) -> None:
    with pytest.raises(FovealError, match="unknown dtype code 0x07"):
        read_idx(_raw(tmp_path, bytes([0, 0, 7, 1, 0, 0, 0, 1, 5])))


def test_zero_dims_and_short_files(tmp_path: Path) -> None:
    with pytest.raises(FovealError, match="0 dimensions"):
        read_idx(_raw(tmp_path, bytes([0, 0, 8, 0])))
    with pytest.raises(FovealError, match="fewer than the 4-byte header"):
        read_idx(_raw(tmp_path, bytes([0, 0])))
    with pytest.raises(FovealError, match="header declares 3 dimensions"):
        read_idx(_raw(tmp_path, bytes([0, 0, 8, 3, 0, 0, 0, 1])))


def test_truncated_payload(tmp_path: Path) -> None:
    full = write_idx(tmp_path / "full", np.zeros((10, 28, 28), np.uint8), gzip=False).read_bytes()
    path = _raw(tmp_path, full[:-100])
    with pytest.raises(
        FovealError, match=r"truncated: dims \(10, 28, 28\) of uint8 need 7840 bytes.*holds 7740"
    ) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_overlong_payload(tmp_path: Path) -> None:
    full = write_idx(tmp_path / "full", np.zeros(6, np.int32), gzip=False).read_bytes()
    with pytest.raises(FovealError, match="has 3 bytes after the data"):
        read_idx(_raw(tmp_path, full + b"xyz"))


def test_truncated_payload_inside_valid_gzip(tmp_path: Path) -> None:
    full = write_idx(tmp_path / "full", np.zeros((4, 5), np.uint8), gzip=False).read_bytes()
    path = _raw(tmp_path, gzip.compress(full[:-3]), "short.gz")
    with pytest.raises(FovealError, match="truncated"):
        read_idx(path)


def test_truncated_gzip(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "good.gz", np.arange(5000, dtype=np.int32)).read_bytes()
    path = _raw(tmp_path, good[: len(good) // 2], "cut.gz")
    with pytest.raises(FovealError, match="corrupt or truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_corrupt_gzip(tmp_path: Path) -> None:
    good = bytearray(write_idx(tmp_path / "good.gz", np.arange(5000, dtype=np.int32)).read_bytes())
    good[30:60] = bytes(range(100, 130))
    with pytest.raises(FovealError, match="corrupt or truncated gzip"):
        read_idx(_raw(tmp_path, bytes(good), "bad.gz"))


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FovealError, match="IDX file not found"):
        read_idx(tmp_path / "nope.gz")
    with pytest.raises(FovealError, match="is a folder"):
        read_idx(tmp_path)


def test_write_rejects_unsupported(tmp_path: Path) -> None:
    with pytest.raises(FovealError, match="cannot write dtype uint16"):
        write_idx(tmp_path / "x", np.zeros(3, np.uint16))
    with pytest.raises(FovealError, match="1 to 255 dims"):
        write_idx(tmp_path / "x", np.zeros((), np.uint8))
    with pytest.raises(FovealError, match="check that its folder exists"):
        write_idx(tmp_path / "missing" / "x", np.zeros(3, np.uint8))


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    ),
    st.booleans(),
)
def test_round_trip_property(array: np.ndarray, compress: bool) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        back = read_idx(write_idx(Path(folder) / "p", array, gzip=compress))
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)  # NaNs compare equal here
