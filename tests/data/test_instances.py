"""Instances from class maps: border lines separate cells, specks go, labels are consecutive, expansion never merges."""

from __future__ import annotations

import numpy as np
import pytest

from foveal.data.instances import instances_from_classes, instances_from_probabilities
from foveal.errors import FovealError


def _two_discs_split_by_a_line(diagonal: bool = False) -> np.ndarray:
    """Two overlapping discs whose union is cut by a 1-px background line (vertical or diagonal)."""
    yy, xx = np.mgrid[:30, :40]
    fg = ((yy - 15) ** 2 + (xx - 13) ** 2 <= 81) | ((yy - 15) ** 2 + (xx - 26) ** 2 <= 81)
    line = (xx - yy == 5) if diagonal else (xx == 20)
    return (fg & ~line).astype(np.int64)


@pytest.mark.parametrize("diagonal", [False, True])
def test_one_pixel_border_separates_two_cells(diagonal: bool) -> None:
    classes = _two_discs_split_by_a_line(diagonal)
    labels = instances_from_classes(classes)
    assert labels.dtype == np.int32 and labels.max() == 2
    assert np.array_equal(labels > 0, classes == 1)
    if diagonal:  # 8-connectivity leaks through a diagonal line: one component
        assert instances_from_classes(classes, connectivity=2).max() == 1


def test_min_size_removes_specks_and_labels_are_consecutive() -> None:
    classes = np.zeros((20, 20), dtype=bool)
    classes[1:6, 1:6] = True  # 25 px
    classes[10, 10] = True  # 1 px speck
    classes[12:14, 1:3] = True  # 4 px
    classes[14:20, 12:20] = True  # 48 px
    labels = instances_from_classes(classes, min_size=5)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert np.count_nonzero(labels == 1) == 25 and np.count_nonzero(labels == 2) == 48
    assert labels[10, 10] == 0 and not labels[12:14, 1:3].any()
    assert instances_from_classes(classes).max() == 4


def test_expand_grows_without_merging() -> None:
    classes = _two_discs_split_by_a_line()
    grown = instances_from_classes(classes, expand=1)
    assert grown.max() == 2
    base = instances_from_classes(classes)
    assert np.all(grown[base > 0] == base[base > 0])  # instances keep their pixels and labels
    assert np.count_nonzero(grown) > np.count_nonzero(base)
    assert set(np.unique(grown[:, 20]).tolist()) >= {1, 2}  # the border line is shared out between the two cells


def test_border_class_of_a_three_class_map_is_background() -> None:
    classes = _two_discs_split_by_a_line()
    classes[:, 20] = np.where(classes[:, 19] > 0, 2, 0)  # mark the line as class 2 (border)
    assert instances_from_classes(classes).max() == 2
    assert instances_from_classes(classes, foreground=2).max() == 1


def test_probabilities_threshold() -> None:
    prob = np.zeros((10, 10), dtype=np.float32)
    prob[1:4, 1:4] = 0.9
    prob[6:9, 6:9] = 0.5  # not strictly above 0.5
    assert instances_from_probabilities(prob).max() == 1
    assert instances_from_probabilities(prob, threshold=0.4).max() == 2


def test_bad_input() -> None:
    with pytest.raises(FovealError, match="2-D"):
        instances_from_classes(np.zeros((2, 3, 3), dtype=bool))
    with pytest.raises(FovealError, match="probabilities"):
        instances_from_classes(np.zeros((3, 3)))
    with pytest.raises(FovealError, match="connectivity"):
        instances_from_classes(np.zeros((3, 3), dtype=bool), connectivity=3)
    with pytest.raises(FovealError, match="float"):
        instances_from_probabilities(np.zeros((3, 3), dtype=np.int64))
