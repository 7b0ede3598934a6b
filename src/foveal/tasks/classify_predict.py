"""Classification inference: the batched top-k predictor and writer of ``foveal predict`` and the API, the API's
typed result, the printed table, and what ``export`` writes."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from foveal.data.images import load_image
from foveal.engine.device import to_device
from foveal.errors import FovealError
from foveal.inference.export import ExportSpec
from foveal.inference.inputs import InMemory, uint8_pixels
from foveal.io import atomic_output
from foveal.preprocess import normalize
from foveal.report.tables import CSV_HEADER, Prediction, format_table, predictions_from_logits
from foveal.results import Classification
from foveal.tasks.classify import LoadedClassifier, eval_transform, load_classifier


class _PrepareClassify:
    """Path → (C, R, R) normalised float image, as evaluation prepares it (runs in DataLoader workers)."""

    def __init__(self, clf: LoadedClassifier) -> None:
        self.channels, self.mean, self.std = clf.channels, clf.mean, clf.std
        self.transform = eval_transform(clf.resolution)

    def __call__(self, path: Path) -> Tensor:
        return self.image(load_image(path, self.channels))

    def image(self, pixels: Tensor) -> Tensor:
        """(C, H, W) uint8 pixels (:func:`foveal.data.images.load_image`'s) → the model's (C, R, R) input."""
        return normalize(self.transform(pixels), self.mean, self.std)


class ClassifyPredictor:
    """Batched top-k classification (a :class:`foveal.inference.batch_predict.Predictor`): each result is the
    image's ``top_k`` ``(class index, name, probability)``, best first."""

    def __init__(
        self,
        checkpoint: str | Path | LoadedClassifier,
        top_k: int = 5,
        device: str | torch.device = "auto",
        precision: str = "auto",
    ) -> None:
        if top_k < 1:
            raise FovealError(f"top_k {top_k}: use a positive number of classes, e.g. top_k 5", options=("top_k",))
        if isinstance(checkpoint, LoadedClassifier):  # already loaded (device and precision as it was loaded)
            self.clf = checkpoint
        else:
            self.clf = load_classifier(checkpoint, fast=True, device=device, precision=precision)
        self.k = min(top_k, len(self.clf.classes))
        self.prepare = _PrepareClassify(self.clf)

    @torch.no_grad()
    def predict_batch(self, prepared: Sequence[Tensor]) -> list[tuple[Any, ...]]:
        weight = next(self.clf.model.parameters())
        batch = to_device(torch.stack(list(prepared)), weight.device, weight.dtype, channels_last=True)
        logits = self.clf.model(batch).float().cpu()  # probabilities in fp32
        return [p.topk for p in predictions_from_logits([""] * len(prepared), logits, self.clf.classes, k=self.k)]


class ClassifyWriter:
    """Records ``{"predictions": [{"class", "index", "probability"}]}`` and, at the end, ``predictions.csv``."""

    def write(self, item: Any, prepared: Any, result: tuple[Any, ...], out: Any) -> dict[str, Any]:
        return {
            "predictions": [{"class": s.name, "index": s.class_index, "probability": s.probability} for s in result]
        }

    def finish(self, records: Callable[[], Iterator[dict[str, Any]]], out: Any) -> None:
        write_predictions_csv(records(), out.staged("predictions.csv"))


def write_predictions_csv(records: Iterator[dict[str, Any]], path: str | Path) -> None:
    """One CSV row per image × rank (:data:`foveal.report.tables.CSV_HEADER`) from prediction records, atomically."""
    with atomic_output(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for r in records:
            for rank, s in enumerate(r["predictions"], start=1):
                writer.writerow([r["file"], rank, s["index"], s["class"], repr(s["probability"])])


def predictor(loaded: LoadedClassifier, top_k: int = 5, **options: Any) -> ClassifyPredictor:
    """The batched top-``top_k`` predictor of a loaded classifier."""
    return ClassifyPredictor(loaded, top_k)


def writer(predictor: ClassifyPredictor, **options: Any) -> ClassifyWriter:
    """The writer of a classifier's predictions (``predictions.csv`` beside the records)."""
    return ClassifyWriter()


def prepare_memory(predictor: ClassifyPredictor, item: InMemory) -> torch.Tensor:
    """An in-memory image prepared as a file is: uint8 pixels with the classifier's channels, resized, normalised."""
    return predictor.prepare.image(uint8_pixels(item, predictor.clf.channels))


def file_pixels(item: InMemory, loaded: LoadedClassifier) -> np.ndarray:
    """An in-memory image as the (H, W, C) uint8 pixels of an image file with the classifier's channels."""
    return uint8_pixels(item, loaded.channels).permute(1, 2, 0).numpy()


def result(source: str, prepared: Any, output: Any, loaded: LoadedClassifier) -> Classification:
    """The API's result of one image: its top-k classes."""
    return Classification(source, tuple(output))


def format_records(records: list[dict[str, Any]]) -> str:
    """The table of prediction records: each image's top classes and probabilities."""
    preds = [
        Prediction(r["file"], [(p["index"], p["class"], p["probability"]) for p in r["predictions"]]) for r in records
    ]
    return format_table(preds)


def export_spec(path: Path, device: Any) -> ExportSpec:
    """The classifier at its resolution; one output, "logits" (N, K)."""
    clf = load_classifier(path, device=device)
    return ExportSpec(clf.model, clf.channels, (clf.resolution, clf.resolution))
