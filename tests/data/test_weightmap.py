"""U-Net weight map: separation borders, class mask, hand-computed weights, the windowed path against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from foveal.data.weightmap import (
    class_mask,
    class_weights_of,
    default_cutoff,
    nearest_two_distances,
    separation_borders,
    weight_map,
)
from foveal.errors import FovealError


def _touching_squares() -> np.ndarray:
    """Squares 1 and 2 share an edge (cols 7 | 8); square 3 is one background column (14) away from square 2."""
    labels = np.zeros((10, 20), dtype=np.int32)
    labels[2:8, 2:8] = 1
    labels[2:8, 8:14] = 2
    labels[2:8, 15:19] = 3
    return labels


def _two_rectangles() -> np.ndarray:
    """Two 10×8 rectangles whose facing columns (9 and 13) are 4 px apart: gap columns 10, 11, 12."""
    labels = np.zeros((20, 24), dtype=np.int64)
    labels[5:15, 2:10] = 1
    labels[5:15, 13:21] = 2
    return labels


def _touching_blobs(size: int, count: int, seed: int) -> np.ndarray:
    """Discs of random radius around random seeds, split between seeds by nearest seed (so many blobs touch)."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros((size, size), dtype=bool)
    seeds[tuple(rng.integers(0, size, (2, count)))] = True
    markers, found = ndimage.label(seeds)
    distance, (rows, cols) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    labels = markers[rows, cols]
    radius = rng.uniform(0.6, 1.4, found + 1) * size / math.sqrt(count) * 0.6
    labels[distance > radius[labels]] = 0
    return labels


def _brute_force(labels: np.ndarray, w0: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Border term by one full-image distance transform per cell, and the background mask it applies to."""
    mask = class_mask(labels)
    cells = labels * mask
    ids = [i for i in np.unique(cells) if i != 0]
    stack = np.sort(np.stack([ndimage.distance_transform_edt(cells != i) for i in ids]), axis=0)
    term = w0 * np.exp(-((stack[0] + stack[1]) ** 2) / (2 * sigma**2))
    background = mask == 0
    return np.where(background, term, 0.0), background


def test_touching_squares_border_pixels_and_nothing_else() -> None:
    labels = _touching_squares()
    expected = np.zeros(labels.shape, dtype=bool)
    expected[2:8, 7:9] = True  # the last column of square 1 and the first of square 2
    np.testing.assert_array_equal(separation_borders(labels), expected)

    mask = class_mask(labels)
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, ((labels > 0) & ~expected).astype(np.int64))
    np.testing.assert_array_equal(class_mask(labels, borders=False), (labels > 0).astype(np.int64))

    wide = np.zeros(labels.shape, dtype=bool)
    wide[2:8, 6:10] = True
    wide[2:8, 13] = True  # square 2's last column sees square 3 within 2 px
    wide[2:8, 15] = True
    np.testing.assert_array_equal(separation_borders(labels, width=2), wide)


def test_separation_borders_accepts_tensors_and_empty() -> None:
    labels = _touching_squares()
    np.testing.assert_array_equal(separation_borders(torch.from_numpy(labels)), separation_borders(labels))
    huge = labels.astype(np.int64) << 60  # ids beyond float64's exact integers
    np.testing.assert_array_equal(separation_borders(huge), separation_borders(labels))
    assert not separation_borders(np.zeros((5, 5), dtype=np.uint8)).any()
    single = np.zeros((6, 6), dtype=np.uint16)
    single[1:5, 1:5] = 7
    assert not separation_borders(single).any()


def test_hand_computed_weights_between_two_rectangles() -> None:
    labels = _two_rectangles()
    # 480 pixels: 160 foreground, 320 background → balanced weights background 1, foreground 2
    np.testing.assert_allclose(class_weights_of(class_mask(labels), 2), [1.0, 2.0])
    weights = weight_map(labels)
    assert weights.dtype == np.float32 and weights.shape == labels.shape
    middle = 1.0 + 10.0 * math.exp(-((2 + 2) ** 2) / (2 * 5.0**2))  # d1 = d2 = 2
    assert weights[9, 11] == pytest.approx(middle, abs=1e-5)
    assert weights[9, 10] == pytest.approx(middle, abs=1e-5)  # d1 = 1, d2 = 3: same sum
    above = 1.0 + 10.0 * math.exp(-((2 * math.sqrt(13)) ** 2) / 50.0)  # (2, 11) → (5, 9) and (5, 13)
    assert weights[2, 11] == pytest.approx(above, abs=1e-5)
    assert np.all(weights[labels > 0] == 2.0)  # no border term inside cells
    assert weights[9, 11] > weights[9, 22] > 1.0  # the term decays away from the gap

    custom = weight_map(labels, w0=4.0, sigma=3.0, class_weights=(0.5, 3.0))
    assert custom[9, 11] == pytest.approx(0.5 + 4.0 * math.exp(-16 / 18), abs=1e-5)
    assert np.all(custom[labels > 0] == 3.0)


def test_separation_border_pixels_get_the_border_term() -> None:
    labels = _touching_squares()
    weights = weight_map(labels, class_weights=None)
    # (4, 7) lost to the border: nearest cell pixel (4, 6) at 1, square 2 now starts at column 9, 2 away
    assert weights[4, 7] == pytest.approx(1.0 + 10.0 * math.exp(-9 / 50), abs=1e-5)
    assert weights[4, 8] == pytest.approx(1.0 + 10.0 * math.exp(-9 / 50), abs=1e-5)
    assert np.all(weights[class_mask(labels) == 1] == 1.0)


def test_zero_w0_gives_class_weights_that_balance_total_weight() -> None:
    labels = _touching_blobs(64, 12, seed=3)
    mask = class_mask(labels)
    weights = weight_map(labels, w0=0.0)
    np.testing.assert_allclose(weights, class_weights_of(mask, 2)[mask], rtol=1e-6)
    # "balanced": each class carries the same total weight (the count of the most frequent class), which gets 1
    totals = [weights[mask == c].astype(np.float64).sum() for c in (0, 1)]
    assert totals[0] == pytest.approx(totals[1], rel=1e-5)
    assert totals[0] == pytest.approx(max(np.count_nonzero(mask == 0), np.count_nonzero(mask == 1)), rel=1e-5)
    assert np.all(weight_map(labels, w0=0.0, class_weights=None) == 1.0)


def test_single_instance_or_none_has_no_border_term() -> None:
    single = np.zeros((30, 30), dtype=np.int64)
    single[10:20, 5:15] = 4
    np.testing.assert_array_equal(weight_map(single, class_weights=None), np.ones((30, 30), np.float32))
    assert np.all(weight_map(np.zeros((8, 8), dtype=np.int64)) == 1.0)


def test_windowed_path_equals_brute_force() -> None:
    labels = _touching_blobs(128, 30, seed=0)
    assert len(np.unique(labels)) - 1 >= 25
    assert separation_borders(labels).any()  # some blobs touch
    mask = class_mask(labels)
    class_part = class_weights_of(mask, 2)[mask]
    brute, background = _brute_force(labels, w0=10.0, sigma=5.0)

    exact = weight_map(labels, cutoff=math.inf)
    np.testing.assert_allclose(exact, class_part + brute, atol=1e-4, rtol=0)

    fast = weight_map(labels)
    bound = 10.0 * math.exp(-(default_cutoff(5.0) ** 2) / 50.0)
    assert bound == pytest.approx(1e-3 * 10.0)
    strong = background & (brute > bound)
    assert strong.sum() > 0.5 * background.sum()
    np.testing.assert_allclose(fast[strong], (class_part + brute)[strong], atol=1e-4, rtol=0)
    assert np.abs(fast - (class_part + brute)).max() <= bound + 1e-4

    # a small cutoff really drops far cells (so the comparison above exercises the windows)
    assert np.abs(weight_map(labels, cutoff=3.0) - exact).max() > 1e-2


def test_nearest_two_distances_hand_computed() -> None:
    cells = np.zeros((1, 9), dtype=np.int64)
    cells[0, 0], cells[0, 4], cells[0, 8] = 1, 2, 3
    d1, d2 = nearest_two_distances(cells)
    np.testing.assert_array_equal(d1[0], [0, 1, 2, 1, 0, 1, 2, 1, 0])
    np.testing.assert_array_equal(d2[0], [4, 3, 2, 3, 4, 3, 2, 3, 4])
    near1, near2 = nearest_two_distances(cells, cutoff=2.0)
    assert near1[0, 2] == 2 and near2[0, 2] == 2
    assert np.isinf(near2[0, 0])  # cells 2 and 3 are beyond the cutoff from pixel 0
    sparse = cells * 1000  # ids far beyond the pixel count are renumbered internally
    np.testing.assert_array_equal(nearest_two_distances(sparse)[1], d2)


def test_tensor_input_matches_numpy() -> None:
    labels = _touching_blobs(48, 6, seed=1)
    np.testing.assert_array_equal(weight_map(torch.from_numpy(labels)), weight_map(labels))


@pytest.mark.parametrize(
    ("labels", "options", "message"),
    [
        (np.zeros((2, 3, 4), dtype=np.int64), {}, "2-D"),
        (np.full((4, 4), 0.5), {}, "whole numbers"),
        (np.full((4, 4), -1), {}, "≥ 0"),
        (np.zeros((4, 4), dtype=np.int64), {"class_weights": "inverse"}, "balanced"),
        (np.zeros((4, 4), dtype=np.int64), {"class_weights": (1.0, 2.0, 3.0)}, "two finite numbers"),
        (np.zeros((4, 4), dtype=np.int64), {"sigma": 0.0}, "sigma"),
        (np.zeros((4, 4), dtype=np.int64), {"w0": -1.0}, "w0"),
        (np.zeros((4, 4), dtype=np.int64), {"cutoff": 0.0}, "cutoff"),
        (np.zeros((4, 4), dtype=np.int64), {"border_width": 0}, "width"),
    ],
)
def test_bad_input_raises(labels: np.ndarray, options: dict[str, object], message: str) -> None:
    with pytest.raises(FovealError, match=message):
        weight_map(labels, **options)  # type: ignore[arg-type]


def test_class_weights_of_checks_values() -> None:
    with pytest.raises(FovealError, match="0..1"):
        class_weights_of(np.array([0, 1, 2]), 2)
    np.testing.assert_allclose(class_weights_of(np.array([0, 0, 0, 2]), 3), [1.0, 1.0, 3.0])
