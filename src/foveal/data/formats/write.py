"""Write a detection set as COCO, YOLO or PASCAL VOC: ``foveal data convert SRC --to coco|yolo|voc --out DST``.

The source is read by :func:`foveal.data.formats.open_detection` (any format it reads, checked as for training), then
written with its images copied:

- ``coco``: ``annotations/instances_<split>.json`` + ``<split>/<image>`` (crowd / ignore regions as ``iscrowd`` 1);
- ``yolo``: ``images/<split>/`` + ``labels/<split>/`` + ``data.yaml`` (``names`` in label order); YOLO has no
  ignore regions, so they are left out, and the summary counts them;
- ``voc``: ``JPEGImages/``, ``Annotations/<stem>.xml`` (1-based inclusive pixels, ignore regions as ``difficult``)
  and ``ImageSets/Main/<split>.txt``, with the class names in order in ``labelmap.txt`` (as CVAT writes it).

A source without splits (every split the same images) is written as its ``train`` split alone. Boxes keep their
sub-pixel coordinates (two decimals for VOC's), so a round trip keeps every box within 0.5 px and every class name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from foveal.data.coco import DetectionData
from foveal.errors import FovealError
from foveal.io import atomic_write_text

TARGETS = ("coco", "yolo", "voc")


def convert(
    src: str | os.PathLike[str],
    to: str,
    out: str | os.PathLike[str],
    *,
    source_format: str = "auto",
    splits: tuple[str, ...] = ("train", "val"),
) -> list[str]:
    """Write the ``splits`` of the detection set ``src`` in format ``to`` under ``out`` (an empty or new folder).

    Returns:
        One line per split written, saying what was read and written.
    """
    from foveal.data.formats import open_detection

    if to not in TARGETS:
        raise FovealError(f"to {to}: choose one of {', '.join(TARGETS)}", options=("to",))
    root = Path(out).expanduser()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FovealError(f"out {root} exists and is not an empty folder: choose a new folder", options=("out",))
    sets: dict[str, DetectionData] = {}
    for split in dict.fromkeys(splits):
        data = open_detection(src, split=split, format=source_format)
        if any([r.path for r in d.images] == [r.path for r in data.images] for d in sets.values()):
            continue  # a format without splits: the same images again
        sets[split] = data
    lines = []
    writer = {"coco": _write_coco, "yolo": _write_yolo, "voc": _write_voc}[to]
    for split, data in sets.items():
        note = writer(data, root, split)
        lines.append(f"{split}: {len(data)} images, {data.num_boxes()} boxes, {data.num_classes} classes{note}")
    if to == "yolo":
        names = [str(c["name"]) for c in next(iter(sets.values())).categories]
        doc = {"path": ".", **{s: f"images/{s}" for s in sets}, "names": dict(enumerate(names))}
        atomic_write_text(root / "data.yaml", _yaml(doc))
    return lines


def _copy(data: DetectionData, i: int, folder: Path, used: set[str]) -> str:
    """Copy image ``i`` into ``folder`` under a name not yet ``used``; its new name."""
    source = data.images[i].path
    name = source.name if source.name not in used else f"{i:06d}_{source.name}"
    used.add(name)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(source, folder / name)
    except OSError as exc:
        raise FovealError(f"cannot copy {source} to {folder}: {exc.strerror or exc}") from None
    return name


def _rows(data: DetectionData, i: int) -> list[tuple[list[float], int, bool]]:
    """(xyxy, label, ignore) of every box and ignore region of image ``i``."""
    t = data.targets[i]
    rows = [(b.tolist(), int(k), False) for b, k in zip(t["boxes"], t["labels"], strict=True)]
    return rows + [(b.tolist(), int(k), True) for b, k in zip(t["ignore"], t["ignore_labels"], strict=True)]


def _write_coco(data: DetectionData, root: Path, split: str) -> str:
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    used: set[str] = set()
    for i, record in enumerate(data.images):
        name = _copy(data, i, root / split, used)
        images.append({"id": record.id, "file_name": name, "width": record.width, "height": record.height})
        for (x1, y1, x2, y2), label, crowd in _rows(data, i):
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": record.id,
                    "category_id": data.label_to_category_id[label],
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": int(crowd),
                }
            )
    categories = [{"id": int(c["id"]), "name": str(c["name"])} for c in data.categories]
    doc = {"images": images, "annotations": annotations, "categories": categories}
    atomic_write_text(root / "annotations" / f"instances_{split}.json", json.dumps(doc))
    return ""


def _write_yolo(data: DetectionData, root: Path, split: str) -> str:
    used: set[str] = set()
    dropped = 0
    for i, record in enumerate(data.images):
        name = _copy(data, i, root / "images" / split, used)
        lines = []
        for (x1, y1, x2, y2), label, crowd in _rows(data, i):
            if crowd:
                dropped += 1
                continue
            w, h = record.width, record.height
            values = ((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h)
            lines.append(f"{label} " + " ".join(f"{min(max(v, 0.0), 1.0):.6f}" for v in values))
        atomic_write_text(root / "labels" / split / f"{Path(name).stem}.txt", "".join(f"{x}\n" for x in lines))
    return f" ({dropped} ignore regions left out: YOLO has none)" if dropped else ""


def _write_voc(data: DetectionData, root: Path, split: str) -> str:
    listed = root / "ImageSets" / "Main" / f"{split}.txt"
    used = {p.name for p in (root / "JPEGImages").glob("*")} if (root / "JPEGImages").is_dir() else set()
    stems = []
    for i, record in enumerate(data.images):
        name = _copy(data, i, root / "JPEGImages", used)
        objects = [_voc_object(data.classes[label], box, crowd) for box, label, crowd in _rows(data, i)]
        xml = (
            f"<annotation><folder>JPEGImages</folder><filename>{escape(name)}</filename><size>"
            f"<width>{record.width}</width><height>{record.height}</height><depth>{data.channels}</depth></size>"
            f"<segmented>0</segmented>{''.join(objects)}</annotation>\n"
        )
        atomic_write_text(root / "Annotations" / f"{Path(name).stem}.xml", xml)
        stems.append(Path(name).stem)
    atomic_write_text(listed, "".join(f"{s}\n" for s in stems))
    labelmap = "".join(f"{name}:::\n" for name in data.classes)  # the class order, and classes without boxes
    atomic_write_text(root / "labelmap.txt", "# label:color_rgb:parts:actions\n" + labelmap)
    return ""


def _voc_object(name: str, box: list[float], difficult: bool) -> str:
    x1, y1, x2, y2 = box
    corners = {"xmin": x1 + 1, "ymin": y1 + 1, "xmax": x2, "ymax": y2}  # 1-based, inclusive
    values = "".join(f"<{k}>{f'{v:.2f}'.rstrip('0').rstrip('.')}</{k}>" for k, v in corners.items())
    return (
        f"<object><name>{escape(name)}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{int(difficult)}</difficult><bndbox>{values}</bndbox></object>"
    )


def _yaml(doc: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
