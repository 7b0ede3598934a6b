"""The task table: what each task is, in one place.

A task is a row, a :class:`TaskSpec`: its config class and training, how a checkpoint of it loads for inference, its
batched predictor and writer (:mod:`foveal.inference.batch_predict`), its evaluation, explanation, ONNX export and
report section, and its defaults. The API (:mod:`foveal.api`), the command line, ``foveal predict``
(:mod:`foveal.tasks.predict`), ``foveal explain``, the reports and the demo look a task up here (:func:`task_spec`,
:func:`checkpoint_spec`); no other module compares a task's name or imports a task's module by name.

Each task has the same files: ``X.py`` (config, model build, loading for inference), ``X_train.py`` (training),
``X_predict.py`` (predictor, writer, the API's result), ``X_eval.py`` (evaluation) and ``X_explain.py``
(explanation). A new task is one such set of files and one row: a function below that imports them and returns the
row, named in :data:`foveal.tasks.names.TASK_NAMES`.

A row is made when its task is first looked up, so that loading a classifier imports no detector (torchvision's
detection ops import ``torch._dynamo``, about a second) and ``foveal --help`` imports no task at all: the one place
where this module imports inside functions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foveal.errors import FovealError
from foveal.tasks.names import NOUNS, TASK_NAMES

__all__ = ["TASK_NAMES", "TaskSpec", "all_specs", "checkpoint_spec", "spec_of_metrics", "task_spec"]


@dataclass(frozen=True)
class TaskSpec:
    """One task: its parts and defaults.

    Attributes:
        name: the task's name ("classify"), as checkpoints record it.
        noun: what a model of it is called in messages ("classifier").
        batch_size: images per forward pass when ``batch_size`` is not given.
        writes: what ``foveal predict`` writes into its output folder, in words.
        predict_options: the predictor's options (keywords of :attr:`predictor`, fields of
            :class:`foveal.tasks.predict.PredictRequest`): they make the outputs what they are (a resume repeats them).
        config: the task's config dataclass.
        train: ``train(config, run_dir=, resume=, device=)`` → the final validation metrics with "run_dir", "step".
        load: ``load(path, fast=, device=, precision=)`` → the checkpoint loaded for inference (``fast``: BatchNorm
            folded, channels-last; the predictors' form).
        predictor: ``predictor(loaded, **options)`` → the batched predictor.
        writer: ``writer(predictor, **options)`` → the writer of its results into an output folder.
        prepare_memory: ``prepare_memory(predictor, item)`` → an in-memory image (:class:`foveal.inference.inputs.
            InMemory`) prepared as the predictor prepares a file.
        file_pixels: ``file_pixels(item, loaded)`` → an in-memory image's (H, W, C) pixels as an image file holds
            them (for the functions that read files).
        result: ``result(source, prepared, output, loaded)`` → the API's typed result of one image.
        format_records: prediction records → the text table ``foveal predict`` prints.
        evaluate: ``evaluate(path, data, split, out, device=, precision=, **options)`` → the evaluation result.
        explain: ``explain(checkpoint, files, out_dir, options)`` → one explanation record per image.
        explain_options: the explanation options only this task takes (``map_stride`` …).
        export_spec: ``export_spec(path, device)`` → what ``export`` writes (:class:`foveal.inference.export.
            ExportSpec`).
        report_section: ``report_section(page, folder, metrics)`` → its evaluation's report section.
        metrics_keys: keys that mark a ``metrics.json`` as this task's (for folders without a run record).
        default_out: the output folder of ``foveal predict`` when none is given (None: a classifier's records go to
            ``json`` / ``csv`` files only).
        csv: ``csv(records, path)`` writes prediction records as a CSV file (None: the task has no CSV form).
        explained: what one row of its explanations is ("class"; a detector's: "detection").
    """

    name: str
    noun: str
    batch_size: int
    writes: str
    predict_options: tuple[str, ...]
    config: type[Any]
    train: Callable[..., dict[str, Any]]
    load: Callable[..., Any]
    predictor: Callable[..., Any]
    writer: Callable[..., Any]
    prepare_memory: Callable[[Any, Any], Any]
    file_pixels: Callable[[Any, Any], Any]
    result: Callable[[str, Any, Any, Any], Any]
    format_records: Callable[[list[dict[str, Any]]], str]
    evaluate: Callable[..., Any]
    explain: Callable[..., list[Any]]
    export_spec: Callable[[Path, Any], Any]
    report_section: Callable[[Any, Path, dict[str, Any]], None]
    metrics_keys: frozenset[str] = field(default_factory=frozenset)
    explain_options: tuple[str, ...] = ()
    default_out: str | None = "predictions"
    csv: Callable[[Any, str | Path], None] | None = None
    explained: str = "class"

    def options_of(self, source: Any) -> dict[str, Any]:
        """The predictor's options read from ``source`` (a request object or a mapping)."""
        if isinstance(source, Mapping):
            return {k: source[k] for k in self.predict_options if k in source}
        return {k: getattr(source, k) for k in self.predict_options}


def task_spec(task: str) -> TaskSpec:
    """The row of ``task``; an unknown task is a :class:`~foveal.errors.FovealError` naming the known ones."""
    if not isinstance(task, str) or task not in _ROWS:
        raise FovealError(f"unknown task {task!r}: use one of {', '.join(TASK_NAMES)}")
    return _row(task)


def checkpoint_spec(path: str | Path, role: str = "checkpoint") -> TaskSpec:
    """The row of the checkpoint at ``path`` (its record's task); a task foveal does not know is an error."""
    from foveal.engine.checkpoint import checkpoint_task

    task = checkpoint_task(path)
    if task not in _ROWS:
        raise FovealError(
            f"{role} {path} is a '{task}' checkpoint, which this version of foveal does not know: pass a "
            f"{', '.join(TASK_NAMES)} checkpoint"
        )
    return _row(task)


def all_specs() -> list[TaskSpec]:
    """Every row (each task's modules imported)."""
    return [_row(name) for name in TASK_NAMES]


def spec_of_metrics(metrics: Any) -> TaskSpec | None:
    """The task whose ``metrics.json`` ``metrics`` is, by its keys; None when no task's keys are all there."""
    if not isinstance(metrics, dict):
        return None
    return next((s for s in all_specs() if s.metrics_keys and s.metrics_keys <= metrics.keys()), None)


@functools.cache
def _row(task: str) -> TaskSpec:
    return _ROWS[task]()


def _classify() -> TaskSpec:
    from foveal.report import task_sections
    from foveal.tasks import classify, classify_eval, classify_explain, classify_predict, classify_train

    return TaskSpec(
        name=classify.TASK,
        noun=NOUNS[classify.TASK],
        batch_size=32,
        writes="predictions",
        predict_options=("top_k",),
        config=classify.ClassifyConfig,
        train=classify_train.train,
        load=classify.load_classifier,
        predictor=classify_predict.predictor,
        writer=classify_predict.writer,
        prepare_memory=classify_predict.prepare_memory,
        file_pixels=classify_predict.file_pixels,
        result=classify_predict.result,
        format_records=classify_predict.format_records,
        evaluate=classify_eval.evaluate_checkpoint,
        explain=classify_explain.explain_classifier,
        explain_options=("map_stride", "map_scales", "flip"),
        export_spec=classify_predict.export_spec,
        report_section=task_sections.classification_section,
        metrics_keys=frozenset(("confusion", "top1")),
        default_out=None,
        csv=classify_predict.write_predictions_csv,
    )


def _segment() -> TaskSpec:
    from foveal.report import task_sections
    from foveal.tasks import segment, segment_eval, segment_explain, segment_predict, segment_train

    return TaskSpec(
        name=segment.TASK,
        noun=NOUNS[segment.TASK],
        batch_size=1,
        writes="label images and overlays",
        predict_options=("tile", "tta", "fmt", "probabilities"),
        config=segment.SegmentConfig,
        train=segment_train.train,
        load=segment.load_segmenter,
        predictor=segment_predict.predictor,
        writer=segment_predict.writer,
        prepare_memory=segment_predict.prepare_memory,
        file_pixels=segment_predict.file_pixels,
        result=segment_predict.result,
        format_records=segment_predict.format_records,
        evaluate=segment_eval.evaluate_checkpoint,
        explain=segment_explain.explain_segmenter,
        export_spec=segment_predict.export_spec,
        report_section=task_sections.segmentation_section,
        metrics_keys=frozenset(("pixels", "summary")),
    )


def _detect() -> TaskSpec:
    from foveal.report import task_sections
    from foveal.tasks import detect, detect_eval, detect_explain, detect_predict, detect_train

    return TaskSpec(
        name=detect.TASK,
        noun=NOUNS[detect.TASK],
        batch_size=4,
        writes="detections",
        predict_options=("score_thresh", "show_thresh"),
        config=detect.DetectConfig,
        train=detect_train.train,
        load=detect.load_detector,
        predictor=detect_predict.predictor,
        writer=detect_predict.writer,
        prepare_memory=detect_predict.prepare_memory,
        file_pixels=detect_predict.file_pixels,
        result=detect_predict.result,
        format_records=detect_predict.format_records,
        evaluate=detect_eval.evaluate_checkpoint,
        explain=detect_explain.explain_detector,
        export_spec=detect_predict.export_spec,
        report_section=task_sections.detection_section,
        metrics_keys=frozenset(("AP50", "per_class")),
        explained="detection",
    )


_ROWS: dict[str, Callable[[], TaskSpec]] = dict(zip(TASK_NAMES, (_classify, _segment, _detect), strict=True))
