"""Synthetic touching cells: deterministic, the requested number of cells, real contacts without overlap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from foveal.data.synthetic import touching_cells
from foveal.errors import FovealError
from foveal.metrics.instances import merged_pairs


def test_deterministic_by_seed() -> None:
    a_img, a_lab = touching_cells(seed=3)
    b_img, b_lab = touching_cells(seed=3)
    c_img, c_lab = touching_cells(seed=4)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.array_equal(a_lab, c_lab)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cells_touch_and_are_whole(seed: int) -> None:
    image, labels = touching_cells(seed=seed)
    assert image.shape == labels.shape == (128, 128)
    assert image.dtype == np.float32 and labels.dtype == np.int32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert np.unique(labels).tolist() == list(range(21))  # background + cells 1..20
    assert merged_pairs(labels, labels)[1] > 0
    # Every cell is one connected piece, and no cell reaches the image border.
    for label in range(1, 21):
        assert ndi.label(labels == label)[1] == 1
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    assert not edge.any()


def test_touching_controls_contacts() -> None:
    pairs = [merged_pairs(lab, lab)[1] for lab in (touching_cells(touching=t, seed=0)[1] for t in (0.0, 1.0))]
    assert pairs[0] == 0 and pairs[1] >= 10


def test_cells_are_brighter_than_background() -> None:
    image, labels = touching_cells(noise=0.0, seed=1)
    assert image[labels > 0].mean() > image[labels == 0].mean() + 0.2


def test_options() -> None:
    image, labels = touching_cells((64, 96), n_cells=5, radius=(4, 6), seed=0)
    assert image.shape == (64, 96) and labels.max() == 5
    with pytest.raises(FovealError, match="fit"):
        touching_cells((20, 20), radius=(6, 12))
    with pytest.raises(FovealError, match="touching"):
        touching_cells(touching=1.5)


def test_cells_folder_is_an_image_and_instance_mask_dataset(tmp_path):
    import tifffile

    from foveal.data.segmentation import open_segmentation
    from foveal.data.synthetic import write_cells_folder

    root = write_cells_folder(tmp_path / "cells", 2, (40, 48), n_cells=4, radius=(4, 6))
    assert sorted(p.name for p in (root / "images").iterdir()) == ["cell0.png", "cell1.png"]
    _, labels = touching_cells((40, 48), 4, radius=(4, 6), seed=1)
    np.testing.assert_array_equal(tifffile.imread(root / "masks" / "cell1.tif"), labels)
    data = open_segmentation(root)
    assert len(data) == 2 and data.channels == 1
