"""Overlays and the paper-layout figures: shapes, value ranges, files written."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from foveal.errors import FovealError
from foveal.explain.overlay import figure_boxes, figure_top5, overlay


def _image() -> np.ndarray:
    return np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)


def test_overlay_blends_image_and_colour_map() -> None:
    image = _image()
    cam = np.zeros((12, 16))
    cam[3, 5] = 7.0  # the maximum: full colour at alpha 1
    out = overlay(image, cam, alpha=0.0)
    assert out.shape == (12, 16, 3) and out.dtype == np.uint8
    assert np.array_equal(out, np.repeat(image[..., None], 3, axis=2))  # alpha 0: the image
    full = overlay(image, cam, alpha=1.0)
    jet = matplotlib.colormaps["jet"]
    assert np.array_equal(full[3, 5], np.round(255 * np.array(jet(1.0)[:3])).astype(np.uint8))
    assert np.array_equal(full[0, 0], np.round(255 * np.array(jet(0.0)[:3])).astype(np.uint8))
    half = overlay(image, cam, alpha=0.5).astype(int)
    assert np.all(np.abs(half - (out.astype(int) + full.astype(int)) / 2) <= 1)


def test_overlay_accepts_float_rgb_and_resizes_the_map() -> None:
    rgb = np.random.default_rng(0).random((20, 24, 3))
    small = torch.rand(5, 6)  # a torch map at feature size
    out = overlay(rgb, small.numpy())
    assert out.shape == (20, 24, 3) and out.dtype == np.uint8
    assert np.array_equal(overlay(rgb + 1.0, np.ones((5, 6)), alpha=0.0), np.full((20, 24, 3), 255, np.uint8))


def test_overlay_errors() -> None:
    with pytest.raises(FovealError, match="alpha"):
        overlay(_image(), np.zeros((12, 16)), alpha=2.0)
    with pytest.raises(FovealError, match="colormap"):
        overlay(_image(), np.zeros((12, 16)), cmap="no-such-map")
    with pytest.raises(FovealError, match=r"\(H, W\)"):
        overlay(np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4)))


def test_figure_top5_writes_a_png(tmp_path: Path) -> None:
    maps = np.random.default_rng(1).random((5, 3, 4))
    path = figure_top5(
        _image(), maps, ["a", "b", "c", "d", "e"], [0.5, 0.2, 0.1, 0.1, 0.05], tmp_path / "f" / "top5.png"
    )
    assert path.is_file()
    with Image.open(path) as png:
        width, height = png.size
    assert width > 5 * height  # one row: the image then five maps
    with pytest.raises(FovealError, match="one class name and one score per map"):
        figure_top5(_image(), maps, ["a"], [0.5] * 5, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_figure_boxes_draws_both_colours(tmp_path: Path) -> None:
    cam = np.zeros((12, 16))
    path = figure_boxes(_image(), cam, [1, 1, 9, 8], np.array([[4, 3, 15, 11]]), tmp_path / "boxes.png")
    with Image.open(path) as png:
        pixels = np.asarray(png.convert("RGB")).astype(int)
    green = (pixels[..., 1] > 150) & (pixels[..., 0] < 80) & (pixels[..., 2] < 80)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert green.sum() > 50 and red.sum() > 50
    with pytest.raises(FovealError, match="boxes"):
        figure_boxes(_image(), cam, [1, 2, 3], [0, 0, 1, 1], tmp_path / "bad.png")
