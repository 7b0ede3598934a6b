"""Text, JSON and CSV output of predictions and metrics (``foveal predict`` / ``foveal eval``), written atomically."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from foveal.errors import FovealError
from foveal.io import atomic_output
from foveal.results import ClassificationResult, ClassScore


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one input file.

    Attributes:
        path: the input file as given by the user.
        topk: best first; plain ``(index, name, probability)`` tuples are converted to :class:`ClassScore`.
    """

    path: str
    topk: tuple[ClassScore, ...]

    def __init__(self, path: str | os.PathLike[str], topk: Iterable[tuple[int, str, float]]) -> None:
        scores = tuple(ClassScore(int(i), str(name), float(p)) for i, name, p in topk)
        for s in scores:
            if not math.isfinite(s.probability):
                raise FovealError(
                    f"prediction for {path} has probability {s.probability} for class '{s.name}'; the model produced "
                    "non-finite outputs (check the checkpoint)"
                )
        object.__setattr__(self, "path", str(path))
        object.__setattr__(self, "topk", scores)


def predictions_from_logits(
    paths: Sequence[str | os.PathLike[str]], logits: Tensor, classes: Sequence[str], k: int = 5
) -> list[Prediction]:
    """Softmax the logits and keep the k most probable classes of each input.

    Args:
        paths: N input files.
        logits: (N, K) raw classifier outputs.
        classes: K class names.
        k: entries per input; clipped to K.

    Returns:
        N predictions, each with min(k, K) entries, best first.
    """
    if logits.ndim != 2 or logits.shape[0] != len(paths) or logits.shape[1] != len(classes):
        raise FovealError(
            f"expected logits of shape ({len(paths)}, {len(classes)}) for {len(paths)} files and {len(classes)} "
            f"classes, got {tuple(logits.shape)}; does the checkpoint's number of classes match its class names?"
        )
    if k < 1:
        raise FovealError(f"top-k needs k >= 1, got k={k}")
    probs = torch.softmax(logits.detach().float(), dim=1).cpu()
    values, indices = probs.topk(min(k, len(classes)), dim=1)
    return [
        Prediction(path, [(i, classes[i], p) for i, p in zip(idx.tolist(), val.tolist(), strict=True)])
        for path, idx, val in zip(paths, indices, values, strict=True)
    ]


# --- predictions ---


def format_table(preds: Sequence[Prediction]) -> str:
    """An aligned plain-text table for a terminal: one line per file × rank; the file is named on its first line.

    Returns:
        The table (no trailing newline); ``"no predictions"`` for an empty list.
    """
    if not preds:
        return "no predictions"
    header = ("file", "rank", "class", "probability")
    rows: list[tuple[str, str, str, str]] = []
    for pred in preds:
        if not pred.topk:
            rows.append((pred.path, "-", "-", "-"))
        for rank, score in enumerate(pred.topk, start=1):
            rows.append((pred.path if rank == 1 else "", str(rank), score.name, f"{score.probability:.4f}"))
    widths = [max(len(header[c]), *(len(r[c]) for r in rows)) for c in range(4)]

    def line(cells: tuple[str, str, str, str]) -> str:
        file, rank, name, prob = cells
        text = f"{file:<{widths[0]}}  {rank:>{widths[1]}}  {name:<{widths[2]}}  {prob:>{widths[3]}}"
        return text.rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def predictions_to_records(preds: Sequence[Prediction]) -> list[dict[str, Any]]:
    """JSON-ready records: ``[{"file": ..., "predictions": [{"class", "index", "probability"}, ...]}, ...]``."""
    return [
        {
            "file": pred.path,
            "predictions": [{"class": s.name, "index": s.class_index, "probability": s.probability} for s in pred.topk],
        }
        for pred in preds
    ]


def write_predictions_json(preds: Sequence[Prediction], path: str | os.PathLike[str]) -> Path:
    """Write :func:`predictions_to_records` as indented JSON, atomically; returns the path."""
    text = json.dumps(predictions_to_records(preds), indent=2, ensure_ascii=False, allow_nan=False)
    with atomic_output(path) as handle:
        handle.write(text + "\n")
    return Path(path)


CSV_HEADER = ("file", "rank", "class_index", "class", "probability")


def write_csv(preds: Sequence[Prediction], path: str | os.PathLike[str]) -> Path:
    """Write one row per file × rank with the columns :data:`CSV_HEADER` (rank starts at 1), atomically."""
    with atomic_output(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for pred in preds:
            for rank, s in enumerate(pred.topk, start=1):
                writer.writerow([pred.path, rank, s.class_index, s.name, repr(s.probability)])
    return Path(path)


# --- metrics ---


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.2f}%"


def format_metrics(result: ClassificationResult, classes: Sequence[str] | None = None) -> str:
    """A readable summary: sample count, loss, top-1, top-k, balanced accuracy, then a per-class table.

    Args:
        result: the metrics.
        classes: K class names; default ``result.classes``, else the class indices.

    Returns:
        Multi-line text (no trailing newline). Classes without samples show ``n/a``.
    """
    names = list(classes) if classes is not None else result.class_names()
    if len(names) != result.num_classes:
        raise FovealError(f"got {len(names)} class names for metrics over {result.num_classes} classes")
    summary = [
        ("samples", str(result.count)),
        ("loss", "n/a" if result.loss is None else f"{result.loss:.4f}"),
        ("top-1", _percent(result.top1)),
        (f"top-{result.top5_k}", _percent(result.top5)),
        ("mean class accuracy", _percent(result.mean_class_accuracy)),
    ]
    key_width = max(len(k) for k, _ in summary)
    lines = [f"{k:<{key_width}}  {v}" for k, v in summary]
    support = result.support
    rows = [(n, str(s), _percent(a)) for n, s, a in zip(names, support, result.per_class_accuracy, strict=True)]
    header = ("class", "samples", "accuracy")
    w = [max(len(header[c]), *(len(r[c]) for r in rows)) for c in range(3)]
    lines += ["", f"{header[0]:<{w[0]}}  {header[1]:>{w[1]}}  {header[2]:>{w[2]}}", "  ".join("-" * x for x in w)]
    lines += [f"{n:<{w[0]}}  {s:>{w[1]}}  {a:>{w[2]}}" for n, s, a in rows]
    return "\n".join(lines)


def write_metrics_json(result: ClassificationResult, path: str | os.PathLike[str]) -> Path:
    """Write ``result.to_dict()`` as indented JSON, atomically; returns the path."""
    with atomic_output(path) as handle:
        handle.write(json.dumps(result.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    return Path(path)
