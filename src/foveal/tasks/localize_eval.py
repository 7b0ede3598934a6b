"""Weakly supervised localization of a classifier on images with ground-truth boxes: your own folder and box file, or
in-memory canvases.

References:
    Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016, §3: the box of the largest
    region above 20 % of the map's max; top-1 / top-5 localization error (right class and IoU ≥ 0.5 with a
    ground-truth box) and the ground-truth-known error (the true class's map, whatever the prediction).
    Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right", CVPR 2020: MaxBoxAccV2 of the true
    class's maps (:class:`foveal.metrics.localization.MaxBoxAccMeter`).

Images are prepared as the classifier's evaluation transform does (shorter side to its resolution, centre square
crop); each map is placed on the original pixels the crop covers (outside the crop it takes the map's minimum), so
boxes and scores are in ORIGINAL image pixels. An image with several ground-truth boxes counts when the predicted box
matches any of them (ImageNet's rule); boxes of another class of the classifier (XML objects) are left out.

:func:`localization_eval_folder` writes ``localization.json`` (the metrics), ``localization/images.csv`` (one row per
image) and PNG panels of the worst images and of an evenly spaced sample (``localization/worst_NN_<stem>.png``,
``localization/sample_NN_<stem>.png``): the top-1 class's map, its box (red) and the ground truth (green); and the
headline figures in ``metrics.json``, as every ``eval --out`` folder has them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from foveal.data.box_files import BoxEntry, check_inside, match_images, read_box_file
from foveal.data.localization_set import LocalizationData
from foveal.errors import FovealError
from foveal.explain.boxes import PAPER_THRESHOLD, maps_to_boxes
from foveal.explain.upsample import grid_of, upsample_maps
from foveal.io import atomic_output, writable_dir, write_json
from foveal.metrics.localization import (
    TOP_K,
    LocalizationMeter,
    MaxBoxAccMeter,
    best_iou,
)
from foveal.preprocess import normalize
from foveal.results import ImageRow, LocalizationReport
from foveal.tasks.classify import LoadedClassifier, eval_transform, load_classifier
from foveal.tasks.classify_explain import MapFn, class_maps, class_scores, multiscale
from foveal.tasks.explain_common import check_options, crop_region

RESULTS_FILE = "localization.json"
FIGURE_FOLDER = "localization"
PANELS = 8
DRAWN_BOXES = 20
"""Ground-truth boxes drawn on a panel at most: those that overlap the predicted box most (a box file may give an
image thousands, which would hide the image and take minutes to draw)."""


@dataclass
class _Run:
    """One evaluation in progress: the classifier, its map function and the meters."""

    clf: LoadedClassifier
    maps_of: MapFn
    flip: bool
    threshold: float
    loc: LocalizationMeter = field(default_factory=LocalizationMeter)
    mba: MaxBoxAccMeter = field(default_factory=MaxBoxAccMeter)
    rows: list[ImageRow] = field(default_factory=list)

    @property
    def k(self) -> int:
        return min(TOP_K, len(self.clf.classes))

    def maps(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Top-k classes (N, k), their scores (N, k), boxes (N, k + 1, 4) and maps (N, k + 1, H, W) on the images'
        pixels of ``images`` (N, C, H, W) uint8; the last of the k + 1 is the true class's."""
        clf, n = self.clf, images.shape[0]
        height, width = images.shape[-2:]
        x = normalize(eval_transform(clf.resolution)(images), clf.mean, clf.std)
        scores, top = class_scores(clf.model, x, self.flip).topk(self.k, dim=1)
        raw = self.maps_of(x, torch.cat([top, labels[:, None]], 1)).float()
        x1, y1, x2, y2 = crop_region(height, width, clf.resolution)
        region = upsample_maps(raw, (y2 - y1, x2 - x1), grid_of(clf.model), x.shape[-2:])
        boxes = maps_to_boxes(region, self.threshold) + torch.tensor([x1, y1, x1, y1], dtype=torch.float32)
        full = region.amin((-2, -1), keepdim=True).expand(n, self.k + 1, height, width).clone()
        full[..., y1:y2, x1:x2] = region
        return top, scores, boxes, full

    def update(self, images: Tensor, labels: Tensor, gts: list[Tensor], files: Sequence[str]) -> None:
        """Score one batch of same-size images (N, C, H, W) uint8 with labels (N,) and boxes (M_i, 4) per image."""
        top, scores, boxes, full = self.maps(images, labels)
        k = self.k
        self.loc.update(top, boxes[:, :k], labels, gts, boxes[:, k])
        self.mba.update(full[:, k], gts)
        iou = best_iou(boxes, gts)
        names = self.clf.classes
        for i, file in enumerate(files):
            self.rows.append(
                ImageRow(
                    file=file,
                    label=names[int(labels[i])],
                    classes=[names[int(c)] for c in top[i]],
                    scores=[round(float(s), 6) for s in scores[i]],
                    box=boxes[i, 0].tolist(),
                    iou=round(float(iou[i, 0]), 6),
                    true_class_box=boxes[i, k].tolist(),
                    true_class_iou=round(float(iou[i, k]), 6),
                    localized=bool(top[i, 0] == labels[i]) and float(iou[i, 0]) >= self.loc.iou_threshold,
                )
            )

    def report(self, options: dict[str, Any]) -> LocalizationReport:
        return LocalizationReport(self.loc.compute(), self.mba.compute(), self.rows, options)


@contextmanager
def _run(
    checkpoint: str | Path,
    method: str | MapFn,
    threshold: float,
    map_stride: int | None,
    map_scales: Sequence[float] | None,
    flip: bool,
) -> Iterator[_Run]:
    """A :class:`_Run` of the checkpoint's classifier with the maps the options ask for, for a ``with`` block."""
    if isinstance(method, str):
        check_options(1, method, threshold, "max", map_stride=map_stride, map_scales=map_scales, flip=flip)
    elif map_stride is not None:
        raise FovealError("map_stride applies to the methods 'cam' and 'gradcam', not to a map function")
    clf = load_classifier(checkpoint)
    grid = grid_of(clf.model)
    with _own_maps(clf, method, map_stride) as own:
        views = own if map_scales is None and not flip else multiscale(own, tuple(map_scales or (1.0,)), grid, flip)
        yield _Run(clf, views, flip, threshold)


@contextmanager
def _own_maps(clf: LoadedClassifier, method: str | MapFn, map_stride: int | None) -> Iterator[MapFn]:
    if isinstance(method, str):
        with class_maps(clf.model, method, map_stride) as maps_of:
            yield maps_of
    else:
        yield method


def _options(method: str | MapFn, threshold: float, stride: int | None, scales: Any, flip: bool) -> dict[str, Any]:
    return {
        "method": method if isinstance(method, str) else getattr(method, "__name__", "map function"),
        "threshold": threshold,
        "map_stride": stride,
        "map_scales": None if scales is None else [float(s) for s in scales],
        "flip": flip,
    }


def evaluate_canvases(
    checkpoint: str | Path,
    data: LocalizationData,
    *,
    method: str | MapFn = "cam",
    threshold: float = PAPER_THRESHOLD,
    map_stride: int | None = None,
    map_scales: Sequence[float] | None = None,
    flip: bool = False,
    batch_size: int = 64,
) -> LocalizationReport:
    """Localization errors and MaxBoxAccV2 of a classifier on in-memory canvases with one box each.

    Args:
        checkpoint: a classification checkpoint (or its run directory) with the canvases' classes.
        data: canvases (:func:`foveal.data.localization_set.build_localization_set`).
        method: "cam", "gradcam", or any :data:`~foveal.tasks.classify_explain.MapFn` (e.g. another library's maps).
        threshold: the box's fraction of the map's max (0.2 in the CAM paper); MaxBoxAccV2 tries its own.
        map_stride, map_scales, flip: finer, multi-scale or mirrored maps, as in :func:`foveal.tasks.explain.explain`.
        batch_size: canvases per forward pass.

    Returns:
        A :class:`LocalizationReport` (no figures).
    """
    if batch_size < 1:
        raise FovealError(f"batch_size={batch_size}: use a positive number of canvases per batch")
    with _run(checkpoint, method, threshold, map_stride, map_scales, flip) as run:
        if len(data.classes) != len(run.clf.classes) or data.images.shape[1] != run.clf.channels:
            raise FovealError(
                f"the canvases have {len(data.classes)} classes and {data.images.shape[1]} channel(s) but the "
                f"classifier {checkpoint} has {len(run.clf.classes)} and {run.clf.channels}: evaluate a classifier "
                "trained on canvases of the same source"
            )
        for start in range(0, len(data), batch_size):
            stop = min(start + batch_size, len(data))
            boxes = list(data.boxes[start:stop, None].unbind(0))
            names = [f"canvas {i}" for i in range(start, stop)]
            run.update(data.images[start:stop], data.labels[start:stop], boxes, names)
        return run.report(_options(method, threshold, map_stride, map_scales, flip))


def localization_eval_folder(
    checkpoint: str | Path,
    data: str | Path,
    boxes: str | Path,
    *,
    box_format: str | None = None,
    split: str = "test",
    method: str | MapFn = "cam",
    threshold: float = PAPER_THRESHOLD,
    map_stride: int | None = None,
    map_scales: Sequence[float] | None = None,
    flip: bool = False,
    out: str | Path | None = None,
    panels: int = PANELS,
) -> LocalizationReport:
    """Localization errors and MaxBoxAccV2 of a classifier on your images and boxes; files in ``out``.

    Args:
        checkpoint: a classification checkpoint (or its run directory).
        data: the folder of images (searched recursively; one sub-folder per class gives the labels, as for training).
        boxes: a box file or folder (:func:`foveal.data.box_files.read_box_file`): JSON, CSV, CUB-200-2011, XML. Its
            images are evaluated; images of ``data`` without boxes are left out. A label in the box file (a class
            name of the classifier) is used, else the image's class sub-folder.
        box_format: "xyxy" or "xywh", for box files that do not state it.
        split: CUB-200-2011: "test" or "train" images.
        method, threshold, map_stride, map_scales, flip: as in :func:`evaluate_canvases`.
        out: folder for ``localization.json``, ``localization/images.csv`` and the panels (None: write nothing).
        panels: worst images and sample images drawn (each; 0: none).

    Returns:
        A :class:`LocalizationReport` with the figures written.
    """
    matched = match_images(read_box_file(boxes, box_format, split), data)
    with _run(checkpoint, method, threshold, map_stride, map_scales, flip) as run:
        samples = [_sample(path, entry, Path(data), run.clf.classes) for path, entry in matched]
        for batch in _same_size_batches(samples, run.clf.channels, run.clf.classes):
            run.update(*batch)
        options = {**_options(method, threshold, map_stride, map_scales, flip), "data": str(data), "boxes": str(boxes)}
        report = run.report(options)
        if out is None:
            return report
        folder = writable_dir(out)
        writable_dir(folder / FIGURE_FOLDER, "figure folder")
        figures = _panels(run, samples, folder / FIGURE_FOLDER, panels)
    report = LocalizationReport(report.localization, report.max_box_acc, report.images, options, figures)
    _write(report, folder)
    return report


@dataclass(frozen=True)
class _Sample:
    path: Path
    entry: BoxEntry
    label: int


def _sample(path: Path, entry: BoxEntry, root: Path, classes: list[str]) -> _Sample:
    """The image's label: the box file's, else (also when XML objects name no class of the classifier) the nearest
    class folder of the image."""
    if entry.label in classes:
        return _Sample(path, entry, classes.index(entry.label))
    given = entry.label is not None and all(n is None for n in entry.box_labels)  # not derived from XML objects
    for folder in () if given else path.relative_to(root).parents:
        if folder.name in classes:
            return _Sample(path, entry, classes.index(folder.name))
    shown = ", ".join(classes[:8]) + (", …" if len(classes) > 8 else "")
    if entry.label is not None:
        raise FovealError(
            f"{entry.where}: label {entry.label!r} of image {path} is not a class of the classifier ({shown}): use "
            "the classifier's class names, or put the image in a sub-folder named after its class"
        )
    raise FovealError(
        f"{entry.where}: image {path} has no class: put it in a sub-folder named after its class ({shown}) or add a "
        "label to the box file"
    )


def _load(sample: _Sample, channels: int, classes: list[str]) -> tuple[Tensor, Tensor]:
    """(C, H, W) uint8 image and (M, 4) boxes of its class, clipped to the image."""
    from foveal.data.images import load_image

    image = load_image(sample.path, channels)
    boxes = check_inside(sample.entry, image.shape[-2], image.shape[-1], sample.path)
    name = classes[sample.label]
    kept = [
        b for b, n in zip(boxes, sample.entry.box_labels, strict=True) if n is None or n == name or n not in classes
    ]
    if not kept:
        raise FovealError(
            f"{sample.entry.where}: image {sample.path} has no box of its class {name!r} (its boxes name other "
            "classes): add a box of that class, or correct the image's label or class folder"
        )
    return image, torch.tensor(kept, dtype=torch.float32)


def _same_size_batches(
    samples: list[_Sample], channels: int, classes: list[str], limit: int = 32
) -> Iterator[tuple[Tensor, Tensor, list[Tensor], list[str]]]:
    """Runs of consecutive images of one size (at most ``limit``): (images, labels, boxes, files)."""
    batch: list[tuple[Tensor, Tensor, _Sample]] = []
    for sample in samples:
        image, boxes = _load(sample, channels, classes)
        if batch and (image.shape != batch[0][0].shape or len(batch) == limit):
            yield _stack(batch)
            batch = []
        batch.append((image, boxes, sample))
    if batch:
        yield _stack(batch)


def _stack(batch: list[tuple[Tensor, Tensor, _Sample]]) -> tuple[Tensor, Tensor, list[Tensor], list[str]]:
    images = torch.stack([b[0] for b in batch])
    labels = torch.tensor([b[2].label for b in batch])
    return images, labels, [b[1] for b in batch], [str(b[2].path) for b in batch]


def _panels(run: _Run, samples: list[_Sample], folder: Path, count: int) -> dict[str, list[str]]:
    """PNG panels of the ``count`` worst images (not localized first, then by IoU) and of ``count`` evenly spaced
    ones: the top-1 class's map with its box and the ground truth."""
    from foveal.explain.overlay import figure_boxes

    n = len(run.rows)
    worst = sorted(range(n), key=lambda i: (run.rows[i].localized, run.rows[i].iou, i))[:count]
    spread = min(count, n)
    spaced = sorted({round(j * (n - 1) / max(spread - 1, 1)) for j in range(spread)})
    figures: dict[str, list[str]] = {"worst": [], "sample": []}
    for kind, chosen in (("worst", worst), ("sample", spaced)):
        for rank, i in enumerate(chosen, 1):
            row, sample = run.rows[i], samples[i]
            image, boxes = _load(sample, run.clf.channels, run.clf.classes)
            _, _, pred, maps = run.maps(image[None], torch.tensor([sample.label]))
            title = f"{row.label} → {row.classes[0]} ({row.scores[0]:.2f}), IoU {row.iou:.2f}"
            if len(boxes) > DRAWN_BOXES:
                title += f" ({DRAWN_BOXES} of {len(boxes)} true boxes drawn)"
            path = folder / f"{kind}_{rank:02d}_{sample.path.stem}.png"
            shown = image.permute(1, 2, 0).numpy()
            drawn = _nearest(boxes, pred[0, 0]).numpy()
            figure_boxes(shown, maps[0, 0].numpy(), drawn, pred[0, 0].numpy(), path, title=title)
            figures[kind].append(str(path))
    return figures


def _nearest(boxes: Tensor, pred: Tensor) -> Tensor:
    """At most :data:`DRAWN_BOXES` of the (M, 4) ground-truth boxes: those of largest IoU with the (4,) predicted
    box."""
    if len(boxes) <= DRAWN_BOXES:
        return boxes
    from torchvision.ops import box_iou

    return boxes[box_iou(pred[None].float(), boxes)[0].topk(DRAWN_BOXES).indices]


def _write(report: LocalizationReport, folder: Path) -> None:

    write_json(folder / RESULTS_FILE, report.to_dict())
    mba = report.max_box_acc
    summary = {  # the headline figures, as every eval --out folder has them (the HTML report reads this file)
        **report.localization.to_dict(),
        "max_box_acc_v2": mba.max_box_acc_v2,
        **{f"max_box_acc_iou{k}": v for k, v in mba.max_box_acc.items()},
        **{f"best_threshold_iou{k}": v for k, v in mba.best_threshold.items()},
    }
    write_json(folder / "metrics.json", summary)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["file", "label", "top1", "score", "x1", "y1", "x2", "y2", "iou", "true_class_iou", "localized"])
    for r in report.images:
        writer.writerow([r.file, r.label, r.classes[0], r.scores[0], *r.box, r.iou, r.true_class_iou, int(r.localized)])
    with atomic_output(folder / FIGURE_FOLDER / "images.csv", "w") as handle:
        handle.write(text.getvalue())
