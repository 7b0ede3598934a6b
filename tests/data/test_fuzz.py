"""Property-based tests: any JSON document gives a loaded COCO set or a FovealError, nothing else; the box utilities
give finite boxes inside the image (or a FovealError) for any scale, size and box values, NaN and infinity included."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from foveal import preprocess
from foveal.data import box_transforms as bt
from foveal.data.coco import DetectionData, open_coco
from foveal.errors import FovealError

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# JSON scalars with the awkward cases: huge integers, NaN / infinity (Python's json writes and reads them), odd text.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, 1, -1, 2**63, 2**64, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["a.png", "b.png", "missing.png", "", "../a.png", "a\x00.png", "x" * 300]),
)
_any_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)
_value = st.one_of(_scalars, st.lists(_scalars, max_size=5))


def _valid() -> dict:
    """Two images (a.png 12 × 12, b.png 16 × 10), two categories, three annotations: loads as it is."""
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 12, "height": 12},
            {"id": 2, "file_name": "b.png", "width": 16, "height": 10},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [2.5, 0, 10, 9]},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [0, 0, 12, 12], "iscrowd": 1},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }


_extreme = st.one_of(st.sampled_from([2**63, 10**400, -(10**400), 1e308, float("nan"), float("inf"), 0, -1]), _scalars)
_NUMBERS = {
    "images": ["id", "width", "height"],
    "annotations": ["image_id", "category_id", "area", "iscrowd"],
    "categories": ["id"],
}
_KEYS = ["id", "file_name", "width", "height", "image_id", "category_id", "bbox", "area", "iscrowd", "name"]


@st.composite
def _mutated(draw: st.DrawFn) -> object:
    """The valid document with 1–3 changes: a field set to any value (or a bbox item), removed, or an entry replaced."""
    doc = _valid()
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from(["images", "annotations", "categories"]))
        entries = doc[section]
        if not entries:
            continue
        i = draw(st.integers(0, len(entries) - 1))
        action = draw(st.sampled_from(["set", "number", "bbox", "bbox", "drop", "replace", "duplicate"]))
        if action == "replace":
            entries[i] = draw(_any_json)
        elif action == "duplicate":
            entries.append(json.loads(json.dumps(entries[i])))
        elif isinstance(entries[i], dict):
            key = draw(st.sampled_from(_NUMBERS[section] if action == "number" else _KEYS))
            if action == "number":
                entries[i][key] = draw(_extreme)
            elif action == "drop":
                entries[i].pop(key, None)
            elif action == "bbox" and isinstance(entries[i].get("bbox"), list) and entries[i]["bbox"]:
                box = entries[i]["bbox"]  # an earlier mutation may have left fewer than 4 numbers
                box[draw(st.integers(0, len(box) - 1))] = draw(_extreme)
            else:
                entries[i][key] = draw(st.one_of(_extreme, _value))
    return doc


_document = st.one_of(_any_json, _mutated())


@FAST
@given(document=_document)
def test_any_json_document_loads_or_raises_foveal_error(tmp_path_factory, document: object) -> None:
    folder = tmp_path_factory.mktemp("coco")
    for name, size in (("a.png", (12, 12)), ("b.png", (16, 10))):
        Image.fromarray(np.zeros(size[::-1], np.uint8)).save(folder / name)
    path = folder / "gt.json"
    path.write_text(json.dumps(document))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dropped boxes are reported by a warning: allowed
        try:
            data = open_coco(path)
        except FovealError:
            return
    assert isinstance(data, DetectionData) and len(data) >= 1
    for target, record in zip(data.targets, data.images, strict=True):
        boxes = target["boxes"]
        assert torch.isfinite(boxes).all() and torch.isfinite(target["areas"]).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        assert (boxes[:, 2] <= record.width).all() and (boxes[:, 3] <= record.height).all()


_coordinate = st.floats(width=32, allow_nan=True, allow_infinity=True)
_boxes = st.lists(st.lists(_coordinate, min_size=4, max_size=4), max_size=6)
_finite_boxes = st.lists(st.lists(st.floats(-1e6, 1e6, width=32), min_size=4, max_size=4), max_size=6)
_scale = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, -1.0, 1e-9, 1e9]))
_edge = st.integers(0, 40)


def _tensor(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).reshape(-1, 4)


def _inside(boxes: torch.Tensor, h: int, w: int) -> bool:
    return bool(
        torch.isfinite(boxes).all()
        and (boxes >= 0).all()
        and (boxes[:, 0::2] <= w).all()
        and (boxes[:, 1::2] <= h).all()
    )


@FAST
@given(rows=_boxes, h=_edge, w=_edge)
def test_clip_boxes_always_finite_and_inside(rows: list[list[float]], h: int, w: int) -> None:
    assert _inside(bt.clip_boxes(_tensor(rows), (h, w)), h, w)


@FAST
@given(rows=_finite_boxes, h=_edge, w=_edge, scale=_scale)
def test_resize_gives_finite_boxes_or_foveal_error(rows: list[list[float]], h: int, w: int, scale: float) -> None:
    image = torch.zeros(1, h, w, dtype=torch.uint8)
    try:
        out, boxes = bt.resize(image, _tensor(rows), scale)
    except FovealError:
        assert not (math.isfinite(scale) and scale > 0 and min(h, w) >= 1 and max(h, w) * scale <= 65536)
        return
    assert _inside(boxes, out.shape[-2], out.shape[-1])


@FAST
@given(rows=_finite_boxes, h=_edge, w=_edge, min_size=st.integers(-2, 64), max_size=st.integers(-2, 64))
def test_resize_shorter_finite_or_foveal_error(rows, h: int, w: int, min_size: int, max_size: int) -> None:  # noqa: ANN001
    image = torch.zeros(1, h, w)
    try:
        out, boxes, scale = bt.resize_shorter(image, _tensor(rows), min_size, max_size)
    except FovealError:
        assert min(h, w) < 1 or min_size < 1 or max_size < min_size
        return
    assert math.isfinite(scale) and scale > 0
    assert _inside(boxes, out.shape[-2], out.shape[-1]) and torch.isfinite(out).all()


@FAST
@given(rows=_finite_boxes, w=st.integers(1, 40))
def test_hflip_of_finite_boxes_is_finite(rows: list[list[float]], w: int) -> None:
    _, flipped = bt.hflip(torch.zeros(1, 4, w), _tensor(rows))
    assert torch.isfinite(flipped).all()


_odd = st.sampled_from([0.0, -1.0, float("nan"), float("inf"), -float("inf")])


@FAST
@given(
    mean=st.lists(st.one_of(st.floats(-1e6, 1e6), _odd), min_size=1, max_size=1),
    std=st.lists(st.one_of(st.floats(1e-6, 1e6), _odd), min_size=1, max_size=1),
)
def test_normalize_finite_or_foveal_error(mean: list[float], std: list[float]) -> None:
    image = torch.full((3, 2, 2), 128, dtype=torch.uint8)
    sane = all(math.isfinite(m) for m in mean) and all(math.isfinite(v) and v > 0 for v in std)
    try:
        out = preprocess.normalize(image, mean, std)
    except FovealError:
        assert not sane
        return
    assert sane and torch.isfinite(out).all()


def test_zero_height_image_is_a_foveal_error() -> None:
    for call in (
        lambda: bt.shorter_side_scale(0, 10, 800, 1333),
        lambda: bt.resize(torch.zeros(1, 0, 10), torch.zeros(0, 4), 2.0),
        lambda: bt.resize(torch.zeros(1, 5, 10), torch.zeros(0, 4), float("nan")),
        lambda: bt.resize(torch.zeros(1, 5, 10), torch.zeros(0, 4), float("inf")),
    ):
        try:
            call()
        except FovealError:
            continue
        raise AssertionError("expected a FovealError")
