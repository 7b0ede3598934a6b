"""Label Studio's JSON export: a list of tasks, ``{"data": {"image": url}, "annotations": [{"result": [...]}]}``.

A ``rectanglelabels`` result has ``value: {x, y, width, height, rotation, rectanglelabels: [name]}`` in percent of
the image (``original_width`` / ``original_height`` give it in pixels, else the image's header does); a rotated
rectangle (about its top-left corner, as Label Studio turns it) gives the box around it. A ``polygonlabels`` result
(``points`` in percent, at least 3) gives the box around the polygon. Other results (choices, text, key points) are
no objects and are passed over. The first annotation not cancelled is read. The image of ``/data/upload/3/
8f3a2b1c-cat.jpg`` or ``/data/local-files/?d=images/cat.jpg`` is looked for by its path and its name (without the
upload prefix) beside the JSON file and in its ``images/``. A folder with ``<split>.json`` gives that split; one JSON
file is every split. The classes are the sorted labels used.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from foveal.data.formats.common import DocumentBuilder, find_image, number, points_box, summary
from foveal.errors import FovealError

_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
_KINDS = {"rectanglelabels", "polygonlabels"}


def is_labelstudio(doc: Any) -> bool:
    return isinstance(doc, list) and bool(doc) and all(isinstance(t, dict) and "data" in t for t in doc[:5])


def read_labelstudio(path: Path, tasks: list[Any], what: str) -> tuple[DocumentBuilder, str]:
    """The tasks of the Label Studio export ``path`` and its summary."""
    chosen = [(n, t, _results(t, f"{path}: task {n}")) for n, t in enumerate(tasks, start=1)]
    classes = sorted({_label(r, f"{path}: task {n}") for n, _, rs in chosen for r in rs})
    folders = [path.parent, path.parent / "images"]
    builder = DocumentBuilder(path.parent, classes)
    for n, task, results in chosen:
        where = f"{path}: task {n} (id {task.get('id', '?')})"
        image = _image(task, folders, where)
        size = next(((r.get("original_width"), r.get("original_height")) for r in results), (0, 0))
        image_id = builder.add_image(image, where, (_int(size[0]), _int(size[1])))
        width, height = builder.images[-1]["width"], builder.images[-1]["height"]
        for k, result in enumerate(results, start=1):
            there = f"{where}, result {k}"
            builder.add_box(image_id, _box(result, there, width, height), _label(result, there), there)
    return builder, summary("Label Studio", what, len(classes), len(chosen))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _results(task: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
        raise FovealError(f"{where} is not a Label Studio task: it needs 'data' with the image and 'annotations'")
    annotations = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    if not annotations:
        return []
    results = annotations[0].get("result") or []
    if not isinstance(results, list):
        raise FovealError(f"{where}: 'result' must be a list")
    return [r for r in results if isinstance(r, dict) and r.get("type") in _KINDS]


def _label(result: dict[str, Any], where: str) -> str:
    value = result.get("value") or {}
    names = value.get(result.get("type")) if isinstance(value, dict) else None
    if not isinstance(names, list) or len(names) != 1 or not str(names[0]).strip():
        raise FovealError(f"{where}: a {result.get('type')} result needs exactly one label, got {names!r}")
    return str(names[0]).strip()


def _box(result: dict[str, Any], where: str, width: int, height: int) -> tuple[float, float, float, float]:
    """The box in pixels of a result in percent of the image (a rotation turns the rectangle in pixels)."""
    value = result["value"]
    if result["type"] == "polygonlabels":
        x1, y1, x2, y2 = points_box(value.get("points"), where)
        return x1 * width / 100, y1 * height / 100, x2 * width / 100, y2 * height / 100
    x, y, w, h = (number(value.get(k), where, k) for k in ("x", "y", "width", "height"))
    x, y, w, h = x * width / 100, y * height / 100, w * width / 100, h * height / 100
    angle = math.radians(number(value.get("rotation", 0), where, "rotation"))
    if angle == 0:
        return x, y, x + w, y + h
    c, s = math.cos(angle), math.sin(angle)
    xs = [x + dx * c - dy * s for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    ys = [y + dx * s + dy * c for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    return min(xs), min(ys), max(xs), max(ys)


def _image(task: dict[str, Any], folders: list[Path], where: str) -> Path:
    data = task["data"]
    url = next((v for k, v in data.items() if k in ("image", "img", "image_url")), None)
    if url is None:
        url = next((v for v in data.values() if isinstance(v, str)), None)
    if not isinstance(url, str) or not url:
        raise FovealError(f"{where}: 'data' names no image (expected data.image)")
    parsed = urlparse(url)
    local = parse_qs(parsed.query).get("d")
    name = unquote(local[0] if local else parsed.path).lstrip("/")
    base = Path(name).name
    for candidate in (name, base, _UPLOAD_PREFIX.sub("", base)):
        found = find_image(candidate, folders)
        if found is not None:
            return found
    raise FovealError(f"{where}: its image {url} is in none of {', '.join(map(str, folders))}: copy the images there")
