"""open_coco: layouts and image search, label maps, every validation rule, crowd regions, results files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from foveal.data.canvas import make_canvases, write_coco
from foveal.data.coco import detections_to_coco, open_coco, write_results_json
from foveal.data.detection_set import FASHION_CANVAS_SAMPLE
from foveal.errors import FovealError


def _image(path: Path, width: int = 40, height: int = 30, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (width, height)).save(path)


def _document(**changes: Any) -> dict[str, Any]:
    """Two 40 × 30 images, categories 7 ('cat') and 3 ('dog'); image 2 has no annotations."""
    doc: dict[str, Any] = {
        "images": [
            {"id": 10, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 20, "file_name": "b.png", "width": 40, "height": 30},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [1.5, 2.0, 10.0, 5.25], "area": 40.0, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 3, "bbox": [20, 10, 8, 8]},
        ],
        "categories": [{"id": 7, "name": "cat"}, {"id": 3, "name": "dog"}],
    }
    doc.update(changes)
    return doc


def _write(folder: Path, doc: Any, images: tuple[str, ...] = ("a.png", "b.png"), sub: str = "") -> Path:
    for name in images:
        _image(folder / sub / name)
    path = folder / "gt.json"
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def test_bundled_sample_matches_its_json() -> None:
    for split, n in (("train", 160), ("val", 48)):
        data = open_coco("fashion-canvas-sample", split=split)
        assert len(data) == n and data.channels == 1 and data.num_classes == 10
        assert data.classes[0] == "T-shirt/top" and data.label_to_category_id == list(range(1, 11))
        doc = json.loads((FASHION_CANVAS_SAMPLE / "annotations" / f"instances_{split}.json").read_text())
        first = [a for a in doc["annotations"] if a["image_id"] == data.images[0].id]
        x, y, w, h = np.array([a["bbox"] for a in first]).T
        assert torch.equal(
            data.targets[0]["boxes"], torch.tensor(np.stack([x, y, x + w, y + h], 1), dtype=torch.float32)
        )
        assert data.targets[0]["labels"].tolist() == [a["category_id"] - 1 for a in first]
        assert data.num_boxes() == len(doc["annotations"])
    image, target = data[0]
    assert image.shape == (1, 128, 128) and image.dtype == torch.uint8
    assert target["ignore"].shape == (0, 4) and target["areas"].dtype == torch.float64


def test_write_coco_folder_and_json_file_give_the_same_set(tmp_path: Path) -> None:
    glyphs = np.zeros((6, 28, 28), np.uint8)
    glyphs[:, 6:22, 8:20] = 200
    canvases = make_canvases(glyphs, np.arange(6) % 3, n=5, size=64, objects=(1, 3), scale=(14, 30), seed=2)
    write_coco(canvases, tmp_path, ["a", "b", "c"], "val")
    by_folder = open_coco(tmp_path, split="val")
    # the JSON file alone: its images are found in ../val/ from the file's name, not from the split argument
    by_file = open_coco(tmp_path / "annotations" / "instances_val.json")
    assert by_folder.root == by_file.root == tmp_path / "val"
    for i, canvas in enumerate(canvases):
        assert torch.equal(by_file.targets[i]["boxes"], torch.from_numpy(canvas.boxes))
        assert torch.equal(by_file.targets[i]["labels"], torch.from_numpy(canvas.labels))
        assert torch.equal(by_folder.load_image(i)[0], torch.from_numpy(canvas.image))
    with pytest.raises(FovealError, match="no split 'train'.*choose one of val"):
        open_coco(tmp_path, split="train")


def test_category_ids_map_to_sorted_contiguous_labels(tmp_path: Path) -> None:
    data = open_coco(_write(tmp_path, _document()))
    assert data.categories == [{"id": 3, "name": "dog"}, {"id": 7, "name": "cat"}]
    assert data.label_to_category_id == [3, 7] and data.category_id_to_label == {3: 0, 7: 1}
    assert data.targets[0]["labels"].tolist() == [1, 0]
    assert data.targets[0]["boxes"].tolist() == [[1.5, 2.0, 11.5, 7.25], [20.0, 10.0, 28.0, 18.0]]
    assert data.targets[0]["areas"].tolist() == [40.0, 64.0]  # the file's area, else the box's
    assert data.targets[1]["boxes"].shape == (0, 4)  # an image without annotations stays, as a negative
    assert [r.id for r in data.subset([1]).images] == [20]


@pytest.mark.parametrize("sub", ["", "images", "train"])
def test_images_are_found_beside_the_json(tmp_path: Path, sub: str) -> None:
    data = open_coco(_write(tmp_path, _document(), sub=sub), split="train")
    assert data.root == tmp_path / sub if sub else data.root == tmp_path
    assert data.load_image(1).shape == (1, 30, 40)


def test_image_root_and_missing_images(tmp_path: Path) -> None:
    path = _write(tmp_path, _document(), images=("a.png",), sub="pics")
    with pytest.raises(FovealError, match="first image 'a.png' is in none of"):
        open_coco(path)
    with pytest.raises(FovealError, match=r"1 of 2 images .* missing .*b\.png"):
        open_coco(path, image_root=tmp_path / "pics")
    _image(tmp_path / "pics" / "b.png", 41, 30)
    data = open_coco(path, image_root=tmp_path / "pics", channels=3)
    assert data.load_image(0).shape == (3, 30, 40)
    with pytest.raises(FovealError, match="41×30 pixels but .* says 40×30"):
        data.load_image(1)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{not json", "is not valid JSON"),
        ([1, 2], "holds a JSON list, not an object"),
        ({"images": [], "annotations": []}, "lacks the list.*'categories'"),
        (_document(images=[]), "lists no images"),
        (_document(categories=[]), "lists no categories"),
        (_document(images=[{"id": 10, "file_name": "a.png", "width": 40}]), "image entry 0 is malformed"),
        (_document(images=[_document()["images"][0]] * 2), "image id 10 is listed twice"),
        (_document(categories=[{"id": 7, "name": "cat"}, {"id": 7, "name": "dog"}]), "category id 7 is listed twice"),
        (_document(annotations=[{"id": 5, "image_id": 99, "category_id": 7, "bbox": [0, 0, 2, 2]}]), "image id 99"),
        (_document(annotations=[{"id": 5, "image_id": 10, "category_id": 1, "bbox": [0, 0, 2, 2]}]), "category id 1"),
        (_document(annotations=[{"image_id": 10, "category_id": 7, "bbox": [0, 0, 2]}]), "annotation entry 0"),
        (_document(annotations=[{"image_id": 10, "category_id": 7, "bbox": [0, 0, 2, float("nan")]}]), "finite"),
        (_document(annotations=[{"image_id": 10, "bbox": [0, 0, 2, 2]}]), "annotation entry 0 is malformed"),
    ],
)
def test_malformed_files_are_named(tmp_path: Path, doc: Any, message: str) -> None:
    path = _write(tmp_path, doc)
    with pytest.raises(FovealError, match=message) as info:
        open_coco(path)
    assert str(path) in str(info.value)


def test_empty_boxes_dropped_and_outside_boxes_clipped_with_one_warning(tmp_path: Path) -> None:
    annotations = [
        {"image_id": 10, "category_id": 7, "bbox": [5, 5, 0, 4]},  # zero width: dropped
        {"image_id": 10, "category_id": 7, "bbox": [5, 5, 3, -1]},  # negative height: dropped
        {"image_id": 10, "category_id": 3, "bbox": [-4, 20, 10, 20]},  # partly outside: clipped to (0, 20, 6, 30)
        {"image_id": 20, "category_id": 3, "bbox": [50, 0, 5, 5]},  # entirely outside: dropped
        {"image_id": 20, "category_id": 7, "bbox": [2, 3, 4, 5]},
    ]
    with pytest.warns(UserWarning, match="dropped 2 box.*zero or negative.* and 1 entirely outside.*clipped 1"):
        data = open_coco(_write(tmp_path, _document(annotations=annotations)))
    assert data.repairs == {"empty": 2, "outside": 1, "clipped": 1}
    assert data.targets[0]["boxes"].tolist() == [[0.0, 20.0, 6.0, 30.0]]
    assert data.targets[0]["areas"].tolist() == [60.0]
    assert data.targets[1]["boxes"].tolist() == [[2.0, 3.0, 6.0, 8.0]] and data.targets[1]["labels"].tolist() == [1]


def test_crowd_annotations_become_ignore_regions(tmp_path: Path) -> None:
    annotations = [
        {"image_id": 10, "category_id": 7, "bbox": [0, 0, 10, 10], "iscrowd": 0},
        {"image_id": 10, "category_id": 3, "bbox": [10, 10, 20, 15], "iscrowd": 1},
    ]
    data = open_coco(_write(tmp_path, _document(annotations=annotations)))
    target = data.targets[0]
    assert target["boxes"].tolist() == [[0, 0, 10, 10]] and target["labels"].tolist() == [1]
    assert target["ignore"].tolist() == [[10, 10, 30, 25]] and target["ignore_labels"].tolist() == [0]
    assert data.num_boxes() == 1


def test_bad_spec_split_and_channels(tmp_path: Path) -> None:
    with pytest.raises(FovealError, match="does not exist"):
        open_coco(tmp_path / "nope.json")
    with pytest.raises(FovealError, match="not a COCO folder"):
        open_coco(tmp_path)
    with pytest.raises(FovealError, match="plain name"):
        open_coco("fashion-canvas-sample", split="../val")
    with pytest.raises(FovealError, match="channels"):
        open_coco("fashion-canvas-sample", channels=2)


def test_results_json_uses_category_ids_and_xywh(tmp_path: Path) -> None:
    data = open_coco(_write(tmp_path, _document()))
    detections = [
        {"boxes": torch.tensor([[1.0, 2.0, 5.0, 10.0]]), "scores": torch.tensor([0.5]), "labels": torch.tensor([0])},
        {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    written = json.loads(write_results_json(detections, data, tmp_path / "out" / "res.json").read_text())
    assert written == [{"image_id": 10, "category_id": 3, "bbox": [1.0, 2.0, 4.0, 8.0], "score": 0.5}]
    with pytest.raises(FovealError, match="detections for 1 images but the dataset has 2"):
        detections_to_coco(detections[:1], data)
    detections[0]["labels"] = torch.tensor([2])
    with pytest.raises(FovealError, match=r"labels must be in 0\.\.1"):
        detections_to_coco(detections, data)
