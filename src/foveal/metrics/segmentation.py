"""Segmentation metrics: per-class IoU and Dice, ISBI 2012 Rand and pixel error; instance matching (DSB 2018 AP) is in
:mod:`foveal.metrics.instances`.

Three families, each computed from a count table rather than from pixels or pixel pairs:

- :class:`SegmentationMeter` accumulates a K×K confusion matrix of semantic class maps over batches (per-class IoU and
  Dice, mean IoU, foreground IoU, pixel error).
- :func:`rand_error` and :func:`pixel_error` are the scores of the ISBI 2012 EM segmentation challenge, the benchmark on
  which the U-Net paper reports Rand error 0.0382 and pixel error 0.0611 (Ronneberger et al., MICCAI 2015, Table 1).
  The Rand error works on the sparse contingency table of the two labelings, never on the O(n²) pixel pairs.
- ``match_instances``, ``InstanceMeter`` and ``merged_pairs`` (:mod:`foveal.metrics.instances`) score instance label
  images the way the 2018 Data Science Bowl did: one-to-one matching by IoU and AP = TP / (TP + FP + FN) at IoU
  thresholds 0.50:0.05:0.95.

Label images use 0 for background and any other integer for an instance; the labels need not be consecutive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from foveal.errors import FovealError
from foveal.metrics.instances import check_label_pair


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
    pred, true = check_label_pair(pred_labels, true_labels, "rand_error")
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
    pred, true = check_label_pair(pred_mask, true_mask, "pixel_error")
    return float(np.count_nonzero((pred != 0) != (true != 0))) / max(true.size, 1)


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


def _ratio_or_none(num: int, den: int) -> float | None:
    return num / den if den else None


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
