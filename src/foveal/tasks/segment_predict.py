"""Segmentation inference: the overlap-tile predictor and writer of ``foveal predict`` and the API (large TIFF and
zarr images streamed tile by tile, :mod:`foveal.inference.stream`), the API's typed result, the printed table, and
what ``export`` writes.

Every prediction runs overlap-tile inference (:func:`foveal.tasks.segment.predict_logits`): images of any size,
mirrored context at the image border, the same result as one pass over the whole mirror-padded image.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from torch import Tensor

from foveal.data.images import is_zarr_path, iter_inputs
from foveal.data.seg_io import check_channels, load_seg_image, to_float, write_label_image
from foveal.errors import FovealError
from foveal.inference.batch_predict import Streamed
from foveal.inference.export import ExportSpec
from foveal.inference.inputs import InMemory, native_pixels
from foveal.inference.stream import BandWriter, image_size, segment_large, write_labels_streaming
from foveal.inference.stream.sources import zarr_package
from foveal.report.segmentation_plots import plot_segmentation_overlay
from foveal.results import Segmentation
from foveal.tasks.segment import (
    TTA_MODES,
    LoadedSegmenter,
    load_segmenter,
    predict_logits,
    tile_input,
    to_instances,
)


@dataclass(frozen=True)
class SegPrediction:
    file: str
    size: tuple[int, int]
    instances: int
    foreground: float
    labels: str
    overlay: str


#: TIFF / BigTIFF images above this many pixels, and zarr arrays, are segmented by streaming: read, predicted and
#: written tile by tile (:mod:`foveal.inference.stream`), with the same labels and no overlay.
STREAM_PIXELS = 4096 * 4096
LABEL_FORMATS = ("tif", "png", "zarr")


def streams(path: Path, fmt: str) -> bool:
    """Whether ``path`` is segmented by streaming: a zarr store, or a TIFF that is large or goes to zarr labels."""
    if is_zarr_path(path):
        return True
    size = image_size(path)
    return size is not None and (fmt == "zarr" or size[0] * size[1] > STREAM_PIXELS)


class _PrepareSegment:
    """Path → (C, H, W) float image normalised as the model was trained (runs in DataLoader workers), or
    :class:`Streamed` for an image that is streamed (its header checked: an image that cannot be streamed into the
    model is an error here, so the stream skips and lists it before the model runs)."""

    def __init__(self, channels: int, normalize: str, fmt: str = "tif") -> None:
        self.channels, self.normalize, self.fmt = channels, normalize, fmt

    def __call__(self, path: Path) -> Tensor | Streamed:
        if streams(path, self.fmt):
            from foveal.inference.stream import check_source

            check_source(path, self.channels)
            return Streamed(path)
        return load_seg_image(path, channels=self.channels, normalize=self.normalize)

    def image(self, pixels: np.ndarray, name: str) -> Tensor:
        """(H, W, C) pixels as an image file of ``name`` would hold them → (C, H, W) float32, normalised."""
        image = to_float(pixels, Path(name), self.normalize)
        check_channels([image], [Path(name)], self.channels)
        return image


class SegmentPredictor:
    """Overlap-tile segmentation (a :class:`foveal.inference.batch_predict.Predictor`): each result is the (H, W)
    int32 label image (instances for instance models, classes otherwise), the class map's foreground fraction and,
    with ``probabilities``, the soft-max probabilities (H, W, K). A streamed image's result is its :class:`Streamed`
    marker, which :meth:`stream` segments on the main thread straight into the writer's files.

    Args:
        checkpoint: checkpoint folder or run directory, or a segmenter loaded with ``fast=True``.
        tile: output tile edge (default: the checkpoint's evaluation tile).
        tta: overrides the checkpoint's ``post.tta`` ("none" or "dihedral").
        fmt: the label format ("tif", "png", "zarr"): zarr labels stream every TIFF.
        probabilities: also return the soft-max probabilities.
    """

    def __init__(
        self,
        checkpoint: str | Path | LoadedSegmenter,
        tile: int | None = None,
        tta: str | None = None,
        fmt: str = "tif",
        probabilities: bool = False,
        device: str | torch.device = "auto",
        precision: str = "auto",
    ) -> None:
        if isinstance(checkpoint, LoadedSegmenter):  # already loaded (device and precision as it was loaded)
            self.seg = checkpoint
        else:
            self.seg = load_segmenter(checkpoint, fast=True, device=device, precision=precision)
        self.tta = self.seg.config.post.tta if tta is None else tta
        if self.tta not in TTA_MODES:
            raise FovealError(f"unknown test-time augmentation {tta!r}: use 'none' or 'dihedral' (8 rotations / flips)")
        self.tile = tile or self.seg.config.data.eval_tile
        tile_input(self.seg.model, self.tile)
        self.prepare = _PrepareSegment(self.seg.channels, self.seg.normalize, fmt)
        self.probabilities = probabilities

    @torch.no_grad()
    def predict_batch(self, prepared: Sequence[Tensor]) -> list[Any]:
        results: list[Any] = []
        for image in prepared:  # images differ in size: each is one overlap-tile batch of its own
            big = image.shape[-1] * image.shape[-2] > 2048**2
            logits = predict_logits(self.seg.model, image, self.tile, progress=big, tta=self.tta)
            cls = logits.argmax(0).numpy()
            instances = self.seg.masks == "instances"
            labels = to_instances(cls, self.seg.config.post) if instances else cls.astype(np.int32)
            probs = logits.float().softmax(0).permute(1, 2, 0).numpy() if self.probabilities else None
            results.append((labels, float((cls > 0).mean()), probs))
        return results

    def check_inputs(self, inputs: Sequence[str]) -> None:
        """Before the first image: with test-time augmentation or PNG labels, which a streamed image cannot have, no
        input may be one that streams (each TIFF's header is read; nothing else is)."""
        if self.tta == "none" and self.prepare.fmt != "png":
            return
        for path in iter_inputs(list(inputs)):
            if streams(path, self.prepare.fmt):
                raise FovealError(_streamed_option(path, self.tta, self.prepare.fmt), options=("tta", "fmt"))

    def stream(self, path: Path, targets: tuple[Path, Path | None]) -> Any:
        """Segment a :class:`Streamed` image into ``targets``: its labels file and, with ``probabilities``, the
        probabilities file; a :class:`foveal.inference.stream.StreamResult`."""
        if self.tta != "none":
            raise FovealError(_streamed_option(path, self.tta, "tif"), options=("tta",))
        labels, probabilities = targets
        post = self.seg.config.post
        return segment_large(
            self.seg.model,
            path,
            labels,
            tile=self.tile,
            instances=self.seg.masks == "instances",
            normalize=self.seg.normalize,
            channels=self.seg.channels,
            min_size=post.min_size,
            expand=post.expand,
            probabilities=probabilities,
            progress=sys.stderr.isatty(),  # a bar of tiles where someone watches, no noise in a log
        )


def _streamed_option(path: Path, tta: str | None, fmt: str) -> str:
    """The message for an option a streamed image cannot have (test-time augmentation, PNG labels)."""
    if fmt == "png":
        return f"image {path} is streamed (large TIFF or zarr): write its labels with fmt tif or zarr"
    return (
        f"image {path} is streamed (large TIFF or zarr), which runs without test-time augmentation (tta {tta}): "
        "pass tta none"
    )


class SegmentWriter:
    """Per image ``<stem>_labels.<fmt>`` (TIFF, 16-bit PNG or zarr), ``<stem>_overlay.png`` (not for streamed
    images), with ``probabilities`` ``<stem>_probabilities.tif|zarr`` (H, W, K) float32, and the record of a
    :class:`SegPrediction` (paths as published). A :class:`Streamed` image's files are written by the predictor into
    :meth:`stream_targets`; its record comes from the predictor's result."""

    def __init__(self, instances: bool, fmt: str = "tif", probabilities: bool = False) -> None:
        if fmt not in LABEL_FORMATS:
            raise FovealError(f"unknown label format '{fmt}': use tif, png or zarr", options=("fmt",))
        self.instances, self.fmt, self.probabilities = instances, fmt, probabilities

    def _names(self, stem: str) -> tuple[str, str, str]:
        probs = f"{stem}_probabilities.{'zarr' if self.fmt == 'zarr' else 'tif'}"
        return f"{stem}_labels.{self.fmt}", f"{stem}_overlay.png", probs

    def write(self, item: Any, prepared: Any, result: Any, out: Any) -> dict[str, Any]:
        names = self._names(item.stem)
        if isinstance(prepared, Streamed):
            return self._write_streamed(item, result, out)
        labels, foreground, probs = result
        if self.fmt == "zarr":
            write_labels_streaming(out.staged(names[0]), [labels], labels.shape, int(labels.max(initial=0)))
        else:
            write_label_image(labels, out.staged(names[0]))
        if self.probabilities and probs is not None:
            with BandWriter(out.staged(names[2]), probs.shape, np.float32) as writer:
                writer.write(probs)
                writer.close()
        image = prepared
        shown = image[0].numpy() if image.shape[0] == 1 else image[:3].permute(1, 2, 0).numpy()
        plot_segmentation_overlay(np.clip(shown, 0, 1), labels, out.staged(names[1]))
        n = int(labels.max()) if self.instances else int(len(np.unique(labels[labels > 0])))
        size = (int(labels.shape[0]), int(labels.shape[1]))
        row = SegPrediction(str(item.path), size, n, foreground, *(str(out.published(x)) for x in names[:2]))
        return {k: v for k, v in asdict(row).items() if k != "file"}

    def stream_targets(self, item: Any, out: Any) -> tuple[Path, Path | None]:
        """The staged labels file of a streamed image and, with ``probabilities``, its probabilities file."""
        if self.fmt == "png":
            raise FovealError(_streamed_option(item.path, None, "png"), options=("fmt",))
        names = self._names(item.stem)
        return out.staged(names[0]), out.staged(names[2]) if self.probabilities else None

    def _write_streamed(self, item: Any, done: Any, out: Any) -> dict[str, Any]:
        names = self._names(item.stem)
        size = (done.height, done.width)
        row = SegPrediction(str(item.path), size, done.objects, done.foreground, str(out.published(names[0])), "")
        return {k: v for k, v in asdict(row).items() if k != "file"}

    def finish(self, records: Callable[[], Iterator[dict[str, Any]]], out: Any) -> None:
        """Nothing to assemble: every image has its own files."""


def seg_prediction(record: dict[str, Any]) -> SegPrediction:
    """A :class:`SegPrediction` from its JSON record."""
    return SegPrediction(
        str(record["file"]),
        (int(record["size"][0]), int(record["size"][1])),
        int(record["instances"]),
        float(record["foreground"]),
        str(record["labels"]),
        str(record["overlay"]),
    )


def format_predictions(rows: list[SegPrediction]) -> str:
    lines = [f"{'image':<40} {'size':>11} {'objects':>8} {'foreground':>10}"]
    for r in rows:
        name = r.file if len(r.file) <= 40 else "…" + r.file[-39:]
        lines.append(f"{name:<40} {r.size[0]:>5}×{r.size[1]:<5} {r.instances:>8} {r.foreground:>10.3f}")
    return "\n".join(lines)


def predictor(
    loaded: LoadedSegmenter,
    tile: int | None = None,
    tta: str | None = None,
    fmt: str = "tif",
    probabilities: bool = False,
    **options: Any,
) -> SegmentPredictor:
    """The overlap-tile predictor of a loaded U-Net (see :class:`SegmentPredictor` for the options)."""
    return SegmentPredictor(loaded, tile, tta, fmt, probabilities)


def writer(predictor: SegmentPredictor, fmt: str = "tif", probabilities: bool = False, **options: Any) -> SegmentWriter:
    """The writer of label images (``fmt``), overlays and, with ``probabilities``, the probabilities."""
    return SegmentWriter(predictor.seg.masks == "instances", fmt, probabilities)


def prepare_memory(predictor: SegmentPredictor, item: InMemory) -> Any:
    """An in-memory image prepared as a file of its name is: normalised as the checkpoint was trained."""
    return predictor.prepare.image(native_pixels(item), item.name)


def file_pixels(item: InMemory, loaded: LoadedSegmenter) -> np.ndarray:
    """An in-memory image as (H, W, C) pixels as an image file holds them (its own type and channels)."""
    return native_pixels(item)


def result(source: str, prepared: Any, output: Any, loaded: LoadedSegmenter) -> Segmentation:
    """The API's result of one image: its labels at its own size."""
    instances = loaded.masks == "instances"
    if isinstance(prepared, Streamed):  # streamed to disk: the labels are read from there when indexed
        labels = lazy_array(output.labels)
        probs = None if output.probabilities is None else lazy_array(output.probabilities)
        return Segmentation(
            source,
            labels,
            output.foreground,
            instances,
            tuple(loaded.classes),
            probs,
            str(output.labels),
            output.objects,
        )
    labels, foreground, probs = output
    return Segmentation(source, labels, foreground, instances, tuple(loaded.classes), probs)


def lazy_array(path: Path) -> Any:
    """A read-only array view of a streamed output (a tiled BigTIFF or a zarr store) that reads only what is
    indexed: ``lazy_array(p)[0:512, 0:512]`` reads those rows and columns."""
    zarr = zarr_package()
    if path.suffix.lower() == ".zarr":
        return zarr.open(str(path), mode="r")
    return zarr.open(tifffile.imread(path, aszarr=True), mode="r")


def format_records(records: list[dict[str, Any]]) -> str:
    """The table of prediction records: each image's size, objects and foreground fraction."""
    return format_predictions([seg_prediction(r) for r in records])


def export_spec(path: Path, device: Any) -> ExportSpec:
    """The U-Net at its evaluation tile's input (any valid input edge with ``size``); one output, "logits"."""
    seg = load_segmenter(path, device=device)
    edge = tile_input(seg.model, seg.config.data.eval_tile)
    return ExportSpec(seg.model, seg.channels, (edge, edge), check_size=OutputTile(seg.model))


@dataclass(frozen=True)
class OutputTile:
    """A U-Net's export check: each input edge must be one it takes; says which output tile an input gives."""

    model: Any

    def __call__(self, size: tuple[int, int]) -> str:
        for edge in sorted(set(size)):
            up = int(self.model.valid_input_size(edge, round="up"))
            if up == edge:
                continue
            try:
                down = int(self.model.valid_input_size(edge, round="down"))
            except FovealError:
                down = None
            options = " or ".join(str(v) for v in (down, up) if v)
            raise FovealError(
                f"size {edge}: this U-Net cannot take a {edge}-px input; use {options}", options=("size",)
            )
        border = int(getattr(self.model, "border", 0))
        h, w = size[0] - 2 * border, size[1] - 2 * border
        return f"; a {size[0]}×{size[1]} input gives a {h}×{w} output tile (overlap-tile larger images)"
