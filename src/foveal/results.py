"""What :mod:`foveal.api`'s models return: one typed result per task and image.

- :class:`Classification`: the top-k classes of an image (``label``, ``score``, ``topk``);
- :class:`Segmentation`: the (H, W) label image of an image, at its own size;
- :class:`Detections`: boxes (x1, y1, x2, y2) in the image's own pixels, scores, labels and class names;
- :class:`Explanation`: the classes, scores and map boxes of ``explain`` (:class:`foveal.tasks.explain.ExplainRecord`).

Evaluations return the metrics types the command line writes: :class:`foveal.metrics.classification.
ClassificationResult`, :class:`foveal.tasks.segment_eval.SegEvaluation`, :class:`foveal.metrics.detection.
DetectionResult` and, for localization, :class:`foveal.tasks.localize_eval.LocalizationReport`.

``source`` names the input: the image file's path as given or found in a folder, or ``<image i>`` for the i-th image
passed in memory (PIL image, array, tensor).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from foveal.api_args import number
from foveal.report.tables import ClassScore
from foveal.tasks.explain import ExplainRecord as Explanation

__all__ = ["ClassScore", "Classification", "Detections", "Explanation", "Segmentation"]


@dataclass(frozen=True)
class Classification:
    """The top-k classes of one image, best first.

    Attributes:
        source: the input (see the module docstring).
        topk: ``(class_index, name, probability)`` entries, by decreasing probability.
    """

    source: str
    topk: tuple[ClassScore, ...]

    @property
    def label(self) -> str:
        """Name of the most probable class."""
        return self.topk[0].name

    @property
    def index(self) -> int:
        """Index of the most probable class."""
        return self.topk[0].class_index

    @property
    def score(self) -> float:
        """Soft-max probability of the most probable class."""
        return self.topk[0].probability


@dataclass(frozen=True, eq=False)
class Segmentation:
    """The segmentation of one image (overlap-tile inference over the whole image).

    Attributes:
        source: the input (see the module docstring).
        labels: (H, W) int32 at the image's size: instance ids (0 background, 1…n objects) for an instance model,
            class indices (``classes``) otherwise.
        foreground: fraction of pixels of a class other than background (0).
        instances: whether ``labels`` holds instances.
        classes: the model's class names (index 0 is background).
        probabilities: (H, W, K) float32 soft-max probabilities when asked for, else None.
    """

    source: str
    labels: np.ndarray
    foreground: float
    instances: bool
    classes: tuple[str, ...]
    probabilities: np.ndarray | None = None

    @property
    def count(self) -> int:
        """Objects found (instance models), or foreground classes present."""
        if self.instances:
            return int(self.labels.max(initial=0))
        return int(len(np.unique(self.labels[self.labels > 0])))


@dataclass(frozen=True, eq=False)
class Detections:
    """The detections of one image, by decreasing score.

    Attributes:
        source: the input (see the module docstring).
        size: (H, W) of the image.
        boxes: (D, 4) float32 (x1, y1, x2, y2) in the image's own pixels.
        scores: (D,) float32.
        labels: (D,) int64 class indices.
        names: (D,) class name of each detection.
    """

    source: str
    size: tuple[int, int]
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]

    def __len__(self) -> int:
        return int(len(self.scores))

    def above(self, score: float) -> Detections:
        """The detections of score ≥ ``score`` (a number)."""
        keep = self.scores >= number(score, "score", "detections.above(0.5)")
        names = tuple(n for n, k in zip(self.names, keep.tolist(), strict=True) if k)
        return Detections(self.source, self.size, self.boxes[keep], self.scores[keep], self.labels[keep], names)
