"""Weakly supervised localization metrics: top-1 / top-5 localization error, as in CAM and ILSVRC.

Reference: Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016, §3 and Table 2. A
prediction localizes an image when its class is the true class and its box has IoU ≥ 0.5 with one of the image's
ground-truth boxes (all of the true class); top-1 looks at the first prediction, top-5 at any of the first five.
The ground-truth-known error scores only the box drawn from the true class's map, whatever the predicted class.

Boxes are (x1, y1, x2, y2), x2 and y2 exclusive (see :mod:`foveal.explain.boxes`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor
from torchvision.ops import box_iou

from foveal.errors import FovealError
from foveal.explain.boxes import maps_to_boxes

IOU_THRESHOLD = 0.5
TOP_K = 5
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(step / 20 for step in range(1, 20))
"""0.05, 0.10, …, 0.95: the thresholds :func:`threshold_sweep` tries by default."""
_CHUNK = 256  # images per IoU block: the block holds (chunk · k) × (boxes of the chunk) values


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


class LocalizationMeter:
    """Accumulates localization and classification errors over batches.

    Example::

        meter = LocalizationMeter()
        with CAM(model) as cam:
            for images, labels, boxes in loader:
                result = cam(images, top_k=5)
                true_map = cam(images, classes=labels).maps[:, 0]
                meter.update(result.classes, maps_to_boxes(result.maps), labels, boxes, maps_to_boxes(true_map))
        print(meter.compute())

    Args:
        iou_threshold: IoU needed for a box to count (0.5 in the paper and ILSVRC).
    """

    def __init__(self, iou_threshold: float = IOU_THRESHOLD) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise FovealError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        self.iou_threshold = float(iou_threshold)
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._count = 0
        self._k: int | None = None
        self._loc = [0, 0]  # correct top-1, top-5
        self._cls = [0, 0]
        self._gt_known = 0
        self._gt_known_count = 0

    @torch.no_grad()
    def update(
        self,
        pred_classes: Tensor,
        pred_boxes: Tensor,
        true_class: Tensor,
        true_boxes: Sequence[Tensor] | Tensor,
        true_class_boxes: Tensor | None = None,
    ) -> None:
        """Add one batch.

        Args:
            pred_classes: (N, k) int predicted classes, best first (k = 5 for top-5; k ≥ 1).
            pred_boxes: (N, k, 4) the box of each predicted class's map.
            true_class: (N,) int true class.
            true_boxes: per image an (M_i, 4) tensor of ground-truth boxes of the true class (M_i ≥ 0), or one
                (N, 4) tensor when every image has one box.
            true_class_boxes: optional (N, 4) box from the true class's map, for the ground-truth-known error.
        """
        n, k = self._check(pred_classes, pred_boxes, true_class)
        gts = _per_image(true_boxes, n)
        if self._k is not None and k != self._k:
            raise FovealError(f"every batch must give the same number of predictions per image: {self._k}, now {k}")
        self._k = k
        right_class = pred_classes.long().cpu() == true_class.long().cpu()[:, None]  # (N, k)
        hit = _best_iou(pred_boxes, gts) >= self.iou_threshold
        found = right_class & hit
        self._loc[0] += int(found[:, 0].sum())
        self._cls[0] += int(right_class[:, 0].sum())
        if k >= TOP_K:
            self._loc[1] += int(found[:, :TOP_K].any(1).sum())
            self._cls[1] += int(right_class[:, :TOP_K].any(1).sum())
        if true_class_boxes is not None:
            if true_class_boxes.shape != (n, 4):
                raise FovealError(f"true_class_boxes must be ({n}, 4), got {tuple(true_class_boxes.shape)}")
            self._gt_known += int((_best_iou(true_class_boxes[:, None], gts)[:, 0] >= self.iou_threshold).sum())
            self._gt_known_count += n
        self._count += n

    @staticmethod
    def _check(pred_classes: Tensor, pred_boxes: Tensor, true_class: Tensor) -> tuple[int, int]:
        if pred_classes.ndim != 2 or pred_classes.shape[1] < 1:
            raise FovealError(f"pred_classes must be (N, k) with k ≥ 1, got {tuple(pred_classes.shape)}")
        n, k = pred_classes.shape
        if pred_boxes.shape != (n, k, 4):
            raise FovealError(f"pred_boxes must be ({n}, {k}, 4) to match pred_classes, got {tuple(pred_boxes.shape)}")
        if true_class.shape != (n,):
            raise FovealError(f"true_class must be ({n},), got {tuple(true_class.shape)}")
        return n, k

    @property
    def count(self) -> int:
        return self._count

    def compute(self) -> LocalizationResult:
        """The error rates over every image seen."""
        if self._count == 0:
            raise FovealError("no images to compute localization errors from; is the evaluation set empty?")
        n = self._count
        top5 = self._k is not None and self._k >= TOP_K
        return LocalizationResult(
            top1_loc_error=1.0 - self._loc[0] / n,
            top5_loc_error=1.0 - self._loc[1] / n if top5 else None,
            gt_known_loc_error=1.0 - self._gt_known / self._gt_known_count if self._gt_known_count else None,
            top1_cls_error=1.0 - self._cls[0] / n,
            top5_cls_error=1.0 - self._cls[1] / n if top5 else None,
            count=n,
        )


@dataclass(frozen=True)
class ThresholdSweep:
    """Box accuracy (fraction with IoU ≥ the IoU threshold) of the true class's maps at each map threshold."""

    thresholds: list[float]
    accuracy: list[float]
    best_threshold: float
    best_accuracy: float


def threshold_sweep(
    maps: Tensor,
    true_boxes: Sequence[Tensor] | Tensor,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    relative_to: str = "max",
    iou_threshold: float = IOU_THRESHOLD,
) -> ThresholdSweep:
    """Ground-truth-known box accuracy of the map-to-box protocol at several thresholds (the paper fixes 0.2).

    Args:
        maps: (N, H, W) maps of each image's true class, at image size.
        true_boxes: per image (M_i, 4) ground-truth boxes, or (N, 4).
        thresholds: map thresholds to try (default 0.05, 0.10, …, 0.95).
        relative_to: "max" or "range", see :func:`foveal.explain.boxes.map_to_box`.
        iou_threshold: IoU needed for a box to count.

    Returns:
        A :class:`ThresholdSweep`; ties go to the smallest threshold.
    """
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise FovealError(f"maps must be (N, H, W) with N ≥ 1, got {tuple(maps.shape)}")
    if not thresholds:
        raise FovealError("give at least one threshold")
    gts = _per_image(true_boxes, maps.shape[0])
    accuracy = []
    for t in thresholds:
        boxes = maps_to_boxes(maps, float(t), relative_to)
        accuracy.append(float((_best_iou(boxes[:, None], gts)[:, 0] >= iou_threshold).float().mean()))
    best = max(range(len(accuracy)), key=lambda i: (accuracy[i], -i))
    return ThresholdSweep([float(t) for t in thresholds], accuracy, float(thresholds[best]), accuracy[best])


def _per_image(true_boxes: Sequence[Tensor] | Tensor, n: int) -> list[Tensor]:
    """Ground-truth boxes as a list of N float tensors (M_i, 4)."""
    if isinstance(true_boxes, Tensor):
        if true_boxes.ndim != 2 or true_boxes.shape[1] != 4:
            raise FovealError(f"ground-truth boxes as one tensor must be (N, 4), got {tuple(true_boxes.shape)}")
        true_boxes = list(true_boxes.unbind(0))
    if len(true_boxes) != n:
        raise FovealError(f"got ground-truth boxes for {len(true_boxes)} images but predictions for {n}")
    out = []
    for boxes in true_boxes:
        boxes = torch.as_tensor(boxes).detach().float().cpu()
        if boxes.numel() and boxes.shape[-1] != 4:
            raise FovealError(f"ground-truth boxes must be (M, 4) x1, y1, x2, y2; got shape {tuple(boxes.shape)}")
        out.append(boxes.reshape(-1, 4))
    return out


def _best_iou(pred: Tensor, gts: list[Tensor]) -> Tensor:
    """(N, k) largest IoU of each predicted box (N, k, 4) with the ground-truth boxes of its own image (0 if none)."""
    n, k = pred.shape[:2]
    pred = pred.detach().float().cpu()
    out = torch.zeros(n, k)
    for start in range(0, n, _CHUNK):
        block = gts[start : start + _CHUNK]
        counts = torch.tensor([len(g) for g in block])
        if int(counts.sum()) == 0:
            continue
        m = len(block)
        iou = box_iou(pred[start : start + m].reshape(-1, 4), torch.cat(block)).view(m, k, -1)
        owner = torch.repeat_interleave(torch.arange(m), counts)
        own = owner[None, None, :] == torch.arange(m)[:, None, None]  # (m, 1, G): box belongs to the image
        out[start : start + m] = iou.masked_fill(~own, 0.0).amax(-1)
    return out
