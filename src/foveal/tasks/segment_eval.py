"""Segmentation evaluation, prediction on new images, and the weight-map figure (the paper's Fig. 3).

Every prediction runs overlap-tile inference (:func:`foveal.inference.tiling.predict_tiled`): images of any size,
mirrored context at the image border, the same result as one pass over the whole mirror-padded image.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from foveal.engine.device import placement
from foveal.engine.runinfo import write_run_info
from foveal.errors import FovealError
from foveal.io import staged_output, writable_dir, write_json
from foveal.results import SegEvaluation
from foveal.tasks.segment import LoadedSegmenter, PostConfig, Prepared, attach_context, load_segmenter, prepare

TTA_MODES = ("none", "dihedral")


def predict_logits(
    model: nn.Module, image: Tensor, tile: int, batch: int = 2, progress: bool = False, tta: str = "none"
) -> Tensor:
    """Logits (K, H, W), fp32 on the CPU, of one image (C, H, W) by overlap-tile inference with output tiles of
    ``tile``, computed on the model's device in its dtype.

    ``tta="dihedral"``: the image is predicted in each of its 8 rotations / flips, each result mapped back, and the
    soft-max probabilities averaged; their logarithm is returned (a valid logit map: its arg-max and soft-max are
    those of the average).
    """
    from foveal.inference.tiling import predict_tiled

    if tta not in TTA_MODES:
        raise FovealError(f"unknown test-time augmentation {tta!r}: use 'none' or 'dihedral' (8 rotations / flips)")
    border, stride = int(model.border), int(model.stride)  # type: ignore[arg-type]

    def once(x: Tensor) -> Tensor:
        with torch.no_grad():
            return predict_tiled(model, x, tile, border=border, stride=stride, batch=batch, progress=progress)[0]

    param = next(model.parameters())
    image = image.to(param.device)
    if tta == "none":
        return once(image).float().cpu()
    total = torch.zeros(0)
    for flip in (False, True):
        for turns in range(4):
            x = image.flip(-1) if flip else image
            probs = once(torch.rot90(x, turns, (-2, -1))).float().softmax(0)
            probs = torch.rot90(probs, -turns, (-2, -1))
            probs = probs.flip(-1) if flip else probs
            total = probs if total.numel() == 0 else total + probs
    return (total / 8).clamp_min(1e-12).log().cpu()


def to_instances(classes: np.ndarray, post: PostConfig) -> np.ndarray:
    """Instance labels from a predicted class map (foreground = every class ≥ 1)."""
    from foveal.data.instances import instances_from_classes

    return instances_from_classes(classes > 0, min_size=post.min_size, expand=post.expand)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    samples: list[Prepared],
    num_classes: int,
    tile: int,
    post: PostConfig,
    with_rand: bool = True,
    progress: bool = False,
    on_image: Callable[[Prepared, np.ndarray, np.ndarray | None], None] | None = None,
) -> SegEvaluation:
    """Evaluate ``model`` on prepared samples (targets with separation borders as background, as trained);
    ``on_image(sample, predicted classes (H, W), predicted instances or None)`` sees each scored prediction."""
    from foveal.metrics.instances import InstanceMeter, merged_pairs
    from foveal.metrics.segmentation import SegmentationMeter, rand_error

    was_training = model.training
    model.eval()
    meter = SegmentationMeter(num_classes)
    inst = InstanceMeter()
    merged, touching, rand, has_instances = 0, 0, [], False
    for s in samples:
        if s.context is None:
            pred = predict_logits(model, s.image, tile, progress=progress, tta=post.tta).argmax(0)
        else:
            width = s.target.shape[1]
            logits = predict_logits(model, s.context, tile, progress=progress, tta=post.tta)
            pred = logits.argmax(0)[:, s.offset : s.offset + width]
        meter.update(pred, s.target)
        pred_inst = to_instances(pred.numpy(), post) if s.instances is not None else None
        if on_image is not None:
            on_image(s, pred.numpy(), pred_inst)
        if s.instances is not None and pred_inst is not None:
            has_instances = True
            inst.update(pred_inst, s.instances)
            m, t = merged_pairs(pred_inst, s.instances)
            merged, touching = merged + m, touching + t
            if with_rand:
                rand.append(rand_error(pred_inst, s.instances))
    model.train(was_training)
    return SegEvaluation(
        pixels=meter.result(),
        instances=inst.result() if has_instances else None,
        merged=(merged, touching) if has_instances else None,
        rand_error=float(np.mean(rand)) if rand else None,
    )


def evaluate_checkpoint(
    path: str | Path,
    data: str | None,
    out: str | Path | None,
    tta: str | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> SegEvaluation:
    """Evaluate a segmentation checkpoint on ``data`` (default: the validation part of its own training data) and
    write metrics.json to ``out``. ``tta`` overrides the checkpoint's ``post.tta`` ("none" or "dihedral"); the
    network runs on ``device`` in ``precision`` (see :func:`foveal.tasks.segment.load_segmenter`)."""
    from dataclasses import replace

    from foveal.data.segmentation import open_segmentation
    from foveal.tasks.segment import open_data

    out_dir = writable_dir(out) if out is not None else None
    seg = load_segmenter(path, fast=True, device=device, precision=precision)
    cfg = seg.config
    if data is None:
        _, dataset = open_data(cfg.data)
    else:
        dataset = open_segmentation(
            data, channels=seg.channels, masks=cfg.data.masks, num_classes=cfg.data.num_classes, normalize=seg.normalize
        )
    if dataset.channels != seg.channels:
        raise FovealError(
            f"dataset {data} has {dataset.channels}-channel images but the model takes {seg.channels}: "
            "evaluate on images like the training images"
        )
    if dataset.num_classes != len(seg.classes):
        raise FovealError(
            f"dataset {data} has {dataset.num_classes} classes but the checkpoint has {len(seg.classes)}: "
            "evaluate on masks with the classes the model was trained on"
        )
    samples = prepare(dataset, cfg.weights, len(seg.classes))
    if data is None:
        samples = attach_context(samples, cfg.data)
    post = cfg.post if tta is None else replace(cfg.post, tta=tta)
    started, kept = time.time(), list[tuple[Prepared, np.ndarray, np.ndarray | None]]()
    on_image = None if out_dir is None else lambda s, c, i: kept.append((s, c, i))
    result = evaluate(seg.model, samples, len(seg.classes), cfg.data.eval_tile, post, on_image=on_image)
    if out_dir is not None:
        write_json(out_dir / "metrics.json", result.to_dict())
        write_json(out_dir / "per_image.json", _image_figures(kept, out_dir))
        spec = data or cfg.data.val or cfg.data.train
        data_info = {"spec": spec, "images": len(samples), "pixels": int(sum(s.target.numel() for s in samples))}
        where = placement(device, precision)
        write_run_info(out_dir, "eval", started, task="segment", checkpoint=str(path), data=data_info, **where)
    return result


SHOWN_WORST, SHOWN_SAMPLE, WEIGHT_MAPS_SHOWN = 4, 4, 2


def _image_figures(kept: list[tuple[Prepared, np.ndarray, np.ndarray | None]], out: Path) -> list[dict[str, Any]]:
    """Per-image pixel and instance metrics; for the worst and a sample of the images (by F1 at IoU 0.5, else
    foreground IoU), the image / prediction / ground-truth panel (``images/``) and for a few the border weight map."""
    from foveal.metrics.instances import match_instances, merged_pairs
    from foveal.metrics.segmentation import SegmentationMeter
    from foveal.report.eval_figures import pick_shown, segmentation_panel
    from foveal.report.segmentation_plots import plot_weight_map_figure

    rows: list[dict[str, Any]] = []
    for s, classes, inst in kept:
        meter = SegmentationMeter(max(2, int(s.target.max()) + 1, int(classes.max()) + 1))
        meter.update(classes, s.target)
        row: dict[str, Any] = {"name": s.name, "fg_iou": meter.result().foreground_iou}
        if inst is not None and s.instances is not None:
            match = match_instances(inst, s.instances, (0.5,))
            row.update({"f1_50": match.f1_at(0.5), "instances": int(len(np.unique(s.instances[s.instances > 0])))})
            row["merged_pairs"], row["touching_pairs"] = merged_pairs(inst, s.instances)
        rows.append(row)
    keys = [r.get("f1_50", r["fg_iou"]) for r in rows]
    shown = pick_shown([-1.0 if k is None else float(k) for k in keys], SHOWN_WORST, SHOWN_SAMPLE)
    for rank, i in enumerate(shown):
        s, classes, inst = kept[i]
        image = s.image[0] if s.image.shape[0] == 1 else s.image[:3].permute(1, 2, 0)
        shown_image = image.numpy().astype(np.float64)
        shown_image = (shown_image - shown_image.min()) / max(float(np.ptp(shown_image)), 1e-12)
        true = s.instances if s.instances is not None else s.target.numpy().astype(np.int32)
        pred = inst if inst is not None else classes.astype(np.int32)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in s.name)
        path, outcome = segmentation_panel(shown_image, pred, true, out / "images" / f"{rank:02d}-{safe}.png")
        rows[i].update({"figure": str(path.relative_to(out)), **{k: len(v) for k, v in outcome.items()}})
        if rank < WEIGHT_MAPS_SHOWN and s.instances is not None:
            wpath = out / "images" / f"{rank:02d}-{safe}_weightmap.png"
            plot_weight_map_figure(shown_image, s.instances, s.weight.numpy(), wpath, title=f"{s.name}: border weights")
            rows[i]["weight_map"] = str(wpath.relative_to(out))
    return rows


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


@dataclass(frozen=True)
class Streamed:
    """An image segmented by streaming (:data:`STREAM_PIXELS`): only its path travels through the batches."""

    path: Path


def streams(path: Path, fmt: str) -> bool:
    """Whether ``path`` is segmented by streaming: a zarr store, or a TIFF that is large or goes to zarr labels."""
    from foveal.data.images import is_zarr_path
    from foveal.inference.stream import image_size

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
        from foveal.data.seg_io import load_seg_image

        if streams(path, self.fmt):
            from foveal.inference.stream import check_source

            check_source(path, self.channels)
            return Streamed(path)
        return load_seg_image(path, channels=self.channels, normalize=self.normalize)

    def image(self, pixels: np.ndarray, name: str) -> Tensor:
        """(H, W, C) pixels as an image file of ``name`` would hold them → (C, H, W) float32, normalised."""
        from foveal.data.seg_io import check_channels, to_float

        image = to_float(pixels, Path(name), self.normalize)
        check_channels([image], [Path(name)], self.channels)
        return image


class SegmentPredictor:
    """Overlap-tile segmentation (a :class:`foveal.inference.batch_predict.Predictor`): each result is the (H, W)
    int32 label image (instances for instance models, classes otherwise), the class map's foreground fraction and,
    with ``probabilities``, the soft-max probabilities (H, W, K). A streamed image's result is its :class:`Streamed`
    marker: :class:`SegmentWriter` segments it straight into its files.

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
        from foveal.tasks.segment import tile_input

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
    def predict_batch(self, prepared: Sequence[Tensor | Streamed]) -> list[Any]:
        results: list[Any] = []
        for image in prepared:  # images differ in size: each is one overlap-tile batch of its own
            if isinstance(image, Streamed):
                results.append(image)
                continue
            big = image.shape[-1] * image.shape[-2] > 2048**2
            logits = predict_logits(self.seg.model, image, self.tile, progress=big, tta=self.tta)
            cls = logits.argmax(0).numpy()
            instances = self.seg.masks == "instances"
            labels = to_instances(cls, self.seg.config.post) if instances else cls.astype(np.int32)
            probs = logits.float().softmax(0).permute(1, 2, 0).numpy() if self.probabilities else None
            results.append((labels, float((cls > 0).mean()), probs))
        return results

    def stream(self, path: Path, labels: Path, probabilities: Path | None) -> Any:
        """Segment a :class:`Streamed` image into ``labels`` (and ``probabilities``); a
        :class:`foveal.inference.stream.StreamResult`."""
        from foveal.inference.stream import segment_large

        if self.tta != "none":
            raise FovealError(
                f"image {path} is streamed (large TIFF or zarr), which runs without test-time augmentation: "
                "pass --tta none"
            )
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


class SegmentWriter:
    """Per image ``<stem>_labels.<fmt>`` (TIFF, 16-bit PNG or zarr), ``<stem>_overlay.png`` (not for streamed
    images), with ``probabilities`` ``<stem>_probabilities.tif|zarr`` (H, W, K) float32, and the record of a
    :class:`SegPrediction` (paths as published). ``streamer`` segments :class:`Streamed` images; one found unreadable
    while streamed gives the record ``{"error"}`` (skipped and listed)."""

    def __init__(
        self, instances: bool, fmt: str = "tif", probabilities: bool = False, streamer: SegmentPredictor | None = None
    ) -> None:
        if fmt not in LABEL_FORMATS:
            raise FovealError(f"unknown label format '{fmt}': use tif, png or zarr")
        self.instances, self.fmt, self.probabilities, self.streamer = instances, fmt, probabilities, streamer

    def _names(self, stem: str) -> tuple[str, str, str]:
        probs = f"{stem}_probabilities.{'zarr' if self.fmt == 'zarr' else 'tif'}"
        return f"{stem}_labels.{self.fmt}", f"{stem}_overlay.png", probs

    def write(self, item: Any, prepared: Any, result: Any, out: Any) -> dict[str, Any]:
        from foveal.data.seg_io import write_label_image
        from foveal.inference.stream import BandWriter, write_labels_streaming
        from foveal.report.segmentation_plots import plot_segmentation_overlay

        names = self._names(item.stem)
        if isinstance(result, Streamed):
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

    def _write_streamed(self, item: Any, result: Streamed, out: Any) -> dict[str, Any]:
        if self.fmt == "png":
            raise FovealError(
                f"image {item.path} is streamed (large TIFF or zarr): write its labels with --format tif or zarr"
            )
        if self.streamer is None:
            raise FovealError(f"image {item.path} is streamed, but this writer has no segmenter to stream it with")
        from foveal.inference.stream import SourceError

        names = self._names(item.stem)
        probs = out.staged(names[2]) if self.probabilities else None
        try:
            done = self.streamer.stream(result.path, out.staged(names[0]), probs)
        except SourceError as exc:  # found while reading it (a corrupt tile): skipped and listed, nothing of it kept
            return {"error": str(exc)}
        size = (done.height, done.width)
        row = SegPrediction(str(item.path), size, done.objects, done.foreground, str(out.published(names[0])), "")
        return {k: v for k, v in asdict(row).items() if k != "file"}

    def finish(self, records: Callable[[], Iterator[dict[str, Any]]], out: Any) -> None:
        """Nothing to assemble: every image has its own files."""


def predict(
    path: str | Path,
    inputs: list[str],
    out: str | Path,
    tile: int | None = None,
    fmt: str = "tif",
    tta: str | None = None,
    probabilities: bool = False,
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> list[SegPrediction]:
    """Segment each image of ``inputs`` (files, folders, globs, list files, zarr stores) and write
    :class:`SegmentWriter`'s files to ``out`` as one unit (:func:`foveal.io.staged_output`); an unreadable image is
    skipped and listed in ``errors.jsonl``. ``tta`` overrides the checkpoint's ``post.tta``; the network runs on
    ``device`` in ``precision`` (see :func:`foveal.tasks.segment.load_segmenter`). Large TIFF and zarr images
    (:data:`STREAM_PIXELS`) are streamed to a tiled BigTIFF or zarr array."""
    from foveal.inference.batch_predict import PREDICTIONS, iter_records, predict_stream

    predictor = SegmentPredictor(path, tile, tta, fmt, probabilities, device, precision)
    writer = SegmentWriter(predictor.seg.masks == "instances", fmt, probabilities, predictor)
    settings = {"checkpoint": str(path), "tile": predictor.tile, "format": fmt, "tta": predictor.tta}
    settings["probabilities"] = probabilities
    with staged_output(out) as staged:
        predict_stream(predictor, writer, [str(i) for i in inputs], staged, settings, batch_size=1, workers=0)
    return [seg_prediction(r) for r in iter_records(Path(out) / PREDICTIONS)]


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


def weightmap_figures(
    spec: str, out: str | Path, *, w0: float = 10.0, sigma: float = 5.0, limit: int = 4
) -> list[Path]:
    """The paper's Fig. 3 for the first ``limit`` images of a dataset with instance masks: image, instances, class
    mask with separation borders, and the weight map."""
    from foveal.data import weightmap
    from foveal.data.segmentation import open_segmentation
    from foveal.report.segmentation_plots import plot_weight_map_figure

    data = open_segmentation(spec, masks="instances")
    out_dir = writable_dir(out)
    paths = []
    for name, image, mask in list(zip(data.names, data.images, data.masks, strict=True))[:limit]:
        m = mask.numpy()
        w = weightmap.weight_map(m, w0=w0, sigma=sigma)
        img = image[0].numpy() if image.shape[0] == 1 else image[:3].permute(1, 2, 0).numpy()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        paths.append(
            plot_weight_map_figure(
                np.clip(img, 0, 1),
                m,
                w,
                out_dir / f"{safe}_weightmap.png",
                borders=weightmap.separation_borders(m),
                title=f"{name}: w0={w0:g}, σ={sigma:g}",
            )
        )
    return paths
