"""The Fashion-MNIST detection set: split sources, reproducibility, and the bundled sample it generated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from foveal.data.canvas import make_canvases
from foveal.data.classification import FASHION_MNIST_CLASSES, open_dataset
from foveal.data.coco import open_coco
from foveal.data.detection_set import FASHION_CANVAS_SAMPLE, SAMPLE_ARGS, build_detection_set
from foveal.errors import FovealError


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_build_is_reproducible_and_each_split_uses_its_own_source(tmp_path: Path) -> None:
    a = build_detection_set(tmp_path / "a", source="fashion-mnist-sample", n_train=6, n_val=4, seed=3)
    b = build_detection_set(tmp_path / "b", source="fashion-mnist-sample", n_train=6, n_val=4, seed=3)
    assert _files(a) == _files(b)
    info = json.loads((a / "annotations" / "instances_val.json").read_text())["info"]
    assert info["seed"] == 4 and info["source"] == "fashion-mnist-sample (test images)"
    for split, source_split, seed in (("train", "train", 3), ("val", "test", 4)):
        data = open_coco(a, split=split)
        assert data.classes == list(FASHION_MNIST_CLASSES) and data.label_to_category_id == list(range(1, 11))
        # the canvases are exactly those of make_canvases on the split's own Fashion-MNIST images
        source = open_dataset("fashion-mnist-sample", source_split)
        canvases = make_canvases(
            source.images[:, 0].numpy(), source.labels.numpy(), n=len(data), size=128, objects=(2, 6),
            scale=(12, 64), clutter=4, seed=seed,
        )  # fmt: skip
        for i, canvas in enumerate(canvases):
            assert torch.equal(data.load_image(i)[0], torch.from_numpy(canvas.image))
            assert torch.equal(data.targets[i]["boxes"], torch.from_numpy(canvas.boxes))
            assert torch.equal(data.targets[i]["labels"], torch.from_numpy(canvas.labels))


def test_bundled_sample_is_what_the_generator_makes(tmp_path: Path) -> None:
    # canvas i depends only on (seed, i): rebuilding a few canvases reproduces the first files of the sample
    args = {**SAMPLE_ARGS, "n_train": 4, "n_val": 3}
    rebuilt = build_detection_set(tmp_path, **args)
    for split, n in (("train", 4), ("val", 3)):
        for i in range(n):
            name = f"{split}/{i:06d}.png"
            assert (rebuilt / name).read_bytes() == (FASHION_CANVAS_SAMPLE / name).read_bytes()
        ours = open_coco(rebuilt, split=split)
        bundled = open_coco("fashion-canvas-sample", split=split)
        for i in range(n):
            assert torch.equal(ours.targets[i]["boxes"], bundled.targets[i]["boxes"])
            assert torch.equal(ours.targets[i]["labels"], bundled.targets[i]["labels"])


def test_bundled_sample_is_small_documented_and_has_small_objects() -> None:
    size = sum(p.stat().st_size for p in FASHION_CANVAS_SAMPLE.rglob("*") if p.is_file())
    assert size < 2_000_000
    provenance = (FASHION_CANVAS_SAMPLE / "PROVENANCE.md").read_text()
    assert "MIT" in provenance and "python -m foveal.data.detection_set" in provenance
    data = open_coco("fashion-canvas-sample", split="train")
    areas = torch.cat([t["areas"] for t in data.targets]).numpy()
    assert (areas < 32**2).mean() > 0.3 and (areas >= 32**2).mean() > 0.3  # COCO "small" and "medium" objects
    counts = np.bincount(torch.cat([t["labels"] for t in data.targets]).numpy(), minlength=10)
    assert (counts > 0).all()


def test_bad_arguments() -> None:
    with pytest.raises(FovealError, match="unknown source"):
        build_detection_set("unused", source="mnist", n_train=1, n_val=1)
    with pytest.raises(FovealError, match="≥ 0"):
        build_detection_set("unused", source="fashion-mnist-sample", n_train=-1, n_val=1)
