"""``foveal predict`` for every task: the task's batched predictor and writer run over a stream of images
(:mod:`foveal.inference.batch_predict`, or Ray Data with :mod:`foveal.inference.ray_predict`), the outputs written
into the ``--out`` folder as one unit (:func:`foveal.io.staged_output`).

Outputs per task (beside ``predictions.jsonl``, one record per image, and ``errors.jsonl`` when an image could not be
read): classify — ``predictions.csv``; segment — ``<stem>_labels.tif|png`` and ``<stem>_overlay.png`` per image;
detect — ``<stem>_detections.png`` per image, ``detections.json`` (COCO results) and ``images.json``.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foveal.errors import FovealError
from foveal.inference.batch_predict import (
    PREDICTIONS,
    Predictor,
    StreamSummary,
    Writer,
    iter_records,
    predict_stream,
    write_json_array,
)
from foveal.io import staged_output

#: Images per forward pass when ``batch_size`` is not given: small classifier inputs batch well; a detector's large
#: inputs less so; a U-Net predicts each image by overlap-tile batches of its own.
DEFAULT_BATCH = {"classify": 32, "detect": 4, "segment": 1}
_TABLE_LIMIT = 50  # longer streams print a summary line instead of a table


@dataclass(frozen=True)
class PredictRequest:
    """What ``foveal predict`` was asked.

    Attributes:
        checkpoint: checkpoint folder or run directory.
        inputs: image files, folders, glob patterns and list files (``.txt``: one path per line).
        out: output folder (None: ``predictions`` for segment / detect; classify then writes only ``json`` / ``csv``).
        top_k: classify: classes per image. tile, fmt, tta: segment (see :class:`SegmentPredictor`).
        batch_size: images per forward pass (None: :data:`DEFAULT_BATCH`). workers: decoding processes.
        resume: continue the interrupted run in ``out``. strict: stop at the first unreadable image.
        json, csv: also write the records as a JSON array / (classify) a CSV file here, atomically.
        ray: run on Ray Data: "local" (a local instance) or a cluster address; None: this process.
        device, precision: where and in which number format the network runs (:mod:`foveal.engine.device`).
    """

    checkpoint: str
    inputs: tuple[str, ...]
    out: str | None = None
    top_k: int = 5
    tile: int | None = None
    fmt: str = "tif"
    probabilities: bool = False
    tta: str | None = None
    batch_size: int | None = None
    workers: int | None = None
    resume: bool = False
    strict: bool = False
    json: str | None = None
    csv: str | None = None
    ray: str | None = None
    progress: bool | None = None
    device: str = "auto"
    precision: str = "fp32"


def build(task: str, req: PredictRequest) -> tuple[Predictor, Writer]:
    """The predictor and writer of ``task`` for ``req`` (another task is loaded as a classifier, which names it)."""
    if task == "detect":
        from foveal.tasks.detect_eval import DetectPredictor, DetectWriter

        det = DetectPredictor(req.checkpoint, device=req.device, precision=req.precision)
        return det, DetectWriter(det.det.classes, det.det.categories)
    if task == "segment":
        from foveal.tasks.segment_eval import SegmentPredictor, SegmentWriter

        seg = SegmentPredictor(req.checkpoint, req.tile, req.tta, req.fmt, req.probabilities, req.device, req.precision)
        return seg, SegmentWriter(seg.seg.masks == "instances", req.fmt, req.probabilities, seg)
    from foveal.tasks.classify import ClassifyPredictor, ClassifyWriter

    return ClassifyPredictor(req.checkpoint, req.top_k, req.device, req.precision), ClassifyWriter()


@dataclass(frozen=True)
class _Factory:
    """``build(task, req)`` as a picklable callable (sent to Ray actors)."""

    task: str
    req: PredictRequest

    def __call__(self) -> tuple[Predictor, Writer]:
        return build(self.task, self.req)


def _check(task: str, req: PredictRequest) -> None:
    if req.tta is not None and task != "segment":
        raise FovealError(f"--tta applies to segmentation checkpoints; {req.checkpoint} is a '{task}' checkpoint")
    if req.csv is not None and task != "classify":
        raise FovealError(f"--csv applies to classifiers; {req.checkpoint} is a '{task}' checkpoint (use --json)")
    if req.resume and req.out is None and task == "classify":
        raise FovealError("--resume continues the run in an --out folder: pass the --out of the interrupted run")
    if req.ray is not None and req.workers is not None:
        raise FovealError("--workers applies to this process; with --ray, Ray runs one predictor per CPU")


def _settings(task: str, req: PredictRequest) -> dict[str, Any]:
    """What makes the outputs what they are (a resume must repeat it)."""
    keep = {"classify": ("top_k",), "segment": ("tile", "fmt", "tta", "probabilities"), "detect": ()}[task]
    return {
        "task": task,
        "checkpoint": str(Path(req.checkpoint).resolve()),
        "inputs": list(req.inputs),
        "batch_size": req.batch_size or DEFAULT_BATCH[task],
        **{k: getattr(req, k) for k in keep},
    }


@dataclass(frozen=True)
class PredictOutcome:
    """What a ``foveal predict`` run did: the stream's summary and, for short streams, a table of the results."""

    task: str
    summary: StreamSummary
    table: str
    out: str | None


def run_predict(req: PredictRequest) -> PredictOutcome:
    """Run ``req`` (see the module docstring for the outputs)."""
    from foveal.engine.checkpoint import checkpoint_task

    task = checkpoint_task(req.checkpoint)
    _check(task, req)
    predictor, writer = build(task, req)
    batch = req.batch_size or DEFAULT_BATCH[task]
    out = req.out if req.out is not None or task == "classify" else "predictions"
    with _folder(out) as folder, staged_output(folder, resume=req.resume, keep_on_error=out is not None) as staged:
        settings = _settings(task, req)
        if req.ray is not None:
            from foveal.inference.ray_predict import predict_on_ray

            address = None if req.ray == "local" else req.ray
            summary = predict_on_ray(
                _Factory(task, req),
                writer,
                req.inputs,
                staged,
                settings,
                address=address,
                batch_size=batch,
                strict=req.strict,
                progress=req.progress,
            )
        else:
            summary = predict_stream(
                predictor,
                writer,
                req.inputs,
                staged,
                settings,
                batch_size=batch,
                workers=req.workers,
                strict=req.strict,
                progress=req.progress,
            )
        records = staged.staged(PREDICTIONS)
        if req.json:
            write_json_array(req.json, iter_records(records))
        if req.csv:
            from foveal.tasks.classify import write_predictions_csv

            write_predictions_csv(iter_records(records), req.csv)
        table = format_records(task, iter_records(records)) if summary.total <= _TABLE_LIMIT else ""
    return PredictOutcome(task, summary, table, out)


@contextlib.contextmanager
def _folder(out: str | None) -> Iterator[str]:
    """``out``, or a temporary folder for a classifier run that writes only ``--json`` / ``--csv``."""
    if out is not None:
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="foveal-predict-") as tmp:
        yield tmp


def format_records(task: str, records: Iterator[dict[str, Any]]) -> str:
    """The task's text table of prediction records."""
    if task == "classify":
        from foveal.report.tables import Prediction, format_table

        preds = [
            Prediction(r["file"], [(p["index"], p["class"], p["probability"]) for p in r["predictions"]])
            for r in records
        ]
        return format_table(preds)
    if task == "detect":
        from foveal.tasks.detect_eval import format_predictions

        return format_predictions(list(records))
    from foveal.tasks.segment_eval import format_predictions as format_rows
    from foveal.tasks.segment_eval import seg_prediction

    return format_rows([seg_prediction(r) for r in records])
