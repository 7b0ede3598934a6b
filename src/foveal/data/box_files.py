"""Ground-truth boxes of your own images, for weakly supervised localization: JSON, CSV, CUB-200-2011 and XML.

:func:`read_box_file` reads

- **JSON**: an object mapping each image to its boxes, ``{"cat/1.jpg": [[x1, y1, x2, y2], ...]}`` (one box may be
  given bare, ``[x1, y1, x2, y2]``), or to a record ``{"boxes": [...], "label": "cat"}``; or a list of records
  ``[{"image": "cat/1.jpg", "boxes": [...], "label": "cat"}]``; or either of these under ``"images"`` next to
  ``"box_format": "xywh"``. The box format comes from that key or from the ``box_format`` argument.
- **CSV**: one row per box, ``image, a, b, c, d[, label]``. A header names the format: ``x1,y1,x2,y2`` /
  ``xmin,ymin,xmax,ymax`` are xyxy, ``x,y,w,h`` / ``x,y,width,height`` are xywh; the image column is ``image``,
  ``path``, ``file`` or ``filename``, the label column ``label`` or ``class``. Without a header the format comes from
  the ``box_format`` argument.
- **CUB-200-2011**: its folder (or any of its files): ``images.txt`` (``id path``), ``bounding_boxes.txt``
  (``id x y width height``), and when present ``image_class_labels.txt`` + ``classes.txt`` for the labels and
  ``train_test_split.txt`` for the split (``split="test"`` keeps the test images).
- **PASCAL VOC / ImageNet XML**: a folder of ``.xml`` annotations (or one file), one per image: ``<filename>`` (or
  the XML file's own name) names the image, each ``<object>`` gives ``<name>`` and ``<bndbox>`` with
  ``xmin ymin xmax ymax`` in VOC's 1-based inclusive pixels. Documents with a DTD or entities are refused.

Boxes come back as (x1, y1, x2, y2) in pixels, x2 and y2 exclusive (see :mod:`foveal.explain.boxes`); xywh is
(x, y, x + w, y + h). Several rows of one image are several boxes of it (an image counts as localized when the
predicted box matches any of them). :func:`match_images` finds each named image in a data folder and
:func:`check_inside` checks the boxes against the image's size.
"""

from __future__ import annotations

import csv
import json
import reprlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foveal.data.images import list_images
from foveal.errors import FovealError

BOX_FORMATS = ("xyxy", "xywh")
EDGE_TOLERANCE = 1.0
"""Pixels a box may reach past the image's edge (rounding of annotation tools, ImageNet's 0-based xmin); it is clipped.
A box further out is an error."""

Box = tuple[float, float, float, float]
_CSV_IMAGE = ("image", "path", "file", "filename", "image_path", "img")
_CSV_LABEL = ("label", "class", "class_name", "category")
_CSV_BOXES = {
    ("x1", "y1", "x2", "y2"): "xyxy",
    ("xmin", "ymin", "xmax", "ymax"): "xyxy",
    ("left", "top", "right", "bottom"): "xyxy",
    ("x", "y", "w", "h"): "xywh",
    ("x", "y", "width", "height"): "xywh",
}
_JSON_IMAGE = ("image", "file", "path", "filename")
_JSON_BOXES = ("boxes", "box", "bbox")
_CUB_FILES = ("images.txt", "bounding_boxes.txt", "image_class_labels.txt", "classes.txt", "train_test_split.txt")


@dataclass(frozen=True)
class BoxEntry:
    """The ground truth of one image.

    Attributes:
        image: the image as the box file names it (a path relative to the data folder, a file name, or a stem).
        boxes: one or more (x1, y1, x2, y2) boxes, x2 and y2 exclusive.
        label: the image's class name, when the box file gives it.
        box_labels: the class name of each box (XML objects), ``None`` where not given.
        where: where in the box file the image is described, for messages (``file:line``).
        box_where: where each box is described (rows of a CSV, files of an XML folder); empty: at ``where``.
    """

    image: str
    boxes: tuple[Box, ...]
    label: str | None
    box_labels: tuple[str | None, ...]
    where: str
    box_where: tuple[str, ...] = ()

    def where_of(self, box: int) -> str:
        """Where box number ``box`` is described, for messages."""
        return self.box_where[box] if len(self.box_where) == len(self.boxes) else self.where


def read_box_file(path: str | Path, box_format: str | None = None, split: str = "test") -> list[BoxEntry]:
    """Read a box file in any of the module's formats (chosen by its name: a CUB folder or file, a folder of XML,
    ``.json``, ``.csv``, ``.xml``).

    Args:
        path: the box file or folder.
        box_format: "xyxy" or "xywh" for JSON and header-less CSV (a CSV header or the JSON's "box_format" may state
            it instead); CUB is always xywh and XML always xyxy, so a contradicting value is an error.
        split: CUB only: "test" or "train" images of ``train_test_split.txt`` ("val" is taken as "test").

    Returns:
        One entry per image, in the file's order.
    """
    if box_format is not None and box_format not in BOX_FORMATS:
        raise FovealError(f"unknown box format {box_format!r}: use xyxy (x1, y1, x2, y2) or xywh (x, y, width, height)")
    p = Path(path).expanduser()
    if not p.exists():
        raise FovealError(f"box file not found: {p} (pass a JSON, CSV or XML file, a folder of XML, or CUB's folder)")
    cub = p if p.is_dir() else p.parent
    if (
        (cub / "images.txt").is_file()
        and (cub / "bounding_boxes.txt").is_file()
        and (p.is_dir() or p.name in _CUB_FILES)
    ):
        _fixed_format(box_format, "xywh", "CUB's bounding_boxes.txt")
        entries = _read_cub(cub, split)
    elif p.is_dir():
        _fixed_format(box_format, "xyxy", "VOC / ImageNet XML")
        files = sorted(f for f in p.iterdir() if f.suffix.lower() == ".xml" and not f.name.startswith("."))
        if not files:
            raise FovealError(
                f"box folder {p} holds no .xml annotations and is not CUB's folder (images.txt + bounding_boxes.txt)"
            )
        entries = [_read_xml(f) for f in files]
    elif p.suffix.lower() == ".json":
        entries = _read_json(p, box_format)
    elif p.suffix.lower() in (".csv", ".tsv", ".txt"):
        entries = _read_csv(p, box_format)
    elif p.suffix.lower() == ".xml":
        _fixed_format(box_format, "xyxy", "VOC / ImageNet XML")
        entries = [_read_xml(p)]
    else:
        raise FovealError(f"box file {p}: unknown kind '{p.suffix}'; use .json, .csv, .xml, or CUB's folder")
    if not entries:
        raise FovealError(f"box file {p} holds no images: add at least one image with its boxes")
    return _merge(entries)


def _fixed_format(given: str | None, fixed: str, what: str) -> None:
    if given is not None and given != fixed:
        raise FovealError(f"{what} boxes are {fixed}, not {given}: drop box_format", options=("box_format",))


def _merge(entries: Iterable[BoxEntry]) -> list[BoxEntry]:
    """Entries of the same image (several CSV rows, several XML files) joined into one; their labels must agree.
    Each box keeps where it was described, so a message about a box names its own row or file."""
    first: dict[str, BoxEntry] = {}
    parts: dict[str, list[BoxEntry]] = {}
    for e in entries:
        seen = first.setdefault(e.image, e)
        if e.label != seen.label:
            raise FovealError(
                f"{e.where}: image {e.image} has label {e.label!r} here but {seen.label!r} at {seen.where}: "
                "give one label per image"
            )
        parts.setdefault(e.image, []).append(e)
    merged = []
    for image, group in parts.items():
        if len(group) == 1:
            merged.append(group[0])
            continue
        boxes = tuple(b for e in group for b in e.boxes)
        names = tuple(n for e in group for n in e.box_labels)
        where = tuple(e.where_of(i) for e in group for i in range(len(e.boxes)))
        merged.append(BoxEntry(image, boxes, first[image].label, names, first[image].where, where))
    return merged


def _shown(value: Any) -> str:
    """A short repr of a value of the user's file for a message (deep or long values are abridged)."""
    return reprlib.repr(value)


def _box(values: Sequence[Any], box_format: str, where: str) -> Box:
    """One (x1, y1, x2, y2) box from four numbers in ``box_format``; zero or negative area is an error."""
    if len(values) != 4:
        raise FovealError(f"{where}: a box needs 4 numbers ({_format_names(box_format)}), got {len(values)}")
    try:
        a, b, c, d = (float(v) for v in values)
    except (TypeError, ValueError):
        raise FovealError(
            f"{where}: box {_shown(list(values))} is not 4 numbers ({_format_names(box_format)}): fix it or remove it"
        ) from None
    if any(v != v or v in (float("inf"), float("-inf")) for v in (a, b, c, d)):
        raise FovealError(f"{where}: box {list(values)} holds a value that is not finite: fix it or remove it")
    x1, y1, x2, y2 = (a, b, a + c, b + d) if box_format == "xywh" else (a, b, c, d)
    if x2 <= x1 or y2 <= y1:
        raise FovealError(
            f"{where}: box {list(values)} ({_format_names(box_format)}) has zero area: fix it or remove it"
            + ("; if the numbers are x, y, width, height, pass box_format xywh" if box_format == "xyxy" else ""),
            options=("box_format",),
        )
    return (x1, y1, x2, y2)


def _format_names(box_format: str) -> str:
    return "x1, y1, x2, y2" if box_format == "xyxy" else "x, y, width, height"


def _box_text(path: Path, kind: str) -> str:
    """The text of a box file (UTF-8, a byte-order mark dropped); unreadable or not UTF-8 is a FovealError."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise FovealError(f"cannot read box file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise FovealError(
            f"box file {path} is not UTF-8 text (byte {exc.start} is not): is it a {kind} file? Save it as UTF-8 {kind}"
        ) from None


# -- JSON --------------------------------------------------------------------------------------------------------------
def _read_json(path: Path, box_format: str | None) -> list[BoxEntry]:
    text = _box_text(path, "JSON")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FovealError(f"box file {path} is not valid JSON (line {exc.lineno}: {exc.msg}): fix the file") from None
    except RecursionError:
        raise FovealError(
            f"box file {path} nests its lists or objects too deeply to be a box file: a box is a list of 4 numbers, "
            "an image's boxes a list of such lists; fix the file"
        ) from None
    if isinstance(doc, dict) and "images" in doc and isinstance(doc["images"], (dict, list)):
        stated = doc.get("box_format")
        if stated is not None and stated not in BOX_FORMATS:
            raise FovealError(f'{path}: "box_format" is {_shown(stated)}; use "xyxy" or "xywh"')
        if stated is not None and box_format is not None and stated != box_format:
            raise FovealError(
                f'{path} states "box_format": {_shown(stated)} but box_format is {box_format}: drop one',
                options=("box_format",),
            )
        box_format, doc = box_format or stated, doc["images"]
    if box_format is None:
        raise FovealError(
            f"box file {path} does not say how its boxes are written: pass box_format xyxy (x1, y1, x2, y2) or "
            'xywh (x, y, width, height), or add "box_format" next to "images"',
            options=("box_format",),
        )
    if isinstance(doc, dict):
        items = [(str(k), v, f"{path}: image {k}") for k, v in doc.items()]
        return [_json_entry(image, value, box_format, where) for image, value, where in items]
    if isinstance(doc, list):
        return [_json_record(record, box_format, f"{path}: record {i + 1}") for i, record in enumerate(doc)]
    raise FovealError(f"box file {path} holds a {type(doc).__name__}: write an object of image → boxes, or a list")


def _json_record(record: Any, box_format: str, where: str) -> BoxEntry:
    if not isinstance(record, dict):
        raise FovealError(
            f'{where} is not an object with "image" and "boxes": write each record as '
            '{"image": "cat/1.jpg", "boxes": [[x1, y1, x2, y2]]}'
        )
    image = next((record[k] for k in _JSON_IMAGE if k in record), None)
    if not isinstance(image, str) or not image:
        raise FovealError(f'{where} names no image: add "image": "path/of/the/image.jpg"')
    return _json_entry(image, record, box_format, f"{where} ({image})")


def _json_entry(image: str, value: Any, box_format: str, where: str) -> BoxEntry:
    label = None
    if isinstance(value, dict):
        label = next((value[k] for k in ("label", "class") if k in value), None)
        value = next((value[k] for k in _JSON_BOXES if k in value), None)
        if value is None:
            raise FovealError(f'{where} has no boxes: add "boxes": [[...], ...]')
    if not isinstance(value, list) or not value:
        raise FovealError(
            f"{where}: boxes must be a list of 4 numbers or a list of such lists, got {_shown(value)}: fix the file"
        )
    rows = value if isinstance(value[0], list) else [value]
    boxes = tuple(_box(row if isinstance(row, list) else [row], box_format, where) for row in rows)
    return BoxEntry(image, boxes, None if label is None else str(label), (None,) * len(boxes), where)


# -- CSV ---------------------------------------------------------------------------------------------------------------
def _read_csv(path: Path, box_format: str | None) -> list[BoxEntry]:
    text = _box_text(path, "CSV")
    delimiter = "\t" if path.suffix.lower() == ".tsv" or ("\t" in text and "," not in text) else ","
    try:
        rows = [(i + 1, row) for i, row in enumerate(csv.reader(text.splitlines(), delimiter=delimiter)) if any(row)]
    except csv.Error as exc:
        raise FovealError(f"box file {path} is not a readable CSV table ({exc}): fix the file") from None
    if not rows:
        return []
    columns, stated = _csv_header(rows[0][1], path)
    if columns is not None:
        rows = rows[1:]
        if stated is not None and box_format is not None and stated != box_format:
            raise FovealError(
                f"{path}: its header says {stated} but box_format is {box_format}: drop box_format",
                options=("box_format",),
            )
        box_format = stated or box_format
    if box_format is None:
        raise FovealError(
            f"box file {path} has no header naming its box columns: add one (image,x1,y1,x2,y2[,label] or "
            "image,x,y,w,h[,label]) or pass box_format xyxy or xywh",
            options=("box_format",),
        )
    image_col, box_cols, label_col = columns or (0, [1, 2, 3, 4], 5)
    entries = []
    for line, row in rows:
        where = f"{path}:{line}"
        if len(row) <= max(image_col, *box_cols) or not row[image_col].strip():
            raise FovealError(f"{where}: expected an image and 4 box numbers, got {_shown(row)}: fix the row")
        label = row[label_col].strip() if label_col is not None and label_col < len(row) else None
        box = _box([row[c].strip() for c in box_cols], box_format, where)
        entries.append(BoxEntry(row[image_col].strip(), (box,), label or None, (None,), where))
    return entries


def _csv_header(row: list[str], path: Path) -> tuple[tuple[int, list[int], int | None] | None, str | None]:
    """((image column, box columns, label column), stated format) of a header row; (None, None) for a data row."""
    names = [c.strip().lower() for c in row]
    if len(names) >= 5 and all(_is_number(v) for v in names[1:5]):
        return None, None
    image = next((names.index(n) for n in _CSV_IMAGE if n in names), None)
    label = next((names.index(n) for n in _CSV_LABEL if n in names), None)
    for keys, fmt in _CSV_BOXES.items():
        if all(k in names for k in keys) and image is not None:
            return (image, [names.index(k) for k in keys], label), fmt
    raise FovealError(
        f"{path}: header {row} does not name an image column ({', '.join(_CSV_IMAGE[:4])}) and box columns "
        "(x1,y1,x2,y2 / xmin,ymin,xmax,ymax, or x,y,w,h / x,y,width,height)"
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# -- CUB-200-2011 ------------------------------------------------------------------------------------------------------
def _read_cub(folder: Path, split: str) -> list[BoxEntry]:
    images = _cub_table(folder / "images.txt", 1)
    boxes = _cub_ids(_cub_table(folder / "bounding_boxes.txt", 4), images, folder / "bounding_boxes.txt")
    labels: dict[str, tuple[list[str], int]] = {}
    if (folder / "image_class_labels.txt").is_file():
        labels = _cub_ids(_cub_table(folder / "image_class_labels.txt", 1), images, folder / "image_class_labels.txt")
    names = _cub_table(folder / "classes.txt", 1) if (folder / "classes.txt").is_file() else {}
    chosen = set(images)
    if (folder / "train_test_split.txt").is_file():
        is_train = "0" if split in ("test", "val") else "1"
        flags = _cub_ids(_cub_table(folder / "train_test_split.txt", 1), images, folder / "train_test_split.txt")
        chosen = {k for k, (flag, _) in flags.items() if flag[0] == is_train}
    entries = []
    for key in sorted(chosen, key=lambda k: images[k][1]):
        where = f"{folder / 'images.txt'}:{images[key][1]}"
        if key not in boxes:
            raise FovealError(f"{where}: image id {key} has no row in bounding_boxes.txt: add its box")
        values, line = boxes[key]
        box_where = f"{folder / 'bounding_boxes.txt'}:{line}"
        box = _box(values, "xywh", box_where)
        label = labels[key][0][0] if key in labels else None
        if label is not None and label in names:
            label = names[label][0][0]
        entries.append(BoxEntry(images[key][0][0], (box,), label, (None,), where, (box_where,)))
    return entries


def _cub_ids(
    table: dict[str, tuple[list[str], int]], images: dict[str, tuple[list[str], int]], path: Path
) -> dict[str, tuple[list[str], int]]:
    """``table`` after checking that each of its image ids is one of ``images.txt``."""
    for key, (_, line) in table.items():
        if key not in images:
            raise FovealError(
                f"{path}:{line}: image id {key} is not in {path.parent / 'images.txt'}: remove the row, or add the "
                "image to images.txt (the files must come from the same copy of CUB-200-2011)"
            )
    return table


def _cub_table(path: Path, width: int) -> dict[str, tuple[list[str], int]]:
    """``id → (the id's ``width`` values, line number)`` of a CUB text file (``id value ...`` per line)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as exc:
        raise FovealError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise FovealError(f"{path} is not UTF-8 text (byte {exc.start} is not): restore CUB's text file") from None
    table: dict[str, tuple[list[str], int]] = {}
    for i, line in enumerate(lines):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != width + 1:
            raise FovealError(f"{path}:{i + 1}: expected an id and {width} value(s), got {_shown(line.strip())}")
        table[parts[0]] = (parts[1:], i + 1)
    return table


# -- PASCAL VOC / ImageNet XML -----------------------------------------------------------------------------------------
def _read_xml(path: Path) -> BoxEntry:
    import xml.etree.ElementTree as ET

    import defusedxml
    import defusedxml.ElementTree as safe

    try:
        root = safe.parse(str(path), forbid_dtd=True, forbid_entities=True, forbid_external=True).getroot()
    except defusedxml.DefusedXmlException:
        raise FovealError(
            f"{path} declares a DTD or entities, which are not read: remove <!DOCTYPE> / <!ENTITY>"
        ) from None
    except ET.ParseError as exc:
        raise FovealError(f"{path} is not well-formed XML ({exc})") from None
    except OSError as exc:
        raise FovealError(f"cannot read {path}: {exc.strerror or exc}") from None
    image = (root.findtext("filename") or "").strip() or path.stem
    boxes: list[Box] = []
    names: list[str | None] = []
    places: list[str] = []
    for i, obj in enumerate(root.iter("object")):
        where = f"{path}: object {i + 1}"
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise FovealError(f"{where} has no <bndbox>: add xmin, ymin, xmax, ymax or remove the object")
        values = [bndbox.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")]
        if any(v is None for v in values):
            raise FovealError(f"{where}: <bndbox> needs <xmin>, <ymin>, <xmax> and <ymax>")
        x1, y1, x2, y2 = _box(values, "xyxy", where)  # VOC pixels are 1-based and inclusive
        boxes.append((x1 - 1, y1 - 1, x2, y2))
        names.append((obj.findtext("name") or "").strip() or None)
        places.append(where)
    if not boxes:
        raise FovealError(f"{path} has no <object> with a <bndbox>: add the object's box or remove the file")
    labels = {n for n in names if n is not None}
    label = labels.pop() if len(labels) == 1 else None
    return BoxEntry(image, tuple(boxes), label, tuple(names), str(path), tuple(places))


# -- images ------------------------------------------------------------------------------------------------------------
def match_images(entries: Sequence[BoxEntry], root: str | Path) -> list[tuple[Path, BoxEntry]]:
    """Each entry's image file in the data folder ``root`` (searched recursively).

    An entry's name is looked up as a path relative to ``root``, then as a path ending in that name (e.g.
    ``images/001.x/1.jpg`` for ``001.x/1.jpg``), then as a file name, then as a file name without extension (ImageNet
    XML names its image so). A name that matches no image, or several, is an error.

    Returns:
        (image path, entry) pairs in the entries' order.
    """
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise FovealError(
            f"image folder {folder} not found: pass as data the folder that holds the box file's images",
            options=("data",),
        )
    files = list_images(folder, recursive=True)
    relative = {f.relative_to(folder).as_posix(): f for f in files}
    by_name: dict[str, list[Path]] = {}
    by_stem: dict[str, list[Path]] = {}
    for f in files:
        by_name.setdefault(f.name, []).append(f)
        by_stem.setdefault(f.stem, []).append(f)
    matched = []
    for e in entries:
        key = e.image.replace("\\", "/").removeprefix("./")
        found = [relative[key]] if key in relative else [f for r, f in relative.items() if key.endswith("/" + r)]
        found = found or by_name.get(key.rsplit("/", 1)[-1], []) or by_stem.get(key.rsplit("/", 1)[-1], [])
        if not found:
            raise FovealError(
                f"{e.where}: unknown image {e.image!r}, not found in {folder}: fix the name or pass the data folder "
                "that holds it"
            )
        if len(found) > 1:
            shown = ", ".join(str(f.relative_to(folder)) for f in found[:3])
            raise FovealError(
                f"{e.where}: image {e.image!r} matches several files in {folder} ({shown}): give its path"
            )
        matched.append((found[0], e))
    return matched


def check_inside(entry: BoxEntry, height: int, width: int, file: Path | str) -> tuple[Box, ...]:
    """The entry's boxes clipped to the image (up to :data:`EDGE_TOLERANCE` px outside is allowed).

    Raises:
        FovealError: a box reaches further outside the ``height`` × ``width`` image, or lies outside it entirely.
    """
    tol = EDGE_TOLERANCE
    kept = []
    for i, (x1, y1, x2, y2) in enumerate(entry.boxes):
        if (
            x1 < -tol
            or y1 < -tol
            or x2 > width + tol
            or y2 > height + tol
            or x1 >= width
            or y1 >= height
            or x2 <= 0
            or y2 <= 0
        ):
            raise FovealError(
                f"{entry.where_of(i)}: box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside image {file} ({width} × "
                f"{height} px): fix the box, its format (box_format xyxy or xywh), or the image",
                options=("box_format",),
            )
        kept.append((max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))))
    return tuple(kept)
