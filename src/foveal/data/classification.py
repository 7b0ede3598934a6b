"""Classification datasets: IDX files (MNIST, Fashion-MNIST) and image folders, behind one type.

``open_dataset(spec, split, channels)`` accepts

- ``fashion-mnist``: the Debian package ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist/``
  (60,000 training and 10,000 test images);
- ``fashion-mnist-sample``: the sample bundled with foveal (the first 3,000 training and first 1,000 test images of
  Fashion-MNIST; see ``samples/fashion-mnist-sample/PROVENANCE.md``);
- a folder of IDX files in the MNIST layout: ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]`` and
  ``t10k-…`` (or ``test-…``) for the test split; ``.idx3-ubyte`` spellings are accepted too. Class names come from
  a ``classes.txt`` in the folder (one per line) if there is one, else the Fashion-MNIST names if the folder's name
  contains "fashion", else the digits "0".."9";
- an image folder with one sub-folder per class (``root/cat/*.png``, ``root/dog/*.jpg``; class sub-folders are
  searched recursively, hidden files and folders are skipped, classes are sorted by name).

Splits: ``train``, ``val`` and ``test``. IDX folders have a training set and one held-out set; ``val`` and ``test``
both name the held-out set. An image folder that has a ``train/`` sub-folder plus ``val/`` and/or ``test/`` uses
them (``val`` falls back to ``test/`` and vice versa); the classes are those of ``train/``. Any other image folder is
used whole for every split: carve a validation set out of it with :func:`split_train_val`.

Channels: ``channels=1`` or ``3`` converts every image (IDX images are repeated into three channels for 3). With
``channels=None`` IDX data has 1 channel, and an image folder gets the channel count of the majority of its training
images (from their headers, counted over at most 1,000 evenly spaced images; a tie gives 3); the minority is
converted when loaded.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from foveal.data.idx import read_idx
from foveal.data.images import IMAGE_EXTENSIONS, list_images, load_image, peek_channels
from foveal.errors import FovealError

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
MNIST_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))

#: Where the Debian package ``dataset-fashion-mnist`` installs its files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
#: The bundled sample (first 3,000 training and first 1,000 test images of Fashion-MNIST).
FASHION_SAMPLE = Path(__file__).resolve().parent / "samples" / "fashion-mnist-sample"

SPLITS = ("train", "val", "test")
_PEEK_LIMIT = 1000
_IDX_NAME = re.compile(r"(images|labels)[-.]idx[13]-ubyte(\.gz)?$")


@dataclass(eq=False)
class ClassificationData(Dataset[tuple[Tensor, int]]):
    """Images with one class label each.

    Attributes:
        images: uint8 tensor (N, C, H, W) for in-memory sets (IDX), or N image paths loaded on access.
        labels: int64 tensor (N,), values in 0..len(classes)-1.
        classes: class names; label k is ``classes[k]``.
        channels: C of every image that :meth:`get` returns (1 or 3).
        source: where the data came from, for messages.
    """

    images: Tensor | list[Path]
    labels: Tensor
    classes: list[str]
    channels: int
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.images) != len(self.labels):
            raise FovealError(f"dataset {self.source}: {len(self.images)} images but {len(self.labels)} labels")
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def get(self, i: int) -> tuple[Tensor, int]:
        """Image ``i`` and its label.

        Args:
            i: index in 0..N-1.

        Returns:
            (uint8 tensor (C, H, W), label).

        Raises:
            IndexError: ``i`` out of range.
            FovealError: the image file cannot be loaded (names the file).
        """
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} images")
        label = int(self.labels[i])
        if isinstance(self.images, Tensor):
            return self.images[i], label
        return load_image(self.images[i], self.channels), label

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.get(i)

    def class_counts(self) -> list[int]:
        """Number of images of each class, in the order of ``classes``."""
        return torch.bincount(self.labels, minlength=len(self.classes)).tolist()

    def subset(self, indices: Sequence[int]) -> ClassificationData:
        """A dataset of the images at ``indices`` (same classes and channels)."""
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        images: Tensor | list[Path]
        images = self.images[idx] if isinstance(self.images, Tensor) else [self.images[int(i)] for i in idx]
        return ClassificationData(images, self.labels[idx], list(self.classes), self.channels, self.source)

    def verify(self) -> None:
        """Decode every image once, so that a corrupt file stops a run before training instead of mid-epoch.

        Raises:
            FovealError: listing (up to five of) the files that cannot be loaded, with how many there are.
        """
        if isinstance(self.images, Tensor):
            return
        problems: list[str] = []
        for path in self.images:
            try:
                load_image(path, self.channels)
            except FovealError as exc:
                problems.append(str(exc))
        if problems:
            shown = "\n  ".join(problems[:5])
            more = f"\n  ... and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise FovealError(
                f"{len(problems)} of {len(self)} images of dataset {self.source} cannot be loaded; fix or remove "
                f"them:\n  {shown}{more}"
            )


def _check_args(split: str, channels: int | None) -> None:
    if split not in SPLITS:
        raise FovealError(f"unknown split '{split}': choose one of {', '.join(SPLITS)}")
    if channels not in (None, 1, 3):
        raise FovealError(f"bad channels={channels!r}: use 1 (grayscale), 3 (RGB) or None (the data's own)")


def open_dataset(spec: str, split: str = "train", channels: int | None = None) -> ClassificationData:
    """Open a classification dataset (see the module docstring for the forms of ``spec`` and the split rules).

    Args:
        spec: ``fashion-mnist``, ``fashion-mnist-sample``, a folder of IDX files or an image folder.
        split: ``train``, ``val`` or ``test``.
        channels: 1 or 3 to convert every image, None for the data's own.

    Returns:
        The dataset; IDX data is loaded into memory, image folders are loaded image by image on access.

    Raises:
        FovealError: a missing path or package, bad IDX files (counts differ, labels out of range), an image folder
            with fewer than two classes or an empty class folder, an unknown split or channel count.
    """
    _check_args(split, channels)
    if spec == "fashion-mnist":
        folder = DEBIAN_FASHION_MNIST
        if not folder.is_dir():
            raise FovealError(
                f"Fashion-MNIST not found in {folder}: install it with 'apt-get install dataset-fashion-mnist', "
                "or use the bundled 'fashion-mnist-sample'"
            )
        return _open_idx(folder, split, channels, FASHION_MNIST_CLASSES, "fashion-mnist")
    if spec == "fashion-mnist-sample":
        return _open_idx(FASHION_SAMPLE, split, channels, FASHION_MNIST_CLASSES, "fashion-mnist-sample")
    path = Path(spec).expanduser()
    if not path.exists():
        raise FovealError(
            f"dataset {path} does not exist: set data.train (training) or data (eval) to fashion-mnist, "
            "fashion-mnist-sample, a folder of IDX files, or an image folder with one sub-folder per class",
            options=("data",),
        )
    if not path.is_dir():
        hint = "the folder that holds it" if _IDX_NAME.search(path.name) else "a folder"
        raise FovealError(f"dataset {path} is a file: pass {hint} (IDX files, or one sub-folder of images per class)")
    if any(_IDX_NAME.search(p.name) for p in path.iterdir() if p.is_file()):
        return _open_idx(path, split, channels, None, str(path))
    return _open_image_folder(path, split, channels)


# ---------------------------------------------------------------------------------------------------------- IDX


def _find_idx(folder: Path, prefixes: tuple[str, ...], kind: str) -> Path:
    rank = "idx3" if kind == "images" else "idx1"
    names = [f"{pre}-{kind}{sep}{rank}-ubyte" for pre in prefixes for sep in "-."]
    for name in names:
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
    raise FovealError(
        f"IDX folder {folder} has no {kind} file for this split: expected {names[0]}[.gz] (or {', '.join(names[1:])})"
    )


def _idx_class_names(folder: Path) -> tuple[str, ...]:
    listing = folder / "classes.txt"
    if listing.is_file():
        names = tuple(line.strip() for line in listing.read_text().splitlines() if line.strip())
        if len(names) < 2:
            raise FovealError(f"{listing} lists {len(names)} class names: write at least 2, one per line")
        return names
    if "fashion" in folder.resolve().name.lower():
        return FASHION_MNIST_CLASSES
    return MNIST_CLASSES


def _open_idx(
    folder: Path, split: str, channels: int | None, classes: tuple[str, ...] | None, source: str
) -> ClassificationData:
    prefixes = ("train",) if split == "train" else ("t10k", "test")
    images_path = _find_idx(folder, prefixes, "images")
    labels_path = _find_idx(folder, prefixes, "labels")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise FovealError(
            f"IDX images file {images_path} holds {images.dtype} of shape {images.shape}; expected uint8 (N, H, W)"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise FovealError(
            f"IDX labels file {labels_path} holds {labels.dtype} of shape {labels.shape}; expected integers (N,)"
        )
    if len(images) != len(labels):
        raise FovealError(
            f"IDX files disagree: {images_path} holds {len(images)} images but {labels_path} holds {len(labels)} "
            "labels; use files from the same dataset and split"
        )
    names = classes if classes is not None else _idx_class_names(folder)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(names)):
        bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
        raise FovealError(
            f"IDX labels file {labels_path} holds label {bad}, outside 0..{len(names) - 1} for {len(names)} classes; "
            f"list the class names in {folder / 'classes.txt'} (one per line)"
        )
    tensor = torch.from_numpy(images).unsqueeze(1)
    if channels == 3:
        tensor = tensor.repeat(1, 3, 1, 1)
    return ClassificationData(
        tensor, torch.from_numpy(labels.astype(np.int64)), list(names), channels or 1, f"{source} ({split})"
    )


# -------------------------------------------------------------------------------------------------- image folder


def _split_roots(root: Path, split: str) -> tuple[Path, Path]:
    """(folder that defines the classes, folder of this split)."""
    train, val, test = root / "train", root / "val", root / "test"
    if not (train.is_dir() and (val.is_dir() or test.is_dir())):
        return root, root
    if split == "train":
        return train, train
    order = (val, test) if split == "val" else (test, val)
    return train, next(p for p in order if p.is_dir())


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_images(folder: Path) -> list[Path]:
    found = list_images(folder, recursive=True)
    if not found:
        raise FovealError(
            f"class folder {folder} holds no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}): add images "
            "or remove the folder"
        )
    return found


def _classes_of(root: Path) -> list[str]:
    folders = _class_folders(root)
    if len(folders) >= 2:
        return [p.name for p in folders]
    if folders:
        raise FovealError(
            f"image folder {root} has only one class sub-folder ('{folders[0].name}'): a classifier needs at least "
            f"2 classes, one sub-folder of images each ({root}/<class>/<image>)"
        )
    if list_images(root):
        raise FovealError(
            f"image folder {root} holds images but no class sub-folders: put each class's images in a sub-folder "
            f"named after the class ({root}/cat/1.png, {root}/dog/2.png)"
        )
    raise FovealError(
        f"{root} holds neither IDX files nor class sub-folders of images: pass fashion-mnist, fashion-mnist-sample, "
        "a folder of IDX files or an image folder with one sub-folder per class"
    )


def _majority_channels(paths: list[Path]) -> int:
    step = max(1, len(paths) // _PEEK_LIMIT)
    votes = {1: 0, 3: 0}
    for path in paths[::step][:_PEEK_LIMIT]:
        try:
            votes[peek_channels(path)] += 1
        except FovealError:
            continue  # reported by get() / verify(), with the rest of the broken files
    return 1 if votes[1] > votes[3] else 3


def _open_image_folder(root: Path, split: str, channels: int | None) -> ClassificationData:
    class_root, split_root = _split_roots(root, split)
    classes = _classes_of(class_root)
    index = {name: k for k, name in enumerate(classes)}
    paths: list[Path] = []
    labels: list[int] = []
    for folder in _class_folders(split_root):
        if folder.name not in index:
            raise FovealError(
                f"class folder {folder} has no counterpart in {class_root} (classes: {', '.join(classes)}): "
                "rename or remove it"
            )
        found = _class_images(folder)
        paths += found
        labels += [index[folder.name]] * len(found)
    if not paths:
        raise FovealError(
            f"split folder {split_root} holds no class sub-folders of images: add them ({split_root}/{classes[0]}/...)"
        )
    if channels is None:
        if split_root == class_root:
            channels = _majority_channels(paths)
        else:
            train_paths = [p for c in classes for p in _class_images(class_root / c)]
            channels = _majority_channels(train_paths)
    return ClassificationData(paths, torch.tensor(labels, dtype=torch.int64), classes, channels, f"{root} ({split})")


# ------------------------------------------------------------------------------------------------------ splitting


def subset(data: ClassificationData, indices: Sequence[int]) -> ClassificationData:
    """The images of ``data`` at ``indices`` (same classes and channels); the same as ``data.subset(indices)``."""
    return data.subset(indices)


def split_train_val(
    data: ClassificationData | Tensor, val_fraction: float, seed: int = 0
) -> tuple[list[int], list[int]]:
    """Split indices into training and validation parts, stratified by class and reproducible from ``seed``.

    The validation part has ``round(N * val_fraction)`` images (at least 1, at most N - 1); each class gets its
    proportional share, remainders going to the classes with the largest fractional shares (ties: lower label).

    Args:
        data: a dataset, or its int labels (N,).
        val_fraction: share of images for validation, strictly between 0 and 1.
        seed: seed of the shuffle within each class.

    Returns:
        (train indices, val indices), each sorted ascending, disjoint, together 0..N-1.
    """
    labels = data.labels if isinstance(data, ClassificationData) else torch.as_tensor(data, dtype=torch.int64)
    n = len(labels)
    if not 0.0 < val_fraction < 1.0:
        raise FovealError(f"bad val_fraction={val_fraction}: use a share strictly between 0 and 1, e.g. 0.1")
    if n < 2:
        raise FovealError(f"cannot split {n} image(s) into training and validation parts: add images")
    target = min(max(round(n * val_fraction), 1), n - 1)
    classes = torch.unique(labels).tolist()
    members = {c: torch.nonzero(labels == c).flatten() for c in classes}
    exact = {c: len(members[c]) * target / n for c in classes}
    quota = {c: int(exact[c]) for c in classes}
    leftover = target - sum(quota.values())
    for c in sorted(classes, key=lambda c: (-(exact[c] - quota[c]), c))[:leftover]:
        quota[c] += 1
    generator = torch.Generator().manual_seed(seed)
    val: list[int] = []
    for c in classes:
        order = members[c][torch.randperm(len(members[c]), generator=generator)]
        val += order[: quota[c]].tolist()
    chosen = set(val)
    return [i for i in range(n) if i not in chosen], sorted(val)
