"""Every result foveal returns, typed: what :mod:`foveal.api`'s models give per image, and what evaluations give.

Per image, one type per task:

- :class:`Classification`: the top-k classes of an image (``label``, ``score``, ``topk`` of :class:`ClassScore`);
- :class:`Segmentation`: the (H, W) label image of an image, at its own size;
- :class:`Detections`: boxes (x1, y1, x2, y2) in the image's own pixels, scores, labels and class names;
- :class:`Explanation`: the classes, scores and map boxes of ``explain``.

Evaluations, the metrics the command line writes:

- :class:`ClassificationResult`: top-1 / top-5, per-class accuracy and the confusion matrix of a classifier;
- :class:`SegEvaluation`: pixel metrics, and for instance data instance matching and the Rand error, of a U-Net;
- :class:`DetectionResult`: COCO box evaluation of a detector;
- :class:`LocalizationReport`: weakly supervised localization of a classifier (:class:`LocalizationResult`, the CAM
  paper's errors; :class:`MaxBoxAccResult`, MaxBoxAccV2; one :class:`ImageRow` per image).

``source`` names the input: the image file's path as given or found in a folder, or ``<image i>`` for the i-th image
passed in memory (PIL image, array, tensor).

This module sits on the ground floor (numpy and the standard library; no torch): every layer that makes or reads a
result imports its type from here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np

from foveal.api_args import number
from foveal.errors import FovealError

__all__ = [
    "STAT_NAMES",
    "TOP_K",
    "ClassScore",
    "Classification",
    "ClassificationResult",
    "DetectionResult",
    "Detections",
    "Explanation",
    "ImageRow",
    "LocalizationReport",
    "LocalizationResult",
    "MaxBoxAccResult",
    "SegEvaluation",
    "Segmentation",
]

TOP_K = 5
"""The k of "top-5"; with fewer classes K the meter uses k = min(5, K), so top-5 is then 1.0 by definition."""

STAT_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
"""Names of COCO's 12 summary numbers, in the order of ``COCOeval.stats``."""


# -- per image ---------------------------------------------------------------------------------------------------------
class ClassScore(NamedTuple):
    """One entry of a top-k list: class index, class name, probability."""

    class_index: int
    name: str
    probability: float


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
        path: for an image streamed to disk (``predict(out=…)``), its labels file; ``labels`` and ``probabilities``
            are then read-only array views of the files that read only what is indexed (``labels[:512, :512]``;
            ``labels[:]`` reads it whole). None for an image segmented in memory.
        objects: for a streamed image, the objects (or classes) its streaming counted.
    """

    source: str
    labels: Any
    foreground: float
    instances: bool
    classes: tuple[str, ...]
    probabilities: Any = None
    path: str | None = None
    objects: int | None = None

    @property
    def count(self) -> int:
        """Objects found (instance models), or foreground classes present."""
        if self.objects is not None:
            return self.objects
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


@dataclass(frozen=True)
class Explanation:
    """What ``explain`` (:func:`foveal.tasks.explain.explain`) found for one image.

    Attributes:
        file: the image file.
        task: "classify", "segment" or "detect".
        method: "cam" or "gradcam".
        size: (height, width) of the image in pixels.
        classes: classify: the top-k class names, best first; segment: ["foreground"]; detect: the class of each of
            the top-k detections, best first.
        scores: classify: soft-max probability of each class; segment: fraction of pixels predicted foreground;
            detect: each detection's score.
        boxes: one (x1, y1, x2, y2) per class, in original image pixels (x2, y2 exclusive), from the map's largest
            region above the threshold.
        figures: PNG files written for this image.
        detections: detect only: each detection's own box (x1, y1, x2, y2) in original image pixels.
        peaks: classify only: where each class's map is largest, (x, y) in original image pixels.
    """

    file: str
    task: str
    method: str
    size: tuple[int, int]
    classes: list[str]
    scores: list[float]
    boxes: list[list[float]]
    figures: list[str]
    detections: list[list[float]] | None = None
    peaks: list[list[int]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- evaluations -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassificationResult:
    """Metrics of a classifier over a whole evaluation set (:class:`foveal.metrics.classification.ClassificationMeter`).

    Attributes:
        top1: fraction (0..1) of samples whose arg-max class is the target.
        top5: fraction (0..1) of samples whose target is among the ``top5_k`` highest scores (ties favour the target).
        per_class_accuracy: length K; recall of each true class (diagonal / row sum of ``confusion``), or ``None`` for a
            class with no samples (never NaN).
        confusion: K×K counts, ``confusion[t][p]`` = samples of true class ``t`` predicted as ``p``.
        count: number of samples.
        loss: sample-weighted mean of the losses passed to ``update``, or ``None`` if none were passed.
        classes: optional class names, length K.
        top5_k: the k actually used for ``top5``: ``min(5, K)``.
    """

    top1: float
    top5: float
    per_class_accuracy: list[float | None]
    confusion: list[list[int]]
    count: int
    loss: float | None = None
    classes: list[str] | None = None
    top5_k: int = TOP_K

    @property
    def num_classes(self) -> int:
        return len(self.confusion)

    @property
    def support(self) -> list[int]:
        """Samples per true class (row sums of ``confusion``), length K."""
        return [sum(row) for row in self.confusion]

    @property
    def mean_class_accuracy(self) -> float | None:
        """Balanced accuracy: mean of ``per_class_accuracy`` over the classes that have samples (``None`` if none)."""
        present = [a for a in self.per_class_accuracy if a is not None]
        return sum(present) / len(present) if present else None

    def class_names(self) -> list[str]:
        """``classes`` if given, else the class indices as strings."""
        return list(self.classes) if self.classes is not None else [str(i) for i in range(self.num_classes)]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field plus ``mean_class_accuracy`` (only ints, floats, None, str and lists)."""
        return {
            "top1": self.top1,
            "top5": self.top5,
            "top5_k": self.top5_k,
            "count": self.count,
            "loss": self.loss,
            "mean_class_accuracy": self.mean_class_accuracy,
            "per_class_accuracy": list(self.per_class_accuracy),
            "confusion": [list(row) for row in self.confusion],
            "classes": list(self.classes) if self.classes is not None else None,
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> ClassificationResult:
        """Inverse of :meth:`to_dict` (derived keys such as ``mean_class_accuracy`` are ignored)."""
        try:
            return cls(
                top1=float(record["top1"]),
                top5=float(record["top5"]),
                per_class_accuracy=[None if a is None else float(a) for a in record["per_class_accuracy"]],
                confusion=[[int(c) for c in row] for row in record["confusion"]],
                count=int(record["count"]),
                loss=None if record.get("loss") is None else float(record["loss"]),
                classes=None if record.get("classes") is None else [str(c) for c in record["classes"]],
                top5_k=int(record.get("top5_k", TOP_K)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FovealError(f"not a classification metrics record ({type(exc).__name__}: {exc})") from None


@dataclass
class SegEvaluation:
    """The evaluation of a U-Net (:func:`foveal.tasks.segment_eval.evaluate_checkpoint`): pixel metrics (per-class
    IoU / Dice, pixel error), and for instance data the instance matching at IoU 0.5 … 0.9, the number of touching
    ground-truth pairs merged by the prediction and the Rand error."""

    pixels: Any
    instances: Any | None
    merged: tuple[int, int] | None
    rand_error: float | None

    def summary(self) -> dict[str, Any]:
        """Flat numbers for logs and the progress line; "score" (higher is better) picks the best checkpoint."""
        p = self.pixels
        out: dict[str, Any] = {"fg_iou": p.foreground_iou, "mean_iou": p.mean_iou, "pixel_error": p.pixel_error}
        if self.instances is not None:
            out["f1_50"] = self.instances.f1_at(0.5)
            out["ap"] = self.instances.mean_ap
        if self.merged is not None:
            out["merged_pairs"], out["touching_pairs"] = self.merged
        if self.rand_error is not None:
            out["rand_error"] = self.rand_error
        out["score"] = out.get("f1_50", out["mean_iou"])
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"summary": {k: v for k, v in self.summary().items() if k != "score"}}
        d["pixels"] = self.pixels.to_dict()
        if self.instances is not None:
            d["instances"] = self.instances.to_dict()
        return d

    def format(self) -> str:
        lines = []
        for k, v in self.summary().items():
            if k != "score":
                lines.append(f"{k:>15}: {v:.4f}" if isinstance(v, float) else f"{k:>15}: {v}")
        return "\n".join(lines)


@dataclass(frozen=True, eq=False)
class DetectionResult:
    """COCO box evaluation of one set of detections.

    Attributes:
        stats: the 12 numbers of :data:`STAT_NAMES` (−1 where undefined).
        classes: class names; class k has category ``data.label_to_category_id[k]``.
        per_class_ap: (K,) AP over IoU 0.50:0.95 of each class (area all, 100 detections; −1 without ground truth).
        per_class_ap50: (K,) AP at IoU 0.5 of each class.
        precision: (T, R, K, A, M) interpolated precision, COCO's array: T = 10 IoU thresholds, R = 101 recall
            points, K classes, A = 4 areas (all, small, medium, large), M = 3 detection limits (1, 10, 100); −1
            where a class has no ground truth.
        iou_thresholds: (T,) 0.50 … 0.95.
        recall_thresholds: (R,) 0.00 … 1.00.
        backend: "faster" or "pycocotools".
        num_images, num_boxes, num_detections: what was evaluated (boxes: non-crowd ground truth).
    """

    stats: tuple[float, ...]
    classes: tuple[str, ...]
    per_class_ap: np.ndarray
    per_class_ap50: np.ndarray
    precision: np.ndarray
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    backend: str
    num_images: int
    num_boxes: int
    num_detections: int

    def stat(self, name: str) -> float:
        """One of the 12 numbers by name (see :data:`STAT_NAMES`)."""
        if name not in STAT_NAMES:
            raise FovealError(f"unknown COCO statistic '{name}': choose one of {', '.join(STAT_NAMES)}")
        return self.stats[STAT_NAMES.index(name)]

    @property
    def ap(self) -> float:
        return self.stats[0]

    @property
    def ap50(self) -> float:
        return self.stats[1]

    @property
    def ap75(self) -> float:
        return self.stats[2]

    @property
    def ap_small(self) -> float:
        return self.stats[3]

    @property
    def ap_medium(self) -> float:
        return self.stats[4]

    @property
    def ap_large(self) -> float:
        return self.stats[5]

    @property
    def ar100(self) -> float:
        return self.stats[8]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: the 12 numbers by name, per-class AP and AP50, counts; undefined values are None."""

        def value(v: float) -> float | None:
            return None if v < 0 else float(v)

        return {
            **{name: value(v) for name, v in zip(STAT_NAMES, self.stats, strict=True)},
            "per_class": {
                name: {"AP": value(float(a)), "AP50": value(float(b))}
                for name, a, b in zip(self.classes, self.per_class_ap, self.per_class_ap50, strict=True)
            },
            "backend": self.backend,
            "num_images": self.num_images,
            "num_boxes": self.num_boxes,
            "num_detections": self.num_detections,
        }

    def format(self) -> str:
        """A small text table: the summary numbers, then AP and AP50 per class ("n/a" where undefined)."""

        def cell(v: float) -> str:
            return f"{v:6.3f}" if v >= 0 else f"{'n/a':>6s}"

        shown = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")
        lines = [
            f"COCO box evaluation: {self.num_images} images, {self.num_boxes} boxes, {self.num_detections} detections",
            "  " + " ".join(f"{n:>6s}" for n in shown),
            "  " + " ".join(cell(self.stat(n)) for n in shown),
        ]
        width = max([5, *(len(c) for c in self.classes)])
        lines.append(f"  {'class':<{width}s} {'AP':>6s} {'AP50':>6s}")
        for name, a, b in zip(self.classes, self.per_class_ap, self.per_class_ap50, strict=True):
            lines.append(f"  {name:<{width}s} {cell(float(a))} {cell(float(b))}")
        return "\n".join(lines)


@dataclass(frozen=True)
class LocalizationResult:
    """Error rates (fractions 0..1) over every image seen.

    Attributes:
        top1_loc_error: first prediction has the wrong class or IoU < threshold with every ground-truth box.
        top5_loc_error: none of the first five predictions has the right class and IoU ≥ threshold (``None`` when
            fewer than five predictions per image were given).
        gt_known_loc_error: the true class's box has IoU < threshold (``None`` when no such boxes were given).
        top1_cls_error / top5_cls_error: classification errors of the same predictions.
        count: images seen.
    """

    top1_loc_error: float
    top5_loc_error: float | None
    gt_known_loc_error: float | None
    top1_cls_error: float
    top5_cls_error: float | None
    count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MaxBoxAccResult:
    """MaxBoxAccV2 and what it is made of (fractions 0..1).

    Attributes:
        max_box_acc_v2: mean of ``max_box_acc`` over the IoU thresholds.
        max_box_acc: per IoU threshold δ (keys "0.3", "0.5", "0.7"), the best box accuracy over map thresholds.
        best_threshold: per δ, the map threshold τ that reaches it (ties: the smallest τ).
        thresholds: the map thresholds τ tried.
        box_acc: per δ, the box accuracy at each τ (a curve over ``thresholds``).
        count: images seen.
    """

    max_box_acc_v2: float
    max_box_acc: dict[str, float]
    best_threshold: dict[str, float]
    thresholds: list[float]
    box_acc: dict[str, list[float]]
    count: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ImageRow:
    """The verdict on one image: ``classes`` / ``scores`` its top-k, ``box`` the top-1 class's box and ``iou`` its
    best IoU with the ground truth, ``true_class_box`` / ``true_class_iou`` the same for the true class's map,
    ``localized`` whether the top-1 prediction localizes the image."""

    file: str
    label: str
    classes: list[str]
    scores: list[float]
    box: list[float]
    iou: float
    true_class_box: list[float]
    true_class_iou: float
    localized: bool


@dataclass(frozen=True)
class LocalizationReport:
    """What an evaluation found: the CAM paper's errors, MaxBoxAccV2, one row per image and the options used."""

    localization: LocalizationResult
    max_box_acc: MaxBoxAccResult
    images: list[ImageRow]
    options: dict[str, Any]
    figures: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The metrics, options and figures (without the per-image rows)."""
        return {
            "localization": self.localization.to_dict(),
            "max_box_acc": self.max_box_acc.to_dict(),
            "options": self.options,
            "figures": self.figures,
        }

    def format(self) -> str:
        """A few lines for the terminal."""

        def pct(v: float | None) -> str:
            return "–" if v is None else f"{100 * v:.1f} %"

        loc, mba = self.localization, self.max_box_acc
        per_iou = ", ".join(f"IoU {k}: {pct(v)} at τ {mba.best_threshold[k]:.2f}" for k, v in mba.max_box_acc.items())
        return "\n".join(
            [
                f"weakly supervised localization of {loc.count} images ({self.options['method']})",
                f"  top-1 loc error {pct(loc.top1_loc_error)}  top-5 loc error {pct(loc.top5_loc_error)}  "
                f"GT-known loc error {pct(loc.gt_known_loc_error)}",
                f"  top-1 cls error {pct(loc.top1_cls_error)}  top-5 cls error {pct(loc.top5_cls_error)}",
                f"  MaxBoxAccV2 {pct(mba.max_box_acc_v2)} ({per_iou})",
            ]
        )
