"""The Fashion-MNIST detection set: Fashion-MNIST garments pasted onto blank canvases, written as a COCO dataset.

Each canvas of ``size`` × ``size`` holds 2–6 garments (by default), each resized to a square of side 12–64 px, so the
tight boxes run from COCO-"small" (area < 32²) to "medium", with a little clutter (unlabelled fragments) to make
background non-trivial. The training canvases are built from Fashion-MNIST's TRAINING images and the validation
canvases from its TEST images, so no garment image appears in both splits. There are 10 categories, ids 1 … 10, named
after Fashion-MNIST's classes (see :func:`foveal.data.canvas.write_coco` for the layout).

Seeds: the training canvases use ``seed`` and the validation canvases ``seed + 1``; canvas ``i`` of a split depends
only on its seed and ``i`` (:func:`foveal.data.canvas.make_canvases`), so a set with more canvases starts with the same
ones. The same arguments always give the same files.

:data:`FASHION_CANVAS_SAMPLE` is a small set of this kind bundled with foveal (see its ``PROVENANCE.md``), opened
with ``open_coco("fashion-canvas-sample", split="train" | "val")``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from foveal.data.canvas import make_canvases, write_coco
from foveal.data.classification import open_dataset
from foveal.errors import FovealError
from foveal.io import atomic_output

#: The bundled detection sample (160 training and 48 validation canvases of 128² from the bundled Fashion-MNIST
#: sample); regenerate it with ``python -m foveal.data.detection_set``.
FASHION_CANVAS_SAMPLE = Path(__file__).resolve().parent / "samples" / "fashion-canvas-sample"

SAMPLE_ARGS: dict[str, Any] = {"source": "fashion-mnist-sample", "n_train": 160, "n_val": 48, "seed": 0}
"""Arguments of :func:`build_detection_set` that made :data:`FASHION_CANVAS_SAMPLE` (the rest are defaults)."""

_SOURCES = ("fashion-mnist", "fashion-mnist-sample")


def build_detection_set(
    out_dir: str | os.PathLike[str],
    *,
    source: str = "fashion-mnist",
    n_train: int,
    n_val: int,
    size: int = 128,
    objects: tuple[int, int] = (2, 6),
    scale: tuple[float, float] = (12, 64),
    clutter: int = 4,
    max_overlap: float = 0.1,
    seed: int = 0,
) -> Path:
    """Build the detection set as a COCO folder: ``out_dir/{train,val}/*.png`` and
    ``out_dir/annotations/instances_{train,val}.json``.

    Args:
        out_dir: the folder to write (created; existing files of the same names are replaced).
        source: ``fashion-mnist`` (the Debian package, 60,000 + 10,000 images) or ``fashion-mnist-sample`` (the
            bundled 3,000 + 1,000).
        n_train, n_val: canvases per split.
        size: canvas side in pixels.
        objects: (min, max) garments drawn per canvas; crowded canvases may hold fewer (see ``make_canvases``).
        scale: (min, max) side of a garment's square in pixels.
        clutter: unlabelled fragments per canvas.
        max_overlap: largest IoU between two garments' boxes of one canvas.
        seed: seed of the training split (the validation split uses ``seed + 1``).

    Returns:
        ``out_dir`` as a Path; open a split with ``open_coco(out_dir, split="train")``.
    """
    if source not in _SOURCES:
        raise FovealError(f"unknown source '{source}': choose one of {', '.join(_SOURCES)}")
    if n_train < 0 or n_val < 0:
        raise FovealError(f"n_train and n_val are numbers of canvases (≥ 0), got {n_train} and {n_val}")
    layout = {"size": size, "objects": objects, "scale": scale, "clutter": clutter, "max_overlap": max_overlap}
    for split, source_split, n, split_seed in (("train", "train", n_train, seed), ("val", "test", n_val, seed + 1)):
        _write_split(Path(out_dir), source, (split, source_split), n, split_seed, layout)
    return Path(out_dir)


def _write_split(root: Path, source: str, splits: tuple[str, str], n: int, seed: int, layout: dict[str, Any]) -> None:
    """``n`` canvases of the ``splits[1]`` images of ``source`` as the COCO split ``splits[0]`` under ``root``, with
    how they were made (``layout``: the keyword arguments of :func:`make_canvases`) in its ``info`` block."""
    split, source_split = splits
    data = open_dataset(source, source_split, channels=1)
    canvases = make_canvases(np.asarray(data.images)[:, 0], data.labels.numpy(), n=n, seed=seed, **layout)
    path = write_coco(canvases, root, list(data.classes), split)
    size, objects, scale = layout["size"], layout["objects"], layout["scale"]
    info = {
        "description": f"Fashion-MNIST garments on {size}×{size} canvases, split {split}",
        "generator": "foveal.data.detection_set.build_detection_set",
        "source": f"{source} ({source_split} images)",
        "seed": seed,
        "size": size,
        "objects": [int(objects[0]), int(objects[1])],
        "scale": [float(scale[0]), float(scale[1])],
        "clutter": layout["clutter"],
        "max_overlap": layout["max_overlap"],
    }
    _set_info(path, info)


def _set_info(path: Path, info: dict[str, Any]) -> None:
    """Record how the set was made in the ``info`` block of a JSON file written by ``write_coco``."""
    with open(path, encoding="utf-8") as handle:
        document = json.load(handle)
    document["info"] = info
    with atomic_output(path) as handle:
        json.dump(document, handle)


def main() -> None:
    """Regenerate the bundled sample (``python -m foveal.data.detection_set``)."""
    build_detection_set(FASHION_CANVAS_SAMPLE, **SAMPLE_ARGS)


if __name__ == "__main__":
    main()
