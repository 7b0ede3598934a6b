"""PASCAL VOC: ``Annotations/<id>.xml`` (one per image), ``JPEGImages/<file>``, ``ImageSets/Main/<split>.txt``.

Each ``<object>`` has ``<name>``, ``<bndbox>`` with ``xmin ymin xmax ymax`` in VOC's 1-based inclusive pixels (so
x1 = xmin − 1, x2 = xmax), and optionally ``<difficult>1</difficult>``, which makes it an ignore region as COCO's
``iscrowd`` is (VOC's own evaluation neither rewards nor penalises detections of difficult objects). The image is
``JPEGImages/<filename>`` (else the XML's name with any image extension). The classes are those of ``labelmap.txt``
in its order when there is one (CVAT writes it), else the sorted names of every annotation file, so every split has
the same labels. Without ``ImageSets/Main`` every split is every annotation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from foveal.data.formats.common import DocumentBuilder, number, read_text, read_xml, summary
from foveal.data.images import IMAGE_EXTENSIONS
from foveal.errors import FovealError


def is_voc(folder: Path) -> bool:
    return (folder / "Annotations").is_dir() and (folder / "JPEGImages").is_dir()


def read_voc(folder: Path, split: str) -> tuple[DocumentBuilder, str]:
    """The split of the VOC folder ``folder`` and its summary."""
    notes = folder / "Annotations"
    parsed = {p.stem: (p, read_xml(p)) for p in sorted(notes.glob("*.xml"))}
    if not parsed:
        raise FovealError(f"{notes} holds no .xml annotation: a VOC folder has one per image")
    ids, chosen = _split_ids(folder, split, parsed)
    classes = _labelmap(folder) or sorted({_name(o, p) for p, root in parsed.values() for o in root.iter("object")})
    builder = DocumentBuilder(folder, classes)
    for stem in ids:
        path, root = parsed[stem]
        image = _image_path(folder, stem, root, path)
        image_id = builder.add_image(image, str(path), _size(root, path))
        for k, obj in enumerate(root.iter("object")):
            where = f"{path}: object {k + 1}"
            builder.add_box(image_id, _box(obj, where), _name(obj, path), where, _difficult(obj, where))
    return builder, summary("VOC", chosen, len(classes), len(ids))


def _labelmap(folder: Path) -> list[str]:
    """The class names of ``labelmap.txt`` (``name:color:parts:actions`` lines, as CVAT writes it beside a VOC
    export; its ``background`` entry is not a class), else []."""
    path = folder / "labelmap.txt"
    if not path.is_file():
        return []
    names = [line.split(":")[0].strip() for line in read_text(path).splitlines() if not line.startswith("#")]
    return [n for n in names if n and n != "background"]


def _split_ids(folder: Path, split: str, parsed: dict[str, Any]) -> tuple[list[str], str]:
    sets = folder / "ImageSets" / "Main"
    if not sets.is_dir():
        return list(parsed), "Annotations/ (no ImageSets/Main: every split is all annotations)"
    listing = sets / f"{split}.txt"
    if not listing.is_file():
        found = sorted(p.stem for p in sets.glob("*.txt") if "_" not in p.stem)
        raise FovealError(
            f"{folder} has no split '{split}' ({listing} does not exist): choose one of {', '.join(found)}"
        )
    ids = []
    for n, line in enumerate(read_text(listing).splitlines(), start=1):
        stem = line.split()[0] if line.split() else ""
        if not stem:
            continue
        if stem not in parsed:
            raise FovealError(f"{listing}:{n}: '{stem}' has no annotation file {folder / 'Annotations' / stem}.xml")
        ids.append(stem)
    return ids, f"ImageSets/Main/{split}.txt"


def _name(obj: Any, path: Path) -> str:
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise FovealError(f"{path}: an <object> has no <name>: give every object its class")
    return name


def _box(obj: Any, where: str) -> tuple[float, float, float, float]:
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise FovealError(f"{where} has no <bndbox>: add xmin, ymin, xmax, ymax or remove the object")
    xmin, ymin, xmax, ymax = (number(bndbox.findtext(k), where, f"<{k}>") for k in ("xmin", "ymin", "xmax", "ymax"))
    if xmax < xmin or ymax < ymin:
        raise FovealError(
            f"{where}: xmax {xmax:g} < xmin {xmin:g} or ymax {ymax:g} < ymin {ymin:g}: swap or fix the corners"
        )
    return xmin - 1, ymin - 1, xmax, ymax  # VOC pixels are 1-based and inclusive


def _difficult(obj: Any, where: str) -> bool:
    text = (obj.findtext("difficult") or "0").strip()
    if text not in ("0", "1"):
        raise FovealError(f"{where}: <difficult> must be 0 or 1, got {text!r}")
    return text == "1"


def _size(root: Any, path: Path) -> tuple[int, int] | None:
    size = root.find("size")
    if size is None:
        return None
    width = number(size.findtext("width") or 0, str(path), "<size><width>")
    height = number(size.findtext("height") or 0, str(path), "<size><height>")
    return int(width), int(height)


def _image_path(folder: Path, stem: str, root: Any, path: Path) -> Path:
    images = folder / "JPEGImages"
    name = (root.findtext("filename") or "").strip()
    if name and (images / name).is_file():
        return images / name
    for ext in sorted(IMAGE_EXTENSIONS | {e.upper() for e in IMAGE_EXTENSIONS}):
        if (images / f"{stem}{ext}").is_file():
            return images / f"{stem}{ext}"
    raise FovealError(f"{path}: its image {images / (name or stem + '.jpg')} does not exist: restore it")
