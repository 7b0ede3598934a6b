"""The weakly supervised localization set: one Fashion-MNIST object per canvas, with clutter, an image-level label and
a ground-truth box.

This is the benchmark setting of class activation maps (Zhou et al., "Learning Deep Features for Discriminative
Localization", CVPR 2016, §3): a classifier is trained on image-level labels only, and the boxes drawn from its maps
are scored against the ground truth. Each canvas (:func:`foveal.data.canvas.make_canvases` with one object) holds one
Fashion-MNIST image resized to a random square side and pasted at a random position, plus a few unlabelled fragments
of other images as clutter; the canvas's label is its object's class. Training canvases are made from Fashion-MNIST's
training images and test canvases from its test images, so no object is seen in both.

Boxes are (x1, y1, x2, y2) in canvas pixels, x2 and y2 exclusive (see :mod:`foveal.explain.boxes`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from foveal.data.canvas import make_canvases
from foveal.data.classification import ClassificationData, open_dataset
from foveal.data.idx import write_idx
from foveal.errors import FovealError

SOURCES = ("fashion-mnist", "fashion-mnist-sample")
"""Where the objects come from: the full Fashion-MNIST (Debian package) or the sample bundled with foveal."""
_SPLITS = ("train", "test")
_IDX_PREFIX = {"train": "train", "test": "t10k"}


@dataclass(frozen=True, eq=False)
class LocalizationData:
    """Canvases with one object each.

    Attributes:
        images: (N, 1, H, W) uint8 canvases, background 0.
        labels: (N,) int64 class of each canvas's object (the image-level label).
        boxes: (N, 4) float32 tight ground-truth box of each object, (x1, y1, x2, y2), x2 and y2 exclusive.
        classes: class names; label k is ``classes[k]``.
        source: where the objects came from, for messages and reports (e.g. "fashion-mnist (test)").
    """

    images: Tensor
    labels: Tensor
    boxes: Tensor
    classes: list[str]
    source: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def to_classification(self) -> ClassificationData:
        """The canvases as an in-memory :class:`ClassificationData` (image-level labels only: no boxes)."""
        return ClassificationData(self.images, self.labels, list(self.classes), 1, f"canvases of {self.source}")

    def write_idx(self, folder: str | os.PathLike[str], split: str) -> Path:
        """Write the canvases and labels as IDX files that :func:`foveal.data.classification.open_dataset` reads.

        ``split`` "train" writes ``train-images-idx3-ubyte.gz`` / ``train-labels-idx1-ubyte.gz``, "test" writes the
        ``t10k-…`` pair (the split that ``open_dataset`` returns for "val" and "test"); ``classes.txt`` names the
        classes. Write both splits into one folder to train with ``data.train=<folder>``. Boxes are not written: a
        classifier trained from the folder sees image-level labels only.

        Args:
            folder: the IDX folder (created).
            split: "train" or "test".

        Returns:
            The folder.
        """
        if split not in _SPLITS:
            raise FovealError(f"unknown split {split!r}: write 'train' or 'test'")
        root = Path(folder)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FovealError(f"cannot create {root}: {exc.strerror or exc}") from None
        prefix = _IDX_PREFIX[split]
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", self.images[:, 0].numpy())
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", self.labels.numpy().astype(np.uint8))
        (root / "classes.txt").write_text("".join(f"{name}\n" for name in self.classes))
        return root


def build_localization_set(
    source: str = "fashion-mnist-sample",
    split: str = "train",
    n: int = 1000,
    *,
    size: int = 64,
    scale: tuple[float, float] = (20, 48),
    clutter: int = 3,
    seed: int = 0,
) -> LocalizationData:
    """Make ``n`` canvases with one object each from the ``split`` images of ``source``.

    Canvas ``i`` depends only on (``source``, ``split``, ``seed``, ``i``): the same arguments always give the same
    set, and a larger ``n`` extends a smaller one. A canvas whose object vanished when shrunk (a faint source image) is
    skipped, so the set always has ``n`` canvases with one box each.

    Args:
        source: "fashion-mnist" (60,000 / 10,000 images, Debian package dataset-fashion-mnist) or
            "fashion-mnist-sample" (the bundled 3,000 / 1,000).
        split: "train" (objects from the training images) or "test" (from the test images).
        n: number of canvases.
        size: canvas side in pixels.
        scale: (min, max) side of the resized object in pixels.
        clutter: unlabelled fragments per canvas (see :func:`foveal.data.canvas.make_canvases`).
        seed: random seed.

    Returns:
        A :class:`LocalizationData` of ``n`` canvases.
    """
    if source not in SOURCES:
        raise FovealError(f"unknown source {source!r}: use one of {', '.join(SOURCES)}")
    if split not in _SPLITS:
        raise FovealError(f"unknown split {split!r}: use 'train' (training images) or 'test' (test images)")
    if n < 1:
        raise FovealError(f"n={n}: ask for at least one canvas")
    objects = open_dataset(source, split, channels=1)
    assert isinstance(objects.images, Tensor)  # IDX data is in memory
    images, labels = objects.images[:, 0].numpy(), objects.labels.numpy()
    kept = []
    made = n
    while True:
        canvases = make_canvases(
            images, labels, n=made, size=size, objects=(1, 1), scale=scale, clutter=clutter, seed=seed
        )
        kept = [c for c in canvases if len(c.labels) == 1]
        if len(kept) >= n:
            break
        made += 2 * (n - len(kept)) + 8
    kept = kept[:n]
    return LocalizationData(
        images=torch.from_numpy(np.stack([c.image for c in kept]))[:, None],
        labels=torch.from_numpy(np.concatenate([c.labels for c in kept])),
        boxes=torch.from_numpy(np.concatenate([c.boxes for c in kept])),
        classes=list(objects.classes),
        source=f"{source} ({split})",
    )
