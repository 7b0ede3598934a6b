"""Detection datasets in the formats annotation tools export, read into the same checked
:class:`~foveal.data.coco.DetectionData` a COCO file gives, so training, evaluation and prediction never see the
difference.

``open_detection(spec, split=..., format="auto")`` reads

==============  ============================================================================================
``coco``        a COCO JSON file or folder (:func:`foveal.data.coco.open_coco`, unchanged), or
                ``fashion-canvas-sample``
``voc``         a PASCAL VOC folder: ``Annotations/*.xml``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``
``yolo``        a ``data.yaml`` (or its folder), or ``images/`` + ``labels/`` with ``class cx cy w h`` lines
``labelme``     a folder of LabelMe JSON files (or one file)
``cvat``        a CVAT for images 1.1 ``annotations.xml`` (or its folder)
``labelstudio`` a Label Studio JSON export (or a folder of ``<split>.json``)
``csv``         a CSV file ``image,x1,y1,x2,y2,label`` (or a folder of ``<split>.csv``)
==============  ============================================================================================

``auto`` recognises the layout from the files (see :func:`detect_format`). Each reader's module says what it reads;
every box ends up (x1, y1, x2, y2) in pixels with an exclusive right / bottom edge, category ids 1 … K in the order of
the format's class list (YOLO's ``names``, CVAT's labels) or of the sorted class names, and is checked exactly as a
COCO file's box is.

Why our own small readers rather than a converter library (globox was looked at): a user's export must either load
as written or fail with the file and line (or object) at fault and the fix, never lose a box without a word.
globox's LabelMe and CVAT readers keep rectangles only (polygons are passed over), its VOC reader does not read
``difficult`` and parses XML without refusing DTDs, and its errors name the file at best, not the line number; it
would also add a dependency for what is a few hundred lines here.

``foveal data check SRC`` reads a set as training would and sums it up (:mod:`foveal.data.formats.check`);
``foveal data convert SRC --to coco|yolo|voc --out DST`` writes it in another format (:mod:`foveal.data.formats.write`).
"""

from __future__ import annotations

import os
from pathlib import Path

from foveal.data.coco import DetectionData, from_document, open_coco
from foveal.data.formats import csv_boxes, cvat, labelme, labelstudio, voc, yolo
from foveal.data.formats.common import DocumentBuilder, read_json, read_xml
from foveal.errors import FovealError

FORMATS = ("auto", "coco", "voc", "yolo", "labelme", "cvat", "labelstudio", "csv")


def open_detection(
    spec: str | os.PathLike[str], *, split: str = "train", channels: int | None = None, format: str = "auto"
) -> DetectionData:
    """Open a detection set of any format in :data:`FORMATS`.

    Args:
        spec: a file or folder of the format (see the module docstring), or ``fashion-canvas-sample``.
        split: ``train``, ``val`` … where the format has splits (a format without them gives every image to every
            split, and :attr:`DetectionData.summary` says so).
        channels: 1 or 3 to convert every image; None for the images' own.
        format: one of :data:`FORMATS`; ``auto`` recognises it.

    Returns:
        The dataset, with :attr:`DetectionData.summary` saying what was read (empty for COCO).

    Raises:
        FovealError: an unknown format, a layout that is none of them, or a file that breaks its format (the file,
            and the line or object where it applies, is named).
    """
    if format not in FORMATS:
        raise FovealError(f"unknown data.format '{format}': choose one of {', '.join(FORMATS)}")
    if not split or any(c in split for c in "/\\") or split.startswith("."):
        raise FovealError(f"split must be a plain name such as 'train' or 'val', got {split!r}")
    if str(spec) == "fashion-canvas-sample":
        return open_coco(spec, split=split, channels=channels)
    path = Path(spec).expanduser()
    if not path.exists():
        raise FovealError(
            f"detection dataset {path} does not exist: pass a COCO, VOC, YOLO, LabelMe, CVAT, Label Studio or CSV "
            "dataset (its file or folder), or fashion-canvas-sample"
        )
    kind = detect_format(path) if format == "auto" else format
    if kind == "coco":
        return open_coco(path, split=split, channels=channels)
    builder, summary, source = _read(kind, path, split)
    return from_document(builder.document(), source, builder.root, channels=channels, summary=summary)


def detect_format(path: Path) -> str:
    """The format of the file or folder ``path`` (one of :data:`FORMATS` but ``auto``), from its names and a look
    into at most a few files."""
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            return "yolo"
        if suffix == ".csv":
            return "csv"
        if suffix == ".xml":
            return "cvat"
        if suffix == ".json":
            return _json_kind(path)
        raise FovealError(f"{path} is no annotation format foveal knows (.json, .xml, .yaml, .csv): set data.format")
    if (path / "annotations").is_dir() and any((path / "annotations").glob("instances_*.json")):
        return "coco"
    if voc.is_voc(path):
        return "voc"
    if yolo.is_yolo(path):
        return "yolo"
    if (path / "annotations.xml").is_file():
        return "cvat"
    if any(path.glob("*.csv")):
        return "csv"
    for json_file in sorted(path.rglob("*.json"))[:3]:
        kind = _json_kind(json_file)
        if kind != "coco":
            return kind
    if (path / "annotations").is_dir():
        return "coco"  # open_coco says what the COCO folder lacks
    raise FovealError(
        f"cannot tell the format of {path}: it is none of COCO (annotations/instances_<split>.json), VOC "
        "(Annotations/ + JPEGImages/), YOLO (data.yaml, or images/ + labels/), CVAT (annotations.xml), CSV, LabelMe "
        "or Label Studio JSON; point at the annotation file or set data.format"
    )


def _json_kind(path: Path) -> str:
    """``labelme``, ``labelstudio`` or ``coco`` (also for what is none of them: open_coco says what a COCO file lacks,
    as it always did). Only a file whose start looks like LabelMe's or Label Studio's is parsed here, so a large COCO
    file is read once."""
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as handle:
            head = handle.read(65536)
    except OSError:
        return "coco"
    if not (head.lstrip().startswith("[") or '"shapes"' in head):
        return "coco"
    doc = read_json(path)
    if labelme.is_labelme_file(doc):
        return "labelme"
    if labelstudio.is_labelstudio(doc):
        return "labelstudio"
    return "coco"


def _read(kind: str, path: Path, split: str) -> tuple[DocumentBuilder, str, Path]:
    """(document builder, summary, source) of a non-COCO set."""
    if kind == "voc":
        if not voc.is_voc(path):
            raise FovealError(f"{path} is not a PASCAL VOC folder: expected Annotations/ and JPEGImages/ in it")
        return (*voc.read_voc(path, split), path / "Annotations")
    if kind == "yolo":
        return (*yolo.read_yolo(path, split), path)
    if kind == "labelme":
        return (*labelme.read_labelme(path, split), path)
    if kind == "cvat":
        xml = path / "annotations.xml" if path.is_dir() else path
        if not xml.is_file():
            raise FovealError(f"{path} is not a CVAT export: expected its annotations.xml (CVAT for images 1.1)")
        return (*cvat.read_cvat(xml, read_xml(xml), split), xml)
    file, what = _split_file(path, split, ".json" if kind == "labelstudio" else ".csv")
    if kind == "labelstudio":
        tasks = read_json(file)
        if not labelstudio.is_labelstudio(tasks):
            raise FovealError(f"{file} is not a Label Studio JSON export (a list of tasks with 'data')")
        return (*labelstudio.read_labelstudio(file, tasks, what), file)
    others = sorted(path.glob("*.csv")) if path.is_dir() else []
    return (*csv_boxes.read_csv_boxes(file, what, others), file)


def _split_file(path: Path, split: str, suffix: str) -> tuple[Path, str]:
    """The annotation file of ``split``: ``path`` itself, ``<path>/<split><suffix>``, or the one such file."""
    if path.is_file():
        return path, f"{path.name} (one file: every split is all of it)"
    if (path / f"{split}{suffix}").is_file():
        return path / f"{split}{suffix}", f"{split}{suffix}"
    files = sorted(path.glob(f"*{suffix}"))
    if len(files) == 1:
        return files[0], f"{files[0].name} (one file: every split is all of it)"
    names = ", ".join(p.name for p in files) or "none"
    raise FovealError(f"{path} has no {split}{suffix} (its {suffix} files: {names}): point at the file to read")
