"""Segmentation metrics: per-class IoU and Dice, ISBI 2012 Rand and pixel error, instance matching (DSB 2018 AP).

Three families, each computed from a count table rather than from pixels or pixel pairs:

- :class:`SegmentationMeter` accumulates a K×K confusion matrix of semantic class maps over batches (per-class IoU and
  Dice, mean IoU, foreground IoU, pixel error).
- :func:`rand_error` and :func:`pixel_error` are the scores of the ISBI 2012 EM segmentation challenge, the benchmark on
  which the U-Net paper reports Rand error 0.0382 and pixel error 0.0611 (Ronneberger et al., MICCAI 2015, Table 1).
  The Rand error works on the sparse contingency table of the two labelings, never on the O(n²) pixel pairs.
- :func:`match_instances`, :class:`InstanceMeter` and :func:`merged_pairs` score instance label images the way the
  2018 Data Science Bowl did: one-to-one matching by IoU and AP = TP / (TP + FP + FN) at IoU thresholds 0.50:0.05:0.95.

Label images use 0 for background and any other integer for an instance; the labels need not be consecutive.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from foveal.errors import FovealError

DSB_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""IoU thresholds 0.50, 0.55, …, 0.95 of the 2018 Data Science Bowl score."""


@dataclass(frozen=True)
class SegmentationResult:
    """Pixel-wise metrics of a semantic segmentation over a whole evaluation set.

    A score whose denominator is zero (a class absent from both prediction and target) is ``None``, never NaN, and is
    left out of the means.

    Attributes:
        iou: length K; per-class IoU = TP / (TP + FP + FN).
        dice: length K; per-class Dice = 2 TP / (2 TP + FP + FN).
        mean_iou: mean of the defined per-class IoUs (background included).
        foreground_iou: mean of the defined IoUs of the classes ≥ 1, i.e. the IoU of class 1 for a two-class
            (background / foreground) problem; ``None`` for K = 1.
        pixel_error: 1 − pixel accuracy, the fraction of counted pixels whose predicted class is wrong.
        confusion: K×K counts, ``confusion[t][p]`` = pixels of true class ``t`` predicted as ``p``.
        class_names: optional names, length K.
    """

    iou: list[float | None]
    dice: list[float | None]
    mean_iou: float | None
    foreground_iou: float | None
    pixel_error: float
    confusion: list[list[int]]
    class_names: list[str] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.confusion)

    @property
    def pixels(self) -> int:
        """Number of pixels counted (ignored pixels excluded)."""
        return sum(sum(row) for row in self.confusion)

    @property
    def mean_dice(self) -> float | None:
        """Mean of the defined per-class Dice scores."""
        return _mean(self.dice)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field plus ``mean_dice`` and ``pixels``."""
        return {
            "mean_iou": self.mean_iou,
            "foreground_iou": self.foreground_iou,
            "mean_dice": self.mean_dice,
            "pixel_error": self.pixel_error,
            "pixels": self.pixels,
            "iou": list(self.iou),
            "dice": list(self.dice),
            "confusion": [list(row) for row in self.confusion],
            "class_names": list(self.class_names) if self.class_names is not None else None,
        }

    @classmethod
    def from_confusion(
        cls, confusion: np.ndarray | Tensor, class_names: Sequence[str] | None = None
    ) -> SegmentationResult:
        """Metrics of a K×K confusion matrix (rows: true class, columns: predicted class)."""
        conf = np.asarray(confusion, dtype=np.int64)
        total = int(conf.sum())
        if total == 0:
            raise FovealError("no pixels to compute segmentation metrics from; is the evaluation set empty?")
        tp = np.diag(conf).tolist()
        wrong = (conf.sum(axis=0) + conf.sum(axis=1) - 2 * np.diag(conf)).tolist()  # FP + FN per class
        iou = [_ratio_or_none(t, t + e) for t, e in zip(tp, wrong, strict=True)]
        dice = [_ratio_or_none(2 * t, 2 * t + e) for t, e in zip(tp, wrong, strict=True)]
        return cls(
            iou=iou,
            dice=dice,
            mean_iou=_mean(iou),
            foreground_iou=_mean(iou[1:]),
            pixel_error=1.0 - sum(tp) / total,
            confusion=conf.tolist(),
            class_names=list(class_names) if class_names is not None else None,
        )


class SegmentationMeter:
    """Accumulates a K×K confusion matrix of class maps over batches.

    Example::

        meter = SegmentationMeter(2, ["background", "cell"])
        for image, mask in loader:
            meter.update(model(image).argmax(1), mask)
        meter.all_reduce()  # in distributed evaluation, on every rank
        print(meter.result().foreground_iou)

    Args:
        num_classes: K ≥ 1.
        class_names: optional names, length K.
        ignore_index: target value of pixels that are not counted (e.g. unlabelled or outside the valid output).
    """

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None, ignore_index: int = -1) -> None:
        if int(num_classes) < 1:
            raise FovealError(f"a segmentation meter needs at least one class, got num_classes={num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise FovealError(f"got {len(class_names)} class names for num_classes={num_classes}; give one per class")
        self.num_classes = int(num_classes)
        self.class_names = [str(c) for c in class_names] if class_names is not None else None
        self.ignore_index = int(ignore_index)
        self.reset()

    def reset(self) -> None:
        """Forget every pixel seen so far."""
        self._confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> None:
        """Add a batch of class maps.

        Args:
            pred: (N, H, W) or (H, W) integer predicted classes in [0, K) (e.g. ``logits.argmax(1)``), any device.
            target: same shape, integer true classes in [0, K) or ``ignore_index``.
        """
        pred_t, target_t = torch.as_tensor(pred), torch.as_tensor(target)
        if pred_t.shape != target_t.shape or pred_t.ndim not in (2, 3):
            raise FovealError(
                f"prediction and target must be class maps of equal shape (N, H, W) or (H, W), got "
                f"{tuple(pred_t.shape)} and {tuple(target_t.shape)}; pass logits.argmax(1), not the logits"
            )
        for name, t in (("prediction", pred_t), ("target", target_t)):
            if t.dtype.is_floating_point or t.dtype.is_complex:
                raise FovealError(f"the {name} must hold integer class indices, got dtype {t.dtype}")
        target_t = target_t.to(device=pred_t.device, dtype=torch.long).flatten()
        pred_t = pred_t.to(torch.long).flatten()
        keep = target_t != self.ignore_index
        pred_t, target_t = pred_t[keep], target_t[keep]
        if target_t.numel() == 0:
            return
        k = self.num_classes
        for name, t in (("target", target_t), ("predicted", pred_t)):
            low, high = int(t.min()), int(t.max())
            if low < 0 or high >= k:
                raise FovealError(
                    f"{name} class {low if low < 0 else high} is outside [0, {k}); the masks' classes do not match the "
                    f"meter's {k} classes (ignore_index is {self.ignore_index})"
                )
        self._confusion += torch.bincount(target_t * k + pred_t, minlength=k * k).view(k, k).cpu()

    def result(self) -> SegmentationResult:
        """The metrics over every pixel seen (raises :class:`FovealError` if none was counted)."""
        return SegmentationResult.from_confusion(self._confusion.numpy(), self.class_names)

    def merge(self, other: SegmentationMeter) -> SegmentationMeter:
        """Add ``other``'s pixels to this meter (in place) and return ``self``."""
        if other.num_classes != self.num_classes:
            raise FovealError(f"cannot merge a {other.num_classes}-class meter into a {self.num_classes}-class meter")
        self._confusion += other._confusion
        return self

    def all_reduce(self, device: torch.device | str | None = None) -> None:
        """Sum the confusion matrix over the default process group (every rank must call it); no-op otherwise."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        if device is None:
            nccl = dist.get_backend() == "nccl"
            device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        state = self._confusion.to(device)
        dist.all_reduce(state, op=dist.ReduceOp.SUM)
        self._confusion = state.cpu()


def rand_error(pred_labels: np.ndarray, true_labels: np.ndarray, kind: Literal["fscore", "index"] = "fscore") -> float:
    """Rand error between a predicted and a true labeling, as scored by the ISBI 2012 challenge (default).

    ``kind="fscore"`` (ISBI 2012): the *foreground-restricted Rand error*, 1 − F-score of the foreground-restricted
    Rand index. The challenge's evaluation page lists it among the original metrics (those of the U-Net paper's
    Table 1) as "1 − the maximal F-score of the foreground-restricted Rand index", where the zero component of the
    ground truth is excluded; Arganda-Carreras et al., "Crowdsourcing the creation of image segmentation algorithms for
    connectomics", Front. Neuroanat. 9:142 (2015), give the formula. Only pixels with ``true_labels != 0`` take part;
    over the ordered pairs of those pixels (a pixel paired with itself included, i.e. the n² normalization of the
    paper and of Fiji's ``RandError``), with n_ij the pixels of true segment i and predicted segment j::

        precision = Σ n_ij² / Σ_j b_j²     (pairs joined by the prediction that the truth also joins)
        recall    = Σ n_ij² / Σ_i a_i²     (pairs joined by the truth that the prediction also joins)
        error     = 1 − 2 · precision · recall / (precision + recall)

    A pixel that the prediction labels 0 (boundary) is a segment of its own. "Maximal" in the challenge's wording is
    over the thresholds of a submitted probability map; this function scores one labeling, so to reproduce the
    challenge, threshold the map at several values, label each (4-connected components of the non-boundary pixels,
    see :func:`foveal.data.instances.instances_from_classes`) and keep the smallest error.

    ``kind="index"``: the classic 1 − Rand index (Rand, JASA 1971) over all unordered pairs of distinct pixels of
    the whole image, label 0 being an ordinary segment: ``(Σ a_i² + Σ b_j² − 2 Σ n_ij²) / (n (n − 1))``.

    Args:
        pred_labels: (H, W) integer labeling (any values; 0 = boundary/background for ``"fscore"``).
        true_labels: (H, W) integer labeling of the same shape (0 = background, excluded for ``"fscore"``).
        kind: ``"fscore"`` (ISBI 2012, default) or ``"index"`` (classic Rand).

    Returns:
        The error in [0, 1]; 0.0 when there is no pair to disagree on (no true foreground for ``"fscore"``).
    """
    pred, true = _check_pair(pred_labels, true_labels, "rand_error")
    if kind == "fscore":
        fg = true != 0
        true, pred = true[fg], pred[fg]
        if true.size == 0:
            return 0.0
        singletons = int(np.count_nonzero(pred == 0))
        joined = pred != 0
        n_ij = _joint_counts(true[joined], pred[joined])
        a_i = np.unique(true, return_counts=True)[1]
        b_j = np.unique(pred[joined], return_counts=True)[1]
        sum_ab = _sum_squares(n_ij) + singletons
        precision = sum_ab / (_sum_squares(b_j) + singletons)
        recall = sum_ab / _sum_squares(a_i)
        return 1.0 - 2.0 * precision * recall / (precision + recall)
    if kind == "index":
        n = true.size
        if n < 2:
            return 0.0
        n_ij = _joint_counts(true, pred)
        a_i = np.unique(true, return_counts=True)[1]
        b_j = np.unique(pred, return_counts=True)[1]
        return (_sum_squares(a_i) + _sum_squares(b_j) - 2 * _sum_squares(n_ij)) / (n * (n - 1))
    raise FovealError(f"unknown Rand error kind {kind!r}; use 'fscore' (ISBI 2012) or 'index' (classic Rand)")


def pixel_error(pred_mask: np.ndarray, true_mask: np.ndarray) -> float:
    """Fraction of pixels whose binary class differs: 1 − pixel accuracy.

    For binary masks this is the squared Euclidean distance between the two masks divided by the number of pixels,
    the ISBI 2012 pixel error for one threshold (the challenge reported the best over the thresholds of the map).

    Args:
        pred_mask: (H, W) mask; non-zero (or ``True``) = foreground.
        true_mask: (H, W) mask of the same shape.

    Returns:
        The error in [0, 1].
    """
    pred, true = _check_pair(pred_mask, true_mask, "pixel_error")
    return float(np.count_nonzero((pred != 0) != (true != 0))) / max(true.size, 1)


@dataclass(frozen=True)
class InstanceResult:
    """Instance matching counts per IoU threshold, and the scores derived from them.

    A predicted instance matches a true one when their IoU is *strictly* above the threshold (as in the 2018 Data
    Science Bowl); matching is one-to-one. Where a score's denominator is zero it is 1.0 if nothing was missed in
    either direction (both sides empty) and 0.0 otherwise.

    Attributes:
        thresholds: the IoU thresholds, ascending.
        tp, fp, fn: per threshold, matched pairs, unmatched predictions, unmatched true instances.
        n_pred, n_true: number of predicted and true instances.
        matched_iou_sum: sum of the IoUs of the pairs matched at IoU > 0.5.
        matched: number of those pairs.
        images: number of images the counts were summed over.
    """

    thresholds: tuple[float, ...]
    tp: tuple[int, ...]
    fp: tuple[int, ...]
    fn: tuple[int, ...]
    n_pred: int
    n_true: int
    matched_iou_sum: float
    matched: int
    images: int = 1

    def _scores(self, fn: Callable[[int, int, int], float]) -> dict[float, float]:
        return {t: fn(tp, fp, fn_) for t, tp, fp, fn_ in zip(self.thresholds, self.tp, self.fp, self.fn, strict=True)}

    @property
    def precision(self) -> dict[float, float]:
        """TP / (TP + FP) per threshold."""
        return self._scores(lambda tp, fp, fn: _ratio(tp, tp + fp, 1.0 if fn == 0 else 0.0))

    @property
    def recall(self) -> dict[float, float]:
        """TP / (TP + FN) per threshold."""
        return self._scores(lambda tp, fp, fn: _ratio(tp, tp + fn, 1.0 if fp == 0 else 0.0))

    @property
    def f1(self) -> dict[float, float]:
        """2 TP / (2 TP + FP + FN) per threshold."""
        return self._scores(lambda tp, fp, fn: _ratio(2 * tp, 2 * tp + fp + fn, 1.0))

    @property
    def ap(self) -> dict[float, float]:
        """Data Science Bowl 2018 average precision TP / (TP + FP + FN) per threshold."""
        return self._scores(lambda tp, fp, fn: _ratio(tp, tp + fp + fn, 1.0))

    @property
    def mean_ap(self) -> float:
        """Mean of :attr:`ap` over the thresholds (the DSB 2018 score of one image, or of pooled counts)."""
        return sum(self.ap.values()) / len(self.thresholds)

    @property
    def mean_matched_iou(self) -> float | None:
        """Mean IoU of the pairs matched at IoU > 0.5 (``None`` if there are none)."""
        return self.matched_iou_sum / self.matched if self.matched else None

    def _at(self, scores: Mapping[float, float], threshold: float) -> float:
        for t, value in scores.items():
            if math.isclose(t, threshold, abs_tol=1e-9):
                return value
        raise FovealError(f"IoU threshold {threshold} was not evaluated; the thresholds are {list(self.thresholds)}")

    def f1_at(self, threshold: float) -> float:
        """F1 at one of the evaluated thresholds."""
        return self._at(self.f1, threshold)

    def ap_at(self, threshold: float) -> float:
        """AP at one of the evaluated thresholds."""
        return self._at(self.ap, threshold)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: counts and scores per threshold (keys are the thresholds as strings, e.g. ``"0.5"``)."""
        scores = {"precision": self.precision, "recall": self.recall, "f1": self.f1, "ap": self.ap}
        per = {
            str(t): {"tp": self.tp[i], "fp": self.fp[i], "fn": self.fn[i]} | {k: v[t] for k, v in scores.items()}
            for i, t in enumerate(self.thresholds)
        }
        return {
            "mean_ap": self.mean_ap,
            "mean_matched_iou": self.mean_matched_iou,
            "n_pred": self.n_pred,
            "n_true": self.n_true,
            "images": self.images,
            "thresholds": list(self.thresholds),
            "per_threshold": per,
        }


def instance_iou(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """IoU of every true × predicted instance, from one joint histogram.

    Args:
        pred: (H, W) integer instance labels, 0 = background.
        true: (H, W) integer instance labels, 0 = background.

    Returns:
        (n_true, n_pred) float64 IoUs; rows and columns follow the sorted non-zero labels of ``true`` and ``pred``.
    """
    joint = _overlap(*_check_pair(pred, true, "instance_iou"))
    inter = joint[1:, 1:].astype(np.float64)
    area_t = joint[1:, :].sum(axis=1)
    area_p = joint[:, 1:].sum(axis=0)
    return inter / (area_t[:, None] + area_p[None, :] - inter)


def match_instances(pred: np.ndarray, true: np.ndarray, thresholds: Sequence[float] = DSB_THRESHOLDS) -> InstanceResult:
    """Match predicted to true instances one-to-one at each IoU threshold.

    From 0.5 up an instance can overlap at most one other with IoU > threshold, so the matching is unique; at lower
    thresholds an optimal assignment (``scipy.optimize.linear_sum_assignment``) picks the largest number of pairs with
    IoU > threshold, the one with the largest summed IoU among equals.

    Args:
        pred: (H, W) integer predicted instance labels, 0 = background.
        true: (H, W) integer true instance labels, 0 = background.
        thresholds: IoU thresholds in [0, 1); default 0.50:0.05:0.95 (Data Science Bowl 2018).

    Returns:
        An :class:`InstanceResult`.
    """
    ts = tuple(sorted({float(t) for t in thresholds}))
    if not ts or ts[0] < 0 or ts[-1] >= 1:
        raise FovealError(f"IoU thresholds must be a non-empty list of values in [0, 1), got {list(thresholds)}")
    iou = instance_iou(pred, true)
    n_true, n_pred = iou.shape
    tp = tuple(_match_count(iou, t) for t in ts)
    matched = iou[iou > 0.5]
    return InstanceResult(
        thresholds=ts,
        tp=tp,
        fp=tuple(n_pred - m for m in tp),
        fn=tuple(n_true - m for m in tp),
        n_pred=n_pred,
        n_true=n_true,
        matched_iou_sum=float(matched.sum()),
        matched=int(matched.size),
    )


class InstanceMeter:
    """Sums instance matching counts over images (TP / FP / FN per threshold are pooled before the scores).

    The 2018 Data Science Bowl ranked by the mean over images of each image's mean AP; that figure is kept too, as
    :attr:`per_image_mean_ap`.

    Args:
        thresholds: IoU thresholds; default 0.50:0.05:0.95.
    """

    def __init__(self, thresholds: Sequence[float] = DSB_THRESHOLDS) -> None:
        self.thresholds = tuple(sorted({float(t) for t in thresholds}))
        self._counts = np.zeros((3, len(self.thresholds)), dtype=np.int64)  # TP, FP, FN per threshold
        self._totals = np.zeros(4, dtype=np.int64)  # n_pred, n_true, matched, images
        self._iou_sum = 0.0
        self._ap_sum = 0.0

    def update(self, pred: np.ndarray, true: np.ndarray) -> InstanceResult:
        """Add one image; returns that image's own result."""
        one = match_instances(pred, true, self.thresholds)
        self._counts += np.array([one.tp, one.fp, one.fn], dtype=np.int64)
        self._totals += np.array([one.n_pred, one.n_true, one.matched, 1], dtype=np.int64)
        self._iou_sum += one.matched_iou_sum
        self._ap_sum += one.mean_ap
        return one

    def result(self) -> InstanceResult:
        """Pooled counts and scores over every image seen."""
        if self._totals[3] == 0:
            raise FovealError("no images to compute instance metrics from; is the evaluation set empty?")
        tp, fp, fn = (tuple(int(c) for c in row) for row in self._counts)
        n_pred, n_true, matched, images = (int(c) for c in self._totals)
        return InstanceResult(self.thresholds, tp, fp, fn, n_pred, n_true, self._iou_sum, matched, images)

    @property
    def per_image_mean_ap(self) -> float | None:
        """Mean over images of each image's mean AP (``None`` before the first image)."""
        return self._ap_sum / int(self._totals[3]) if self._totals[3] else None


def merged_pairs(pred: np.ndarray, true: np.ndarray) -> tuple[int, int]:
    """Count touching true instances that the prediction fused into one instance.

    Two true instances touch when some pixel of one is an 8-neighbour of a pixel of the other. A touching pair counts as
    merged when the predicted label covering most pixels of each of the two (background included, ties to the smaller
    label) is the same non-zero label: a predicted instance that is the main part of both cells.

    Args:
        pred: (H, W) integer predicted instance labels, 0 = background.
        true: (H, W) integer true instance labels, 0 = background.

    Returns:
        (merged touching pairs, touching pairs).
    """
    pred, true = _check_pair(pred, true, "merged_pairs")
    pairs = _touching_pairs(_dense_index(true)[0].reshape(true.shape))
    if pairs.shape[0] == 0:
        return 0, 0
    joint = _overlap(pred, true)
    majority = joint.argmax(axis=1)
    a, b = majority[pairs[:, 0]], majority[pairs[:, 1]]
    return int(np.count_nonzero((a == b) & (a != 0))), int(pairs.shape[0])


def _check_pair(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise FovealError(f"{what}: prediction and ground truth must have the same shape, got {a.shape} and {b.shape}")
    for x in (a, b):
        if not (np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_):
            raise FovealError(f"{what}: expected integer label images, got dtype {x.dtype}")
    return a, b


def _dense_index(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Flat index per pixel: 0 for background, 1..n for the sorted non-zero labels; and n."""
    flat = labels.ravel().astype(np.int64)
    ids = np.unique(flat[flat != 0])
    index = np.where(flat != 0, np.searchsorted(ids, flat) + 1, 0)
    return index, int(ids.size)


def _overlap(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Joint histogram (n_true + 1, n_pred + 1) of two instance images; row / column 0 is background."""
    t_idx, n_t = _dense_index(true)
    p_idx, n_p = _dense_index(pred)
    return np.bincount(t_idx * (n_p + 1) + p_idx, minlength=(n_t + 1) * (n_p + 1)).reshape(n_t + 1, n_p + 1)


def _joint_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-zero cells n_ij of the contingency table of two labelings, never the full table when it is large."""
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    au, ai = np.unique(a.ravel(), return_inverse=True)
    bu, bi = np.unique(b.ravel(), return_inverse=True)
    codes = ai.astype(np.int64) * bu.size + bi
    if au.size * bu.size <= 4 * a.size:  # small table: a dense histogram is faster than sorting the codes
        counts = np.bincount(codes, minlength=au.size * bu.size)
        return counts[counts > 0]
    return np.unique(codes, return_counts=True)[1]


def _sum_squares(counts: np.ndarray) -> int:
    c = counts.astype(np.int64)
    return int(c @ c)


def _touching_pairs(index: np.ndarray) -> np.ndarray:
    """(P, 2) unique pairs (i < j) of non-zero labels that are 8-neighbours somewhere in a (H, W) label image."""
    found = []
    for a, b in (
        (index[:, :-1], index[:, 1:]),
        (index[:-1, :], index[1:, :]),
        (index[:-1, :-1], index[1:, 1:]),
        (index[:-1, 1:], index[1:, :-1]),
    ):
        hit = (a != b) & (a != 0) & (b != 0)
        found.append(np.stack([np.minimum(a[hit], b[hit]), np.maximum(a[hit], b[hit])], axis=1))
    return np.unique(np.concatenate(found), axis=0)


def _match_count(iou: np.ndarray, threshold: float) -> int:
    """Size of a one-to-one matching of the pairs with IoU > threshold: maximal, ties broken by the summed IoU."""
    admissible = iou > threshold
    if threshold >= 0.5 or not admissible.any():
        return int(np.count_nonzero(admissible))
    # Each admissible pair is worth 1 plus an IoU bonus whose total stays below 1, so more pairs always win.
    weight = admissible * (1.0 + iou / (2.0 * min(iou.shape)))
    rows, cols = linear_sum_assignment(weight, maximize=True)
    return int(np.count_nonzero(admissible[rows, cols]))


def _ratio(num: int, den: int, empty: float) -> float:
    return num / den if den else empty


def _ratio_or_none(num: int, den: int) -> float | None:
    return num / den if den else None


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
