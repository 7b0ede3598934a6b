"""Weight-map figure and segmentation overlay PNGs: valid images, expected pixels, input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from foveal.data.weightmap import separation_borders, weight_map
from foveal.errors import FovealError
from foveal.report.segmentation_plots import label_colours, plot_segmentation_overlay, plot_weight_map_figure


def _sample() -> tuple[np.ndarray, np.ndarray]:
    instances = np.zeros((40, 60), dtype=np.int64)
    instances[5:20, 5:25] = 1
    instances[5:20, 25:45] = 2  # touches 1
    instances[25:35, 10:50] = 3
    rng = np.random.default_rng(0)
    image = (instances > 0) * 120 + rng.integers(0, 60, instances.shape)
    return image.astype(np.uint16), instances


def _open_png(path: Path) -> np.ndarray:
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_weight_map_figure(tmp_path: Path) -> None:
    image, instances = _sample()
    out = plot_weight_map_figure(image, instances, weight_map(instances), tmp_path / "fig" / "fig3.png", title="Fig. 3")
    assert out == tmp_path / "fig" / "fig3.png"
    pixels = _open_png(out)
    assert pixels.shape[0] >= 400 and pixels.shape[1] >= 600
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # colour map and colour bar, not a blank canvas
    # RGB image, explicit borders and a tensor weight map are accepted too
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.uint8)
    borders = separation_borders(instances)
    plot_weight_map_figure(rgb, instances, torch.from_numpy(weight_map(instances)), out, borders=borders)
    assert not list(out.parent.glob(".*.tmp"))  # the atomic write left no temporary file


def test_overlay_pixels(tmp_path: Path) -> None:
    image, instances = _sample()
    truth = np.zeros_like(instances)
    truth[25:35, 10:50] = 9
    grey = image.astype(np.uint8)  # uint8 is shown as is (no contrast stretch), so pixels can be predicted
    out = plot_segmentation_overlay(grey, instances, tmp_path / "overlay.png", labels_true=truth, alpha=0.25)
    pixels = _open_png(out)
    assert pixels.shape == (40, 60, 3)  # one PNG pixel per image pixel, no margins
    colours = label_colours(instances)
    np.testing.assert_array_equal(pixels[5, 10], np.round(colours[5, 10] * 255))  # outline of 1: opaque colour
    np.testing.assert_array_equal(pixels[25, 30], [255, 255, 0])  # ground-truth outline over instance 3: yellow
    blend = 0.75 * grey[12, 15] / 255 + 0.25 * colours[12, 15]  # inside instance 1
    np.testing.assert_array_equal(pixels[12, 15], np.round(blend * 255))
    np.testing.assert_array_equal(pixels[0, 0], [grey[0, 0]] * 3)  # background untouched
    big = plot_segmentation_overlay(image, instances, tmp_path / "big.png", scale=3)
    assert _open_png(big).shape == (120, 180, 3)


def test_label_colours_stable_and_distinct() -> None:
    labels = np.array([[0, 1, 2], [3, 1, 0]])
    colours = label_colours(labels)
    np.testing.assert_array_equal(colours[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(colours[0, 1], colours[1, 1])
    assert len({tuple(c) for c in colours.reshape(-1, 3)}) == 4
    np.testing.assert_array_equal(label_colours(np.array([[2]]))[0, 0], colours[0, 2])  # same id, same colour


def test_bad_shapes_raise(tmp_path: Path) -> None:
    image, instances = _sample()
    weights = weight_map(instances)
    path = tmp_path / "bad.png"
    with pytest.raises(FovealError, match="instances must be"):
        plot_weight_map_figure(image, instances[:10], weights, path)
    with pytest.raises(FovealError, match="weight must be"):
        plot_weight_map_figure(image, instances, weights.T, path)
    with pytest.raises(FovealError, match="borders must be"):
        plot_weight_map_figure(image, instances, weights, path, borders=np.zeros((3, 3), dtype=bool))
    with pytest.raises(FovealError, match="image must be"):
        plot_weight_map_figure(np.zeros((2, 40, 60)), instances, weights, path)
    with pytest.raises(FovealError, match="labels_pred must hold integer"):
        plot_segmentation_overlay(image, instances.astype(np.float32), path)
    with pytest.raises(FovealError, match="labels_pred must be"):
        plot_segmentation_overlay(image, instances[None], path)
    with pytest.raises(FovealError, match="labels_true must be"):
        plot_segmentation_overlay(image, instances, path, labels_true=instances[:, :5])
    with pytest.raises(FovealError, match="alpha"):
        plot_segmentation_overlay(image, instances, path, alpha=1.5)
    assert not path.exists()
