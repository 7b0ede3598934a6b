"""The Python API: ``foveal.load(path)`` gives a model with ``predict``, ``evaluate``, ``explain`` and ``export``;
``foveal.train(task, config, **overrides)`` trains one.

::

    import foveal

    model = foveal.load("runs/classify-cpu")             # a Classifier, Segmenter or Detector, by the checkpoint
    best = model.predict("shirt.png")[0]                  # Classification: .label, .score, .topk
    metrics = model.evaluate()                            # the metrics `foveal eval` prints and writes
    model.export("model.onnx")                            # ONNX, checked against onnxruntime

The models run the checkpoint's inference copy (BatchNorm folded into the convolutions, channels-last, Winograd
convolutions on the CPU in fp32, weights in ``precision``), and the first model made keeps freed tensor memory in the
process for reuse (:func:`foveal.engine.allocator.keep_freed_memory`, as the command line does; the process then holds
its peak memory, and ``FOVEAL_MALLOC=default`` leaves malloc alone), so a model predicts as fast as ``foveal predict``.
The network is loaded on first use (``predict`` or ``.model``); ``evaluate``, ``explain`` and ``export`` run the
command line's own functions on the checkpoint. Every error a caller can cause is a :class:`foveal.FovealError`.
"""

from __future__ import annotations

import contextlib
import json
import numbers
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from foveal import api_args as args
from foveal.errors import FovealError, missing_message, path_note
from foveal.io import missing_reason

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from foveal.inference.export import ExportReport, ExportSpec
    from foveal.inference.inputs import Images, InMemory
    from foveal.results import Classification, Detections, Explanation, Segmentation

__all__ = ["Classifier", "Detector", "Model", "Segmenter", "load", "train"]


class Model:
    """A trained checkpoint ready for inference (see the task's subclass).

    Attributes:
        path: the checkpoint folder or run directory it was loaded from.
        task: "classify", "segment" or "detect".
        device: where the network runs (``torch.device``).
        precision: "fp32", "bf16" or "fp16": the format the network's weights run in (inputs and results stay fp32).
        precision_reason: why that format runs, in words (e.g. "auto: bf16 is emulated on this CPU (AVX2, …)").
    """

    task: ClassVar[str]
    noun: ClassVar[str]
    batch_size: ClassVar[int]

    def __init__(
        self, path: str | Path, device: str | torch.device = "auto", precision: str | torch.dtype = "auto"
    ) -> None:
        from foveal.engine.allocator import keep_freed_memory
        from foveal.engine.checkpoint import checkpoint_task
        from foveal.engine.device import resolve_device, resolve_precision

        path = _checkpoint(path)
        device = args.device(device)
        task = checkpoint_task(path)
        if task != self.task:
            raise FovealError(
                f"checkpoint {path} is a '{task}' checkpoint, not a {self.noun}: load it with foveal.load, which "
                "picks the model of its task"
            )
        self.path = Path(path)
        self.device = resolve_device(device)
        placed = resolve_precision(precision, self.device)
        self.precision, self.precision_reason = placed.name, placed.reason
        self._asked = placed.requested  # what the loaders resolve again ("auto" keeps its reason in their records)
        self._loaded: Any = None
        self.metrics: dict[str, Any] | None = None  # the final validation metrics of a model made by train()
        keep_freed_memory()

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self.path}', device='{self.device}', precision='{self.precision}')"

    @property
    def loaded(self) -> Any:
        """The task's loaded checkpoint (``LoadedClassifier`` / ``LoadedSegmenter`` / ``LoadedDetector``)."""
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    @property
    def model(self) -> nn.Module:
        """The network as it runs for ``predict`` (eval mode, BatchNorm folded, on ``device`` in ``precision``)."""
        return self.loaded.model  # type: ignore[no-any-return]

    @property
    def classes(self) -> list[str]:
        """Class names; label k is ``classes[k]``."""
        return list(self.loaded.classes)

    def export(self, path: str | Path, size: Sequence[int] | None = None, opset: int = 17) -> ExportReport:
        """Write the network as ONNX to ``path`` (fp32, BatchNorm folded, dynamic batch axis) and check it against
        PyTorch with onnxruntime, as ``foveal export`` does.

        Args:
            path: the ``.onnx`` file (written whole or not at all).
            size: input H, or H and W (default: the task's, see :meth:`export_spec`).
            opset: ONNX operator set.

        Returns:
            The :class:`~foveal.inference.export.ExportReport` (file, input, outputs, max |onnx − torch|).
        """
        from foveal.inference.export import check_export_options, export_checked

        path = args.path(path, "path", "model.export('model.onnx')")
        sizes = args.numbers_of(size, "size", "size=224 or size=(224, 320)")
        if sizes is not None and not all(v == int(v) for v in sizes):
            raise FovealError(f"size={size!r}: give the input's H (and W) in whole pixels, e.g. size=224")
        edges = None if sizes is None else [int(v) for v in sizes]
        opset = args.integer(opset, "opset", 1, "opset=17")
        check_export_options(opset, edges)
        return export_checked(self.export_spec(), path, edges, opset)

    def export_spec(self) -> ExportSpec:
        """What :meth:`export` writes: the fp32 network, its input and its outputs."""
        raise NotImplementedError

    def explain(
        self,
        images: Images,
        out: str | Path | None = None,
        *,
        top_k: int = 5,
        method: str = "cam",
        threshold: float = 0.2,
        relative_to: str = "max",
        score_thresh: float | None = None,
        map_stride: int | None = None,
        map_scales: Sequence[float] | None = None,
        flip: bool = False,
    ) -> list[Explanation]:
        """CAM / Grad-CAM boxes of each image, as ``foveal explain`` computes them (see
        :func:`foveal.tasks.explain.explain` for the options; map_stride, map_scales and flip are for classifiers,
        score_thresh for detectors).

        Args:
            images: as for ``predict``; images in memory are written to lossless temporary files first.
            out: folder for the figures and ``explanations.json`` (None: nothing is kept, ``figures`` is empty).

        Returns:
            One :class:`~foveal.results.Explanation` per image, in order: classes, scores, boxes (x1, y1, x2, y2) in
            the image's pixels, and for classifiers the maps' peaks.
        """
        from foveal.tasks.explain import explain

        out = args.optional_path(out, "out", "out='explanations'")
        top_k = args.integer(top_k, "top_k", 1, "top_k=5")
        method = args.text(method, "method", ("cam", "gradcam"))
        threshold = args.number(threshold, "threshold", "threshold=0.2")
        relative_to = args.text(relative_to, "relative_to", ("max", "range"))
        score_thresh = args.optional_number(score_thresh, "score_thresh", "score_thresh=0.05")
        map_stride = args.optional_integer(map_stride, "map_stride", 1, "map_stride=2")
        scales = args.numbers_of(map_scales, "map_scales", "map_scales=(1, 2)")
        flip = args.flag(flip, "flip")
        with _as_files(images, self._file_pixels) as (inputs, names), _folder(out) as folder:
            records = explain(
                self.path,
                inputs,
                folder,
                top_k=top_k,
                method=method,
                threshold=threshold,
                relative_to=relative_to,
                score_thresh=score_thresh,
                map_stride=map_stride,
                map_scales=scales,
                flip=flip,
                device=self.device,
                precision=self._asked,
            )
        return [
            replace(r, file=names.get(r.file, r.file), figures=r.figures if out is not None else []) for r in records
        ]

    def predict(self, images: Images, batch_size: int | None = None, **options: Any) -> list[Any]:
        """Results of each image of ``images`` (files, folders, globs, list files, PIL images, arrays, tensors; see
        :mod:`foveal.inference.inputs`), in order, ``batch_size`` images per forward pass (default: the task's); see
        the subclass for the options and the result type."""
        from foveal.inference.inputs import InMemory, batches, gather

        size = args.optional_integer(batch_size, "batch_size", 1, "batch_size=8") or self.batch_size
        predictor = self._predictor(**options)
        results: list[Any] = []
        for chunk in batches(gather(images), size):
            prepared = [self._prepare(predictor, x) if isinstance(x, InMemory) else predictor.prepare(x) for x in chunk]
            for x, p, r in zip(chunk, prepared, predictor.predict_batch(prepared), strict=True):
                results.append(self._result(x.name if isinstance(x, InMemory) else str(x), p, r))
        return results

    def _load(self) -> Any:
        raise NotImplementedError

    def _file_pixels(self, item: InMemory) -> np.ndarray:
        """(H, W, C) pixels of an in-memory image as a file for the functions that read files."""
        from foveal.inference.inputs import uint8_pixels

        return uint8_pixels(item, self.loaded.channels).permute(1, 2, 0).numpy()

    def _predictor(self, **options: Any) -> Any:
        raise NotImplementedError

    def _prepare(self, predictor: Any, item: InMemory) -> Any:
        raise NotImplementedError

    def _result(self, source: str, prepared: Any, result: Any) -> Any:
        raise NotImplementedError


class Classifier(Model):
    """An EfficientNet classifier: ``predict`` gives :class:`~foveal.results.Classification` (top-k classes)."""

    task, noun, batch_size = "classify", "classifier", 32

    def predict(  # type: ignore[override]
        self, images: Images, top_k: int = 5, *, batch_size: int | None = None
    ) -> list[Classification]:
        """The ``top_k`` classes of each image (see :meth:`Model.predict` for ``images`` and ``batch_size``)."""
        return super().predict(images, batch_size, top_k=args.integer(top_k, "top_k", 1, "top_k=5"))

    def evaluate(
        self,
        data: str | Path | None = None,
        split: str = "test",
        out: str | Path | None = None,
        *,
        boxes: str | Path | None = None,
        box_format: str | None = None,
        map_stride: int | None = None,
        map_scales: Sequence[float] | None = None,
        flip: bool = False,
    ) -> Any:
        """Top-1 / top-5 / per-class accuracy on ``data`` (default: the checkpoint's validation data), with ``out``
        also metrics.json, confusion.png and the most confident mistakes, as ``foveal eval`` writes them.

        With ``boxes`` (a box file of the images in ``data``): the weakly supervised localization errors and
        MaxBoxAccV2 instead (:func:`foveal.tasks.localize_eval.localization_eval_folder`).

        Returns:
            A :class:`~foveal.metrics.classification.ClassificationResult`, or with ``boxes`` a
            :class:`~foveal.tasks.localize_eval.LocalizationReport`.
        """
        folder, split, out = _data(data), args.text(split, "split", ("train", "val", "test")), _out(out)
        boxes = args.optional_path(boxes, "boxes", "boxes='boxes.csv'")
        box_format = args.optional_text(box_format, "box_format")
        map_stride = args.optional_integer(map_stride, "map_stride", 1, "map_stride=2")
        scales = args.numbers_of(map_scales, "map_scales", "map_scales=(1, 2)")
        flip = args.flag(flip, "flip")
        if boxes is None:
            if box_format is not None or map_stride is not None or scales is not None or flip:
                raise FovealError("box_format, map_stride, map_scales and flip apply to localization: pass boxes")
            from foveal.tasks.classify import evaluate_checkpoint

            return evaluate_checkpoint(self.path, folder, split, out, device=self.device, precision=self._asked)
        if folder is None:
            raise FovealError("boxes needs data: pass the folder that holds the box file's images, data='images/'")
        from foveal.tasks.localize_eval import localization_eval_folder

        return localization_eval_folder(
            self.path,
            folder,
            boxes,
            box_format=box_format,
            split=split,
            map_stride=map_stride,
            map_scales=scales,
            flip=flip,
            out=out,
        )

    def export_spec(self) -> ExportSpec:
        """The classifier at its resolution; one output, "logits" (N, K)."""
        from foveal.inference.export import ExportSpec
        from foveal.tasks.classify import load_classifier

        clf = load_classifier(self.path, device=self.device)
        return ExportSpec(clf.model, clf.channels, (clf.resolution, clf.resolution))

    def _load(self) -> Any:
        from foveal.tasks.classify import load_classifier

        return load_classifier(self.path, fuse=True, device=self.device, precision=self._asked)

    def _predictor(self, top_k: int = 5) -> Any:  # type: ignore[override]
        from foveal.tasks.classify import ClassifyPredictor

        return ClassifyPredictor(self.loaded, top_k)

    def _prepare(self, predictor: Any, item: InMemory) -> Any:
        from foveal.inference.inputs import uint8_pixels

        return predictor.prepare.image(uint8_pixels(item, self.loaded.channels))

    def _result(self, source: str, prepared: Any, result: Any) -> Classification:
        from foveal.results import Classification

        return Classification(source, tuple(result))


class Segmenter(Model):
    """A U-Net: ``predict`` gives :class:`~foveal.results.Segmentation` (labels at the image's size)."""

    task, noun, batch_size = "segment", "segmentation model", 1

    def predict(  # type: ignore[override]
        self,
        images: Images,
        tile: int | None = None,
        tta: str | None = None,
        probabilities: bool = False,
        *,
        batch_size: int | None = None,
    ) -> list[Segmentation]:
        """Each image segmented by overlap-tile inference (see :meth:`Model.predict` for ``images`` and
        ``batch_size``).

        Args:
            tile: output tile edge (default: the checkpoint's evaluation tile).
            tta: "none" or "dihedral" (average over the 8 rotations / flips; default: the checkpoint's).
            probabilities: also return the (H, W, K) soft-max probabilities.
        """
        return super().predict(
            images,
            batch_size,
            tile=args.optional_integer(tile, "tile", 1, "tile=100"),
            tta=args.optional_text(tta, "tta", ("none", "dihedral")),
            probabilities=args.flag(probabilities, "probabilities"),
        )

    def evaluate(self, data: str | Path | None = None, out: str | Path | None = None, tta: str | None = None) -> Any:
        """Pixel and instance metrics on ``data`` (an images/ + masks/ folder; default: the checkpoint's validation
        part), with ``out`` also metrics.json and figures, as ``foveal eval`` writes them.

        Returns:
            A :class:`~foveal.tasks.segment_eval.SegEvaluation`.
        """
        from foveal.tasks.segment_eval import evaluate_checkpoint

        tta = args.optional_text(tta, "tta", ("none", "dihedral"))
        return evaluate_checkpoint(
            self.path, _data(data), _out(out), tta=tta, device=self.device, precision=self._asked
        )

    def export_spec(self) -> ExportSpec:
        """The U-Net at its evaluation tile's input (any valid input edge with ``size``); one output, "logits"."""
        from foveal.inference.export import ExportSpec
        from foveal.tasks.segment import load_segmenter, tile_input

        seg = load_segmenter(self.path, device=self.device)
        edge = tile_input(seg.model, seg.config.data.eval_tile)
        return ExportSpec(seg.model, seg.channels, (edge, edge), check_size=_OutputTile(seg.model))

    def _load(self) -> Any:
        from foveal.tasks.segment import load_segmenter

        return load_segmenter(self.path, fast=True, device=self.device, precision=self._asked)

    def _predictor(  # type: ignore[override]
        self, tile: int | None = None, tta: str | None = None, probabilities: bool = False
    ) -> Any:
        from foveal.tasks.segment_eval import SegmentPredictor

        return SegmentPredictor(self.loaded, tile, tta, probabilities=probabilities)

    def _prepare(self, predictor: Any, item: InMemory) -> Any:
        from foveal.inference.inputs import native_pixels

        return predictor.prepare.image(native_pixels(item), item.name)

    def _file_pixels(self, item: InMemory) -> np.ndarray:
        from foveal.inference.inputs import native_pixels

        return native_pixels(item)

    def _result(self, source: str, prepared: Any, result: Any) -> Segmentation:
        from foveal.results import Segmentation
        from foveal.tasks.segment_eval import Streamed

        if isinstance(prepared, Streamed):
            raise FovealError(
                f"image {source} is too large to segment in memory: segment it with 'foveal predict', which streams "
                "it tile by tile into a BigTIFF or zarr label image"
            )
        labels, foreground, probs = result
        instances = self.loaded.masks == "instances"
        return Segmentation(source, labels, foreground, instances, tuple(self.loaded.classes), probs)


class Detector(Model):
    """A RetinaNet: ``predict`` gives :class:`~foveal.results.Detections` (boxes in the image's own pixels)."""

    task, noun, batch_size = "detect", "detector", 4

    def predict(  # type: ignore[override]
        self, images: Images, score_thresh: float | None = None, *, batch_size: int | None = None
    ) -> list[Detections]:
        """The detections of each image, by decreasing score (see :meth:`Model.predict` for ``images`` and
        ``batch_size``).

        Args:
            score_thresh: the lowest score kept (default: the checkpoint's inference setting, 0.05 in the paper).
        """
        thresh = args.optional_number(score_thresh, "score_thresh", "score_thresh=0.05")
        return super().predict(images, batch_size, score_thresh=thresh)

    def evaluate(self, data: str | Path | None = None, split: str | None = None, out: str | Path | None = None) -> Any:
        """COCO AP / AP50 / AP75 / S / M / L on ``data`` (COCO JSON or folder; default: the checkpoint's validation
        data), with ``out`` also metrics.json, detections.json and figures, as ``foveal eval`` writes them.

        Returns:
            A :class:`~foveal.metrics.detection.DetectionResult`.
        """
        from foveal.tasks.detect_eval import evaluate_checkpoint

        folder, split = _data(data), args.optional_text(split, "split")
        return evaluate_checkpoint(self.path, folder, split, _out(out), device=self.device, precision=self._asked)

    def export_spec(self) -> ExportSpec:
        """The network without post-processing: outputs cls_logits (N, A, K), box_deltas (N, A, 4), anchors (A, 4)."""
        from foveal.inference.export import DETECTOR_OUTPUTS, DetectorGraph, ExportSpec
        from foveal.tasks.detect_eval import load_detector

        det = load_detector(self.path, fast=False, device=self.device)
        edge = -(-det.min_size // 32) * 32
        note = (
            "; resize and normalise outside the graph, post-process its outputs (foveal.models.retinanet.postprocess)"
        )
        return ExportSpec(DetectorGraph(det.model), det.channels, (edge, edge), DETECTOR_OUTPUTS, ("anchors",), note)

    def _load(self) -> Any:
        from foveal.tasks.detect_eval import load_detector

        return load_detector(self.path, device=self.device, precision=self._asked)

    def _predictor(self, score_thresh: float | None = None) -> Any:  # type: ignore[override]
        from foveal.tasks.detect_eval import DetectPredictor

        return DetectPredictor(self.loaded, score_thresh)

    def _prepare(self, predictor: Any, item: InMemory) -> Any:
        from foveal.inference.inputs import uint8_pixels

        return predictor.prepare.image(uint8_pixels(item, self.loaded.channels))

    def _result(self, source: str, prepared: Any, result: Any) -> Detections:
        from foveal.results import Detections

        size = (int(prepared[0].shape[-2]), int(prepared[0].shape[-1]))
        labels = result["labels"].numpy()
        names = tuple(self.loaded.classes[k] for k in labels.tolist())
        return Detections(source, size, result["boxes"].numpy(), result["scores"].numpy(), labels, names)


@dataclass(frozen=True)
class _OutputTile:
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
            raise FovealError(f"--size {edge}: this U-Net cannot take a {edge}-px input; use {options}")
        border = int(getattr(self.model, "border", 0))
        h, w = size[0] - 2 * border, size[1] - 2 * border
        return f"; a {size[0]}×{size[1]} input gives a {h}×{w} output tile (overlap-tile larger images)"


#: The model of each task.
MODELS: dict[str, type[Model]] = {"classify": Classifier, "segment": Segmenter, "detect": Detector}


def load(path: str | Path, device: str | torch.device = "auto", precision: str | torch.dtype = "auto") -> Model:
    """The model of a checkpoint folder or run directory (its best, else latest, checkpoint).

    Args:
        path: checkpoint folder or run directory.
        device: ``auto`` (CUDA when there is one), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (fp32), ``fp32``, ``bf16`` (fast on CPUs with AMX / AVX512-BF16 and on GPUs; warned
            about where it is emulated) or ``fp16`` (CUDA) for the network; ``torch.float32`` / ``bfloat16`` /
            ``float16`` name the same.

    Returns:
        A :class:`Classifier`, :class:`Segmenter` or :class:`Detector`, by the checkpoint's task.

    Raises:
        FovealError: no checkpoint there, a damaged one, or one of another task; a device this machine lacks; an
            unknown precision (also one that is not a name or a torch dtype).
    """
    from foveal.engine.checkpoint import checkpoint_task

    path = _checkpoint(path)
    device = args.device(device)
    task = checkpoint_task(path)
    cls = MODELS.get(task)
    if cls is None:
        raise FovealError(
            f"checkpoint {path} is a '{task}' checkpoint, not a classifier, U-Net or detector: pass a classify, "
            "segment or detect checkpoint"
        )
    return cls(path, device=device, precision=precision)


# -- training ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trainer:
    """Where a task's training lives: the module and name of its config class, and the module whose ``train`` runs
    it."""

    config_module: str
    config: str
    train_module: str


#: The training of each task.
TRAINERS = {
    "classify": Trainer("foveal.tasks.classify", "ClassifyConfig", "foveal.tasks.classify_train"),
    "segment": Trainer("foveal.tasks.segment", "SegmentConfig", "foveal.tasks.segment_train"),
    "detect": Trainer("foveal.tasks.detect", "DetectConfig", "foveal.tasks.detect_train"),
}


@dataclass(frozen=True)
class TrainPlan:
    """A training to run: the task, its checked config and the run directory (``resume``: continue the run there)."""

    task: str
    config: Any
    run_dir: Path
    resume: bool = False


def plan_training(
    task: str,
    config: str | Path | None = None,
    out: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    overrides: Sequence[str] = (),
    device: str | None = None,
) -> TrainPlan:
    """Check a training before it starts: the config (a YAML path or a bundled recipe such as ``classify_cpu``, with
    ``key=value`` overrides), the config's ``train.device`` when no ``device`` is given, ``train.precision``, and the
    run directory (``out``, default the config's ``out``); ``resume`` continues the run in that directory with its
    stored config."""
    import importlib

    from foveal.config import load_config, recipe_path
    from foveal.io import writable_dir

    if not isinstance(task, str) or task not in TRAINERS:
        raise FovealError(f"unknown task {task!r}: train one of {', '.join(TRAINERS)}")
    trainer = TRAINERS[task]
    config_cls = getattr(importlib.import_module(trainer.config_module), trainer.config)
    if resume is not None:
        if overrides or config is not None:
            raise FovealError("--resume continues a run with its stored config: drop --config and key=value overrides")
        return TrainPlan(task, config_cls(), Path(resume), resume=True)
    cfg = load_config(config_cls, recipe_path(None if config is None else str(config), task), list(overrides))
    from foveal.engine.device import resolve_device, resolve_precision

    # the device (the config's train.device when none is given) and the precision, checked before the run directory
    # is made (a bf16 the device emulates is warned about here)
    resolve_precision(cfg.train.precision_name, resolve_device(device or cfg.train.device), training=True)
    run_dir = Path(out or cfg.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise FovealError(f"run directory {run_dir} is a file: pass a folder with --out (it is created if missing)")
    writable_dir(run_dir, "run directory")
    if run_dir.exists() and any((run_dir / "checkpoints").glob("step-*")) and not overwrite:
        raise FovealError(
            f"run directory {run_dir} already holds checkpoints: continue it with --resume {run_dir}, choose another "
            "--out, or pass --overwrite to train over it"
        )
    return TrainPlan(task, cfg, run_dir)


def run_training(plan: TrainPlan, device: str | torch.device | None = None) -> dict[str, Any]:
    """Run ``plan``; returns the final validation metrics with "run_dir" and "step" (``device`` None: the config's
    ``train.device``)."""
    import importlib

    module = importlib.import_module(TRAINERS[plan.task].train_module)
    if plan.resume:
        return module.train(plan.config, resume=plan.run_dir, device=device)  # type: ignore[no-any-return]
    return module.train(plan.config, run_dir=plan.run_dir, device=device)  # type: ignore[no-any-return]


def train(
    task: str,
    config: str | Path | None = None,
    out: str | Path | None = None,
    *,
    resume: str | Path | None = None,
    device: str | None = None,
    overwrite: bool = False,
    **overrides: Any,
) -> Model:
    """Train a model, as ``foveal train`` does, and return it loaded (its ``metrics`` are the final validation's).

    Args:
        task: "classify", "segment" or "detect".
        config: a YAML file or a bundled recipe (``classify_cpu``, ``segment_demo``, …; default: the paper's).
        out: the run directory (default: the config's ``out``).
        resume: continue the interrupted run in this directory exactly (no config, no overrides).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (default: the config's ``train.device``).
        overwrite: train into a run directory that already holds checkpoints.
        overrides: config keys, with ``__`` for the dot: ``train__max_steps=100, data__train="my_data/"``.

    Example::

        model = foveal.train("classify", "classify_cpu", out="runs/x", train__max_steps=200)
    """
    task = args.text(task, "task", tuple(TRAINERS))
    config = args.optional_path(config, "config", "config='classify_cpu' or config='my_recipe.yaml'")
    out = args.optional_path(out, "out", "out='runs/classify'")
    resume = args.optional_path(resume, "resume", "resume='runs/classify'")
    device, overwrite = args.device(device), args.flag(overwrite, "overwrite")
    pairs = [_override(k, v) for k, v in overrides.items()]
    plan = plan_training(task, config, out, resume=resume, overwrite=overwrite, overrides=pairs, device=device)
    metrics = run_training(plan, device=device)
    model = load(metrics.get("run_dir", plan.run_dir), device=device or "auto")
    model.metrics = {k: v for k, v in metrics.items() if k != "run_dir"}
    return model


# -- helpers ----------------------------------------------------------------------------------------------------------
def _checkpoint(path: Any) -> Path:
    """The checkpoint path argument, checked to be a path (that it exists is checked where it is loaded)."""
    return args.path(path, "path", "foveal.load('runs/classify-cpu')")


def _data(data: Any) -> str | None:
    """The ``data`` argument of ``evaluate``: a dataset name or folder (None: the checkpoint's validation data)."""
    folder = args.optional_path(data, "data", "data='my_images/'")
    if folder is None or folder.exists():
        return None if folder is None else str(folder)
    text = str(data)
    if path_note(folder) or "/" in text or os.sep in text:  # a path, not a bundled dataset's name
        fix = "pass an existing dataset folder or file, or the name of a bundled dataset"
        raise FovealError(missing_message("data", folder, missing_reason(folder), fix))
    return text


def _out(out: Any) -> Path | None:
    return args.optional_path(out, "out", "out='eval'")


def _scalar(value: Any) -> Any:
    """A numpy or torch number as a Python one, for JSON."""
    if isinstance(value, numbers.Number) and hasattr(value, "item"):
        return value.item()
    raise TypeError(type(value).__name__)


def _override(key: str, value: Any) -> str:
    """``train(**overrides)``'s ``key=value`` as the command line's ``section.key=value``."""
    if isinstance(value, str):
        return f"{key.replace('__', '.')}={value}"
    try:
        return f"{key.replace('__', '.')}={json.dumps(value, default=_scalar)}"
    except (TypeError, ValueError):
        raise FovealError(
            f"{key}={value!r:.60} ({type(value).__name__}): pass a str, number, bool, None, or a list of them"
        ) from None


@contextlib.contextmanager
def _as_files(
    images: Images, pixels_of: Callable[[InMemory], np.ndarray]
) -> Iterator[tuple[list[str], dict[str, str]]]:
    """Paths of ``images`` for the functions that read files: paths as they are, in-memory images written losslessly
    (``pixels_of`` them: PNG for 8-bit gray or RGB, TIFF otherwise) to a temporary folder; with the map of those files
    back to the images' names."""
    from foveal.inference.inputs import InMemory, gather

    items = gather(images)
    with tempfile.TemporaryDirectory(prefix="foveal-images-") as tmp:
        paths, names = [], {}
        for i, x in enumerate(items):
            if isinstance(x, InMemory):
                path = _write_lossless(pixels_of(x), Path(tmp) / f"image-{i}")
                paths.append(str(path))
                names[str(path)] = x.name
            else:
                paths.append(str(x))
        yield paths, names


def _write_lossless(pixels: np.ndarray, stem: Path) -> Path:
    """``pixels`` (H, W, C) as ``stem``.png (uint8, 1 or 3 channels) or ``stem``.tif (any other), exactly."""
    import numpy as np
    from PIL import Image

    flat = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    if pixels.dtype == np.uint8 and pixels.shape[-1] in (1, 3):
        Image.fromarray(np.ascontiguousarray(flat)).save(stem.with_suffix(".png"))
        return stem.with_suffix(".png")
    import tifffile

    photometric = "rgb" if flat.ndim == 3 and flat.shape[-1] == 3 else "minisblack"
    tifffile.imwrite(stem.with_suffix(".tif"), flat, photometric=photometric)
    return stem.with_suffix(".tif")


@contextlib.contextmanager
def _folder(out: str | Path | None) -> Iterator[str | Path]:
    if out is not None:
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="foveal-explain-") as tmp:
        yield Path(tmp) / "explanations"
