"""The weakly supervised localization set: determinism, tight boxes inside the canvas, labels, IDX round trip."""

from __future__ import annotations

import pytest
import torch

from foveal.data.classification import FASHION_MNIST_CLASSES, open_dataset
from foveal.data.localization_set import build_localization_set
from foveal.errors import FovealError

SOURCE = "fashion-mnist-sample"


def test_same_arguments_give_the_same_set_and_a_larger_n_extends_it() -> None:
    a = build_localization_set(SOURCE, "test", 12, seed=3)
    b = build_localization_set(SOURCE, "test", 12, seed=3)
    longer = build_localization_set(SOURCE, "test", 20, seed=3)
    other = build_localization_set(SOURCE, "test", 12, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels)
    assert torch.equal(longer.images[:12], a.images) and torch.equal(longer.boxes[:12], a.boxes)
    assert not torch.equal(other.images, a.images)


def test_one_tight_box_inside_the_canvas_per_image_and_labels_in_range() -> None:
    size, scale = 64, (20, 48)
    data = build_localization_set(SOURCE, "train", 40, size=size, scale=scale, clutter=3, seed=0)
    assert data.images.shape == (40, 1, size, size) and data.images.dtype == torch.uint8
    assert data.labels.shape == (40,) and data.boxes.shape == (40, 4)
    assert data.classes == list(FASHION_MNIST_CLASSES) and data.source == f"{SOURCE} (train)"
    assert int(data.labels.min()) >= 0 and int(data.labels.max()) < len(data.classes)
    x1, y1, x2, y2 = data.boxes.unbind(1)
    assert bool((x1 >= 0).all() and (y1 >= 0).all() and (x2 <= size).all() and (y2 <= size).all())
    assert bool(((x2 > x1) & (y2 > y1)).all())
    assert bool(((x2 - x1 <= scale[1]) & (y2 - y1 <= scale[1])).all())  # the object's tight box fits its square
    for image, (a, b, c, d) in zip(data.images[:, 0], data.boxes.long().tolist(), strict=True):
        inside = image[b:d, a:c]
        # tight: ink on every edge row and column of the box (clutter never touches a box)
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()


def test_train_and_test_canvases_come_from_their_own_split() -> None:
    train = build_localization_set(SOURCE, "train", 8, clutter=0, seed=0)
    test = build_localization_set(SOURCE, "test", 8, clutter=0, seed=0)
    assert test.source == f"{SOURCE} (test)"
    # same seed, same placement draws, but the pasted objects are different source images
    assert not torch.equal(train.images, test.images)


def test_idx_folder_round_trip_feeds_the_classification_data_path(tmp_path) -> None:
    train = build_localization_set(SOURCE, "train", 10, seed=0)
    val = build_localization_set(SOURCE, "train", 6, seed=1)
    train.write_idx(tmp_path / "canvases", "train")
    val.write_idx(tmp_path / "canvases", "test")
    loaded = open_dataset(str(tmp_path / "canvases"), "train")
    held = open_dataset(str(tmp_path / "canvases"), "val")
    assert torch.equal(loaded.images, train.images) and torch.equal(loaded.labels, train.labels)
    assert torch.equal(held.images, val.images) and loaded.classes == train.classes
    in_memory = train.to_classification()
    assert in_memory.channels == 1 and torch.equal(in_memory.images, train.images) and len(in_memory) == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source": "mnist"}, "unknown source"),
        ({"split": "val"}, "unknown split"),
        ({"n": 0}, "at least one canvas"),
        ({"scale": (20, 80)}, "scale"),
    ],
)
def test_bad_arguments_are_user_errors(kwargs, message) -> None:
    args = {"source": SOURCE, "split": "train", "n": 4, **kwargs}
    with pytest.raises(FovealError, match=message):
        build_localization_set(**args)
