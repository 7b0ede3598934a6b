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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from foveal import api_args as args
from foveal.engine.allocator import keep_freed_memory
from foveal.engine.device import resolve_device, resolve_precision
from foveal.errors import FovealError, missing_message, path_note
from foveal.inference.batch_predict import Item, Streamed
from foveal.inference.export import ExportReport, ExportSpec, check_export_options, export_checked
from foveal.inference.inputs import Images, InMemory, as_files, batches, gather
from foveal.io import missing_reason, writable_dir
from foveal.tasks.explain_common import check_options
from foveal.tasks.table import TASK_NAMES, TaskSpec, checkpoint_spec, task_spec
from foveal.tasks.training_plan import plan_training, run_training

if TYPE_CHECKING:
    from foveal.results import (
        Classification,
        ClassificationResult,
        DetectionResult,
        Detections,
        Explanation,
        LocalizationReport,
        SegEvaluation,
        Segmentation,
    )

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

    kind: ClassVar[str | None] = None  # the task of a typed subclass (None: any task)

    def __init__(
        self, path: str | Path, device: str | torch.device = "auto", precision: str | torch.dtype = "auto"
    ) -> None:
        path = _checkpoint(path)
        device = args.device(device)
        self.spec: TaskSpec = checkpoint_spec(path)
        if self.kind is not None and self.spec.name != self.kind:
            raise FovealError(
                f"checkpoint {path} is a '{self.spec.name}' checkpoint, not a {task_spec(self.kind).noun}: load it "
                "with foveal.load, which picks the model of its task"
            )
        self.path = Path(path)
        self.task = self.spec.name
        self.batch_size = self.spec.batch_size
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
        path = args.path(path, "path", "model.export('model.onnx')")
        sizes = args.numbers_of(size, "size", "size=224 or size=(224, 320)")
        if sizes is not None and not all(v == int(v) for v in sizes):
            raise FovealError(f"size={size!r}: give the input's H (and W) in whole pixels, e.g. size=224")
        edges = None if sizes is None else [int(v) for v in sizes]
        opset = args.integer(opset, "opset", 1, "opset=17")
        check_export_options(opset, edges)
        return export_checked(self.export_spec(), path, edges, opset)

    def export_spec(self) -> ExportSpec:
        """What :meth:`export` writes: the fp32 network, its input and its outputs (see the task's ``export_spec``:
        a classifier at its resolution with one output "logits"; a U-Net at its evaluation tile's input; a detector
        without post-processing, outputs cls_logits, box_deltas and anchors)."""
        return self.spec.export_spec(self.path, self.device)  # type: ignore[no-any-return]

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
        :class:`foveal.tasks.explain_common.ExplainOptions` for the options; map_stride, map_scales and flip are for
        classifiers, score_thresh for detectors).

        Args:
            images: as for ``predict``; images in memory are written to lossless temporary files first.
            out: folder for the figures and ``explanations.json`` (None: nothing is kept, ``figures`` is empty).

        Returns:
            One :class:`~foveal.results.Explanation` per image, in order: classes, scores, boxes (x1, y1, x2, y2) in
            the image's pixels, and for classifiers the maps' peaks.
        """
        from foveal.tasks.explain import explain  # deferred: it imports every task's explainer

        out = args.optional_path(out, "out", "out='explanations'")
        options = check_options(
            args.integer(top_k, "top_k", 1, "top_k=5"),
            args.text(method, "method", ("cam", "gradcam")),
            args.number(threshold, "threshold", "threshold=0.2"),
            args.text(relative_to, "relative_to", ("max", "range")),
            args.optional_number(score_thresh, "score_thresh", "score_thresh=0.05"),
            args.optional_integer(map_stride, "map_stride", 1, "map_stride=2"),
            args.numbers_of(map_scales, "map_scales", "map_scales=(1, 2)"),
            args.flag(flip, "flip"),
        )
        options = replace(options, device=str(self.device), precision=self._asked)
        with as_files(images, self._file_pixels) as (inputs, names), _folder(out) as folder:
            records = explain(self.path, inputs, folder, options)
        return [
            replace(r, file=names.get(r.file, r.file), figures=r.figures if out is not None else []) for r in records
        ]

    def predict(
        self, images: Images, batch_size: int | None = None, out: str | Path | None = None, **options: Any
    ) -> list[Any]:
        """Results of each image of ``images`` (files, folders, globs, list files, PIL images, arrays, tensors; see
        :mod:`foveal.inference.inputs`), in order, ``batch_size`` images per forward pass (default: the task's), by
        the batched predictor ``foveal predict`` runs; see the subclass for the options and the result type.

        ``out``: where an image too large for memory (a large TIFF, a zarr store; segmentation) is streamed to: a
        folder, or for one such image its labels file (``.tif`` or ``.zarr``)."""
        size = args.optional_integer(batch_size, "batch_size", 1, "batch_size=8") or self.batch_size
        target = None if out is None else _StreamTarget(args.path(out, "out", "out='labels.tif'"))
        predictor = self.spec.predictor(self.loaded, **options)
        writer = self.spec.writer(predictor, **options)
        items = gather(images)
        if target is not None:
            target.check(items)
        results: list[Any] = []
        for chunk in batches(items, size):
            prepared = [
                self.spec.prepare_memory(predictor, x) if isinstance(x, InMemory) else predictor.prepare(x)
                for x in chunk
            ]
            for x, p, r in zip(chunk, prepared, self._outputs(predictor, writer, chunk, prepared, target), strict=True):
                source = x.name if isinstance(x, InMemory) else str(x)
                results.append(self.spec.result(source, p, r, self.loaded))
        return results

    def _outputs(
        self, predictor: Any, writer: Any, chunk: list[Any], prepared: list[Any], target: _StreamTarget | None
    ) -> list[Any]:
        """The predictor's outputs of one chunk: one forward pass for those that batch, each streamed image streamed
        into ``target`` (an error without one)."""
        batched = [p for p in prepared if not isinstance(p, Streamed)]
        outputs = iter(predictor.predict_batch(batched) if batched else [])
        done = []
        for x, p in zip(chunk, prepared, strict=True):
            if not isinstance(p, Streamed):
                done.append(next(outputs))
                continue
            if target is None:
                raise FovealError(
                    f"image {x} is too large to hold in memory: pass out='labels.tif' (or a folder) and its labels "
                    "are streamed there tile by tile, or run 'foveal predict'",
                    options=("out",),
                )
            done.append(predictor.stream(p.path, writer.stream_targets(Item(0, p.path, p.path.stem), target)))
        return done

    def evaluate(self, data: str | Path | None = None, out: str | Path | None = None, **options: Any) -> Any:
        """The task's metrics on ``data`` (default: the checkpoint's validation data), with ``out`` also its files;
        see the subclass for the options and the result type."""
        return self.spec.evaluate(
            self.path, data=_data(data), out=_out(out), device=self.device, precision=self._asked, **options
        )

    def _load(self) -> Any:
        return self.spec.load(self.path, fast=True, device=self.device, precision=self._asked)

    def _file_pixels(self, item: InMemory) -> np.ndarray:
        """(H, W, C) pixels of an in-memory image as a file for the functions that read files."""
        return self.spec.file_pixels(item, self.loaded)  # type: ignore[no-any-return]


class Classifier(Model):
    """An EfficientNet classifier: ``predict`` gives :class:`~foveal.results.Classification` (top-k classes)."""

    kind = "classify"

    def predict(  # type: ignore[override]
        self, images: Images, top_k: int = 5, *, batch_size: int | None = None
    ) -> list[Classification]:
        """The ``top_k`` classes of each image (see :meth:`Model.predict` for ``images`` and ``batch_size``)."""
        return super().predict(images, batch_size, top_k=args.integer(top_k, "top_k", 1, "top_k=5"))

    def evaluate(  # type: ignore[override]
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
    ) -> ClassificationResult | LocalizationReport:
        """Top-1 / top-5 / per-class accuracy on ``data`` (default: the checkpoint's validation data), with ``out``
        also metrics.json, confusion.png and the most confident mistakes, as ``foveal eval`` writes them.

        With ``boxes`` (a box file of the images in ``data``): the weakly supervised localization errors and
        MaxBoxAccV2 instead (:func:`foveal.tasks.localize_eval.localization_eval_folder`).

        Returns:
            A :class:`~foveal.results.ClassificationResult`, or with ``boxes`` a
            :class:`~foveal.results.LocalizationReport`.
        """
        return super().evaluate(  # type: ignore[no-any-return]
            data,
            out,
            split=args.text(split, "split", ("train", "val", "test")),
            boxes=args.optional_path(boxes, "boxes", "boxes='boxes.csv'"),
            box_format=args.optional_text(box_format, "box_format"),
            map_stride=args.optional_integer(map_stride, "map_stride", 1, "map_stride=2"),
            map_scales=args.numbers_of(map_scales, "map_scales", "map_scales=(1, 2)"),
            flip=args.flag(flip, "flip"),
        )


class Segmenter(Model):
    """A U-Net: ``predict`` gives :class:`~foveal.results.Segmentation` (labels at the image's size)."""

    kind = "segment"

    def predict(  # type: ignore[override]
        self,
        images: Images,
        tile: int | None = None,
        tta: str | None = None,
        probabilities: bool = False,
        *,
        batch_size: int | None = None,
        out: str | Path | None = None,
    ) -> list[Segmentation]:
        """Each image segmented by overlap-tile inference (see :meth:`Model.predict` for ``images`` and
        ``batch_size``).

        Args:
            tile: output tile edge (default: the checkpoint's evaluation tile).
            tta: "none" or "dihedral" (average over the 8 rotations / flips; default: the checkpoint's).
            probabilities: also return the (H, W, K) soft-max probabilities.
            out: where an image too large for memory (a TIFF over 4096² pixels, a zarr store) is streamed, tile by
                tile with bounded memory, as ``foveal predict`` does: a folder (``<stem>_labels.tif``), or for one
                image its labels file (``labels.tif`` or ``labels.zarr``). Its result's ``labels`` then reads that
                file lazily and ``path`` names it.
        """
        return super().predict(
            images,
            batch_size,
            out,
            tile=args.optional_integer(tile, "tile", 1, "tile=100"),
            tta=args.optional_text(tta, "tta", ("none", "dihedral")),
            probabilities=args.flag(probabilities, "probabilities"),
        )

    def evaluate(  # type: ignore[override]
        self, data: str | Path | None = None, out: str | Path | None = None, tta: str | None = None
    ) -> SegEvaluation:
        """Pixel and instance metrics on ``data`` (an images/ + masks/ folder; default: the checkpoint's validation
        part), with ``out`` also metrics.json and figures, as ``foveal eval`` writes them.

        Returns:
            A :class:`~foveal.results.SegEvaluation`.
        """
        tta = args.optional_text(tta, "tta", ("none", "dihedral"))
        return super().evaluate(data, out, tta=tta)  # type: ignore[no-any-return]


class Detector(Model):
    """A RetinaNet: ``predict`` gives :class:`~foveal.results.Detections` (boxes in the image's own pixels)."""

    kind = "detect"

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

    def evaluate(  # type: ignore[override]
        self, data: str | Path | None = None, split: str | None = None, out: str | Path | None = None
    ) -> DetectionResult:
        """COCO AP / AP50 / AP75 / S / M / L on ``data`` (COCO JSON or folder; default: the checkpoint's validation
        data), with ``out`` also metrics.json, detections.json and figures, as ``foveal eval`` writes them.

        Returns:
            A :class:`~foveal.results.DetectionResult`.
        """
        return super().evaluate(data, out, split=args.optional_text(split, "split"))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class _StreamTarget:
    """Where ``predict(out=…)`` streams images too large for memory: a folder (files named as ``foveal predict``
    names them), or a labels file (``.tif`` / ``.tiff`` / ``.zarr``) for one image."""

    path: Path

    @property
    def is_file(self) -> bool:
        return self.path.suffix.lower() in (".tif", ".tiff", ".zarr")

    def check(self, items: list[Any]) -> None:
        """A labels file takes one image; its folder must exist."""
        if self.is_file and len(items) != 1:
            raise FovealError(
                f"out={str(self.path)!r} is one labels file, but {len(items)} images were given: pass a folder",
                options=("out",),
            )
        folder = self.path.parent if self.is_file else self.path
        writable_dir(folder, "output folder")
        folder.mkdir(parents=True, exist_ok=True)

    def staged(self, name: str) -> Path:
        """The path of output ``name`` (the labels file itself, or ``name`` beside it / in the folder)."""
        if self.is_file:
            return (
                self.path if "_labels." in name else self.path.with_name(f"{self.path.stem}{name[name.rfind('_') :]}")
            )
        return self.path / name


#: The typed model of each task that has one (a task without one loads as a :class:`Model`).
MODELS: dict[str, type[Model]] = {cls.kind: cls for cls in (Classifier, Segmenter, Detector) if cls.kind}


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
    path = _checkpoint(path)
    device = args.device(device)
    return MODELS.get(checkpoint_spec(path).name, Model)(path, device=device, precision=precision)


# -- training ---------------------------------------------------------------------------------------------------------
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
    task = args.text(task, "task", TASK_NAMES)
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
def _folder(out: str | Path | None) -> Iterator[str | Path]:
    if out is not None:
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="foveal-explain-") as tmp:
        yield Path(tmp) / "explanations"
