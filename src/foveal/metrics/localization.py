"""Weakly supervised localization metrics: top-1 / top-5 localization error, as in CAM and ILSVRC, and MaxBoxAccV2.

References:
    Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016, §3 and Table 2. A prediction
    localizes an image when its class is the true class and its box has IoU ≥ 0.5 with one of the image's
    ground-truth boxes (all of the true class); top-1 looks at the first prediction, top-5 at any of the first five.
    The ground-truth-known error scores only the box drawn from the true class's map, whatever the predicted class.

    Choe et al., "Evaluating Weakly Supervised Object Localization Methods Right", CVPR 2020, §4.1: MaxBoxAccV2
    takes away the choice of the map threshold. Each map of the true class is min–max normalised; at every threshold
    τ ∈ {0, 0.01, …, 0.99} every connected region of the map ≥ τ gives a box (all contours, not only the largest), and
    the image counts at IoU δ when any of those boxes has IoU ≥ δ with a ground-truth box. BoxAcc(τ, δ) is the share
    of such images, MaxBoxAcc(δ) its maximum over τ, and MaxBoxAccV2 the mean of MaxBoxAcc over δ ∈ {0.3, 0.5, 0.7}.
    Regions are 8-connected (what a contour encloses); the paper's OpenCV contours also return the inner contours of
    holes, whose boxes lie inside their region's box: they are not counted here.

Boxes are (x1, y1, x2, y2), x2 and y2 exclusive (see :mod:`foveal.explain.boxes`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from foveal.errors import FovealError
from foveal.results import LocalizationResult, MaxBoxAccResult

IOU_THRESHOLD = 0.5
TOP_K = 5
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(step / 20 for step in range(1, 20))
"""0.05, 0.10, …, 0.95: the map thresholds a :func:`threshold_sweep` usually tries."""
_PAIRS = 1 << 20  # (box, ground-truth box) pairs per IoU block: memory stays bounded whatever the box count
MAX_BOX_ACC_IOUS: tuple[float, ...] = (0.3, 0.5, 0.7)
"""The IoU thresholds δ whose MaxBoxAcc MaxBoxAccV2 averages (Choe et al. 2020)."""
MAX_BOX_ACC_THRESHOLDS: tuple[float, ...] = tuple(step / 100 for step in range(100))
"""0.00, 0.01, …, 0.99: the map thresholds τ of MaxBoxAccV2 (the paper's step of 0.01)."""
_LABEL_PIXELS = 1 << 22  # pixels per max-tree of MaxBoxAccMeter (a few int64 tensors of that length)


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
        hit = best_iou(pred_boxes, gts) >= self.iou_threshold
        found = right_class & hit
        self._loc[0] += int(found[:, 0].sum())
        self._cls[0] += int(right_class[:, 0].sum())
        if k >= TOP_K:
            self._loc[1] += int(found[:, :TOP_K].any(1).sum())
            self._cls[1] += int(right_class[:, :TOP_K].any(1).sum())
        if true_class_boxes is not None:
            if true_class_boxes.shape != (n, 4):
                raise FovealError(f"true_class_boxes must be ({n}, 4), got {tuple(true_class_boxes.shape)}")
            self._gt_known += int((best_iou(true_class_boxes[:, None], gts)[:, 0] >= self.iou_threshold).sum())
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
    boxes: Mapping[float, Tensor], true_boxes: Sequence[Tensor] | Tensor, iou_threshold: float = IOU_THRESHOLD
) -> ThresholdSweep:
    """Ground-truth-known box accuracy of the map-to-box protocol at several thresholds (the paper fixes 0.2).

    Example::

        boxes = {t: maps_to_boxes(maps, t, "max") for t in DEFAULT_THRESHOLDS}  # foveal.explain.boxes
        sweep = threshold_sweep(boxes, true_boxes)

    Args:
        boxes: per map threshold, in the order to report them, the (N, 4) box of each image's true-class map at that
            threshold (:func:`foveal.explain.boxes.maps_to_boxes`).
        true_boxes: per image (M_i, 4) ground-truth boxes, or (N, 4).
        iou_threshold: IoU needed for a box to count.

    Returns:
        A :class:`ThresholdSweep`; ties go to the first threshold (the smallest when they are sorted).
    """
    if not boxes:
        raise FovealError("give the boxes of at least one threshold")
    first = next(iter(boxes.values()))
    n = first.shape[0] if first.ndim == 2 else 0
    if n == 0 or any(tuple(b.shape) != (n, 4) for b in boxes.values()):
        shapes = sorted({tuple(b.shape) for b in boxes.values()})
        raise FovealError(f"boxes must be (N, 4) with N ≥ 1, the same N at every threshold, got shapes {shapes}")
    gts = _per_image(true_boxes, n)
    thresholds = [float(t) for t in boxes]
    accuracy = [float((best_iou(b[:, None], gts)[:, 0] >= iou_threshold).float().mean()) for b in boxes.values()]
    best = max(range(len(accuracy)), key=lambda i: (accuracy[i], -i))
    return ThresholdSweep(thresholds, accuracy, thresholds[best], accuracy[best])


class MaxBoxAccMeter:
    """Accumulates MaxBoxAccV2 (Choe et al., CVPR 2020) over batches of ground-truth-class maps.

    Example::

        meter = MaxBoxAccMeter()
        for maps, boxes in batches:        # maps (N, H, W) of each image's true class, at image size
            meter.update(maps, boxes)
        print(meter.compute().max_box_acc_v2)

    Args:
        thresholds: map thresholds τ, fractions of the min–max normalised map (default 0.00, 0.01, …, 0.99).
        ious: IoU thresholds δ (default 0.3, 0.5, 0.7).
    """

    def __init__(
        self, thresholds: Sequence[float] = MAX_BOX_ACC_THRESHOLDS, ious: Sequence[float] = MAX_BOX_ACC_IOUS
    ) -> None:
        if not thresholds or min(thresholds) < 0.0 or max(thresholds) > 1.0:
            raise FovealError(f"thresholds must be one or more fractions in [0, 1], got {list(thresholds)}")
        if not ious or min(ious) <= 0.0 or max(ious) > 1.0:
            raise FovealError(f"ious must be one or more IoU thresholds in (0, 1], got {list(ious)}")
        self.thresholds = [float(t) for t in thresholds]
        self.ious = [float(d) for d in ious]
        self._hits = torch.zeros(len(self.thresholds), len(self.ious), dtype=torch.long)
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    @torch.no_grad()
    def update(self, maps: Tensor, true_boxes: Sequence[Tensor] | Tensor) -> None:
        """Add one batch.

        Args:
            maps: (N, H, W) map of each image's true class on the image's pixels (any range; each is min–max
                normalised; a constant map has no region above any τ > 0, and the whole image at τ = 0).
            true_boxes: per image an (M_i, 4) tensor of ground-truth boxes (x1, y1, x2, y2), or one (N, 4) tensor.
        """
        if maps.ndim != 3 or 0 in maps.shape:
            raise FovealError(f"maps must be (N, H, W) with N, H, W ≥ 1, got {tuple(maps.shape)}")
        gts = _per_image(true_boxes, maps.shape[0])
        best = region_best_iou(maps, gts, torch.tensor(self.thresholds))  # (N, T)
        self._hits += (best[:, :, None] >= torch.tensor(self.ious)[None, None, :]).sum(0)
        self._count += maps.shape[0]

    def compute(self) -> MaxBoxAccResult:
        """MaxBoxAccV2 over every image seen."""
        if self._count == 0:
            raise FovealError("no images to compute MaxBoxAccV2 from; is the evaluation set empty?")
        accuracy = self._hits.double() / self._count  # (T, D)
        best = accuracy.max(0)  # torch returns the first index of the maximum: the smallest τ
        keys = [f"{d:g}" for d in self.ious]
        return MaxBoxAccResult(
            max_box_acc_v2=float(best.values.mean()),
            max_box_acc={k: float(v) for k, v in zip(keys, best.values, strict=True)},
            best_threshold={k: self.thresholds[int(i)] for k, i in zip(keys, best.indices, strict=True)},
            thresholds=list(self.thresholds),
            box_acc={k: accuracy[:, j].tolist() for j, k in enumerate(keys)},
            count=self._count,
        )


def region_best_iou(maps: Tensor, gts: Sequence[Tensor], thresholds: Tensor) -> Tensor:
    """(N, T) largest IoU, over every 8-connected region of the min–max normalised map ≥ τ and every ground-truth box
    of the image, at each threshold τ (0 where there is no region or no box).

    The regions of all thresholds come from one max-tree of the map quantised to its threshold level (the number of
    thresholds ≤ each value): a node of level L is a region of the maps ≥ τ for every τ above its parent's level up to
    L, so each region is found once instead of once per threshold. Blocks of maps are stacked into one image with a
    separator row between maps (level 0, below every threshold).

    Args:
        maps: (N, H, W) maps.
        gts: N tensors (M_i, 4) of ground-truth boxes.
        thresholds: (T,) fractions in [0, 1], in any order.
    """
    n, h, w = maps.shape
    flat = maps.detach().float().cpu()
    flat = torch.where(flat.isfinite(), flat, torch.nan)
    low = flat.flatten(1).nan_to_num(nan=torch.inf).amin(1)[:, None, None]
    high = flat.flatten(1).nan_to_num(nan=-torch.inf).amax(1)[:, None, None]
    span = high - low
    norm = torch.where(span > 0, (flat - low) / span.clamp_min(1e-30), 0.0).nan_to_num(nan=-1.0)  # NaN: never kept
    ordered, order = torch.sort(thresholds.float())
    levels = torch.searchsorted(ordered, norm.contiguous(), right=True)  # (N, H, W): thresholds τ ≤ the value
    out = torch.zeros(n, len(thresholds))
    step = max(1, _LABEL_PIXELS // ((h + 1) * w))
    for start in range(0, n, step):
        stop = min(start + step, n)
        region_box, region_image, region_levels = _max_tree_regions(levels[start:stop], len(thresholds))
        region_iou = best_own_iou(region_box, region_image, gts[start:stop])
        low_level, high_level = region_levels  # a region of the maps ≥ ordered[k - 1] for low < k ≤ high
        span_of = high_level - low_level
        region = torch.repeat_interleave(torch.arange(len(span_of)), span_of)
        k = torch.arange(len(region)) - torch.repeat_interleave(span_of.cumsum(0) - span_of, span_of)
        column = low_level[region] + k  # k-th level above the parent's: ordered index low + k
        best = torch.zeros((stop - start) * len(thresholds)).scatter_reduce(
            0, region_image[region] * len(thresholds) + column, region_iou[region], reduce="amax", include_self=True
        )
        out[start:stop, order] = best.view(stop - start, len(thresholds))
    return out


def _max_tree_regions(levels: Tensor, count: int) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
    """Every connected region (8-neighbours) of every level set {levels ≥ k}, k = 1 … ``count``, of each map.

    Args:
        levels: (N, H, W) integer levels 0 … ``count`` of N maps.

    Returns:
        (R, 4) float box (x1, y1, x2, y2) of each region, (R,) its map, and (R,) its parent's and its own level (it is
        a region of {levels ≥ k} for parent's < k ≤ own).
    """
    from skimage.morphology import max_tree

    n, h, w = levels.shape
    stacked = torch.zeros(n, h + 1, w, dtype=torch.int16 if count < 2**15 else torch.int32)
    stacked[:, :h] = levels
    parent_np, _ = max_tree(stacked.view(-1, w).numpy(), connectivity=2)
    parent = torch.from_numpy(parent_np).view(-1)
    level = stacked.view(-1).long()
    pixel = torch.arange(len(level))
    x, row = pixel % w, pixel // w
    # skimage's tree is canonical: every pixel points at the canonical pixel of its region (parent's level differs)
    canonical = (level[parent] != level) | (parent == pixel)
    box = torch.stack([x, row % (h + 1), x + 1, row % (h + 1) + 1])  # (4, P) per pixel, then per region
    inner = ~canonical
    _grow(box, parent[inner], box[:, inner])
    nodes = pixel[canonical & (level > 0)]
    nodes = nodes[torch.argsort(level[nodes], descending=True, stable=True)]
    node_level = level[nodes]
    bounds = torch.searchsorted(-node_level, -torch.arange(count, 0, -1), right=True)  # ends of each level's run
    begin = 0
    for end in bounds.tolist():  # deepest level first: a region is complete before it grows its parent
        _grow(box, parent[nodes[begin:end]], box[:, nodes[begin:end]])
        begin = end
    return box[:, nodes].T.float(), row[nodes] // (h + 1), (level[parent[nodes]], node_level)


def _grow(box: Tensor, into: Tensor, boxes: Tensor) -> None:
    """Widen the (4, P) boxes at indices ``into`` to cover ``boxes`` (4, len(into)) in place."""
    for coord, reduce in enumerate(("amin", "amin", "amax", "amax")):
        box[coord].scatter_reduce_(0, into, boxes[coord], reduce=reduce)


def _padded(gts: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """(N, M, 4) ground-truth boxes padded with zeros to the largest count M (≥ 1), and (N, M) 1 / 0 validity."""
    m = max([1, *(len(g) for g in gts)])
    padded = torch.zeros(len(gts), m, 4)
    valid = torch.zeros(len(gts), m)
    for i, g in enumerate(gts):
        padded[i, : len(g)] = g
        valid[i, : len(g)] = 1.0
    return padded, valid


def _elementwise_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of broadcast pairs of boxes (..., 4) (x1, y1, x2, y2); 0 where the union is empty."""
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp_min(0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]).clamp_min(0) * (a[..., 3] - a[..., 1]).clamp_min(0)
    area_b = (b[..., 2] - b[..., 0]).clamp_min(0) * (b[..., 3] - b[..., 1]).clamp_min(0)
    union = area_a + area_b - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), 0.0)


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


def best_iou(pred: Tensor, gts: list[Tensor]) -> Tensor:
    """(N, k) largest IoU of each predicted box (N, k, 4) with the ground-truth boxes of its own image (0 if none).

    Args:
        pred: (N, k, 4) boxes (x1, y1, x2, y2).
        gts: N tensors (M_i, 4) of ground-truth boxes (M_i ≥ 0).
    """
    n, k = pred.shape[:2]
    owner = torch.arange(n).repeat_interleave(k)
    return best_own_iou(pred.detach().float().cpu().reshape(-1, 4), owner, gts).view(n, k)


def best_own_iou(boxes: Tensor, owner: Tensor, gts: Sequence[Tensor]) -> Tensor:
    """(R,) largest IoU of each box with the ground-truth boxes of its own image (0 if none).

    Memory is bounded whatever the number of boxes: images are taken in blocks of at most :data:`_PAIRS` (box,
    ground-truth box) pairs, and an image with more pairs than that alone is taken in tiles of its boxes.

    Args:
        boxes: (R, 4) boxes (x1, y1, x2, y2).
        owner: (R,) index of each box's image in ``gts``.
        gts: tensors (M_i, 4) of ground-truth boxes (M_i ≥ 0).
    """
    out = torch.zeros(len(boxes))
    order = torch.argsort(owner, stable=True)
    rows = torch.bincount(owner, minlength=len(gts)).tolist()
    counts = [len(g) for g in gts]
    first = [0, *torch.tensor(rows).cumsum(0).tolist()]  # the rows of image i: order[first[i]:first[i + 1]]
    start = 0
    for stop in _image_blocks(rows, counts):
        picked = order[first[start] : first[stop]]
        if not len(picked) or not max(counts[start:stop]):
            pass  # no box, or no ground truth to match: 0
        elif stop - start == 1 and (rows[start] + 1) * counts[start] > _PAIRS:
            out[picked] = _tiled_best_iou(boxes[picked], gts[start])
        else:
            padded, valid = _padded(gts[start:stop])
            mine = owner[picked] - start
            out[picked] = (_elementwise_iou(boxes[picked][:, None], padded[mine]) * valid[mine]).amax(1)
        start = stop
    return out


def _image_blocks(rows: list[int], counts: list[int]) -> Iterator[int]:
    """Ends of runs of consecutive images whose rows × their largest box count stays within :data:`_PAIRS` (an
    image over it alone is a run of its own)."""
    begin, total, widest = 0, 0, 0
    for i, (r, m) in enumerate(zip(rows, counts, strict=True)):
        if i > begin and (total + r + i - begin + 1) * max(widest, m, 1) > _PAIRS:  # images count: their padding
            yield i
            begin, total, widest = i, 0, 0
        total, widest = total + r, max(widest, m)
    if rows:
        yield len(rows)


def _tiled_best_iou(boxes: Tensor, gt: Tensor) -> Tensor:
    """(R,) largest IoU of each box (R, 4) with any of ``gt`` (M, 4), in tiles of at most :data:`_PAIRS` pairs."""
    step = max(1, min(len(gt), _PAIRS))
    rows = max(1, _PAIRS // step)
    out = torch.zeros(len(boxes))
    for r in range(0, len(boxes), rows):
        for g in range(0, len(gt), step):
            tile = _elementwise_iou(boxes[r : r + rows, None], gt[None, g : g + step]).amax(1)
            out[r : r + rows] = torch.maximum(out[r : r + rows], tile)
    return out
