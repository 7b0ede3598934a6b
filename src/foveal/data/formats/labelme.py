"""LabelMe: one JSON file per image, ``{"imagePath", "imageWidth", "imageHeight", "shapes": [{"label", "points",
"shape_type"}]}``, points in pixels.

A ``rectangle`` is two opposite corners, a ``polygon`` (at least 3 points) gives the box around it, a ``circle`` (the
centre and a point on the edge) the box around the circle. Other shapes (``point``, ``line``, ``linestrip``,
``points``, ``mask``) have no box: they are an error naming the file and shape, not dropped without a word. The image
is ``imagePath`` relative to the JSON file. A folder with ``<split>/`` sub-folders gives that split; otherwise every
split is every JSON file. The classes are the sorted labels of every JSON file of the folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from foveal.data.formats.common import DocumentBuilder, find_image, number, points_box, read_json, summary
from foveal.errors import FovealError


def is_labelme_file(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("shapes"), list) and "imagePath" in doc


def read_labelme(spec: Path, split: str) -> tuple[DocumentBuilder, str]:
    """The split of a LabelMe folder (or one LabelMe file) and its summary."""
    folder = spec if spec.is_dir() else spec.parent
    everything = _documents(sorted(folder.rglob("*.json")) if spec.is_dir() else [spec])
    if spec.is_dir() and (spec / split).is_dir():
        chosen = {p: d for p, d in everything.items() if (spec / split) in p.parents}
        what = f"{split}/"
    else:
        chosen, what = everything, "every JSON file (no split folders: every split is all of them)"
    classes = sorted({_label(s, p, k) for p, d in everything.items() for k, s in enumerate(d["shapes"])})
    builder = DocumentBuilder(folder, classes)
    for path, doc in chosen.items():
        image = find_image(str(doc["imagePath"]), [path.parent, folder])
        if image is None:
            raise FovealError(
                f"{path}: its image '{doc['imagePath']}' is not in {path.parent}: restore it (an image embedded as "
                "imageData is not read; save it beside the JSON file)"
            )
        size = (_int(doc.get("imageWidth")), _int(doc.get("imageHeight")))
        image_id = builder.add_image(image, str(path), size)
        for k, shape in enumerate(doc["shapes"]):
            where = f"{path}: shape {k + 1}"
            builder.add_box(image_id, _shape_box(shape, where), _label(shape, path, k), where)
    if not chosen:
        raise FovealError(f"{spec} holds no LabelMe JSON file for split '{split}'")
    return builder, summary("LabelMe", what, len(classes), len(chosen))


def _documents(paths: list[Path]) -> dict[Path, Any]:
    out = {}
    for path in paths:
        doc = read_json(path)
        if is_labelme_file(doc):
            out[path] = doc
    return out


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _label(shape: Any, path: Path, k: int) -> str:
    label = str(shape.get("label", "")).strip() if isinstance(shape, dict) else ""
    if not label:
        raise FovealError(f"{path}: shape {k + 1} has no 'label': give every shape its class")
    return label


def _shape_box(shape: dict[str, Any], where: str) -> tuple[float, float, float, float]:
    kind = shape.get("shape_type") or "polygon"
    points = shape.get("points")
    if kind == "rectangle":
        x1, y1, x2, y2 = points_box(points, where + " (rectangle)", minimum=2)
        return x1, y1, x2, y2
    if kind == "polygon":
        return points_box(points, where + " (polygon)")
    if kind == "circle":
        if not isinstance(points, list) or len(points) != 2:
            raise FovealError(f"{where}: a circle needs 2 points (centre, a point on the edge)")
        (cx, cy), (ex, ey) = ([number(v, where, "a coordinate") for v in p] for p in points)
        r = math.hypot(ex - cx, ey - cy)
        return cx - r, cy - r, cx + r, cy + r
    raise FovealError(
        f"{where} is a '{kind}', which has no box: remove it, or draw a rectangle or polygon around the object"
    )
