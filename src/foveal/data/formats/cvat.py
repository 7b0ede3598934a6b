"""CVAT for images 1.1: one ``annotations.xml``, ``<annotations><meta>…<labels><label><name>`` then one
``<image id name width height [subset]>`` per image holding ``<box label xtl ytl xbr ybr>`` (pixels, corners),
``<polygon label points="x1,y1;x2,y2;…">`` (the box around it, at least 3 points) and ``<ellipse label cx cy rx ry>``.

``<tag>`` (an image-level label) is not an object and is passed over; ``<points>``, ``<polyline>``, ``<mask>``,
``<skeleton>`` and ``<cuboid>`` have no box and are an error naming the image. Images are looked for beside the XML
file and in its ``images/`` folder. Images with a ``subset`` attribute (CVAT's Train / Validation …) are split by it,
``val`` matching a subset named ``validation``; without subsets every split is every image. The classes are the
labels of ``<meta>`` in their order (else the sorted labels used).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from foveal.data.formats.common import DocumentBuilder, find_image, number, points_box, summary
from foveal.errors import FovealError

_NO_BOX = ("points", "polyline", "mask", "skeleton", "cuboid")


def read_cvat(path: Path, root: Any, split: str) -> tuple[DocumentBuilder, str]:
    """The split of a CVAT 1.1 XML document (``root``, read from ``path``) and its summary."""
    images = list(root.iter("image"))
    subsets = {(e.get("subset") or "").strip().lower() for e in images} - {"", "default"}
    wanted = {split.lower(), "validation"} if split.lower() == "val" else {split.lower()}
    if subsets:
        if not subsets & wanted:
            raise FovealError(f"{path} has no subset '{split}': choose one of {', '.join(sorted(subsets))}")
        images = [e for e in images if (e.get("subset") or "").strip().lower() in wanted]
        what = f"{path.name}, subset {split}"
    else:
        what = f"{path.name} (no subsets: every split is all images)"
    meta = [(e.findtext("name") or "").strip() for e in root.iter("label") if e.find("name") is not None]
    used = {_label(s, path) for e in root.iter("image") for s in e if s.tag in ("box", "polygon", "ellipse")}
    classes = [m for m in meta if m] or sorted(used)
    folders = [path.parent, path.parent / "images"]
    builder = DocumentBuilder(path.parent, classes)
    for n, image in enumerate(images, start=1):
        name = image.get("name") or ""
        where = f"{path}: <image> {n} ('{name}')"
        file = find_image(name, folders)
        if file is None:
            raise FovealError(f"{where}: its image is in none of {', '.join(map(str, folders))}: restore it")
        size = (
            int(number(image.get("width", 0), where, "width")),
            int(number(image.get("height", 0), where, "height")),
        )
        image_id = builder.add_image(file, where, size)
        for k, shape in enumerate(image, start=1):
            there = f"{where}, <{shape.tag}> {k}"
            if shape.tag in _NO_BOX:
                raise FovealError(f"{there} has no box: remove it, or draw a box or polygon around the object")
            if shape.tag in ("box", "polygon", "ellipse"):
                builder.add_box(image_id, _box(shape, there), _label(shape, path), there)
    return builder, summary("CVAT", what, len(classes), len(images))


def _label(shape: Any, path: Path) -> str:
    label = (shape.get("label") or "").strip()
    if not label:
        raise FovealError(f"{path}: a <{shape.tag}> has no label: give every shape its class")
    return label


def _box(shape: Any, where: str) -> tuple[float, float, float, float]:
    if shape.tag == "box":
        x1, y1, x2, y2 = (number(shape.get(k), where, k) for k in ("xtl", "ytl", "xbr", "ybr"))
        return x1, y1, x2, y2
    if shape.tag == "ellipse":
        cx, cy, rx, ry = (number(shape.get(k), where, k) for k in ("cx", "cy", "rx", "ry"))
        return cx - rx, cy - ry, cx + rx, cy + ry
    text = (shape.get("points") or "").strip()
    points = [pair.split(",") for pair in text.split(";")] if text else []
    return points_box(points, where)
