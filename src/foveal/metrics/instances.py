"""Instance metrics of the 2018 Data Science Bowl: one-to-one matching of instance label images by IoU, AP = TP / (TP
+ FP + FN) at IoU thresholds 0.50:0.05:0.95, and how many touching true instances a prediction merged.

Label images use 0 for background and any other integer for an instance; the labels need not be consecutive. The
semantic scores (IoU, Dice, Rand and pixel error) are in :mod:`foveal.metrics.segmentation`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from foveal.errors import FovealError

DSB_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""IoU thresholds 0.50, 0.55, …, 0.95 of the 2018 Data Science Bowl score."""


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


@dataclass(frozen=True)
class Overlaps:
    """The pairs of instances that share pixels, as sparse arrays: memory grows with the pixels and the overlapping
    pairs, never with true × predicted instances (an image of 50,000 nuclei would need a 20 GB table).

    Attributes:
        true, pred: (P,) dense indices of each pair: 0 for background, 1..n for the sorted non-zero labels.
        pixels: (P,) pixels the pair shares.
        n_true, n_pred: number of true and predicted instances.
    """

    true: np.ndarray
    pred: np.ndarray
    pixels: np.ndarray
    n_true: int
    n_pred: int

    def ious(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(true index, predicted index, IoU) of each pair of instances that overlap, indices from 0."""
        area_t = np.bincount(self.true, weights=self.pixels, minlength=self.n_true + 1)
        area_p = np.bincount(self.pred, weights=self.pixels, minlength=self.n_pred + 1)
        both = (self.true > 0) & (self.pred > 0)
        t, p, inter = self.true[both], self.pred[both], self.pixels[both].astype(np.float64)
        return t - 1, p - 1, inter / (area_t[t] + area_p[p] - inter)

    def majority(self) -> np.ndarray:
        """(n_true + 1,) the predicted index covering most pixels of each true instance (background 0 included, ties
        to the smaller index); entry 0 is the background's own."""
        order = np.lexsort((self.pred, -self.pixels, self.true))
        t = self.true[order]
        first = np.ones(len(t), bool)
        first[1:] = t[1:] != t[:-1]
        out = np.zeros(self.n_true + 1, np.int64)
        out[t[first]] = self.pred[order][first]
        return out


_DENSE_PAIRS = 1 << 22  # joint histograms up to this many cells are counted densely (faster than sorting pixels)


def instance_overlaps(pred: np.ndarray, true: np.ndarray) -> Overlaps:
    """The :class:`Overlaps` of two (H, W) integer instance label images (0 = background)."""
    pred, true = check_label_pair(pred, true, "instance_overlaps")
    t_idx, n_t = _dense_index(true)
    p_idx, n_p = _dense_index(pred)
    key = t_idx * (n_p + 1) + p_idx
    if (n_t + 1) * (n_p + 1) <= _DENSE_PAIRS:
        counts = np.bincount(key, minlength=(n_t + 1) * (n_p + 1))
        keys = np.flatnonzero(counts)
        pixels = counts[keys]
    else:
        keys, pixels = np.unique(key, return_counts=True)
    return Overlaps(keys // (n_p + 1), keys % (n_p + 1), pixels.astype(np.int64), n_t, n_p)


def instance_iou(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """IoU of every true × predicted instance, from one joint histogram (a dense table: for many instances use
    :func:`instance_overlaps`).

    Args:
        pred: (H, W) integer instance labels, 0 = background.
        true: (H, W) integer instance labels, 0 = background.

    Returns:
        (n_true, n_pred) float64 IoUs; rows and columns follow the sorted non-zero labels of ``true`` and ``pred``.
    """
    joint = overlap_counts(*check_label_pair(pred, true, "instance_iou"))
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
    overlaps = instance_overlaps(pred, true)
    n_true, n_pred = overlaps.n_true, overlaps.n_pred
    rows, cols, iou = overlaps.ious()
    tp = tuple(_match_count(rows, cols, iou, t) for t in ts)
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
    pred, true = check_label_pair(pred, true, "merged_pairs")
    pairs = touching_pairs(_dense_index(true)[0].reshape(true.shape))
    if pairs.shape[0] == 0:
        return 0, 0
    majority = instance_overlaps(pred, true).majority()
    a, b = majority[pairs[:, 0]], majority[pairs[:, 1]]
    return int(np.count_nonzero((a == b) & (a != 0))), int(pairs.shape[0])


def check_label_pair(a: np.ndarray, b: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
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


def overlap_counts(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Joint histogram (n_true + 1, n_pred + 1) of two instance images; row / column 0 is background."""
    t_idx, n_t = _dense_index(true)
    p_idx, n_p = _dense_index(pred)
    return np.bincount(t_idx * (n_p + 1) + p_idx, minlength=(n_t + 1) * (n_p + 1)).reshape(n_t + 1, n_p + 1)


def touching_pairs(index: np.ndarray) -> np.ndarray:
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


def _match_count(rows: np.ndarray, cols: np.ndarray, iou: np.ndarray, threshold: float) -> int:
    """Size of a maximal one-to-one matching of the pairs (rows, cols) with IoU > threshold.

    From 0.5 up the admissible pairs are disjoint; below, each connected group of overlapping instances is matched
    on its own (an optimal assignment of a small table), so memory follows the overlaps, not true × predicted.
    """
    keep = iou > threshold
    if threshold >= 0.5 or not keep.any():
        return int(np.count_nonzero(keep))
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    r, c = np.unique(rows[keep], return_inverse=True)[1], np.unique(cols[keep], return_inverse=True)[1]
    n_r, n_c = int(r.max()) + 1, int(c.max()) + 1
    graph = coo_matrix((np.ones(len(r)), (r, c + n_r)), shape=(n_r + n_c, n_r + n_c))
    group = connected_components(graph, directed=False)[1][r]
    order = np.argsort(group, kind="stable")
    bounds = np.flatnonzero(np.diff(group[order])) + 1
    total = 0
    for part in np.split(order, bounds):
        if len(part) == 1:
            total += 1
            continue
        pr, pc = np.unique(r[part], return_inverse=True)[1], np.unique(c[part], return_inverse=True)[1]
        admissible = np.zeros((int(pr.max()) + 1, int(pc.max()) + 1), bool)
        admissible[pr, pc] = True
        matched_rows, matched_cols = linear_sum_assignment(admissible, maximize=True)
        total += int(np.count_nonzero(admissible[matched_rows, matched_cols]))
    return total


def _ratio(num: int, den: int, empty: float) -> float:
    return num / den if den else empty
