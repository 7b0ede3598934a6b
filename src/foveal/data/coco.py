"""COCO detection datasets: read a COCO JSON file with its images, check it, and write detections as COCO results.

``open_coco(spec, split=..., channels=...)`` accepts

- a COCO JSON file (``{"images": [...], "annotations": [...], "categories": [...]}``);
- a folder in the layout :func:`foveal.data.canvas.write_coco` writes (COCO's own):
  ``annotations/instances_<split>.json`` with the images in ``<split>/``;
- ``fashion-canvas-sample``: the detection sample bundled with foveal (splits ``train`` and ``val``; see
  ``samples/fashion-canvas-sample/PROVENANCE.md``).

Where the images of a JSON file are looked for: one folder holds every image, ``file_name`` being the path inside it.
The folder is the first of these in which the first image's file exists (``<dir>`` is the JSON file's folder,
``<name>`` the ``X`` of a file named ``instances_X.json``, else ``split``):

1. ``<dir>``;  2. ``<dir>/images``;  3. ``<dir>/<name>``;  4. ``<dir>/../<name>``;  5. ``<dir>/../images``.

``image_root`` overrides the search. Every image must then exist in that folder (else an error names the first few
missing files).

What is checked, and how each problem is handled (the annotation file is named in every message):

- not valid JSON, not an object, no ``images`` / ``annotations`` / ``categories`` list, an entry without its
  required fields (image: id, file_name, width, height; annotation: image_id, category_id, bbox of 4 finite numbers;
  category: id, name), duplicate image ids, duplicate category ids, an annotation whose image or category id is not
  listed, no images at all: an error;
- a box with zero or negative width or height: dropped, counted, and reported in one warning per file;
- a box partly outside its image: clipped to the image and kept (counted); entirely outside: dropped (counted,
  warned);
- ``iscrowd = 1``: the box becomes an *ignore* region of its class — not an object to find; training should count its
  anchors neither as positives nor as negatives, and the evaluation ignores detections on it, as COCO's does;
- images without annotations are kept (they only hold negatives).

Labels: the categories, sorted by id, get the contiguous labels 0 … K − 1 (``label_to_category_id`` and
``category_id_to_label`` keep the map both ways), so any category ids work (COCO's own run 1 … 90 with gaps).
Boxes are (x1, y1, x2, y2) in pixels, converted from COCO's [x, y, width, height].
"""

from __future__ import annotations

import json
import os
import reprlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from foveal.data.detection_set import FASHION_CANVAS_SAMPLE
from foveal.data.images import load_image, peek_channels
from foveal.errors import FovealError
from foveal.io import atomic_output

_SHOW = 5  # missing files / bad entries named in one message
_PEEK_LIMIT = 100  # image headers read to choose the channel count
_ID_MAX = 2**63 - 1  # ids are stored as int64 (COCO results, evaluation)
_SIZE_MAX = 2**31 - 1  # an image edge in pixels


@dataclass(frozen=True)
class ImageRecord:
    """One image of a COCO set.

    Attributes:
        id: the image id of the JSON file.
        file_name: as written in the JSON file.
        path: the resolved file.
        width, height: size in pixels, as the JSON file states it (checked when the image is loaded).
    """

    id: int
    file_name: str
    path: Path
    width: int
    height: int


@dataclass(eq=False)
class DetectionData(Dataset[tuple[Tensor, dict[str, Tensor]]]):
    """Images with boxes and class labels, read from a COCO JSON file by :func:`open_coco`.

    Attributes:
        root: the folder the images were found in.
        images: one :class:`ImageRecord` per image, in the JSON file's order.
        targets: per image ``{"boxes": (M, 4) float32 xyxy pixels, "labels": (M,) int64 in 0..K-1, "areas": (M,)
            float64 COCO areas (the JSON ``area``, else the box's), "ignore": (G, 4) float32 xyxy crowd regions,
            "ignore_labels": (G,) int64}``.
        categories: ``[{"id": category id, "name": str}]`` sorted by id; label k is ``categories[k]``.
        channels: C of every image :meth:`load_image` returns (1 or 3).
        source: the annotation file, for messages.
        repairs: counts of boxes dropped or clipped while reading (``empty``, ``outside``, ``clipped``).
        summary: what was read, in words, for a set read from another format (:mod:`foveal.data.formats`); else "".
    """

    root: Path
    images: list[ImageRecord]
    targets: list[dict[str, Tensor]]
    categories: list[dict[str, Any]]
    channels: int
    source: str = ""
    repairs: dict[str, int] = field(default_factory=dict)
    summary: str = ""

    def __post_init__(self) -> None:
        if len(self.images) != len(self.targets):
            raise FovealError(f"dataset {self.source}: {len(self.images)} images but {len(self.targets)} targets")
        self.label_to_category_id: list[int] = [int(c["id"]) for c in self.categories]
        self.category_id_to_label: dict[int, int] = {c: k for k, c in enumerate(self.label_to_category_id)}

    @property
    def classes(self) -> list[str]:
        """Class names; label k is ``classes[k]``."""
        return [str(c["name"]) for c in self.categories]

    @property
    def num_classes(self) -> int:
        """K, the number of categories."""
        return len(self.categories)

    def __len__(self) -> int:
        return len(self.images)

    def load_image(self, i: int) -> Tensor:
        """Decode image ``i``.

        Returns:
            uint8 tensor (C, H, W) with C = :attr:`channels`.

        Raises:
            FovealError: the file cannot be loaded, or its size differs from the JSON file's width and height.
        """
        record = self.images[i]
        image = load_image(record.path, self.channels)
        h, w = int(image.shape[-2]), int(image.shape[-1])
        if (h, w) != (record.height, record.width):
            raise FovealError(
                f"image {record.path} is {w}×{h} pixels but {self.source} says {record.width}×{record.height} "
                f"(image id {record.id}): fix the width/height in the annotation file or replace the image"
            )
        return image

    def get(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Image ``i`` (uint8 (C, H, W)) and its target dict (see :attr:`targets`)."""
        return self.load_image(i), self.targets[i]

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self.get(i)

    def subset(self, indices: Sequence[int]) -> DetectionData:
        """The images at ``indices`` with their targets (same categories, channels and root)."""
        picked = [int(i) for i in indices]
        images, targets = [self.images[i] for i in picked], [self.targets[i] for i in picked]
        categories = [dict(c) for c in self.categories]
        repairs = dict(self.repairs)
        return DetectionData(self.root, images, targets, categories, self.channels, self.source, repairs, self.summary)

    def num_boxes(self) -> int:
        """Number of (non-crowd) boxes over all images."""
        return sum(int(t["labels"].numel()) for t in self.targets)


def open_coco(
    spec: str | os.PathLike[str],
    *,
    split: str = "train",
    channels: int | None = None,
    image_root: str | os.PathLike[str] | None = None,
) -> DetectionData:
    """Open a COCO detection set (see the module docstring for the forms of ``spec`` and the checks).

    Args:
        spec: a COCO JSON file, a folder with ``annotations/instances_<split>.json`` and ``<split>/``, or
            ``fashion-canvas-sample``.
        split: the split of a folder; for a JSON file it only helps to find the images.
        channels: 1 or 3 to convert every image; None for the majority of the images' own (read from the headers of
            up to 100 evenly spaced images; a tie gives 3).
        image_root: the folder holding the images, instead of the search described above.

    Returns:
        The dataset; images are decoded on access.

    Raises:
        FovealError: a missing file or folder, a malformed annotation file, missing images, no images.
    """
    if channels not in (None, 1, 3):
        raise FovealError(f"bad channels={channels!r}: use 1 (grayscale), 3 (RGB) or None (the images' own)")
    if not split or any(c in split for c in "/\\") or split.startswith("."):
        raise FovealError(f"split must be a plain name such as 'train' or 'val', got {split!r}")
    if str(spec) == "fashion-canvas-sample":
        json_path = _split_file(FASHION_CANVAS_SAMPLE, split)
        folder: Path | None = FASHION_CANVAS_SAMPLE / split
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise FovealError(
                f"detection dataset {path} does not exist (pass a COCO JSON file, a folder with annotations/"
                "instances_<split>.json, or fashion-canvas-sample)"
            )
        if path.is_dir():
            json_path, folder = _split_file(path, split), path / split
        else:
            json_path, folder = path, None
    if image_root is not None:
        folder = Path(image_root).expanduser()
    document = _read_json(json_path)
    categories = _categories(document, json_path)
    records = _image_entries(document, json_path)
    root = _image_folder(json_path, records, split, folder)
    images = [ImageRecord(i, name, root / name, w, h) for i, name, w, h in records]
    _check_files(images, root, json_path)
    targets, repairs = _targets(document, json_path, images, categories)
    if channels is None:
        channels = _majority_channels([r.path for r in images])
    return DetectionData(root, images, targets, categories, channels, str(json_path), repairs)


def from_document(
    document: dict[str, Any], source: Path, root: Path, *, channels: int | None = None, summary: str = ""
) -> DetectionData:
    """A detection set from a COCO-shaped ``document`` built in memory by another format's reader, checked as a COCO
    file is (see the module docstring).

    Args:
        document: ``{"images": [...], "annotations": [...], "categories": [...]}``; ``file_name`` is the path of
            the image inside ``root``.
        source: the annotation file or folder it was read from, for messages.
        root: the folder the images' ``file_name`` are relative to.
        channels: as for :func:`open_coco`.
        summary: what was read, in words (kept as :attr:`DetectionData.summary`).
    """
    if channels not in (None, 1, 3):
        raise FovealError(f"bad channels={channels!r}: use 1 (grayscale), 3 (RGB) or None (the images' own)")
    categories = _categories(document, source)
    records = _image_entries(document, source)
    images = [ImageRecord(i, name, root / name, w, h) for i, name, w, h in records]
    _check_files(images, root, source)
    targets, repairs = _targets(document, source, images, categories)
    if channels is None:
        channels = _majority_channels([r.path for r in images])
    return DetectionData(root, images, targets, categories, channels, str(source), repairs, summary)


def write_results_json(
    detections: Sequence[dict[str, Tensor]], data: DetectionData, path: str | os.PathLike[str]
) -> Path:
    """Write detections in COCO's results format: ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]``.

    Args:
        detections: one dict per image of ``data``, in its order: ``{"boxes": (D, 4) xyxy in the original image's
            pixels, "scores": (D,), "labels": (D,) int64 in 0..K-1}``.
        data: the dataset the detections belong to (image ids and the label → category id map).
        path: the JSON file (written atomically).

    Returns:
        ``path`` as a Path.
    """
    results = detections_to_coco(detections, data)
    for r in results:
        del r["id"], r["area"], r["iscrowd"]
    with atomic_output(path) as handle:
        json.dump(results, handle)
    return Path(path)


def detections_to_coco(detections: Sequence[dict[str, Tensor]], data: DetectionData) -> list[dict[str, Any]]:
    """Detections as COCO result dicts, with what COCO's ``loadRes`` would add for boxes (``id`` from 1, ``area``
    = w · h, ``iscrowd`` 0), converted in one pass over arrays.

    Args:
        detections: as for :func:`write_results_json`.
        data: the dataset the detections belong to.

    Returns:
        ``[{"image_id", "category_id", "bbox", "score", "area", "id", "iscrowd"}]``, image by image.
    """
    if len(detections) != len(data):
        raise FovealError(
            f"got detections for {len(detections)} images but the dataset has {len(data)}: give one dict per image"
        )
    boxes, scores, labels, owners = [], [], [], []
    for i, det in enumerate(detections):
        if not all(k in det for k in ("boxes", "scores", "labels")):
            raise FovealError(f"detections of image {i} need 'boxes', 'scores' and 'labels', got keys {sorted(det)}")
        b = torch.as_tensor(det["boxes"]).detach().reshape(-1, 4).to("cpu", torch.float64)
        s = torch.as_tensor(det["scores"]).detach().reshape(-1).to("cpu", torch.float64)
        lab = torch.as_tensor(det["labels"]).detach().reshape(-1).to("cpu", torch.int64)
        if not b.shape[0] == s.shape[0] == lab.shape[0]:
            raise FovealError(
                f"detections of image {i}: {b.shape[0]} boxes, {s.shape[0]} scores and {lab.shape[0]} labels differ"
            )
        boxes.append(b)
        scores.append(s)
        labels.append(lab)
        owners.append(torch.full((b.shape[0],), i, dtype=torch.int64))
    if not boxes or sum(len(s) for s in scores) == 0:
        return []
    box, score, label = torch.cat(boxes).numpy(), torch.cat(scores).numpy(), torch.cat(labels).numpy()
    owner = torch.cat(owners).numpy()
    k = data.num_classes
    if label.min() < 0 or label.max() >= k:
        raise FovealError(
            f"detection labels must be in 0..{k - 1} (the dataset's classes), got {label.min()} … {label.max()}"
        )
    if not (np.isfinite(box).all() and np.isfinite(score).all()):
        raise FovealError("detections hold non-finite boxes or scores (check the model's outputs)")
    xywh = np.concatenate([box[:, :2], box[:, 2:] - box[:, :2]], axis=1)
    image_ids = np.array([r.id for r in data.images], dtype=np.int64)[owner].tolist()
    category_ids = np.array(data.label_to_category_id, dtype=np.int64)[label].tolist()
    areas = (xywh[:, 2] * xywh[:, 3]).tolist()
    return [
        {"image_id": i, "category_id": c, "bbox": b, "score": s, "area": a, "id": n, "iscrowd": 0}
        for n, (i, c, b, s, a) in enumerate(
            zip(image_ids, category_ids, xywh.tolist(), score.tolist(), areas, strict=True), start=1
        )
    ]


# ------------------------------------------------------------------------------------------------ file and folders


def _split_file(folder: Path, split: str) -> Path:
    path = folder / "annotations" / f"instances_{split}.json"
    if path.is_file():
        return path
    found = sorted(p.stem.removeprefix("instances_") for p in (folder / "annotations").glob("instances_*.json"))
    if found:
        raise FovealError(f"{folder} has no split '{split}' ({path} does not exist): choose one of {', '.join(found)}")
    raise FovealError(
        f"{folder} is not a COCO folder: expected {path} (annotations/instances_<split>.json with the images in "
        f"{folder / split}/), or pass the JSON file itself"
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8-sig") as handle:
            document = json.load(handle)
    except RecursionError:
        raise FovealError(
            f"{path} nests its lists or objects too deeply to be a COCO annotation file: fix or regenerate it"
        ) from None
    except json.JSONDecodeError as exc:
        raise FovealError(
            f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}): fix or regenerate it"
        ) from None
    except UnicodeDecodeError:
        raise FovealError(f"{path} is not a UTF-8 text file: pass a COCO JSON annotation file") from None
    except OSError as exc:
        raise FovealError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(document, dict):
        raise FovealError(
            f"{path} holds a JSON {type(document).__name__}, not an object: a COCO annotation file is "
            '{"images": [...], "annotations": [...], "categories": [...]} (a results file is a list; open the '
            "annotations it belongs to)"
        )
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(document.get(k), list)]
    if missing:
        raise FovealError(f"{path} lacks the list(s) {', '.join(repr(k) for k in missing)} of a COCO annotation file")
    return document


def _bad_entry(path: Path, kind: str, index: int, entry: Any, need: str) -> FovealError:
    try:
        text = json.dumps(entry)[:120] if isinstance(entry, dict) else reprlib.repr(entry)
    except (RecursionError, TypeError, ValueError):
        text = reprlib.repr(entry)
    return FovealError(f"{path}: {kind} entry {index} is malformed ({text}): it needs {need}")


def _is_int(value: Any, low: int = -_ID_MAX, high: int = _ID_MAX) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _categories(document: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    seen: dict[int, str] = {}
    for index, entry in enumerate(document["categories"]):
        if not isinstance(entry, dict) or not _is_int(entry.get("id")) or "name" not in entry:
            raise _bad_entry(path, "category", index, entry, "an integer 'id' and a 'name'")
        if entry["id"] in seen:
            raise FovealError(
                f"{path}: category id {entry['id']} is listed twice ('{seen[entry['id']]}' and '{entry['name']}'): "
                "give every category its own id"
            )
        seen[entry["id"]] = str(entry["name"])
    if not seen:
        raise FovealError(f"{path} lists no categories: add the object classes to 'categories'")
    return [{"id": c, "name": seen[c]} for c in sorted(seen)]


def _image_entries(document: dict[str, Any], path: Path) -> list[tuple[int, str, int, int]]:
    out: list[tuple[int, str, int, int]] = []
    seen: set[int] = set()
    for index, e in enumerate(document["images"]):
        ok = isinstance(e, dict) and _is_int(e.get("id")) and isinstance(e.get("file_name"), str) and e["file_name"]
        if not ok or not all(_is_int(e.get(k), 1, _SIZE_MAX) for k in ("width", "height")):
            raise _bad_entry(
                path, "image", index, e, f"an integer 'id', a 'file_name' and 'width', 'height' from 1 to {_SIZE_MAX}"
            )
        if e["id"] in seen:
            raise FovealError(f"{path}: image id {e['id']} is listed twice: give every image its own id")
        seen.add(e["id"])
        out.append((e["id"], e["file_name"], e["width"], e["height"]))
    if not out:
        raise FovealError(f"{path} lists no images: a detection set needs at least one image")
    return out


def _image_folder(json_path: Path, records: list[tuple[int, str, int, int]], split: str, given: Path | None) -> Path:
    if given is not None:
        return given
    here = json_path.parent
    name = json_path.stem.removeprefix("instances_") if json_path.stem.startswith("instances_") else split
    candidates = list(dict.fromkeys([here, here / "images", here / name, here.parent / name, here.parent / "images"]))
    first = records[0][1]
    for folder in candidates:
        if _is_file(folder / first):
            return folder
    tried = ", ".join(str(c) for c in candidates)
    raise FovealError(
        f"cannot find the images of {json_path}: its first image '{first}' is in none of {tried}; pass image_root= "
        "the folder that holds them"
    )


def _check_files(images: list[ImageRecord], root: Path, json_path: Path) -> None:
    missing = [r.file_name for r in images if not _is_file(r.path)]
    if missing:
        shown = ", ".join(missing[:_SHOW]) + (f" and {len(missing) - _SHOW} more" if len(missing) > _SHOW else "")
        raise FovealError(
            f"{len(missing)} of {len(images)} images listed in {json_path} are missing from {root}: {shown} "
            "(restore them or remove their entries)"
        )


def _is_file(path: Path) -> bool:
    """``path.is_file()``, but False where the OS refuses the name (too long for the file system, …) instead of an
    OSError: such an image is missing, and reported as such."""
    try:
        return path.is_file()
    except OSError:
        return False


def _majority_channels(paths: list[Path]) -> int:
    step = max(1, len(paths) // _PEEK_LIMIT)
    votes = {1: 0, 3: 0}
    for p in paths[::step][:_PEEK_LIMIT]:
        try:
            votes[peek_channels(p)] += 1
        except FovealError:
            continue  # reported when the image is loaded
    return 1 if votes[1] > votes[3] else 3


# ----------------------------------------------------------------------------------------------------- annotations


def _targets(
    document: dict[str, Any], path: Path, images: list[ImageRecord], categories: list[dict[str, Any]]
) -> tuple[list[dict[str, Tensor]], dict[str, int]]:
    """Per-image targets from the annotations (vectorised after one pass over the entries), and the repair counts."""
    image_index = {r.id: i for i, r in enumerate(images)}
    label_of = {int(c["id"]): k for k, c in enumerate(categories)}
    n = len(document["annotations"])
    owner = np.empty(n, np.int64)
    label = np.empty(n, np.int64)
    xywh = np.empty((n, 4), np.float64)
    area = np.full(n, np.nan)
    crowd = np.zeros(n, bool)
    for j, a in enumerate(document["annotations"]):
        try:
            owner[j] = image_index[a["image_id"]]
            label[j] = label_of[a["category_id"]]
            xywh[j] = a["bbox"]
        except KeyError as exc:
            raise _annotation_error(path, j, a, exc, image_index, label_of) from None
        except (TypeError, ValueError, OverflowError):
            raise _bad_entry(path, "annotation", j, a, "'image_id', 'category_id' and a 'bbox' of 4 numbers") from None
        value = a.get("area")
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            area[j] = float(value) if value < 1e300 else np.inf  # an absurd area is recomputed from the box below
        crowd[j] = bool(a.get("iscrowd", 0))
    bad = ~np.isfinite(xywh).all(axis=1)
    if bad.any():
        j = int(np.flatnonzero(bad)[0])
        raise _bad_entry(path, "annotation", j, document["annotations"][j], "a 'bbox' of 4 finite numbers")
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    empty = (xywh[:, 2] <= 0) | (xywh[:, 3] <= 0)
    size = np.array([[r.width, r.height] for r in images], np.float64)[owner]
    clipped = np.concatenate([np.clip(xyxy[:, :2], 0, size), np.clip(xyxy[:, 2:], 0, size)], axis=1)
    outside = ~empty & ((clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1]))
    changed = ~empty & ~outside & (clipped != xyxy).any(axis=1)
    repairs = {"empty": int(empty.sum()), "outside": int(outside.sum()), "clipped": int(changed.sum())}
    if repairs["empty"] or repairs["outside"]:
        warnings.warn(
            f"{path}: dropped {repairs['empty']} box(es) with zero or negative width/height and {repairs['outside']} "
            f"entirely outside their image; clipped {repairs['clipped']} partly outside",
            stacklevel=3,
        )
    keep = ~empty & ~outside
    area = np.where(np.isfinite(area), area, (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1]))
    return _split_by_image(len(images), owner[keep], clipped[keep], label[keep], area[keep], crowd[keep]), repairs


def _annotation_error(
    path: Path, j: int, entry: Any, exc: KeyError, image_index: dict[int, int], label_of: dict[int, int]
) -> FovealError:
    if not isinstance(entry, dict) or any(k not in entry for k in ("image_id", "category_id", "bbox")):
        return _bad_entry(path, "annotation", j, entry, "'image_id', 'category_id' and a 'bbox' of 4 numbers")
    name = f"annotation {entry.get('id', f'entry {j}')}"
    if entry["image_id"] not in image_index:
        return FovealError(f"{path}: {name} refers to image id {entry['image_id']}, which 'images' does not list")
    known = ", ".join(str(c) for c in sorted(label_of))
    return FovealError(
        f"{path}: {name} has category id {entry['category_id']}, which 'categories' does not list (known: {known})"
    )


def _split_by_image(
    n_images: int, owner: np.ndarray, boxes: np.ndarray, labels: np.ndarray, areas: np.ndarray, crowd: np.ndarray
) -> list[dict[str, Tensor]]:
    order = np.argsort(owner, kind="stable")
    owner, boxes, labels, areas, crowd = owner[order], boxes[order], labels[order], areas[order], crowd[order]
    bounds = np.searchsorted(owner, np.arange(n_images + 1))
    boxes_t = torch.from_numpy(boxes.astype(np.float32))
    labels_t, areas_t, crowd_t = torch.from_numpy(labels), torch.from_numpy(areas), torch.from_numpy(crowd)
    targets = []
    for i in range(n_images):
        s = slice(int(bounds[i]), int(bounds[i + 1]))
        c = crowd_t[s]
        targets.append(
            {
                "boxes": boxes_t[s][~c].clone(),
                "labels": labels_t[s][~c].clone(),
                "areas": areas_t[s][~c].clone(),
                "ignore": boxes_t[s][c].clone(),
                "ignore_labels": labels_t[s][c].clone(),
            }
        )
    return targets
