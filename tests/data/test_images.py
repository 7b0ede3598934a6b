"""Image loading (modes, bit depths, broken files) and turning inputs into image paths."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from foveal.data.images import expand_inputs, list_images, load_image, peek_channels
from foveal.errors import FovealError

RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, (12, 16), dtype=np.uint8)
RGB = RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)


def _save(path: Path, img: Image.Image, **kwargs: Any) -> Path:
    img.save(path, **kwargs)
    return path


def _smooth_rgb() -> np.ndarray:
    """A smooth image, so JPEG round trips stay close to the original."""
    y, x = np.mgrid[0:32, 0:48]
    return np.stack([x * 5, y * 7, (x + y) * 3], axis=2).astype(np.uint8)


def test_png_gray_and_rgb_exact(tmp_path: Path) -> None:
    gray = load_image(_save(tmp_path / "g.png", Image.fromarray(GRAY)))
    assert gray.dtype == torch.uint8 and gray.shape == (1, 12, 16)
    assert torch.equal(gray[0], torch.from_numpy(GRAY))
    rgb = load_image(_save(tmp_path / "c.png", Image.fromarray(RGB)))
    assert rgb.shape == (3, 12, 16)
    assert torch.equal(rgb, torch.from_numpy(RGB).permute(2, 0, 1))


def test_channel_conversion(tmp_path: Path) -> None:
    gray_path = _save(tmp_path / "g.png", Image.fromarray(GRAY))
    rgb_path = _save(tmp_path / "c.png", Image.fromarray(RGB))
    as_rgb = load_image(gray_path, channels=3)
    assert as_rgb.shape == (3, 12, 16)
    for c in range(3):
        assert torch.equal(as_rgb[c], torch.from_numpy(GRAY))
    luma = load_image(rgb_path, channels=1)
    expected = np.array(Image.fromarray(RGB).convert("L"))
    assert luma.shape == (1, 12, 16) and torch.equal(luma[0], torch.from_numpy(expected))
    assert torch.equal(load_image(rgb_path, channels=3), load_image(rgb_path))
    with pytest.raises(FovealError, match="bad channels=2"):
        load_image(rgb_path, channels=2)


def test_jpeg_gray_and_rgb(tmp_path: Path) -> None:
    smooth = _smooth_rgb()
    rgb = load_image(_save(tmp_path / "c.jpg", Image.fromarray(smooth), quality=95))
    assert rgb.shape == (3, 32, 48)
    assert (rgb.float() - torch.from_numpy(smooth).permute(2, 0, 1).float()).abs().mean() < 3
    gray = load_image(_save(tmp_path / "g.jpeg", Image.fromarray(smooth[:, :, 0]), quality=95))
    assert gray.shape == (1, 32, 48)
    assert (gray[0].float() - torch.from_numpy(smooth[:, :, 0]).float()).abs().mean() < 3


def test_rgba_and_palette_become_rgb(tmp_path: Path) -> None:
    alpha = RNG.integers(0, 256, (12, 16, 1), dtype=np.uint8)
    rgba = load_image(_save(tmp_path / "a.png", Image.fromarray(np.concatenate([RGB, alpha], axis=2))))
    assert torch.equal(rgba, torch.from_numpy(RGB).permute(2, 0, 1))  # alpha dropped, colours kept
    palette_img = Image.fromarray(RGB).quantize(colors=16)
    palette_img.info["transparency"] = 0
    expected = np.array(palette_img.convert("RGBA").convert("RGB"))
    pal = load_image(_save(tmp_path / "p.png", palette_img, transparency=0))
    assert pal.shape == (3, 12, 16)
    assert torch.equal(pal, torch.from_numpy(expected).permute(2, 0, 1))
    assert load_image(tmp_path / "p.png", channels=1).shape == (1, 12, 16)


def test_16bit_grayscale_scaled(tmp_path: Path) -> None:
    values = np.array([[0, 257, 257 * 128, 65535], [128, 129, 1000, 65000]], dtype=np.uint16)
    path = _save(tmp_path / "d.png", Image.fromarray(values))
    with Image.open(path) as img:
        assert img.mode.startswith("I;16")
    out = load_image(path)
    assert out.shape == (1, 2, 4)
    assert out[0].tolist() == [[0, 1, 128, 255], [0, 1, 4, 253]]
    assert torch.equal(load_image(path, channels=3)[2], out[0])


def test_32bit_int_grayscale_rules(tmp_path: Path) -> None:
    small = np.array([[0, 7, 255]], dtype=np.int32)  # already 8-bit values: kept
    assert load_image(_save(tmp_path / "s.tif", Image.fromarray(small)))[0].tolist() == [[0, 7, 255]]
    wide = np.array([[0, 257, 65535]], dtype=np.int32)  # 16-bit range
    assert load_image(_save(tmp_path / "w.tif", Image.fromarray(wide)))[0].tolist() == [[0, 1, 255]]
    huge = np.array([[100000, 150000, 200000]], dtype=np.int32)  # stretched min..max
    assert load_image(_save(tmp_path / "h.tif", Image.fromarray(huge)))[0].tolist() == [[0, 128, 255]]


def test_float_grayscale_in_unit_range(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    assert load_image(_save(tmp_path / "f.tif", Image.fromarray(values)))[0].tolist() == [[0, 128, 255]]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_raises(tmp_path: Path, fmt: str) -> None:
    buffer = io.BytesIO()
    Image.fromarray(RGB).resize((64, 64)).save(buffer, fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FovealError, match="truncated") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_garbage_empty_missing_directory(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(os.urandom(256))
    with pytest.raises(FovealError, match="not an image Pillow can read") as info:
        load_image(garbage)
    assert str(garbage) in str(info.value)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(FovealError, match="empty.jpg"):
        load_image(empty)
    with pytest.raises(FovealError, match="missing.png does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(FovealError, match="is a folder"):
        load_image(tmp_path)


def test_load_truncated_images_flag_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(tmp_path / "g.png", Image.fromarray(GRAY))
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(FovealError, match="LOAD_TRUNCATED_IMAGES"):
        load_image(path)


def test_peek_channels(tmp_path: Path) -> None:
    assert peek_channels(_save(tmp_path / "g.png", Image.fromarray(GRAY))) == 1
    assert peek_channels(_save(tmp_path / "c.png", Image.fromarray(RGB))) == 3
    assert peek_channels(_save(tmp_path / "d.png", Image.fromarray(GRAY.astype(np.uint16)))) == 1


def _tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    for name in ["b.png", "a.jpg", "sub/c.png", ".hidden.png"]:
        Image.fromarray(GRAY).save(root / name)
    (root / "notes.txt").write_text("not an image")


def test_expand_inputs_file_folder_glob(tmp_path: Path) -> None:
    _tree(tmp_path)
    assert expand_inputs([str(tmp_path / "b.png")]) == [tmp_path / "b.png"]
    # folder: images directly in it, sorted; no sub-folders, hidden files or non-images
    assert expand_inputs([str(tmp_path)]) == [tmp_path / "a.jpg", tmp_path / "b.png"]
    assert expand_inputs([str(tmp_path / "*.png")]) == [tmp_path / "b.png"]
    assert expand_inputs([str(tmp_path / "**" / "*.png")]) == [tmp_path / "b.png", tmp_path / "sub" / "c.png"]
    # duplicates dropped, order of items kept
    both = expand_inputs([str(tmp_path / "sub" / "c.png"), str(tmp_path), str(tmp_path / "a.jpg")])
    assert both == [tmp_path / "sub" / "c.png", tmp_path / "a.jpg", tmp_path / "b.png"]
    assert list_images(tmp_path, recursive=True) == [tmp_path / "a.jpg", tmp_path / "b.png", tmp_path / "sub" / "c.png"]


def test_expand_inputs_nothing_found(tmp_path: Path) -> None:
    _tree(tmp_path)
    with pytest.raises(FovealError, match=r"pattern '.*\*\.bmp' matches no image files"):
        expand_inputs([str(tmp_path / "*.bmp")])
    with pytest.raises(FovealError, match="missing.png does not exist"):
        expand_inputs([str(tmp_path / "missing.png")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FovealError, match="holds no images"):
        expand_inputs([str(tmp_path / "empty")])
    with pytest.raises(FovealError, match="no inputs given"):
        expand_inputs([])
