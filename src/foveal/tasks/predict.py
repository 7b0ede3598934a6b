"""``foveal predict`` for every task: the task's batched predictor and writer run over a stream of images
(:mod:`foveal.inference.batch_predict`, or Ray Data with :mod:`foveal.inference.ray_predict`), the outputs written
into the ``--out`` folder as one unit (:func:`foveal.io.staged_output`).

Outputs per task (beside ``predictions.jsonl``, one record per image, and ``errors.jsonl`` when an image could not be
read): classify — ``predictions.csv``; segment — ``<stem>_labels.tif|png`` and ``<stem>_overlay.png`` per image;
detect — ``<stem>_detections.png`` per image, ``detections.json`` (COCO results) and ``images.json``.

An image that fails is skipped and listed (``errors.jsonl``; its reason comes back in :attr:`PredictOutcome.reasons`
for the caller to print, for every such image when no ``--out`` folder keeps the list): the run succeeds when at least
one image was predicted and its summary counts only those; when none could be, it fails and publishes nothing. An
``--out`` folder belongs to one model: predicting into a folder that holds another model's predictions, or another
command's outputs, is refused unless ``overwrite`` (the other model's predictions are then removed when the run
succeeds); ``--resume`` of a run that had finished reports it and changes nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foveal.data.images import IMAGE_OPTIONS
from foveal.errors import FovealError
from foveal.inference.batch_predict import (
    ERRORS,
    PREDICTIONS,
    RECORDS,
    Predictor,
    StreamSummary,
    Writer,
    iter_records,
    nothing_predicted,
    predict_stream,
    write_json_array,
)
from foveal.io import STAGING_NAME, StagedOutput, folder_owner, staged_output
from foveal.tasks.table import TaskSpec, all_specs, checkpoint_spec, task_spec

_TABLE_LIMIT = 50  # longer streams print a summary line instead of a table
_REASONS_SHOWN = 10  # failed images named with the reason when errors.jsonl lists them all


@dataclass(frozen=True)
class PredictRequest:
    """What ``foveal predict`` was asked.

    Attributes:
        checkpoint: checkpoint folder or run directory.
        inputs: image files, folders, glob patterns and list files (``.txt``: one path per line).
        out: output folder (None: ``predictions`` for segment / detect; classify then writes only ``json`` / ``csv``).
        top_k, tile, fmt, tta, probabilities, score_thresh, show_thresh: the predictor's and writer's options (each
            task takes some: its
            :attr:`~foveal.tasks.table.TaskSpec.predict_options`; another task's option is an error).
        batch_size: images per forward pass (None: the task's). workers: decoding processes.
        resume: continue the interrupted run in ``out``. strict: stop at the first unreadable image.
        overwrite: write into an ``out`` that holds another model's predictions (replaced) or another command's
            outputs.
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
    score_thresh: float | None = None
    show_thresh: float = 0.3
    batch_size: int | None = None
    workers: int | None = None
    resume: bool = False
    strict: bool = False
    overwrite: bool = False
    json: str | None = None
    csv: str | None = None
    ray: str | None = None
    progress: bool | None = None
    device: str = "auto"
    precision: str = "auto"


def build(spec: TaskSpec, req: PredictRequest) -> tuple[Predictor, Writer]:
    """The predictor and writer of the task ``spec`` for ``req``."""
    loaded = spec.load(req.checkpoint, fast=True, device=req.device, precision=req.precision)
    predictor = spec.predictor(loaded, **spec.options_of(req))
    return predictor, spec.writer(predictor, **spec.options_of(req))


@dataclass(frozen=True)
class _Factory:
    """``build(task_spec(task), req)`` as a picklable callable (sent to Ray actors)."""

    task: str
    req: PredictRequest

    def __call__(self) -> tuple[Predictor, Writer]:
        return build(task_spec(self.task), self.req)


#: The request's options that some task's predictor takes (given to a task that does not take them: an error).
TASK_OPTIONS = ("top_k", "tile", "fmt", "tta", "probabilities", "score_thresh", "show_thresh", "csv")


def check_request(spec: TaskSpec, req: PredictRequest) -> None:
    """Refuse, before anything runs, an option the checkpoint's task does not take and options that contradict."""
    defaults = PredictRequest("", ())
    for name in TASK_OPTIONS:
        takes = name in spec.predict_options or (name == "csv" and spec.csv is not None)
        if not takes and getattr(req, name) != getattr(defaults, name):
            nouns = [s.noun for s in all_specs() if name in s.predict_options or (name == "csv" and s.csv)]
            raise FovealError(
                f"{name} applies to {' and '.join(nouns)} checkpoints; {req.checkpoint} is a '{spec.name}' checkpoint",
                options=(name,),
            )
    if req.resume and req.out is None and spec.default_out is None:
        raise FovealError(
            "resume continues the run in an out folder: pass the out folder of the interrupted run",
            options=("resume", "out"),
        )
    if req.ray is not None and req.workers is not None:
        raise FovealError(
            "workers applies to this process; with ray, Ray runs one predictor per CPU", options=("workers", "ray")
        )
    for name, path in (("json", req.json), ("csv", req.csv)):
        if path is not None and Path(path).is_dir():
            raise FovealError(
                f"{name} {path} is a folder: give a file name, e.g. {Path(path) / 'predictions'}.{name}",
                options=(name,),
            )


def _settings(spec: TaskSpec, req: PredictRequest) -> dict[str, Any]:
    """What makes the outputs what they are (a resume must repeat it)."""
    return {
        "task": spec.name,
        "checkpoint": str(Path(req.checkpoint).resolve()),
        "inputs": list(req.inputs),
        "batch_size": req.batch_size or spec.batch_size,
        **spec.options_of(req),
    }


@dataclass(frozen=True)
class PredictOutcome:
    """What a ``foveal predict`` run did: the stream's summary, for short streams a table of the results, and the
    reasons of the images that failed (one line each): all of them without an ``--out`` folder, else the first few
    (``errors.jsonl`` lists all). ``finished_before``: a ``--resume`` found the run finished and changed nothing."""

    task: str
    summary: StreamSummary
    table: str
    out: str | None
    reasons: tuple[str, ...] = ()
    finished_before: bool = False


def run_predict(req: PredictRequest) -> PredictOutcome:
    """Run ``req`` (see the module docstring for the outputs)."""
    spec = checkpoint_spec(req.checkpoint)
    task = spec.name
    check_request(spec, req)
    predictor, writer = build(spec, req)
    out = req.out if req.out is not None else spec.default_out
    settings = _settings(spec, req)
    owner = {"command": "predict", "model": settings["checkpoint"], "task": task}
    finished = _finished_run(task, req, out, settings)
    if finished is not None:
        return finished
    batch = req.batch_size or spec.batch_size
    lasting = out is not None
    with (
        _folder(out) as folder,
        staged_output(folder, req.resume, keep_on_error=lasting, owner=owner, overwrite=req.overwrite) as staged,
    ):
        if staged.replaces is not None and staged.replaces.get("command") == "predict":
            staged.drop(_predictions_in(staged.final))
        if req.ray is not None:
            summary = _on_ray(task, req, writer, staged, settings, batch)
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
                resumable=lasting,
            )
        staged.own({**owner, "settings": settings, "total": summary.total, "failed": summary.failed})
        table = _export_records(spec, req, staged.staged(PREDICTIONS), summary)
        shown = _REASONS_SHOWN if lasting else None  # all of them when no errors.jsonl lasts
        reasons = tuple(itertools.islice(_reasons(staged.staged(ERRORS)), shown)) if summary.failed else ()
    return PredictOutcome(task, summary, table, out, reasons)


def _on_ray(
    task: str, req: PredictRequest, writer: Writer, staged: StagedOutput, settings: dict[str, Any], batch: int
) -> StreamSummary:
    """The stream of ``req`` on Ray Data (``--ray``); a run where no image could be predicted is an error."""
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
    if summary.failed == summary.total:
        raise FovealError(nothing_predicted(staged.staged(RECORDS), summary.total), options=IMAGE_OPTIONS)
    return summary


def _export_records(spec: TaskSpec, req: PredictRequest, records: Path, summary: StreamSummary) -> str:
    """Write ``json`` / ``csv`` from the staged records; the table of a short run (empty for a long one)."""
    if req.json:
        write_json_array(req.json, iter_records(records))
    if req.csv and spec.csv is not None:
        spec.csv(iter_records(records), req.csv)
    return spec.format_records(list(iter_records(records))) if summary.total <= _TABLE_LIMIT else ""


def _finished_run(task: str, req: PredictRequest, out: str | None, settings: dict[str, Any]) -> PredictOutcome | None:
    """For ``--resume`` into a folder whose run of the same command had finished: what it did (nothing is left)."""
    if not req.resume or out is None or (Path(out) / STAGING_NAME).exists():
        return None
    owner = folder_owner(out)
    if owner is None or owner.get("settings") != settings:
        return None
    total, failed = int(owner["total"]), int(owner["failed"])
    return PredictOutcome(task, StreamSummary(total, 0, failed, Path(out)), "", out, finished_before=True)


def _predictions_in(folder: Path) -> Iterator[str]:
    """The files of another model's predictions in ``folder`` (which ``--overwrite`` replaces): the summary files
    and the per-image files its records name."""
    yield from (PREDICTIONS, ERRORS, "predictions.csv", "detections.json", "images.json")
    if not (folder / PREDICTIONS).is_file():
        return
    for record in iter_records(folder / PREDICTIONS):
        for key in ("labels", "overlay", "figure"):
            if isinstance(record.get(key), str) and record[key]:
                yield Path(record[key]).name
        labels = Path(str(record.get("labels") or ""))
        if labels.stem.endswith("_labels"):
            stem = labels.stem[: -len("_labels")]
            yield from (f"{stem}_probabilities.tif", f"{stem}_probabilities.zarr")


def _reasons(errors: Path) -> Iterator[str]:
    """One line per image of an errors list: the message, led by the file when the message does not name it."""
    for r in iter_records(errors):
        file, error = str(r["file"]), str(r["error"]).splitlines()[0]
        yield error if file in error else f"{file}: {error}"


@contextlib.contextmanager
def _folder(out: str | None) -> Iterator[str]:
    """``out``, or a temporary folder for a classifier run that writes only ``--json`` / ``--csv``."""
    if out is not None:
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="foveal-predict-") as tmp:
        yield tmp
