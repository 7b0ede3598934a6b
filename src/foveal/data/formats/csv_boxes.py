"""CSV boxes: a header ``image,x1,y1,x2,y2,label`` (``xmin,ymin,xmax,ymax`` and ``filename`` / ``path`` /
``class`` are read too), then one row per box in pixels (x2, y2 exclusive). A row with the image alone (the box
columns empty) lists an image without objects. Images are relative to the CSV file's folder (else its ``images/``).
A folder with ``<split>.csv`` gives that split; one CSV file is every split. The classes are the sorted labels of
every CSV file of the folder, so every split has the same labels.
"""

from __future__ import annotations

import csv
from pathlib import Path

from foveal.data.formats.common import DocumentBuilder, find_image, number, read_text, summary
from foveal.errors import FovealError

_COLUMNS = {
    "image": ("image", "filename", "file", "path", "image_path"),
    "x1": ("x1", "xmin"),
    "y1": ("y1", "ymin"),
    "x2": ("x2", "xmax"),
    "y2": ("y2", "ymax"),
    "label": ("label", "class", "class_name", "category"),
}
Row = tuple[int, str, list[str], str]


def read_csv_boxes(path: Path, what: str, others: list[Path]) -> tuple[DocumentBuilder, str]:
    """The rows of the CSV file ``path`` (classes over ``path`` and ``others``) and a summary."""
    rows = _rows(path)
    labels = {r[3] for r in rows if r[2]}
    for other in others:
        labels |= {r[3] for r in _rows(other) if r[2]} if other != path else set()
    classes = sorted(labels)
    builder = DocumentBuilder(path.parent, classes)
    folders = [path.parent, path.parent / "images"]
    ids: dict[str, int] = {}
    for n, name, box, label in rows:
        where = f"{path}:{n}"
        if name not in ids:
            image = find_image(name, folders)
            if image is None:
                raise FovealError(f"{where}: image '{name}' is in none of {', '.join(map(str, folders))}: restore it")
            ids[name] = builder.add_image(image, where)
        if box:
            x1, y1, x2, y2 = (number(v, where, k) for v, k in zip(box, ("x1", "y1", "x2", "y2"), strict=True))
            builder.add_box(ids[name], (x1, y1, x2, y2), label, where)
    return builder, summary("CSV", what, len(classes), len(ids))


def _rows(path: Path) -> list[Row]:
    lines = list(csv.reader(read_text(path).splitlines()))
    if not lines:
        raise FovealError(f"{path} is empty: write the header image,x1,y1,x2,y2,label and one row per box")
    header = [h.strip().lower() for h in lines[0]]
    index = {}
    for key, names in _COLUMNS.items():
        found = [header.index(n) for n in names if n in header]
        if not found:
            raise FovealError(
                f"{path}:1: the header {','.join(header)} has no '{key}' column: it must read image,x1,y1,x2,y2,label"
            )
        index[key] = found[0]
    out: list[Row] = []
    for n, row in enumerate(lines[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise FovealError(f"{path}:{n}: {len(row)} values but the header has {len(header)}: fix the row")
        name = row[index["image"]].strip()
        box = [row[index[k]].strip() for k in ("x1", "y1", "x2", "y2")]
        label = row[index["label"]].strip()
        if not name:
            raise FovealError(f"{path}:{n}: the row names no image")
        if not any(box) and not label:
            out.append((n, name, [], ""))
            continue
        if not all(box) or not label:
            raise FovealError(f"{path}:{n}: a box needs x1, y1, x2, y2 and a label (leave all five empty for none)")
        out.append((n, name, box, label))
    return out
