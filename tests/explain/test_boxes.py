"""Map → box: the paper's 20 %-of-max threshold and largest connected component, on hand-made maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from foveal.errors import FovealError
from foveal.explain.boxes import map_to_box, maps_to_boxes


def _two_blobs() -> torch.Tensor:
    cam = torch.zeros(20, 30)
    cam[2:5, 3:7] = 1.0  # small and bright: 12 px
    cam[10:18, 12:27] = 0.5  # large and dimmer: 120 px
    return cam


def test_two_blobs_give_the_larger_ones_box() -> None:
    # rows 10..17, columns 12..26 → x2, y2 exclusive
    assert map_to_box(_two_blobs()).tolist() == [12.0, 10.0, 27.0, 18.0]
    # above 60 % of the max only the bright blob survives
    assert map_to_box(_two_blobs(), threshold=0.6).tolist() == [3.0, 2.0, 7.0, 5.0]


def test_threshold_is_inclusive() -> None:
    cam = torch.zeros(6, 6)
    cam[1, 1] = 1.0
    cam[3:6, 3:6] = 0.2
    assert map_to_box(cam, threshold=0.2).tolist() == [3.0, 3.0, 6.0, 6.0]  # 0.2 ≥ 0.2 · 1.0 is kept
    assert map_to_box(cam, threshold=0.21).tolist() == [1.0, 1.0, 2.0, 2.0]


def test_max_and_range_differ_on_a_map_with_an_offset() -> None:
    cam = torch.full((16, 16), 10.0)
    cam[1:4, 1:4] = 20.0  # 9 px
    cam[8:15, 6:14] = 13.0  # 56 px
    # "max": keep ≥ 0.2 · 20 = 4 → every pixel, one component = the whole map
    assert map_to_box(cam, relative_to="max").tolist() == [0.0, 0.0, 16.0, 16.0]
    # "range": keep value − 10 ≥ 0.2 · 10 → both blobs; the larger one wins
    assert map_to_box(cam, relative_to="range").tolist() == [6.0, 8.0, 14.0, 15.0]
    # at 0.4 of the range (≥ 14) only the bright blob is left
    assert map_to_box(cam, threshold=0.4, relative_to="range").tolist() == [1.0, 1.0, 4.0, 4.0]


def test_empty_maps_give_the_whole_image() -> None:
    whole = [0.0, 0.0, 9.0, 7.0]
    assert map_to_box(torch.zeros(7, 9)).tolist() == whole
    assert map_to_box(torch.full((7, 9), 3.0), relative_to="range").tolist() == whole
    assert map_to_box(-torch.rand(7, 9) - 0.1).tolist() == whole  # max ≤ 0 under "max"
    assert map_to_box(torch.full((7, 9), float("nan"))).tolist() == whole
    nan = _two_blobs()
    nan[0, 0] = float("nan")
    nan[0, 1] = float("inf")  # non-finite values are ignored
    assert map_to_box(nan).tolist() == [12.0, 10.0, 27.0, 18.0]


def test_connectivity() -> None:
    cam = torch.zeros(8, 8)
    cam[1:3, 1:3] = 1.0  # 4 px
    cam[3:6, 3:6] = 1.0  # 9 px, touching the first only at a corner
    assert map_to_box(cam).tolist() == [3.0, 3.0, 6.0, 6.0]
    assert map_to_box(cam, connectivity=2).tolist() == [1.0, 1.0, 6.0, 6.0]


def test_ties_go_to_the_first_component_in_raster_order() -> None:
    cam = torch.zeros(6, 10)
    cam[3:5, 1:3] = 1.0
    cam[0:2, 6:8] = 1.0  # same size, earlier in raster order
    assert map_to_box(cam).tolist() == [6.0, 0.0, 8.0, 2.0]


def _reference_box(cam: np.ndarray, threshold: float) -> list[float]:
    """One map at a time, the plain way."""
    h, w = cam.shape
    if cam.max() <= 0:
        return [0.0, 0.0, float(w), float(h)]
    labels, count = ndimage.label(cam >= threshold * cam.max())
    sizes = np.bincount(labels.ravel())[1:]
    ys, xs = np.nonzero(labels == int(np.argmax(sizes)) + 1)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def test_batch_matches_one_map_at_a_time() -> None:
    g = torch.Generator().manual_seed(0)
    maps = torch.nn.functional.avg_pool2d(torch.randn(3, 4, 24, 20, generator=g), 5, 1, 2)
    maps[1, 2] = -1.0  # an empty map inside the batch
    boxes = maps_to_boxes(maps)
    assert boxes.shape == (3, 4, 4) and boxes.dtype == torch.float32
    for i in range(3):
        for j in range(4):
            assert boxes[i, j].tolist() == _reference_box(maps[i, j].numpy(), 0.2)
    assert boxes[1, 2].tolist() == [0.0, 0.0, 20.0, 24.0]


def test_bad_arguments() -> None:
    with pytest.raises(FovealError, match="threshold"):
        map_to_box(torch.zeros(4, 4), threshold=20)
    with pytest.raises(FovealError, match="relative_to"):
        map_to_box(torch.zeros(4, 4), relative_to="min")
    with pytest.raises(FovealError, match=r"\(H, W\)"):
        map_to_box(torch.zeros(2, 4, 4))
    with pytest.raises(FovealError, match="connectivity"):
        maps_to_boxes(torch.zeros(2, 4, 4), connectivity=3)
