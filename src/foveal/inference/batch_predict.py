"""Batch prediction over streams of images of any length: decoding in DataLoader workers, batched inference,
results appended as they come, exact resume after a kill, unreadable images skipped and listed.

One loop serves every task through two small objects (see :class:`Predictor` and :class:`Writer`):

- a predictor turns a path into a prepared input (``prepare``, run in the DataLoader workers: decoding, resizing,
  normalising) and a list of prepared inputs into results (``predict_batch``: the batched forward pass and the
  post-processing);
- a writer turns one image's result into its files (label images, figures) and a JSON record, and at the end
  assembles the task's summary files (a COCO results JSON, a CSV) from the records.

State of a run lives in the output's staging folder (:func:`foveal.io.staged_output`): ``.records.jsonl`` (one
line per image, in input order, fsync'd after every batch) and ``.run.json`` (what was asked). One batch's files
and records are written in a thread while the next batch runs through the model, so a killed run loses at most
those two batches; ``resume`` skips the images already recorded and the final outputs equal those of an
uninterrupted run. At the end ``predictions.jsonl`` (the records) and, when some image could not be read,
``errors.jsonl`` are written beside the task's files.

An image that cannot be used (unreadable, another channel count, a corrupt tile found while it is streamed) is
skipped and listed, by ``prepare`` or by the writer; output names are shortened to what file systems take; a stream
in which no image could be predicted is an error, so a command that produced nothing never reports success.
:func:`predict_on_ray` maps the same predictor and writer over a Ray dataset (:mod:`foveal.inference.ray_predict`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from foveal.data.images import IMAGE_OPTIONS
from foveal.errors import FovealError
from foveal.io import StagedOutput, atomic_output

RECORDS = ".records.jsonl"
RUN = ".run.json"
PREDICTIONS = "predictions.jsonl"
ERRORS = "errors.jsonl"


@dataclass(frozen=True)
class Item:
    """One input of the stream: its position (from 0), its path, and a file-name stem unique within the stream."""

    index: int
    path: Path
    stem: str


@dataclass(frozen=True)
class Unreadable:
    """What ``prepare`` gives for an image that cannot be used: the message naming the file and the problem."""

    message: str


@dataclass(frozen=True)
class Streamed:
    """What ``prepare`` gives for an image too large for a batch (a large TIFF, a zarr store): only its path travels;
    the predictor streams it tile by tile on the main thread (:meth:`Predictor.stream`), between two batches, into
    the files the writer names (:meth:`Writer.stream_targets`)."""

    path: Path


class Predictor(Protocol):
    """A task's batched inference. ``prepare`` must be picklable and light (it runs in worker processes). A task
    whose ``prepare`` can give :class:`Streamed` also has ``stream(path, targets) → result``: it predicts the image
    straight into ``targets`` (the writer's :meth:`Writer.stream_targets`), raising :class:`FovealError` for an image
    found unusable while read; the writer then records the result."""

    @property
    def prepare(self) -> Callable[[Path], Any]:
        """Path → prepared input, or a :class:`FovealError` naming the file."""
        ...

    def predict_batch(self, prepared: Sequence[Any]) -> list[Any]:
        """Results of prepared inputs, one per input, in order."""
        ...


class Writer(Protocol):
    """A task's outputs: per-image files and records, and the summary files at the end. A task whose images can be
    :class:`Streamed` also has ``stream_targets(item, out) → targets``: the staged files a streamed image's outputs
    go to (given to :meth:`Predictor.stream`)."""

    def write(self, item: Item, prepared: Any, result: Any, out: StagedOutput) -> dict[str, Any]:
        """Write the image's files under ``out.staging`` and return its JSON record (paths as published), or
        ``{"error": message}`` for an image found unusable while it was written (none of its files kept)."""
        ...

    def finish(self, records: Callable[[], Iterator[dict[str, Any]]], out: StagedOutput) -> None:
        """Write the task's summary files under ``out.staging`` from the records of every image (in order)."""
        ...


@dataclass(frozen=True)
class StreamSummary:
    """How a stream went: images in it, images already done by an interrupted run, images that failed."""

    total: int
    resumed_from: int
    failed: int
    out: Path

    @property
    def predicted(self) -> int:
        """Images with a prediction (the failed ones not counted)."""
        return self.total - self.failed

    def format(self, lasting: bool = True) -> str:
        """One line: ``predicted 8 of 11 images; 3 failed, listed in …/errors.jsonl``. ``lasting``: whether ``out``
        outlives the command (else the failed images are said to be named on stderr, where the caller prints them)."""
        n = f"{self.predicted} of {self.total}" if self.failed else f"{self.total}"
        done = f"{n} image{'s' if self.total != 1 else ''}"
        done += f" ({self.resumed_from} done before the resume)" if self.resumed_from else ""
        where = f"listed in {self.out / ERRORS}" if lasting else "each named on stderr with the reason"
        return f"predicted {done}" + (f"; {self.failed} failed, {where}" if self.failed else "")


def default_workers(total: int, batch_size: int) -> int:
    """Decoding workers: none for a single batch (nothing to overlap), else one per spare core, 1 to 4."""
    if total <= batch_size:
        return 0
    return max(1, min(4, (os.cpu_count() or 2) - 1))


class StemSet:
    """The file-name stems used so far in a stream, held as 64-bit BLAKE2b digests in an open-addressing table: about
    16 bytes a stem (a ``set`` of the strings takes about 100 for names like ``IMG_00000001``), so a stream of a
    million images holds ~16 MB. Digests are stable between processes (unlike ``hash``), so a resumed run names every
    file as the interrupted one did. Two stems with one digest (odds ~1e-8 in a million) only give the later image
    the suffix ``_2``."""

    def __init__(self) -> None:
        self._table = np.zeros(1 << 10, np.uint64)
        self._count = 0

    @staticmethod
    def _digest(stem: str) -> int:
        data = stem.encode("utf-8", "surrogateescape")  # file names that are not UTF-8 keep their bytes
        return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") | 1  # 0 marks an empty slot

    def _slot(self, key: int) -> int:
        """The slot holding ``key``, or the empty slot where it goes (linear probing)."""
        mask = len(self._table) - 1
        slot = key & mask
        while self._table[slot] != 0 and int(self._table[slot]) != key:
            slot = (slot + 1) & mask
        return slot

    def __contains__(self, stem: str) -> bool:
        return int(self._table[self._slot(self._digest(stem))]) != 0

    def add(self, stem: str) -> None:
        key = self._digest(stem)
        slot = self._slot(key)
        if self._table[slot] != 0:
            return
        self._table[slot] = key
        self._count += 1
        if 2 * self._count > len(self._table):  # keep the table at most half full
            old = self._table[self._table != 0]
            self._table = np.zeros(2 * len(self._table), np.uint64)
            for k in old.tolist():
                self._table[self._slot(k)] = k

    def __len__(self) -> int:
        return self._count


#: The longest file-name stem (UTF-8 bytes) outputs are named by: with the longest suffix a writer adds
#: (``_probabilities.zarr``) and the marks of a temporary name, a name stays far below the 255 bytes file systems allow.
STEM_BYTES = 100


def short_stem(stem: str) -> str:
    """``stem``, or when longer than :data:`STEM_BYTES` its start, ``~`` and 8 hex digits of its BLAKE2b digest (the
    same in every process, so a resumed run names the files as the interrupted one did)."""
    data = stem.encode("utf-8", "surrogateescape")
    if len(data) <= STEM_BYTES:
        return stem
    head, size = [], 0
    for ch in stem:  # whole characters only
        size += len(ch.encode("utf-8", "surrogateescape"))
        if size > STEM_BYTES - 9:
            break
        head.append(ch)
    return "".join(head) + "~" + hashlib.blake2b(data, digest_size=4).hexdigest()


def unique_stems(paths: Iterator[Path]) -> Iterator[Item]:
    """Number the paths and give each a file-name stem not used before in the stream (``name``, ``name_2``, …),
    shortened by :func:`short_stem`."""
    used = StemSet()
    for index, path in enumerate(paths):
        base = short_stem(path.stem)
        stem, n = base, 2
        while stem in used:
            stem, n = f"{base}_{n}", n + 1
        used.add(stem)
        yield Item(index, path, stem)


def prepare_safely(prepare: Callable[[Path], Any], path: Path) -> Any:
    """``prepare(path)``, or :class:`Unreadable` with the message of the :class:`FovealError` it raised."""
    try:
        return prepare(path)
    except FovealError as exc:
        return Unreadable(str(exc))


class _PreparedBatches(IterableDataset):  # type: ignore[type-arg]
    """Batches of (index, path, prepared input), in stream order; worker w of n prepares batches w, w + n, …, which
    the DataLoader hands back in order."""

    def __init__(self, inputs: Sequence[str], prepare: Callable[[Path], Any], batch_size: int, skip: int) -> None:
        self.inputs, self.prepare, self.batch_size, self.skip = list(inputs), prepare, batch_size, skip

    def __iter__(self) -> Iterator[list[tuple[int, str, Any]]]:
        from foveal.data.images import iter_inputs

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        chunk: list[tuple[int, Path]] = []
        k = 0
        for index, path in enumerate(iter_inputs(self.inputs)):
            if index < self.skip:
                continue
            chunk.append((index, path))
            if len(chunk) == self.batch_size:
                if k % workers == worker:
                    yield [(i, str(p), prepare_safely(self.prepare, p)) for i, p in chunk]
                chunk, k = [], k + 1
        if chunk and k % workers == worker:
            yield [(i, str(p), prepare_safely(self.prepare, p)) for i, p in chunk]


def run_batch(
    predictor: Predictor, writer: Writer, items: Sequence[Item], prepared: Sequence[Any], out: StagedOutput
) -> list[dict[str, Any]]:
    """Predict one batch and write its outputs; returns one record per item (``{"index", "file", …}``, or with
    ``"error"`` for an unreadable image), in order."""
    return write_batch(writer, items, prepared, predict_good(predictor, writer, items, prepared, out), out)


def predict_good(
    predictor: Predictor, writer: Writer, items: Sequence[Item], prepared: Sequence[Any], out: StagedOutput
) -> dict[int, Any]:
    """The predictor's results for the readable images of a batch, by position in the batch: one forward pass for
    those that batch, then each :class:`Streamed` one streamed into the writer's files (an image found unusable
    while streamed: :class:`Unreadable`). Runs on the calling thread: the model is used by one thread at a time."""
    good = [i for i, p in enumerate(prepared) if not isinstance(p, (Unreadable, Streamed))]
    results = dict(zip(good, predictor.predict_batch([prepared[i] for i in good]) if good else [], strict=True))
    for i, p in enumerate(prepared):
        if isinstance(p, Streamed):
            try:
                results[i] = predictor.stream(p.path, writer.stream_targets(items[i], out))  # type: ignore[attr-defined]
            except FovealError as exc:  # found while reading it (a corrupt tile): skipped and listed
                results[i] = Unreadable(str(exc))
    return results


def write_batch(
    writer: Writer, items: Sequence[Item], prepared: Sequence[Any], results: dict[int, Any], out: StagedOutput
) -> list[dict[str, Any]]:
    """Write a predicted batch's outputs (``results`` from :func:`predict_good`); one record per item, in order."""
    records = []
    for position, (item, data) in enumerate(zip(items, prepared, strict=True)):
        head = {"index": item.index, "file": str(item.path)}
        problem = data if isinstance(data, Unreadable) else results.get(position)  # unreadable, or found so streamed
        if isinstance(problem, Unreadable):
            records.append({**head, "error": problem.message})
        else:
            records.append({**head, **writer.write(item, data, results[position], out)})
    return records


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a records file, in order."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def recorded(path: Path, batch_size: int, total: int) -> tuple[int, str | None]:
    """(images to skip, file of the last of them) of a records file, which is cut back to what the resume keeps.

    A line cut by a kill is removed, and so are the records of an incomplete batch (a kill while one batch was
    being appended): the resume starts at a batch boundary, so every image meets the same batch as it would have in
    an uninterrupted run, and the outputs are equal to the last bit.
    """
    if not path.exists():
        return 0, None
    complete, done = 0, 0
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            complete += len(line)
            done = int(json.loads(line)["index"]) + 1
    keep_to = done if done == total else done - done % batch_size
    offset, last = 0, None
    with open(path, "rb") as handle:
        for line in handle:
            if offset >= complete or int(json.loads(line)["index"]) >= keep_to:
                break
            offset, last = offset + len(line), json.loads(line)
    with open(path, "rb+") as handle:
        handle.truncate(offset)
    return (0, None) if last is None else (int(last["index"]) + 1, str(last["file"]))


def check_run(out: StagedOutput, settings: dict[str, Any]) -> None:
    """Record what this run does; on resume, refuse a command that differs from the interrupted one."""
    path = out.staging / RUN
    if out.resumed and path.exists():
        before = json.loads(path.read_text(encoding="utf-8"))
        if before != settings:
            changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            raise FovealError(
                f"resume continues the interrupted run in {out.final}, which was started with other "
                f"{', '.join(changed)}: repeat its command, or run without resume to start over",
                options=("resume",),
            )
        return
    with atomic_output(path) as handle:
        json.dump(settings, handle, sort_keys=True)


def count_inputs(inputs: Sequence[str]) -> int:
    """Images in the stream (the inputs are checked on the way: an empty folder or pattern is an error)."""
    from foveal.data.images import iter_inputs

    return sum(1 for _ in iter_inputs(inputs))


def progress_bar(total: int, initial: int, show: bool | None) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", desc="predict", disable=None if show is None else not show)


def append_records(handle: Any, records: list[dict[str, Any]], strict: bool) -> None:
    """Append ``records``, flushed and fsync'd; an unreadable image among them is an error when ``strict``."""
    errors = [r for r in records if "error" in r]
    if errors and strict:
        raise FovealError(
            f"{errors[0]['error']} (strict stops at the first unreadable image; without it such images are "
            "skipped and listed in errors.jsonl)",
            options=("strict", *IMAGE_OPTIONS),
        )
    handle.write("".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
    handle.flush()
    os.fsync(handle.fileno())


def predict_stream(
    predictor: Predictor,
    writer: Writer,
    inputs: Sequence[str],
    out: StagedOutput,
    settings: dict[str, Any],
    *,
    batch_size: int = 32,
    workers: int | None = None,
    strict: bool = False,
    progress: bool | None = None,
    resumable: bool = True,
) -> StreamSummary:
    """Predict every image of ``inputs`` (files, folders, globs, list files) into ``out``'s staging folder.

    Args:
        predictor, writer: the task's (see the module docstring).
        inputs: as the command line gives them; iterated lazily, never held as a list.
        out: the staged output folder; when ``out.resumed`` the images already recorded there are skipped.
        settings: what the run does (checkpoint, inputs, options); a resume must repeat them.
        batch_size: images per forward pass.
        workers: DataLoader worker processes that decode ahead of the model (None: :func:`default_workers`).
        strict: stop at the first unreadable image (FovealError) instead of listing it in ``errors.jsonl``.
        progress: tqdm bar with rate and ETA (None: when stderr is a terminal).
        resumable: whether ``--resume`` can continue the run after an error writing its outputs (said so then).

    Raises:
        FovealError: a bad option; the inputs changed since the interrupted run; no image could be predicted (the
            reasons of the first ones in the message); an output could not be written (a full disk: named).
    """
    _check_options(batch_size, workers)
    check_run(out, settings)
    total = count_inputs(inputs)
    if total == 0:
        raise FovealError(f"{', '.join(inputs)}: no images there; pass image files, folders, globs or list files")
    if hasattr(predictor, "check_inputs"):
        predictor.check_inputs(inputs)  # what only the inputs can tell (an option a streamed image cannot have)
    records_path = out.staging / RECORDS
    done, last_file = recorded(records_path, batch_size, total)
    stream = unique_stems(iter_paths(inputs))
    skip_done(stream, done, last_file, out)
    n_workers = default_workers(total - done, batch_size) if workers is None else workers
    batches = _PreparedBatches(list(inputs), predictor.prepare, batch_size, done)
    loader = DataLoader(batches, batch_size=None, num_workers=n_workers, collate_fn=_no_collate)
    with open(records_path, "a", encoding="utf-8") as handle, progress_bar(total, done, progress) as bar:

        def write(items: list[Item], prepared: list[Any], results: dict[int, Any]) -> None:
            with _writing(out, resumable):
                append_records(handle, write_batch(writer, items, prepared, results, out), strict)
            bar.update(len(items))

        def predict(items: list[Item], prepared: list[Any]) -> dict[int, Any]:
            with _writing(out, resumable):  # a streamed image's files are written here
                return predict_good(predictor, writer, items, prepared, out)

        _pipeline(loader, stream, predict, write)
    failed = count_errors(records_path)
    if failed == total:
        raise FovealError(nothing_predicted(records_path, total), options=IMAGE_OPTIONS)
    finish(writer, records_path, out)
    return StreamSummary(total, done, failed, out.final)


def _check_options(batch_size: int, workers: int | None) -> None:
    if batch_size < 1:
        raise FovealError(
            f"batch_size {batch_size}: use a positive number of images per forward pass, e.g. 32",
            options=("batch_size",),
        )
    if workers is not None and workers < 0:
        raise FovealError(
            f"workers {workers}: use 0 (decode in this process) or a positive number of worker processes",
            options=("workers",),
        )


@contextlib.contextmanager
def _writing(out: StagedOutput, resumable: bool) -> Iterator[None]:
    """Around writing a stream's outputs: a full disk, a quota, an I/O error stops the run with one message (resume
    continues it)."""
    try:
        yield
    except OSError as exc:
        raise FovealError(write_failed(exc, out, resumable), options=("resume",)) from None


def _pipeline(
    loader: Iterable[list[Any]],
    stream: Iterator[Item],
    predict: Callable[[list[Item], list[Any]], dict[int, Any]],
    write: Callable[[list[Item], list[Any], dict[int, Any]], None],
) -> None:
    """Each batch of ``loader`` through the model (``predict``, on this thread), its files written in a thread while
    the next batch runs."""
    with ThreadPoolExecutor(1, thread_name_prefix="foveal-writer") as pool:
        writing: Future[None] | None = None
        for batch in loader:
            items = [next(stream) for _ in batch]
            for item, (index, _, _) in zip(items, batch, strict=True):
                assert item.index == index, "workers must hand batches back in stream order"
            prepared = [p for _, _, p in batch]
            if writing is not None and any(isinstance(p, Streamed) for p in prepared):
                writing.result()  # the previous batch's files first: a streamed image's files are written here
            results = predict(items, prepared)
            if writing is not None:
                writing.result()  # in order, and an error of the writer (--strict) stops the stream here
            writing = pool.submit(write, items, prepared, results)
        if writing is not None:
            writing.result()


def write_failed(exc: OSError, out: StagedOutput, resumable: bool) -> str:
    """The message of an error writing a stream's outputs: the disk or folder, the problem, how to go on."""
    again = "continue with resume (the images done so far are kept)" if resumable else "run the command again"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk holding {out.final} is full ({exc.strerror}): free space there, then {again}"
    where = f" {exc.filename}" if exc.filename else ""
    return f"cannot write the predictions into {out.final}:{where} {exc.strerror or exc}: fix that, then {again}"


def nothing_predicted(records_path: Path, total: int, shown: int = 10) -> str:
    """The message of a stream in which every image failed: the reasons of the first ``shown``, one a line (the first
    on the line of the message)."""
    reasons = list(itertools.islice((str(r["error"]) for r in iter_records(records_path) if "error" in r), shown))
    if total == 1:
        return f"no image could be predicted: {reasons[0]}"
    more = f"\n  … and {total - shown} more" if total > shown else ""
    lines = "\n  ".join(reasons)
    return f"none of the {total} images could be predicted (fix or remove them): {lines}{more}"


def skip_done(stream: Iterator[Item], done: int, last_file: str | None, out: StagedOutput) -> None:
    """Advance ``stream`` past the ``done`` images an interrupted run recorded (their stems stay taken, as in an
    uninterrupted run), checking that the last of them is the file it recorded."""
    if done == 0:
        return
    item = None
    for item in stream:
        if item.index == done - 1:
            break
    if item is None or item.index != done - 1 or str(item.path) != last_file:
        now = "missing" if item is None or item.index != done - 1 else str(item.path)
        raise FovealError(
            f"the inputs changed since the interrupted run in {out.final} (image {done} was {last_file}, now "
            f"{now}): repeat the same inputs, or run without resume",
            options=("resume",),
        )


def iter_paths(inputs: Sequence[str]) -> Iterator[Path]:
    from foveal.data.images import iter_inputs

    return iter_inputs(list(inputs))


def _no_collate(batch: Any) -> Any:
    return batch


def count_errors(path: Path) -> int:
    return sum(1 for r in iter_records(path) if "error" in r)


def finish(writer: Writer, records_path: Path, out: StagedOutput) -> None:
    """``predictions.jsonl``, ``errors.jsonl`` (when an image failed) and the task's summary files."""

    def good() -> Iterator[dict[str, Any]]:
        return (r for r in iter_records(records_path) if "error" not in r)

    with atomic_output(out.staged(PREDICTIONS)) as handle:
        for r in good():
            handle.write(json.dumps({k: v for k, v in r.items() if k != "index"}) + "\n")
    if any("error" in r for r in iter_records(records_path)):
        with atomic_output(out.staged(ERRORS)) as handle:
            for r in iter_records(records_path):
                if "error" in r:
                    handle.write(json.dumps({"file": r["file"], "error": r["error"]}) + "\n")
    else:
        out.drop([ERRORS])  # an earlier run's list would describe images this run predicted
    writer.finish(good, out)


def write_json_array(path: str | os.PathLike[str], records: Iterator[Any]) -> None:
    """A JSON array of ``records`` written one element at a time (never all in memory), atomically."""
    with atomic_output(path) as handle:
        handle.write("[")
        for i, r in enumerate(records):
            handle.write(("\n " if i == 0 else ",\n ") + json.dumps(r, allow_nan=False))
        handle.write("\n]\n")
