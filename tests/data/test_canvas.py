"""Synthetic localization canvases: determinism, tight boxes, clutter kept apart, COCO JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import box_iou

from foveal.data.canvas import make_canvases, write_coco
from foveal.errors import FovealError


def _sources(n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Glyphs whose brightness tells their class: a filled 20 × 12 block of value 50 · (label + 1) in 28 × 28."""
    labels = np.arange(n) % 4
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 4:24, 8:20] = (50 * (labels + 1)).astype(np.uint8)[:, None, None]
    return images, labels


def test_deterministic_by_seed_and_independent_of_n() -> None:
    images, labels = _sources()
    a = make_canvases(images, labels, n=6, size=64, scale=(16, 40), clutter=3, seed=7)
    b = make_canvases(images, labels, n=6, size=64, scale=(16, 40), clutter=3, seed=7)
    c = make_canvases(images, labels, n=3, size=64, scale=(16, 40), clutter=3, seed=7)
    d = make_canvases(images, labels, n=6, size=64, scale=(16, 40), clutter=3, seed=8)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.image, y.image) and np.array_equal(x.boxes, y.boxes)
        assert np.array_equal(x.labels, y.labels)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a[:3], c, strict=True))
    assert not all(np.array_equal(x.image, y.image) for x, y in zip(a, d, strict=True))


def test_single_object_boxes_are_tight_and_labelled() -> None:
    images, labels = _sources()
    for canvas in make_canvases(images, labels, n=20, size=(60, 80), scale=(14, 48), seed=1):
        assert canvas.image.shape == (60, 80) and canvas.image.dtype == np.uint8
        assert canvas.boxes.shape == (1, 4) and canvas.boxes.dtype == np.float32
        assert canvas.labels.dtype == np.int64
        rows, cols = np.nonzero(canvas.image)
        x1, y1, x2, y2 = canvas.boxes[0]
        # no clutter: the box is exactly the extent of every non-zero pixel (x2, y2 exclusive)
        assert [x1, y1, x2, y2] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        assert 0 <= x1 < x2 <= 80 and 0 <= y1 < y2 <= 60
        assert max(x2 - x1, y2 - y1) <= 48
        inside = canvas.image[int(y1) : int(y2), int(x1) : int(x2)]
        assert int(inside.max()) == 50 * (int(canvas.labels[0]) + 1)  # the block's value names its class


def test_clutter_never_touches_a_box() -> None:
    images, labels = _sources()
    canvases = make_canvases(images, labels, n=12, size=96, scale=(20, 40), clutter=6, seed=3)
    extra = 0
    for canvas in canvases:
        x1, y1, x2, y2 = (int(v) for v in canvas.boxes[0])
        box = canvas.image[y1:y2, x1:x2]
        # tight: every side of the box has ink
        assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
        # the one-pixel ring around the box is blank: clutter keeps its distance
        padded = np.pad(canvas.image, 1)
        ring = padded[y1 : y2 + 2, x1 : x2 + 2].copy()
        ring[1:-1, 1:-1] = 0
        assert not ring.any()
        outside = canvas.image.copy()
        outside[y1:y2, x1:x2] = 0
        extra += int(outside.astype(bool).sum())
    assert extra > 0  # the fragments are there


def test_several_objects_overlap_little() -> None:
    images, labels = _sources()
    canvases = make_canvases(images, labels, n=10, size=128, objects=(2, 4), scale=(16, 40), max_overlap=0.1, seed=5)
    counts = [len(c.boxes) for c in canvases]
    assert min(counts) >= 2 and max(counts) <= 4 and len(set(counts)) > 1
    for canvas in canvases:
        boxes = torch.from_numpy(canvas.boxes)
        iou = box_iou(boxes, boxes).fill_diagonal_(0.0)
        assert float(iou.max()) <= 0.1 + 1e-6


def test_write_coco(tmp_path: Path) -> None:
    images, labels = _sources()
    canvases = make_canvases(images, labels, n=5, size=64, objects=(1, 3), scale=(12, 30), seed=2)
    path = write_coco(canvases, tmp_path / "set", ["a", "b", "c", "d"], "val")
    assert path == tmp_path / "set" / "annotations" / "instances_val.json"
    doc = json.loads(path.read_text())
    assert [c["id"] for c in doc["categories"]] == [1, 2, 3, 4] and doc["categories"][0]["name"] == "a"
    assert len({i["id"] for i in doc["images"]}) == len(doc["images"]) == 5
    assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"]) == sum(len(c.boxes) for c in canvases)
    by_image: dict[int, list[dict]] = {}
    for ann in doc["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0 and ann["area"] == w * h and ann["iscrowd"] == 0
    for record, canvas in zip(doc["images"], canvases, strict=True):
        png = np.asarray(Image.open(tmp_path / "set" / "val" / record["file_name"]))
        assert np.array_equal(png, canvas.image)
        assert (record["width"], record["height"]) == (64, 64)
        anns = by_image.get(record["id"], [])
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
        assert np.array_equal(np.array(xyxy, dtype=np.float32).reshape(-1, 4), canvas.boxes)
        assert [a["category_id"] - 1 for a in anns] == canvas.labels.tolist()
    pycocotools = pytest.importorskip("pycocotools.coco")
    coco = pycocotools.COCO(str(path))
    assert len(coco.getAnnIds()) == len(doc["annotations"])


def test_bad_inputs(tmp_path: Path) -> None:
    images, labels = _sources()
    with pytest.raises(FovealError, match="scale"):
        make_canvases(images, labels, n=1, size=32, scale=(10, 40))
    with pytest.raises(FovealError, match="blank"):
        make_canvases(np.zeros((3, 28, 28), np.uint8), np.zeros(3, np.int64), n=1)
    with pytest.raises(FovealError, match="uint8"):
        make_canvases(images.astype(np.float32), labels, n=1)
    with pytest.raises(FovealError, match="labels"):
        make_canvases(images, labels[:5], n=1)
    canvases = make_canvases(images, labels, n=2, size=64, scale=(12, 30), seed=0)
    with pytest.raises(FovealError, match="class names"):
        write_coco(canvases, tmp_path, ["only"], "train")
    with pytest.raises(FovealError, match="split_name"):
        write_coco(canvases, tmp_path, ["a", "b", "c", "d"], "../x")
