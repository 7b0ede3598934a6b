"""Batch prediction on Ray Data: the predictor and writer of :mod:`foveal.inference.batch_predict` mapped over a Ray
dataset of image paths, on one machine or a cluster (the optional extra ``foveal[ray]``).

The stream of image paths is cut into chunks of :data:`CHUNK_ROWS` images, so that the driver's memory does not grow
with the number of images; each chunk is a Ray dataset (``ray.data.from_items``, one row per image: index, path, file
stem), and ``map_batches`` runs a callable class that builds the task's predictor once per actor and, per batch,
prepares, predicts and writes the images' files into the staging folder, returning their records. The driver
appends the records in stream order to the same ``.records.jsonl``, so resume, ``errors.jsonl`` and the final files
are those of :func:`predict_stream`, and the outputs equal a single-process run. On a cluster the ``--out`` folder
must be on a file system every node mounts at the same path (images are read and label files written by the
workers).
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from foveal.errors import FovealError
from foveal.inference.batch_predict import (
    RECORDS,
    Item,
    Predictor,
    StreamSummary,
    Writer,
    append_records,
    check_run,
    count_errors,
    count_inputs,
    finish,
    iter_paths,
    prepare_safely,
    progress_bar,
    recorded,
    run_batch,
    skip_done,
    unique_stems,
)
from foveal.io import StagedOutput

CHUNK_ROWS = 50_000
"""Images per Ray dataset: the driver holds one chunk's rows (some MB), whatever the length of the stream; each chunk
starts its actors (and loads the model) once."""

Factory = Callable[[], tuple[Predictor, Writer]]
"""Builds a task's predictor and writer (picklable: it is sent to every Ray actor)."""


class _RayBatch:
    """The callable class of ``map_batches``: one predictor per actor, one batch of rows per call."""

    def __init__(self, factory: Factory, out: StagedOutput) -> None:
        import torch

        torch.set_num_threads(1)  # one CPU per actor: Ray schedules actors by CPU
        self.predictor, self.writer = factory()
        self.out = out

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        items = [
            Item(int(i), Path(str(p)), str(s))
            for i, p, s in zip(batch["index"], batch["path"], batch["stem"], strict=True)
        ]
        prepared = [prepare_safely(self.predictor.prepare, item.path) for item in items]
        records = run_batch(self.predictor, self.writer, items, prepared, self.out)
        return {"index": np.array([r["index"] for r in records]), "record": np.array([json.dumps(r) for r in records])}


def _connect(address: str | None) -> bool:
    """Connect to Ray unless this process already is; returns whether this call did (and must shut down)."""
    try:
        import ray
    except ImportError:
        raise FovealError("ray needs Ray: pip install 'foveal[ray]' (or 'ray[data]')", options=("ray",)) from None
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = address or "a local instance"
        raise FovealError(
            f"cannot connect to Ray at {where}: {exc} (start one with 'ray start --head', or pass ray alone)",
            options=("ray",),
        ) from None
    return True


def predict_on_ray(
    factory: Factory,
    writer: Writer,
    inputs: Sequence[str],
    out: StagedOutput,
    settings: dict[str, Any],
    *,
    address: str | None = None,
    batch_size: int = 32,
    actors: int | None = None,
    strict: bool = False,
    progress: bool | None = None,
) -> StreamSummary:
    """:func:`~foveal.inference.batch_predict.predict_stream` on Ray Data.

    Args:
        factory: builds the task's predictor and writer in each actor.
        writer: the task's writer here (for the final files).
        inputs, out, settings, batch_size, strict, progress: as for ``predict_stream``.
        address: the Ray cluster (``"auto"``, ``"ray://host:10001"``); None starts a local instance (or uses the
            one this process is connected to).
        actors: predictor actors (None: one per CPU of the cluster, at most the number of batches).
    """
    if batch_size < 1:
        raise FovealError(
            f"batch_size {batch_size}: use a positive number of images per forward pass, e.g. 32",
            options=("batch_size",),
        )
    check_run(out, settings)
    total = count_inputs(inputs)
    records_path = out.staging / RECORDS
    done, last_file = recorded(records_path, batch_size, total)
    stream = unique_stems(iter_paths(inputs))
    skip_done(stream, done, last_file, out)
    started = _connect(address)
    try:
        with open(records_path, "a", encoding="utf-8") as handle, progress_bar(total, done, progress) as bar:

            def append(records: list[dict[str, Any]]) -> None:
                append_records(handle, records, strict)
                bar.update(len(records))

            for rows in _chunks(stream):
                _run(factory, rows, out, batch_size, actors, append)
    finally:
        if started:
            import ray

            ray.shutdown()
    finish(writer, records_path, out)
    return StreamSummary(total, done, count_errors(records_path), out.final)


def _chunks(stream: Iterator[Item]) -> Iterator[list[dict[str, Any]]]:
    """The stream's rows, :data:`CHUNK_ROWS` at a time."""
    while rows := [{"index": it.index, "path": str(it.path), "stem": it.stem} for it in islice(stream, CHUNK_ROWS)]:
        yield rows


def _run(
    factory: Factory,
    rows: list[dict[str, Any]],
    out: StagedOutput,
    batch_size: int,
    actors: int | None,
    append: Callable[[list[dict[str, Any]]], None],
) -> None:
    """Predict one chunk of ``rows`` on Ray, handing their records to ``append`` in stream order."""
    import ray
    import ray.data

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    n_actors = actors or max(1, min(cpus, -(-len(rows) // batch_size)))
    ds = ray.data.from_items(rows).map_batches(
        _RayBatch,
        fn_constructor_args=(factory, out),
        batch_size=batch_size,
        concurrency=n_actors,
        num_cpus=1,
    )
    pending: list[tuple[int, str]] = []
    expected = rows[0]["index"]
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        for index, record in zip(batch["index"], batch["record"], strict=True):
            heapq.heappush(pending, (int(index), str(record)))
        ready = []
        while pending and pending[0][0] == expected:  # records in stream order, whatever order Ray returns
            ready.append(json.loads(heapq.heappop(pending)[1]))
            expected += 1
        if ready:
            append(ready)
