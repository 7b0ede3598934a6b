"""Detection formats: each format's own example files load to the boxes and classes of the equivalent COCO file;
the canvas sample written as YOLO loads as its COCO file does; training runs from YOLO data; a malformed file is an
error naming the file and line (or object)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from foveal.cli import main
from foveal.data.coco import DetectionData, open_coco
from foveal.data.detection_set import build_detection_set
from foveal.data.formats import detect_format, open_detection
from foveal.errors import FovealError

TINY = str(Path(__file__).parents[1] / "configs" / "detect_tiny.yaml")

# Two images of 40 × 30 and 50 × 20: the boxes every format's example below describes, in COCO's [x, y, w, h].
SIZES = {"a.png": (40, 30), "b.png": (50, 20)}
CLASSES = ["cat", "dog"]
BOXES = {  # file -> [(class, [x, y, w, h], crowd)]
    "a.png": [("cat", [2.0, 3.0, 10.0, 8.0], False), ("dog", [20.0, 5.0, 15.0, 20.0], False)],
    "b.png": [("dog", [4.0, 2.0, 6.0, 6.0], False)],
}


def _images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, size in SIZES.items():
        Image.new("L", size).save(folder / name)


def _coco(folder: Path, boxes: dict[str, list[tuple[str, list[float], bool]]] = BOXES) -> DetectionData:
    """The COCO file of ``boxes`` beside the images of ``folder``, opened."""
    images = [{"id": i + 1, "file_name": n, "width": w, "height": h} for i, (n, (w, h)) in enumerate(SIZES.items())]
    ids = {n: i + 1 for i, n in enumerate(SIZES)}
    annotations = [
        {"id": k, "image_id": ids[n], "category_id": CLASSES.index(c) + 1, "bbox": b, "iscrowd": int(crowd)}
        for k, (n, c, b, crowd) in enumerate(((n, *box) for n, bs in boxes.items() for box in bs), start=1)
    ]
    categories = [{"id": k + 1, "name": c} for k, c in enumerate(CLASSES)]
    path = folder / "coco.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return open_coco(path, image_root=folder)


def _by_image(data: DetectionData) -> dict[str, list[tuple[str, bool, list[float]]]]:
    """file name -> sorted (class, crowd, box xyxy) of every box and ignore region."""
    out = {}
    for record, target in zip(data.images, data.targets, strict=True):
        pairs = ((False, target["boxes"], target["labels"]), (True, target["ignore"], target["ignore_labels"]))
        rows = [(data.classes[int(k)], g, b.tolist()) for g, bs, ks in pairs for b, k in zip(bs, ks, strict=True)]
        out[record.path.name] = sorted(rows)
    return out


def _same(ours: DetectionData, coco: DetectionData, tol: float = 1e-4, by_name: bool = True) -> None:
    """The same classes, and the same boxes of each image (matched by file name, else by position)."""
    assert ours.classes == coco.classes
    a, b = _by_image(ours), _by_image(coco)
    if not by_name:
        a, b = dict(enumerate(a.values())), dict(enumerate(b.values()))
    assert a.keys() == b.keys()
    for name in a:
        assert [(c, g) for c, g, _ in a[name]] == [(c, g) for c, g, _ in b[name]], name
        for (_, _, x), (_, _, y) in zip(a[name], b[name], strict=True):
            assert torch.allclose(torch.tensor(x), torch.tensor(y), atol=tol), (name, x, y)


def _voc_xml(name: str, size: tuple[int, int], objects: list[tuple[str, list[float], bool]]) -> str:
    """A VOC2007-style annotation (pixels 1-based and inclusive: xmin = x + 1, xmax = x + w)."""
    parts = [
        f"<annotation><folder>VOC2007</folder><filename>{name}</filename>",
        "<source><database>The VOC2007 Database</database></source>",
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>1</depth></size><segmented>0</segmented>",
    ]
    for c, (x, y, w, h), difficult in objects:
        parts.append(
            f"<object><name>{c}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{int(difficult)}</difficult><bndbox><xmin>{x + 1:g}</xmin><ymin>{y + 1:g}</ymin>"
            f"<xmax>{x + w:g}</xmax><ymax>{y + h:g}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


def _voc(root: Path, boxes: dict[str, list[tuple[str, list[float], bool]]]) -> Path:
    _images(root / "JPEGImages")
    (root / "Annotations").mkdir()
    for name, objects in boxes.items():
        (root / "Annotations" / f"{Path(name).stem}.xml").write_text(_voc_xml(name, SIZES[name], objects))
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("b\n")
    return root


def test_voc_loads_like_coco_with_difficult_as_ignore(tmp_path: Path) -> None:
    boxes = {"a.png": [*BOXES["a.png"][:1], ("dog", [20.0, 5.0, 15.0, 20.0], True)], "b.png": BOXES["b.png"]}
    root = _voc(tmp_path / "VOC2007", boxes)
    assert detect_format(root) == "voc"
    data = open_detection(root, split="train")
    _same(data, _coco(root / "JPEGImages", boxes))
    assert data.summary == "read a VOC dataset: ImageSets/Main/train.txt, 2 classes, 2 images"
    assert len(open_detection(root, split="val")) == 1


def _yolo_line(c: str, box: list[float], size: tuple[int, int]) -> str:
    x, y, w, h = box
    (iw, ih) = size
    return f"{CLASSES.index(c)} {(x + w / 2) / iw:.6f} {(y + h / 2) / ih:.6f} {w / iw:.6f} {h / ih:.6f}"


def _yolo(root: Path, names: Any = None) -> Path:
    """An ultralytics-style set (coco8.yaml's layout): images/train + labels/train and a data.yaml."""
    _images(root / "images" / "train")
    (root / "labels" / "train").mkdir(parents=True)
    for name, objects in BOXES.items():
        lines = [_yolo_line(c, b, SIZES[name]) for c, b, _ in objects]
        (root / "labels" / "train" / f"{Path(name).stem}.txt").write_text("\n".join(lines) + "\n")
    names = names if names is not None else {0: "cat", 1: "dog"}
    text = "path: .\ntrain: images/train\nval: images/train\n\n# Classes\nnames:\n"
    text += "".join(f"  {k}: {v}\n" for k, v in names.items()) if isinstance(names, dict) else f"  {names}\n"
    (root / "data.yaml").write_text(text)
    return root


@pytest.mark.parametrize("names", [None, ["cat", "dog"]])
def test_yolo_loads_like_coco(tmp_path: Path, names: Any) -> None:
    root = _yolo(tmp_path / "set", names)
    for spec in (root, root / "data.yaml"):
        assert detect_format(spec) == "yolo"
        data = open_detection(spec, split="val")
        _same(data, _coco(root / "images" / "train"), tol=1e-3)
        assert data.summary == "read a YOLO dataset: data.yaml, 2 classes, 2 images"


def test_yolo_image_list_and_exported_relative_paths(tmp_path: Path) -> None:
    root = _yolo(tmp_path / "set")
    (root / "train.txt").write_text("./images/train/a.png\nimages/train/b.png\n")
    (root / "data.yaml").write_text("train: train.txt\nval: ../images/train\nnames: [cat, dog]\n")
    coco = _coco(root / "images" / "train")
    for split in ("train", "val"):
        _same(open_detection(root, split=split), coco, tol=1e-3)


def test_yolo_folder_without_yaml_and_empty_labels(tmp_path: Path) -> None:
    root = _yolo(tmp_path / "set")
    (root / "data.yaml").unlink()
    (root / "classes.txt").write_text("cat\ndog\n")
    (root / "labels" / "train" / "b.txt").write_text("")  # an image without objects
    data = open_detection(root, split="train")
    _same(data, _coco(root / "images" / "train", {"a.png": BOXES["a.png"], "b.png": []}), tol=1e-3)
    assert "images/ + labels/" in data.summary


def test_labelme_rectangles_and_polygons(tmp_path: Path) -> None:
    _images(tmp_path)
    shapes_a = [
        {"label": "cat", "points": [[12, 11], [2, 3]], "group_id": None, "shape_type": "rectangle", "flags": {}},
        {"label": "dog", "points": [[20, 5], [35, 12], [30, 25]], "shape_type": "polygon", "flags": {}},
    ]
    shapes_b = [{"label": "dog", "points": [[4, 2], [10, 8]], "shape_type": "rectangle", "flags": {}}]
    for name, shapes in (("a.png", shapes_a), ("b.png", shapes_b)):
        w, h = SIZES[name]
        doc = {"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": name, "imageData": None}
        (tmp_path / f"{Path(name).stem}.json").write_text(json.dumps({**doc, "imageHeight": h, "imageWidth": w}))
    assert detect_format(tmp_path) == "labelme"
    _same(open_detection(tmp_path), _coco(tmp_path))


CVAT = """<?xml version="1.0" encoding="utf-8"?>
<annotations>
  <version>1.1</version>
  <meta><task><name>pets</name><labels>
    <label><name>cat</name><color>#ff0000</color><attributes></attributes></label>
    <label><name>dog</name><color>#00ff00</color><attributes></attributes></label>
  </labels></task></meta>
  <image id="0" name="a.png" width="40" height="30">
    <box label="cat" occluded="0" source="manual" xtl="2.00" ytl="3.00" xbr="12.00" ybr="11.00" z_order="0"></box>
    <polygon label="dog" occluded="0" source="manual" points="20.00,5.00;35.00,12.00;30.00,25.00" z_order="0">
    </polygon>
    <tag label="cat" source="manual"></tag>
  </image>
  <image id="1" name="b.png" width="50" height="20">
    <box label="dog" occluded="0" source="manual" xtl="4" ytl="2" xbr="10" ybr="8" z_order="0"></box>
  </image>
</annotations>
"""


def test_cvat_boxes_and_polygons(tmp_path: Path) -> None:
    _images(tmp_path / "images")
    (tmp_path / "annotations.xml").write_text(CVAT)
    assert detect_format(tmp_path) == "cvat"
    _same(open_detection(tmp_path), _coco(tmp_path / "images"))


def _studio_result(c: str, box: list[float], size: tuple[int, int]) -> dict[str, Any]:
    x, y, w, h = box
    value = {"x": 100 * x / size[0], "y": 100 * y / size[1], "width": 100 * w / size[0], "height": 100 * h / size[1]}
    return {
        "id": "r1",
        "type": "rectanglelabels",
        "from_name": "label",
        "to_name": "image",
        "original_width": size[0],
        "original_height": size[1],
        "image_rotation": 0,
        "value": {**value, "rotation": 0, "rectanglelabels": [c]},
    }


def test_labelstudio_percent_rectangles(tmp_path: Path) -> None:
    _images(tmp_path / "images")
    tasks = [
        {
            "id": k + 1,
            "data": {"image": f"/data/upload/1/8f3a2b1c-{name}"},
            "annotations": [{"id": 7, "result": [_studio_result(c, b, SIZES[name]) for c, b, _ in objects]}],
        }
        for k, (name, objects) in enumerate(BOXES.items())
    ]
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    assert detect_format(tmp_path / "export.json") == "labelstudio"
    _same(open_detection(tmp_path / "export.json"), _coco(tmp_path / "images"))


def test_labelstudio_polygons_and_rotated_rectangles(tmp_path: Path) -> None:
    _images(tmp_path)
    square = {"x": 10, "y": 20, "width": 20, "height": 10, "rotation": 90, "rectanglelabels": ["cat"]}
    polygon = {"points": [[10, 10], [50, 20], [30, 90]], "polygonlabels": ["dog"]}
    results = [{"type": "rectanglelabels", "value": square}, {"type": "polygonlabels", "value": polygon}]
    tasks = [{"id": 1, "data": {"image": "/data/local-files/?d=a.png"}, "annotations": [{"result": results}]}]
    (tmp_path / "tasks.json").write_text(json.dumps(tasks))
    data = open_detection(tmp_path / "tasks.json")
    # 40 × 30 image: the rectangle is 8 × 3 px at (4, 6), turned 90° clockwise about (4, 6) -> x 1 … 4, y 6 … 14
    expected = [("cat", False, [1.0, 6.0, 4.0, 14.0]), ("dog", False, [4.0, 3.0, 20.0, 27.0])]
    got = _by_image(data)["a.png"]
    assert [(c, g) for c, g, _ in got] == [(c, g) for c, g, _ in expected]
    assert torch.allclose(torch.tensor([b for *_, b in got]), torch.tensor([b for *_, b in expected]), atol=1e-4)


def test_csv_rows(tmp_path: Path) -> None:
    _images(tmp_path)
    rows = ["image,x1,y1,x2,y2,label"]
    rows += [f"{n},{x:g},{y:g},{x + w:g},{y + h:g},{c}" for n, bs in BOXES.items() for c, (x, y, w, h), _ in bs]
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    assert detect_format(tmp_path) == "csv"
    _same(open_detection(tmp_path, format="csv"), _coco(tmp_path))


def test_coco_folders_still_open_as_before(tmp_path: Path) -> None:
    data = open_detection("fashion-canvas-sample", split="val")
    assert data.summary == "" and len(data) == len(open_coco("fashion-canvas-sample", split="val"))
    broken = tmp_path / "instances_val.json"
    broken.write_text('{"images": [')
    messages = []
    for opener in (open_detection, open_coco):
        with pytest.raises(FovealError) as exc:
            opener(broken)
        messages.append(str(exc.value))
    assert messages[0] == messages[1] and "is not valid JSON" in messages[0]


# ------------------------------------------------------------------------------------------ the canvas sample, as YOLO


def _write_as_yolo(coco_root: Path, out: Path) -> Path:
    """The COCO canvas set written as an ultralytics YOLO set (the writer follows ultralytics' documentation)."""
    names: list[str] = []
    for split in ("train", "val"):
        doc = json.loads((coco_root / "annotations" / f"instances_{split}.json").read_text())
        names = [c["name"] for c in sorted(doc["categories"], key=lambda c: c["id"])]
        index = {c["id"]: k for k, c in enumerate(sorted(doc["categories"], key=lambda c: c["id"]))}
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        for image in doc["images"]:
            (out / "images" / split / image["file_name"]).write_bytes(
                (coco_root / split / image["file_name"]).read_bytes()
            )
            w, h = image["width"], image["height"]
            lines = [
                f"{index[a['category_id']]} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}"
                for a in doc["annotations"]
                if a["image_id"] == image["id"]
                for x, y, bw, bh in [a["bbox"]]
            ]
            (out / "labels" / split / f"{Path(image['file_name']).stem}.txt").write_text(
                "".join(f"{x}\n" for x in lines)
            )
    (out / "data.yaml").write_text(
        json.dumps({"path": ".", "train": "images/train", "val": "images/val", "names": names})
    )
    return out


@pytest.fixture(scope="module")
def canvases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("formats")
    coco = build_detection_set(
        root / "coco", source="fashion-mnist-sample", n_train=6, n_val=3, size=64, objects=(1, 3), scale=(14, 30)
    )
    return coco, _write_as_yolo(coco, root / "yolo")


@pytest.mark.parametrize("split", ["train", "val"])
def test_canvas_sample_as_yolo_loads_like_its_coco(canvases: tuple[Path, Path], split: str) -> None:
    coco, yolo = canvases
    _same(open_detection(yolo, split=split), open_coco(coco, split=split), tol=0.5)


def test_train_detect_from_yolo_runs_and_evaluates(canvases: tuple[Path, Path], tmp_path: Path) -> None:
    _, yolo = canvases
    args = [f"data.train={yolo}", "data.mean=[0.12]", "data.std=[0.26]", "data.eval_batch_size=4", "optim.lr_batch=2"]
    out = io.StringIO()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with contextlib.redirect_stdout(out):
            code = main(["train", "detect", "--config", TINY, *args, "--out", str(tmp_path / "run"), "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    assert "training data: read a YOLO dataset: data.yaml, 10 classes, 6 images" in out.getvalue()
    assert "validation data: read a YOLO dataset: data.yaml, 10 classes, 3 images" in out.getvalue()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(any("AP" in key for key in r) for r in records)
    with contextlib.redirect_stdout(io.StringIO()):
        argv = ["eval", str(tmp_path / "run"), "--data", str(yolo / "data.yaml"), "--out", str(tmp_path / "eval")]
        assert main([*argv, "--device", "cpu"]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())


# ------------------------------------------------------------------------------------------------------ malformed


def _cli_error(spec: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, *extra: str) -> str:
    argv = ["train", "detect", "--config", TINY, f"data.train={spec}", *extra, "--out", str(tmp_path / "run")]
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("foveal: error:"), err
    return err


def test_yolo_class_beyond_names_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _yolo(tmp_path / "set")
    label = root / "labels" / "train" / "a.txt"
    label.write_text(label.read_text() + "2 0.5 0.5 0.1 0.1\n")
    err = _cli_error(root, capsys, tmp_path)
    assert f"{label}:3: class id 2 is beyond the 2 names" in err


def test_yolo_coordinate_outside_0_1_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _yolo(tmp_path / "set")
    label = root / "labels" / "train" / "b.txt"
    label.write_text("1 12 8 6 6\n")
    err = _cli_error(root, capsys, tmp_path)
    assert f"{label}:1: coordinate 12 is outside 0 … 1" in err


def test_voc_xmax_below_xmin_names_file_and_object(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _voc(tmp_path / "VOC", BOXES)
    bad = root / "Annotations" / "b.xml"
    bad.write_text(bad.read_text().replace("<xmax>10</xmax>", "<xmax>3</xmax>"))
    err = _cli_error(root, capsys, tmp_path)
    assert f"{bad}: object 1: xmax 3 < xmin 5" in err


def test_polygon_of_two_points_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _images(tmp_path / "images")
    (tmp_path / "annotations.xml").write_text(CVAT.replace("20.00,5.00;35.00,12.00;30.00,25.00", "20,5;35,12"))
    err = _cli_error(tmp_path, capsys, tmp_path)
    assert "<image> 1 ('a.png'), <polygon> 2: a polygon needs at least 3 points, got 2" in err
    shape = {"label": "cat", "points": [[1, 1], [5, 5]], "shape_type": "polygon"}
    doc = {"shapes": [shape], "imagePath": "a.png", "imageWidth": 40, "imageHeight": 30}
    (tmp_path / "images" / "a.json").write_text(json.dumps(doc))
    with pytest.raises(FovealError, match=r"a\.json: shape 1 \(polygon\): a polygon needs at least 3 points"):
        open_detection(tmp_path / "images", format="labelme")


def test_voc_refuses_a_dtd(tmp_path: Path) -> None:
    root = _voc(tmp_path / "VOC", BOXES)
    bad = root / "Annotations" / "a.xml"
    bad.write_text('<!DOCTYPE a [<!ENTITY x "cat">]>' + bad.read_text().replace("cat", "&x;"))
    with pytest.raises(FovealError, match="declares a DTD or entities"):
        open_detection(root)


def test_unknown_layout_says_what_is_read(tmp_path: Path) -> None:
    with pytest.raises(FovealError, match="cannot tell the format"):
        open_detection(tmp_path)
    root = _yolo(tmp_path / "set")
    with pytest.raises(FovealError, match="is not a PASCAL VOC folder: expected Annotations/ and JPEGImages/"):
        open_detection(root, format="voc")
    with pytest.raises(FovealError, match="is not a CVAT export: expected its annotations.xml"):
        open_detection(root, format="cvat")


# -------------------------------------------------------------------------------------------------------- convert


def test_convert_round_trips_keep_boxes_and_classes(canvases: tuple[Path, Path], tmp_path: Path) -> None:
    coco, _ = canvases
    out = io.StringIO()
    steps = [(coco, "yolo"), (tmp_path / "yolo", "voc"), (tmp_path / "voc", "coco")]
    for src, to in steps:
        with contextlib.redirect_stdout(out):
            assert main(["data", "convert", str(src), "--to", to, "--out", str(tmp_path / to)]) == 0
    assert "train: 6 images" in out.getvalue() and "val: 3 images" in out.getvalue()
    assert (tmp_path / "yolo" / "labels" / "val").is_dir() and (tmp_path / "voc" / "ImageSets" / "Main").is_dir()
    for split in ("train", "val"):
        original = open_coco(coco, split=split)
        for kind in ("yolo", "voc", "coco"):
            _same(open_detection(tmp_path / kind, split=split), original, tol=0.5, by_name=False)


def test_convert_keeps_difficult_in_voc_and_coco(tmp_path: Path) -> None:
    boxes = {"a.png": [*BOXES["a.png"][:1], ("dog", [20.0, 5.0, 15.0, 20.0], True)], "b.png": BOXES["b.png"]}
    root = _voc(tmp_path / "VOC", boxes)
    for to in ("coco", "voc"):
        assert main(["data", "convert", str(root), "--to", to, "--out", str(tmp_path / to), "--splits", "train"]) == 0
        _same(open_detection(tmp_path / to, split="train"), open_detection(root, split="train"))


def test_convert_refuses_a_folder_in_use(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _yolo(tmp_path / "set")
    assert main(["data", "convert", str(root), "--to", "coco", "--out", str(root)]) == 2
    assert "exists and is not an empty folder" in capsys.readouterr().err


def test_csv_image_without_boxes_and_labelme_shape_without_box(tmp_path: Path) -> None:
    _images(tmp_path)
    (tmp_path / "train.csv").write_text("image,x1,y1,x2,y2,label\na.png,2,3,12,11,cat\nb.png,,,,,\n")
    (tmp_path / "val.csv").write_text("image,x1,y1,x2,y2,label\nb.png,4,2,10,8,dog\n")
    train, val = open_detection(tmp_path, split="train"), open_detection(tmp_path, split="val")
    assert train.classes == val.classes == ["cat", "dog"] and [len(t["boxes"]) for t in train.targets] == [1, 0]
    shapes = [{"label": "cat", "points": [[1, 1]], "shape_type": "point"}]
    doc = {"shapes": shapes, "imagePath": "a.png", "imageWidth": 40, "imageHeight": 30}
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "a.json").write_text(json.dumps(doc))
    (tmp_path / "lm" / "a.png").write_bytes((tmp_path / "a.png").read_bytes())
    with pytest.raises(FovealError, match=r"a\.json: shape 1 is a 'point', which has no box"):
        open_detection(tmp_path / "lm")


def test_cvat_subsets_are_splits(tmp_path: Path) -> None:
    _images(tmp_path / "images")
    xml = CVAT.replace('name="a.png"', 'name="a.png" subset="Train"').replace(
        'name="b.png"', 'name="b.png" subset="Validation"'
    )
    (tmp_path / "annotations.xml").write_text(xml)
    assert [r.file_name for r in open_detection(tmp_path, split="val").images] == ["images/b.png"]
    with pytest.raises(FovealError, match="has no subset 'test': choose one of train, validation"):
        open_detection(tmp_path, split="test")


def test_data_check_sums_up_each_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _yolo(tmp_path / "set")
    assert main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "train: read a YOLO dataset: data.yaml, 2 classes, 2 images" in out
    assert "2 images (0 without objects), 3 boxes, 0 ignore regions" in out and "boxes per class: cat 1, dog 2" in out
    label = root / "labels" / "train" / "a.txt"
    label.write_text("0 0.5 0.5 1.5 0.1\n")
    assert main(["data", "check", str(root)]) == 2
    assert f"{label}:1: coordinate 1.5 is outside 0 … 1" in capsys.readouterr().err
    assert main(["data", "convert", str(root)]) == 2
    assert "data convert needs --to" in capsys.readouterr().err
