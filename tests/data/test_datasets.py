"""open_dataset over IDX folders, image folders, the bundled sample and the Debian package; split_train_val."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from foveal.data import classification
from foveal.data.classification import (
    FASHION_MNIST_CLASSES,
    FASHION_SAMPLE,
    MNIST_CLASSES,
    ClassificationData,
    open_dataset,
    split_train_val,
    subset,
)
from foveal.data.idx import read_idx, write_idx
from foveal.errors import FovealError

DEBIAN = classification.DEBIAN_FASHION_MNIST
RNG = np.random.default_rng(0)


def _gray(path: Path, value: int = 100, size: tuple[int, int] = (8, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)


def _rgb(path: Path, color: tuple[int, int, int] = (200, 10, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.broadcast_to(np.array(color, np.uint8), (8, 10, 3)).copy()).save(path)


def _idx_folder(folder: Path, n_train: int = 20, n_test: int = 6, classes: int = 10, gz: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", RNG.integers(0, 256, (n, 5, 4), dtype=np.uint8), gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", (np.arange(n) % classes).astype(np.uint8), gz)
    return folder


# ------------------------------------------------------------------------------------------------- IDX folders


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder(tmp_path: Path, gz: bool) -> None:
    folder = _idx_folder(tmp_path / "digits", gz=gz)
    train = open_dataset(str(folder))
    assert len(train) == 20 and train.classes == list(MNIST_CLASSES) and train.channels == 1
    assert isinstance(train.images, torch.Tensor) and train.images.shape == (20, 1, 5, 4)
    image, label = train.get(13)
    assert image.dtype == torch.uint8 and image.shape == (1, 5, 4) and label == 3
    expected = read_idx(folder / f"train-images-idx3-ubyte{'.gz' if gz else ''}")[13]
    assert torch.equal(image[0], torch.from_numpy(expected))
    test = open_dataset(str(folder), split="test")
    assert len(test) == 6
    assert len(open_dataset(str(folder), split="val")) == 6  # val names the held-out set of an IDX folder
    with pytest.raises(IndexError):
        train.get(20)


def test_idx_channels_3_replicates(tmp_path: Path) -> None:
    data = open_dataset(str(_idx_folder(tmp_path / "d")), channels=3)
    image, _ = data[4]
    assert data.channels == 3 and image.shape == (3, 5, 4)
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])


def test_idx_class_names(tmp_path: Path) -> None:
    assert open_dataset(str(_idx_folder(tmp_path / "my-fashion-set"))).classes == list(FASHION_MNIST_CLASSES)
    folder = _idx_folder(tmp_path / "three", classes=3)
    (folder / "classes.txt").write_text("cat\ndog\n\nbird\n")
    assert open_dataset(str(folder)).classes == ["cat", "dog", "bird"]


def test_idx_alternative_names(tmp_path: Path) -> None:
    folder = tmp_path / "kaggle"
    folder.mkdir()
    write_idx(folder / "test-images.idx3-ubyte", np.zeros((3, 2, 2), np.uint8), gzip=False)
    write_idx(folder / "test-labels.idx1-ubyte", np.array([0, 1, 2], np.uint8), gzip=False)
    assert len(open_dataset(str(folder), split="test")) == 3
    with pytest.raises(FovealError, match="no images file for this split: expected train-images-idx3-ubyte"):
        open_dataset(str(folder), split="train")


def test_idx_count_mismatch(tmp_path: Path) -> None:
    folder = _idx_folder(tmp_path / "d")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(19, np.uint8))
    with pytest.raises(FovealError, match="holds 20 images but .*train-labels-idx1-ubyte.gz holds 19 labels"):
        open_dataset(str(folder))


def test_idx_labels_out_of_range(tmp_path: Path) -> None:
    folder = _idx_folder(tmp_path / "d")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.full(20, 12, np.uint8))
    with pytest.raises(FovealError, match=r"label 12, outside 0..9 for 10 classes; list the class names in .*classes"):
        open_dataset(str(folder))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.full(20, -1, np.int8))
    with pytest.raises(FovealError, match="label -1"):
        open_dataset(str(folder))


def test_idx_bad_images_rank(tmp_path: Path) -> None:
    folder = _idx_folder(tmp_path / "d")
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((20, 4), np.uint8))
    with pytest.raises(FovealError, match=r"expected uint8 \(N, H, W\)"):
        open_dataset(str(folder))


# ----------------------------------------------------------------------------------- bundled sample and Debian


def test_bundled_sample() -> None:
    train = open_dataset("fashion-mnist-sample")
    test = open_dataset("fashion-mnist-sample", split="test")
    assert (len(train), len(test)) == (3000, 1000)
    assert train.classes == list(FASHION_MNIST_CLASSES) and len(train.classes) == 10
    image, label = train.get(0)
    assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and 0 <= label < 10
    assert min(train.class_counts()) > 250 and min(test.class_counts()) > 80  # every class well represented
    assert open_dataset("fashion-mnist-sample", channels=3).get(0)[0].shape == (3, 28, 28)
    assert (FASHION_SAMPLE / "PROVENANCE.md").is_file()
    # the same folder opened as a path gives the same data and names (classes.txt)
    assert open_dataset(str(FASHION_SAMPLE)).classes == train.classes


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_debian_fashion_mnist() -> None:
    train = open_dataset("fashion-mnist")
    test = open_dataset("fashion-mnist", split="test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.class_counts() == [6000] * 10 and test.class_counts() == [1000] * 10
    assert train.get(59999)[0].shape == (1, 28, 28)
    # the bundled sample is exactly the first 3000 / 1000 images, labels included
    sample = open_dataset("fashion-mnist-sample")
    assert isinstance(sample.images, torch.Tensor) and isinstance(train.images, torch.Tensor)
    assert torch.equal(sample.images, train.images[:3000]) and torch.equal(sample.labels, train.labels[:3000])
    sample_test = open_dataset("fashion-mnist-sample", split="test")
    assert torch.equal(sample_test.labels, test.labels[:1000])


def test_debian_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(classification, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(FovealError, match="apt-get install dataset-fashion-mnist.*fashion-mnist-sample"):
        open_dataset("fashion-mnist")


def test_bad_spec_split_channels(tmp_path: Path) -> None:
    with pytest.raises(FovealError, match="does not exist"):
        open_dataset(str(tmp_path / "nowhere"))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(FovealError, match="is a file: pass the folder that holds it"):
        open_dataset(str(tmp_path / "train-images-idx3-ubyte.gz"))
    with pytest.raises(FovealError, match="unknown split 'valid'"):
        open_dataset("fashion-mnist-sample", split="valid")
    with pytest.raises(FovealError, match="bad channels=4"):
        open_dataset("fashion-mnist-sample", channels=4)


# ------------------------------------------------------------------------------------------------ image folders


def test_image_folder(tmp_path: Path) -> None:
    _gray(tmp_path / "dog" / "1.png", 1)
    _gray(tmp_path / "cat" / "b.png", 2)
    _gray(tmp_path / "cat" / "a.png", 3)
    _gray(tmp_path / "cat" / "nested" / "c.png", 4)  # class folders are searched recursively
    (tmp_path / "cat" / "readme.txt").write_text("ignored")
    (tmp_path / ".cache").mkdir()  # hidden: not a class
    data = open_dataset(str(tmp_path))
    assert data.classes == ["cat", "dog"] and len(data) == 4 and data.channels == 1
    assert data.labels.tolist() == [0, 0, 0, 1] and data.class_counts() == [3, 1]
    values = [int(data.get(i)[0][0, 0, 0]) for i in range(4)]
    assert values == [3, 2, 4, 1]  # sorted by path within each class
    assert data.get(0)[0].shape == (1, 8, 10)
    data.verify()
    part = data.subset([3, 0])
    assert part.images == [tmp_path / "dog" / "1.png", tmp_path / "cat" / "a.png"] and part.labels.tolist() == [1, 0]
    # no split sub-folders: every split is the whole folder
    assert open_dataset(str(tmp_path), split="test").labels.tolist() == data.labels.tolist()


def test_image_folder_with_splits(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("a", "b", "c"):
            for k in range(n):
                _gray(tmp_path / split / cls / f"{k}.png")
    (tmp_path / "val" / "c" / "0.png").unlink()
    (tmp_path / "val" / "c" / "1.png").unlink()
    (tmp_path / "val" / "c").rmdir()  # a class missing from val is fine
    train = open_dataset(str(tmp_path), split="train")
    val = open_dataset(str(tmp_path), split="val")
    test = open_dataset(str(tmp_path), split="test")  # no test/: falls back to val/
    assert len(train) == 9 and train.classes == ["a", "b", "c"]
    assert len(val) == 4 and val.classes == ["a", "b", "c"] and val.class_counts() == [2, 2, 0]
    assert isinstance(test.images, list) and test.images == val.images
    _gray(tmp_path / "val" / "zebra" / "0.png")
    with pytest.raises(FovealError, match="zebra has no counterpart in .*train"):
        open_dataset(str(tmp_path), split="val")


def test_one_class_and_empty_class(tmp_path: Path) -> None:
    _gray(tmp_path / "one" / "only" / "a.png")
    with pytest.raises(FovealError, match="only one class sub-folder \\('only'\\).*at least 2 classes"):
        open_dataset(str(tmp_path / "one"))
    _gray(tmp_path / "two" / "cat" / "a.png")
    (tmp_path / "two" / "dog").mkdir()
    (tmp_path / "two" / "dog" / "notes.txt").write_text("no images here")
    with pytest.raises(FovealError, match=r"class folder .*two/dog holds no images.*add images or remove the folder"):
        open_dataset(str(tmp_path / "two"))
    _gray(tmp_path / "flat" / "a.png")
    with pytest.raises(FovealError, match="holds images but no class sub-folders"):
        open_dataset(str(tmp_path / "flat"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FovealError, match="neither IDX files nor class sub-folders"):
        open_dataset(str(tmp_path / "empty"))


def test_corrupt_image_found_on_load_and_by_verify(tmp_path: Path) -> None:
    _gray(tmp_path / "a" / "1.png")
    _gray(tmp_path / "b" / "1.png")
    bad = tmp_path / "b" / "2.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    data = open_dataset(str(tmp_path))  # the header vote skips the broken file
    assert len(data) == 3 and data.channels == 1
    data.get(0)
    with pytest.raises(FovealError, match="2.png"):
        data.get(2)
    with pytest.raises(FovealError, match=r"(?s)1 of 3 images of dataset .* cannot be loaded.*b/2.png"):
        data.verify()
    # a truncated JPEG has a valid header: only a full decode finds it
    full = tmp_path / "full.jpg"
    Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    (tmp_path / "a" / "cut.jpg").write_bytes(full.read_bytes()[:1500])
    full.unlink()
    with pytest.raises(FovealError, match=r"(?s)2 of 4 images .*a/cut.jpg.*truncated.*b/2.png"):
        open_dataset(str(tmp_path)).verify()


def test_mixed_modes(tmp_path: Path) -> None:
    _gray(tmp_path / "a" / "1.png", 50)
    _gray(tmp_path / "a" / "2.png", 60)
    _rgb(tmp_path / "b" / "3.png", (200, 10, 30))
    data = open_dataset(str(tmp_path))  # majority grayscale → 1 channel
    assert data.channels == 1
    assert [data.get(i)[0].shape for i in range(3)] == [(1, 8, 10)] * 3
    luma = round(0.299 * 200 + 0.587 * 10 + 0.114 * 30)
    assert abs(int(data.get(2)[0][0, 0, 0]) - luma) <= 1
    rgb = open_dataset(str(tmp_path), channels=3)
    assert [rgb.get(i)[0].shape for i in range(3)] == [(3, 8, 10)] * 3
    _rgb(tmp_path / "b" / "4.png")
    assert open_dataset(str(tmp_path)).channels == 3  # a tie gives RGB
    _rgb(tmp_path / "b" / "5.png")
    assert open_dataset(str(tmp_path)).channels == 3  # majority RGB


def test_split_layout_channels_come_from_train(tmp_path: Path) -> None:
    for cls in ("a", "b"):
        _gray(tmp_path / "train" / cls / "1.png")
        _rgb(tmp_path / "test" / cls / "1.png")
    assert open_dataset(str(tmp_path), split="test").channels == 1


# ------------------------------------------------------------------------------------------------- splitting


def test_split_train_val_stratified_and_deterministic() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    train, val = split_train_val(labels, 0.2, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert sorted(train + val) == list(range(100)) and not set(train) & set(val)
    assert torch.bincount(labels[val], minlength=3).tolist() == [10, 6, 4]
    assert split_train_val(labels, 0.2, seed=3) == (train, val)
    assert split_train_val(labels, 0.2, seed=4)[1] != val
    # remainders go to the largest fractional shares: 7 * 0.3 = 2.1 → 2, 3 * 0.3 = 0.9 → 1
    _, small_val = split_train_val(torch.tensor([0] * 7 + [1] * 3), 0.3, seed=0)
    assert torch.bincount(torch.tensor([0] * 7 + [1] * 3)[small_val]).tolist() == [2, 1]


def test_split_train_val_on_dataset_and_subset() -> None:
    data = ClassificationData(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10) % 2, ["x", "y"], 1)
    train, val = split_train_val(data, 0.5, seed=0)
    part = data.subset(val)
    assert len(part) == 5 and part.class_counts() == [3, 2]  # 2.5 each: the tie goes to the lower label
    assert torch.equal(part.labels, data.labels[val])
    assert torch.equal(subset(data, range(3)).labels, torch.tensor([0, 1, 0]))
    assert split_train_val(torch.tensor([0, 1]), 0.01)[1] != []  # at least one validation image
    with pytest.raises(FovealError, match="bad val_fraction=1.0"):
        split_train_val(data, 1.0, seed=0)
    with pytest.raises(FovealError, match="cannot split 1 image"):
        split_train_val(torch.tensor([0]), 0.5)
