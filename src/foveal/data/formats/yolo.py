"""YOLO (ultralytics / darknet): one ``.txt`` label file per image, one object per line, ``class cx cy w h`` with the
centre and size as fractions of the image's width and height (a line of more pairs, ``class x1 y1 x2 y2 x3 y3 …``,
is a polygon of a YOLO segmentation set and gives the box around it).

Two layouts:

- a ``data.yaml`` (as ultralytics writes them: ``path``, ``train``, ``val`` (``test``) each a folder of images, a
  ``.txt`` file listing images, or a list of these, relative to ``path`` or to the YAML file's folder, ``names`` a
  list or a ``{id: name}`` map);
- a folder with ``images/`` and ``labels/`` (flat, or split into ``images/<split>/`` + ``labels/<split>/``, or
  ``<split>/images/`` + ``<split>/labels/`` as some exporters write); the names come from a ``data.yaml`` /
  ``dataset.yaml`` / ``classes.txt`` / ``obj.names`` there, else the classes are named by their ids.

The label file of ``…/images/…/a.jpg`` is ``…/labels/…/a.txt`` (the last ``images`` folder of the path replaced).
An image without a label file, or with an empty one, holds no objects. A class id outside ``names``, a value outside
0 … 1, a width or height of 0 or a line of the wrong length is an error naming the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from foveal.data.formats.common import DocumentBuilder, images_in, number, read_text, summary
from foveal.data.images import is_image_file
from foveal.errors import FovealError

NAME_FILES = ("data.yaml", "dataset.yaml", "classes.txt", "obj.names")


def is_yolo(folder: Path) -> bool:
    if any((folder / n).is_file() for n in NAME_FILES[:2]):
        return True
    return (folder / "images").is_dir() and (folder / "labels").is_dir()


def read_yolo(spec: Path, split: str) -> tuple[DocumentBuilder, str]:
    """The split of a YOLO ``data.yaml`` or folder and its summary."""
    names: list[str] | None
    yaml_file = spec if spec.is_file() else next((spec / n for n in NAME_FILES[:2] if (spec / n).is_file()), None)
    if yaml_file is not None:
        names, folders, root = _from_yaml(yaml_file, split)
        what = yaml_file.name
    else:
        folders, root = _split_folders(spec, split), spec
        names, what = _names_beside(spec), "images/ + labels/"
    images = sorted({p for f in folders for p in (_listed(f, root) if f.is_file() else _images_under(f))})
    if names is None:
        top = max((_max_class(_label_of(p)) for p in _all_images(spec)), default=-1)
        names = [str(k) for k in range(top + 1)]
        what += " (no class names: classes are named by their ids)"
    builder = DocumentBuilder(root, names)
    for image in images:
        image_id = builder.add_image(image, str(image))
        label = _label_of(image)
        if label.is_file():
            _read_labels(label, builder, image_id, names)
    if len(folders) == 1 and yaml_file is None and folders[0] == spec / "images":
        what += " (no split folders: every split is all images)"
    return builder, summary("YOLO", what, len(names), len(images))


def _from_yaml(path: Path, split: str) -> tuple[list[str], list[Path], Path]:
    import yaml

    try:
        doc = yaml.safe_load(read_text(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise FovealError(f"{path}{line}: not valid YAML ({str(exc).splitlines()[0]}): fix it") from None
    if not isinstance(doc, dict) or "names" not in doc:
        raise FovealError(f"{path} is not a YOLO dataset file: it needs 'names' and the 'train' / 'val' image folders")
    base = Path(str(doc["path"])) if doc.get("path") else path.parent
    base = base if base.is_absolute() else path.parent / base
    names = _names(doc["names"], path)
    if "nc" in doc and doc["nc"] != len(names):
        raise FovealError(f"{path}: nc is {doc['nc']} but 'names' lists {len(names)} classes: make them agree")
    if split not in doc or not doc[split]:
        keys = [k for k in ("train", "val", "test") if doc.get(k)]
        raise FovealError(f"{path} names no '{split}' images: choose one of {', '.join(keys)}")
    entries = doc[split] if isinstance(doc[split], list) else [doc[split]]
    folders = []
    for entry in map(str, entries):
        # some exporters write '../train/images' meaning the folder beside data.yaml: tried after the literal path
        tries = [base / entry, path.parent / entry.removeprefix("../")]
        folder = next((f for f in tries if f.is_dir() or (f.is_file() and f.suffix == ".txt")), None)
        if folder is None:
            raise FovealError(f"{path}: {split} folder {tries[0]} does not exist: fix '{split}' (relative to {base})")
        folders.append(folder)
    return names, folders, base


def _names(value: Any, path: Path) -> list[str]:
    if isinstance(value, list) and value:
        return [str(v) for v in value]
    if isinstance(value, dict) and value:
        keys = sorted(value)
        if not all(isinstance(k, int) for k in keys) or keys != list(range(len(keys))):
            raise FovealError(f"{path}: 'names' as a map needs the ids 0 … {len(keys) - 1}, got {keys[:8]}")
        return [str(value[k]) for k in keys]
    raise FovealError(f"{path}: 'names' must be a list of class names or a {{id: name}} map, got {str(value)[:60]}")


def _split_folders(folder: Path, split: str) -> list[Path]:
    for images in (folder / "images" / split, folder / split / "images"):
        if images.is_dir():
            return [images]
    flat = folder / "images"
    subs = [p.name for p in flat.iterdir() if p.is_dir()] if flat.is_dir() else []
    if subs and not images_in(flat):
        raise FovealError(
            f"{folder} has no split '{split}' ({flat / split} does not exist): choose one of {sorted(subs)}"
        )
    if not flat.is_dir():
        raise FovealError(f"{folder} is not a YOLO folder: expected images/ and labels/ (or a data.yaml)")
    return [flat]


def _names_beside(folder: Path) -> list[str] | None:
    for path in (folder / "classes.txt", folder / "obj.names", folder / "labels" / "classes.txt"):
        if path.is_file():
            return [line.strip() for line in read_text(path).splitlines() if line.strip()]
    return None


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if is_image_file(p))


def _listed(path: Path, root: Path) -> list[Path]:
    """The images a ``.txt`` list names, one path a line (relative to the dataset's ``path``)."""
    out = []
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        name = line.strip()
        if name:
            image = root / name.removeprefix("./")
            if not image.is_file():
                raise FovealError(f"{path}:{n}: image {image} does not exist: restore it or remove the line")
            out.append(image)
    return out


def _all_images(spec: Path) -> list[Path]:
    return _images_under(spec if spec.is_dir() else spec.parent)


def _label_of(image: Path) -> Path:
    parts = list(image.parts)
    for k in range(len(parts) - 2, -1, -1):
        if parts[k] == "images":
            parts[k] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    return [(n, line.split()) for n, line in enumerate(read_text(path).splitlines(), start=1) if line.strip()]


def _max_class(path: Path) -> int:
    if not path.is_file():
        return -1
    return max((_class(parts[0], f"{path}:{n}", None) for n, parts in _lines(path)), default=-1)


def _class(text: str, where: str, names: list[str] | None) -> int:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0 or value != int(value):
        raise FovealError(f"{where}: the class id must be a whole number ≥ 0, got {text!r}")
    if names is not None and value >= len(names):
        raise FovealError(
            f"{where}: class id {int(value)} is beyond the {len(names)} names (0 … {len(names) - 1}): fix the id or "
            "add the class to 'names'"
        )
    return int(value)


def _read_labels(path: Path, builder: DocumentBuilder, image_id: int, names: list[str]) -> None:
    width, height = builder.images[-1]["width"], builder.images[-1]["height"]
    for n, parts in _lines(path):
        where = f"{path}:{n}"
        if len(parts) < 5 or len(parts) % 2 == 0:
            raise FovealError(
                f"{where}: expected 'class cx cy w h' (or 'class x1 y1 x2 y2 x3 y3 …' for a polygon), got "
                f"{len(parts)} values"
            )
        label = _class(parts[0], where, names)
        values = [number(v, where, "a coordinate") for v in parts[1:]]
        if any(not 0.0 <= v <= 1.0 for v in values):
            bad = next(v for v in values if not 0.0 <= v <= 1.0)
            raise FovealError(
                f"{where}: coordinate {bad:g} is outside 0 … 1: YOLO labels are fractions of the image size (divide "
                "pixel values by the width / height)"
            )
        if len(values) == 4:
            cx, cy, w, h = values
            if w <= 0 or h <= 0:
                raise FovealError(f"{where}: the box has width {w:g} and height {h:g}: both must be above 0")
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        else:
            xs, ys = values[0::2], values[1::2]
            box = (min(xs), min(ys), max(xs), max(ys))
        pixels = (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
        builder.add_box(image_id, pixels, names[label], where)
