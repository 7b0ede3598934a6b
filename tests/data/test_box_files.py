"""Box files of every format: JSON, CSV, CUB-200-2011 and VOC / ImageNet XML, image matching and box checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from foveal.data.box_files import check_inside, match_images, read_box_file
from foveal.errors import FovealError


def _image(path: Path, height: int = 20, width: int = 30) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((height, width), np.uint8)).save(path)
    return path


def test_json_object_list_and_stated_format(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"cat/1.png": [[1, 2, 5, 6], [0, 0, 2, 2]], "dog/2.png": [3, 4, 1, 1]}))
    entries = read_box_file(tmp_path / "a.json", "xywh")
    assert [e.image for e in entries] == ["cat/1.png", "dog/2.png"]
    assert entries[0].boxes == ((1, 2, 6, 8), (0, 0, 2, 2)) and entries[1].boxes == ((3, 4, 4, 5),)
    assert entries[0].label is None
    records = [{"image": "1.png", "boxes": [[1, 2, 5, 6]], "label": "cat"}, {"file": "2.png", "bbox": [0, 0, 3, 3]}]
    (tmp_path / "b.json").write_text(json.dumps({"box_format": "xyxy", "images": records}))
    entries = read_box_file(tmp_path / "b.json")
    assert entries[0].boxes == ((1, 2, 5, 6),) and entries[0].label == "cat" and entries[1].boxes == ((0, 0, 3, 3),)
    (tmp_path / "c.json").write_text(json.dumps({"x.png": {"boxes": [[1, 1, 4, 4]], "label": "dog"}}))
    assert read_box_file(tmp_path / "c.json", "xyxy")[0].label == "dog"
    with pytest.raises(FovealError, match="box_format xyxy"):
        read_box_file(tmp_path / "a.json")  # the format must be stated
    with pytest.raises(FovealError, match="drop one"):
        read_box_file(tmp_path / "b.json", "xywh")


def test_csv_header_states_the_format_and_rows_of_one_image_merge(tmp_path: Path) -> None:
    (tmp_path / "h.csv").write_text(
        "image,x,y,w,h,label\ncat/1.png,1,2,3,4,cat\ncat/1.png,0,0,1,1,cat\nb.png,1,1,2,2,\n"
    )
    entries = read_box_file(tmp_path / "h.csv")
    assert entries[0].boxes == ((1, 2, 4, 6), (0, 0, 1, 1)) and entries[0].label == "cat"
    assert entries[1].label is None and entries[1].boxes == ((1, 1, 3, 3),)
    (tmp_path / "x.csv").write_text("filename,xmin,ymin,xmax,ymax\na.png,1,2,3,4\n")
    assert read_box_file(tmp_path / "x.csv")[0].boxes == ((1, 2, 3, 4),)
    (tmp_path / "bare.csv").write_text("a.png,1,2,3,4,dog\n")
    assert read_box_file(tmp_path / "bare.csv", "xyxy")[0].label == "dog"
    with pytest.raises(FovealError, match="no header"):
        read_box_file(tmp_path / "bare.csv")
    with pytest.raises(FovealError, match="header says xywh"):
        read_box_file(tmp_path / "h.csv", "xyxy")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("image,x1,y1,x2,y2\na.png,1,2,1,4\n", "zero area"),  # x2 = x1
        ("image,x1,y1,x2,y2\na.png,1,2,3\n", r"h.csv:2: expected an image and 4 box numbers"),
        ("image,x1,y1,x2,y2\na.png,1,two,3,4\n", "not 4 numbers"),
        ("image,x1,y1,x2,y2\na.png,1,nan,3,4\n", "not finite"),
        ("picture,left,top\na.png,1,2\n", "does not name an image column"),
        ("image,x1,y1,x2,y2,label\na.png,1,2,3,4,cat\na.png,0,0,2,2,dog\n", "label 'dog' here but 'cat'"),
    ],
)
def test_malformed_csv_rows(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "h.csv").write_text(text)
    with pytest.raises(FovealError, match=needle):
        read_box_file(tmp_path / "h.csv")


def _cub(root: Path) -> Path:
    root.mkdir()
    (root / "images.txt").write_text("1 001.Albatross/a.jpg\n2 001.Albatross/b.jpg\n3 002.Auklet/c.jpg\n")
    (root / "bounding_boxes.txt").write_text("1 10.0 5.0 20.0 8.0\n2 1.0 1.0 2.0 2.0\n3 0.0 0.0 4.5 4.5\n")
    (root / "image_class_labels.txt").write_text("1 1\n2 1\n3 2\n")
    (root / "classes.txt").write_text("1 001.Albatross\n2 002.Auklet\n")
    (root / "train_test_split.txt").write_text("1 0\n2 1\n3 0\n")
    return root


def test_cub_layout_split_and_labels(tmp_path: Path) -> None:
    root = _cub(tmp_path / "CUB_200_2011")
    test = read_box_file(root)
    assert [(e.image, e.boxes, e.label) for e in test] == [
        ("001.Albatross/a.jpg", ((10, 5, 30, 13),), "001.Albatross"),
        ("002.Auklet/c.jpg", ((0, 0, 4.5, 4.5),), "002.Auklet"),
    ]
    assert [e.image for e in read_box_file(root / "bounding_boxes.txt", split="train")] == ["001.Albatross/b.jpg"]
    with pytest.raises(FovealError, match="xywh, not xyxy"):
        read_box_file(root, "xyxy")
    (root / "bounding_boxes.txt").write_text("1 10.0 5.0 20.0\n")
    with pytest.raises(FovealError, match=r"bounding_boxes.txt:1: expected an id and 4"):
        read_box_file(root)
    (root / "bounding_boxes.txt").write_text("2 1 1 2 2\n")
    with pytest.raises(FovealError, match="image id 1 has no row"):
        read_box_file(root)


VOC = """<annotation><folder>VOC2007</folder><filename>{name}</filename>
<size><width>30</width><height>20</height><depth>3</depth></size>
<object><name>dog</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>12</ymax></bndbox></object>
<object><name>{second}</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>30</xmax><ymax>20</ymax></bndbox></object>
</annotation>"""


def test_voc_and_imagenet_xml(tmp_path: Path) -> None:
    folder = tmp_path / "ann"
    folder.mkdir()
    (folder / "000005.xml").write_text(VOC.format(name="000005.jpg", second="dog"))
    (folder / "val_1.xml").write_text(VOC.format(name="ILSVRC2012_val_00000001", second="person"))
    first, second = read_box_file(folder)
    # VOC pixels are 1-based and inclusive: xmin 1 … xmax 10 covers pixels 0..9, i.e. (0, …, 10) exclusive
    assert first.image == "000005.jpg" and first.boxes == ((0, 1, 10, 12), (4, 4, 30, 20))
    assert first.label == "dog" and first.box_labels == ("dog", "dog")
    assert second.label is None and second.box_labels == ("dog", "person")  # objects of two classes: no image label
    assert read_box_file(folder / "000005.xml")[0].boxes == first.boxes
    with pytest.raises(FovealError, match="xyxy, not xywh"):
        read_box_file(folder, "xywh")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "x">]><annotation><filename>&e;</filename></annotation>', "DTD"),
        ("<annotation><object><name>a</name></object>", "not well-formed"),
        ("<annotation><filename>a.jpg</filename></annotation>", "no <object>"),
        ("<annotation><object><name>a</name></object></annotation>", "no <bndbox>"),
        (
            "<annotation><object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax></bndbox></object></annotation>",
            "<ymax>",
        ),
        (VOC.format(name="a.jpg", second="dog").replace("<xmax>10</xmax>", "<xmax>1</xmax>", 1), "zero area"),
    ],
)
def test_bad_xml(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "a.xml").write_text(text)
    with pytest.raises(FovealError, match=needle):
        read_box_file(tmp_path / "a.xml")


def test_match_images_by_path_suffix_name_and_stem(tmp_path: Path) -> None:
    data = tmp_path / "images"
    for rel in ("cat/1.png", "dog/2.png", "dog/3.png", "x/dup.png", "y/dup.png"):
        _image(data / rel)
    (tmp_path / "b.json").write_text(
        json.dumps({"cat/1.png": [0, 0, 1, 1], "images/dog/2.png": [0, 0, 1, 1], "3": [0, 0, 1, 1]})
    )
    matched = match_images(read_box_file(tmp_path / "b.json", "xyxy"), data)
    assert [p.relative_to(data).as_posix() for p, _ in matched] == ["cat/1.png", "dog/2.png", "dog/3.png"]
    (tmp_path / "c.json").write_text(json.dumps({"missing.png": [0, 0, 1, 1]}))
    with pytest.raises(FovealError, match="unknown image 'missing.png'"):
        match_images(read_box_file(tmp_path / "c.json", "xyxy"), data)
    (tmp_path / "d.json").write_text(json.dumps({"dup.png": [0, 0, 1, 1]}))
    with pytest.raises(FovealError, match="several files"):
        match_images(read_box_file(tmp_path / "d.json", "xyxy"), data)


def test_check_inside_clips_a_pixel_and_refuses_more(tmp_path: Path) -> None:
    (tmp_path / "b.json").write_text(json.dumps({"a.png": [[-1, 0, 30.5, 20], [2, 2, 5, 5]], "b.png": [0, 0, 32, 5]}))
    a, b = read_box_file(tmp_path / "b.json", "xyxy")
    assert check_inside(a, 20, 30, "a.png") == ((0, 0, 30, 20), (2, 2, 5, 5))
    with pytest.raises(FovealError, match=r"box \(0, 0, 32, 5\) lies outside image b.png \(30 × 20 px\)"):
        check_inside(b, 20, 30, "b.png")


def test_missing_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(FovealError, match="box file not found"):
        read_box_file(tmp_path / "none.json")
    (tmp_path / "b.yaml").write_text("a: 1\n")
    with pytest.raises(FovealError, match="unknown kind"):
        read_box_file(tmp_path / "b.yaml")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FovealError, match="no .xml annotations"):
        read_box_file(tmp_path / "empty")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(FovealError, match="not valid JSON"):
        read_box_file(tmp_path / "bad.json", "xyxy")
    with pytest.raises(FovealError, match="unknown box format"):
        read_box_file(tmp_path / "bad.json", "cxcywh")
