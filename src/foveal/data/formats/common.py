"""What every detection format reader shares: a COCO-shaped document built image by image, image sizes read from
file headers, text and XML read safely, numbers parsed with the place they came from.

A reader hands :class:`DocumentBuilder` its images and boxes in pixels (x1, y1, x2, y2, exclusive right and bottom
edges, the convention of :mod:`foveal.data.coco`); :meth:`DocumentBuilder.document` is then checked and turned into a
:class:`~foveal.data.coco.DetectionData` exactly as a COCO file is.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from foveal.data.images import is_image_file, pillow_unbounded
from foveal.errors import FovealError

Box = tuple[float, float, float, float]


class DocumentBuilder:
    """Images and boxes collected into ``{"images", "annotations", "categories"}`` (ids from 1).

    Args:
        root: the folder image paths are stored relative to (``file_name``).
        classes: the class names in label order; category ``k + 1`` is ``classes[k]``.
    """

    def __init__(self, root: Path, classes: Sequence[str]) -> None:
        self.root = root
        self.classes = list(classes)
        self.category_of = {name: k + 1 for k, name in enumerate(self.classes)}
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self._seen: dict[str, str] = {}

    def add_image(self, path: Path, where: str, size: tuple[int, int] | None = None) -> int:
        """Add the image file ``path`` (its (width, height) read from its header when ``size`` is None or not
        positive) and return its id; ``where`` names the annotation that lists it, for messages."""
        name = os.path.relpath(path, self.root)
        if name in self._seen:
            raise FovealError(f"{where}: image {path} is annotated twice (also by {self._seen[name]}): keep one")
        self._seen[name] = where
        if not path.is_file():
            raise FovealError(f"{where}: its image {path} does not exist: restore it or remove the annotation")
        if size is None or size[0] <= 0 or size[1] <= 0:
            size = image_size(path)
        self.images.append({"id": len(self.images) + 1, "file_name": name, "width": size[0], "height": size[1]})
        return len(self.images)

    def add_box(self, image_id: int, box: Box, name: str, where: str, crowd: bool = False) -> None:
        """Add a box in pixels (x1, y1, x2, y2) of class ``name`` to image ``image_id``; ``crowd`` makes it an
        ignore region (VOC's ``difficult``)."""
        x1, y1, x2, y2 = box
        if not all(math.isfinite(v) for v in box):
            raise FovealError(f"{where}: the box {list(box)} holds a value that is not a finite number: fix it")
        if x2 <= x1 or y2 <= y1:
            raise FovealError(
                f"{where}: the box ({x1:g}, {y1:g}) – ({x2:g}, {y2:g}) has no area (its right edge must lie right of "
                "its left edge, its bottom below its top): fix its corners"
            )
        if name not in self.category_of:
            known = ", ".join(self.classes[:10]) + (" …" if len(self.classes) > 10 else "")
            raise FovealError(
                f"{where}: class '{name}' is not one of the dataset's classes ({known}): add it or fix it"
            )
        self.annotations.append(
            {
                "id": len(self.annotations) + 1,
                "image_id": image_id,
                "category_id": self.category_of[name],
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": int(crowd),
            }
        )

    def document(self) -> dict[str, Any]:
        """The COCO-shaped dict of everything added."""
        categories = [{"id": k + 1, "name": name} for k, name in enumerate(self.classes)]
        return {"images": self.images, "annotations": self.annotations, "categories": categories}


def summary(kind: str, what: str, classes: int, images: int) -> str:
    """``"read a YOLO dataset: data.yaml, 3 classes, 120 images"``."""
    return f"read a {kind} dataset: {what}, {_count(classes, 'class', 'classes')}, {_count(images, 'image', 'images')}"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image from its header."""
    try:
        with pillow_unbounded(), Image.open(path) as img:
            return int(img.width), int(img.height)
    except UnidentifiedImageError:
        raise FovealError(
            f"{path} is not an image Pillow can read (corrupt, or not an image): fix or remove it"
        ) from None
    except OSError as exc:
        raise FovealError(f"cannot read image {path}: {exc.strerror or exc}") from None


def read_text(path: Path) -> str:
    """The text of a UTF-8 file (a byte-order mark is dropped)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FovealError(f"{path} is not UTF-8 text (byte {exc.start} is not): save it as UTF-8") from None
    except OSError as exc:
        raise FovealError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_json(path: Path) -> Any:
    """A JSON document, every failure a FovealError naming the file (and the line of a syntax error)."""
    import json

    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise FovealError(f"{path}:{exc.lineno}: not valid JSON (column {exc.colno}: {exc.msg}): fix it") from None
    except RecursionError:
        raise FovealError(f"{path} nests its lists or objects too deeply to be an annotation file") from None


def read_xml(path: Path) -> Any:
    """The root element of an XML file; a DTD or entity declaration is refused (nothing in the file is expanded)."""
    import xml.etree.ElementTree as ET

    import defusedxml
    import defusedxml.ElementTree as safe

    try:
        return safe.parse(str(path), forbid_dtd=True, forbid_entities=True, forbid_external=True).getroot()
    except defusedxml.DefusedXmlException:
        raise FovealError(
            f"{path} declares a DTD or entities, which are not read: remove <!DOCTYPE> / <!ENTITY>"
        ) from None
    except ET.ParseError as exc:
        line = exc.position[0] if getattr(exc, "position", None) else "?"
        raise FovealError(f"{path}:{line}: not well-formed XML ({exc}): fix or re-export it") from None
    except OSError as exc:
        raise FovealError(f"cannot read {path}: {exc.strerror or exc}") from None


def number(value: Any, where: str, what: str) -> float:
    """``value`` (a number or its text) as a finite float, else a FovealError naming ``where`` and ``what``."""
    try:
        out = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        out = math.nan
    if not math.isfinite(out):
        raise FovealError(f"{where}: {what} must be a finite number, got {str(value)[:40]!r}")
    return out


def points_box(points: Any, where: str, minimum: int = 3) -> Box:
    """The box around a polygon's points ``[[x, y], ...]`` (at least ``minimum`` of them)."""
    if not isinstance(points, list) or len(points) < minimum:
        count = len(points) if isinstance(points, list) else 0
        raise FovealError(f"{where}: a polygon needs at least {minimum} points, got {count}: fix or remove it")
    xs, ys = [], []
    for p in points:
        if not isinstance(p, list | tuple) or len(p) != 2:
            raise FovealError(f"{where}: a point must be [x, y], got {str(p)[:40]}")
        xs.append(number(p[0], where, "x"))
        ys.append(number(p[1], where, "y"))
    return min(xs), min(ys), max(xs), max(ys)


def images_in(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else []


def find_image(name: str, folders: Sequence[Path]) -> Path | None:
    """The first ``folder / name`` that is a file, else the first file of that base name in ``folders``."""
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    base = Path(name.replace("\\", "/")).name
    for folder in folders:
        if (folder / base).is_file():
            return folder / base
    return None
