"""LocalizationMeter and the threshold sweep on hand-made boxes and maps."""

from __future__ import annotations

import pytest
import torch

import foveal.metrics.localization as localization
from foveal.errors import FovealError
from foveal.explain.boxes import maps_to_boxes
from foveal.metrics.localization import LocalizationMeter, MaxBoxAccMeter, threshold_sweep

GT = [0.0, 0.0, 10.0, 10.0]
HALF = [0.0, 0.0, 10.0, 5.0]  # IoU with GT = 50 / 100 = 0.5 exactly: counts
BELOW = [0.0, 0.0, 10.0, 4.9]  # IoU 0.49
FAR = [20.0, 20.0, 30.0, 30.0]


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """Four images, five predictions each; true class 1 for all; the verdict of each image is by hand."""
    classes = torch.tensor(
        [
            [1, 2, 3, 4, 5],  # image 0: right class, box IoU 0.5 → top-1 and top-5 localized
            [1, 2, 3, 4, 5],  # image 1: right class, box IoU 0.49 → not localized; classification right
            [7, 1, 3, 4, 5],  # image 2: class right at rank 2 with a good box → top-5 only
            [7, 8, 3, 4, 1],  # image 3: right class at rank 5, box matches the second ground-truth box → top-5
        ]
    )
    boxes = torch.tensor(
        [
            [HALF, FAR, FAR, FAR, FAR],
            [BELOW, GT, GT, GT, GT],
            [GT, GT, FAR, FAR, FAR],
            [GT, GT, GT, GT, FAR],
        ]
    )
    true_class = torch.ones(4, dtype=torch.long)
    true_boxes = [torch.tensor([GT]), torch.tensor([GT]), torch.tensor([GT]), torch.tensor([GT, FAR])]
    true_class_boxes = torch.tensor([GT, BELOW, FAR, HALF])  # GT-known: images 0 and 3 localized
    return classes, boxes, true_class, true_boxes, true_class_boxes


def test_hand_computed_errors() -> None:
    meter = LocalizationMeter()
    meter.update(*_batch())
    result = meter.compute()
    assert result.count == 4
    assert result.top1_loc_error == pytest.approx(1 - 1 / 4)
    assert result.top5_loc_error == pytest.approx(1 - 3 / 4)
    assert result.gt_known_loc_error == pytest.approx(1 - 2 / 4)
    assert result.top1_cls_error == pytest.approx(1 - 2 / 4)
    assert result.top5_cls_error == pytest.approx(0.0)
    assert set(result.to_dict()) == {
        "top1_loc_error",
        "top5_loc_error",
        "gt_known_loc_error",
        "top1_cls_error",
        "top5_cls_error",
        "count",
    }


def test_batches_accumulate_and_chunks_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    classes, boxes, true_class, true_boxes, tcb = _batch()
    whole = LocalizationMeter()
    whole.update(classes, boxes, true_class, true_boxes, tcb)
    split = LocalizationMeter()
    monkeypatch.setattr(localization, "_PAIRS", 1)  # one image per IoU block, one pair per tile
    split.update(classes[:3], boxes[:3], true_class[:3], true_boxes[:3], tcb[:3])
    split.update(classes[3:], boxes[3:], true_class[3:], true_boxes[3:], tcb[3:])
    assert split.compute() == whole.compute()


def test_no_ground_truth_box_never_localizes_and_one_box_tensor_works() -> None:
    meter = LocalizationMeter()
    classes = torch.tensor([[0], [0]])
    boxes = torch.tensor([[GT], [GT]])
    meter.update(classes, boxes, torch.tensor([0, 0]), [torch.zeros(0, 4), torch.tensor([GT])])
    result = meter.compute()
    assert result.top1_loc_error == pytest.approx(0.5)
    assert result.top5_loc_error is None and result.top5_cls_error is None  # k = 1 < 5
    assert result.gt_known_loc_error is None  # no true-class boxes given
    other = LocalizationMeter(iou_threshold=0.3)
    other.update(classes, torch.tensor([[BELOW], [FAR]]), torch.tensor([0, 0]), torch.tensor([GT, GT]))
    assert other.compute().top1_loc_error == pytest.approx(0.5)  # IoU 0.49 ≥ 0.3


def test_meter_errors() -> None:
    meter = LocalizationMeter()
    with pytest.raises(FovealError, match="no images"):
        meter.compute()
    with pytest.raises(FovealError, match="pred_boxes"):
        meter.update(torch.zeros(2, 5, dtype=torch.long), torch.zeros(2, 4, 4), torch.zeros(2), [torch.zeros(1, 4)] * 2)
    with pytest.raises(FovealError, match="2 images"):
        meter.update(torch.zeros(3, 1, dtype=torch.long), torch.zeros(3, 1, 4), torch.zeros(3), [torch.zeros(1, 4)] * 2)
    with pytest.raises(FovealError, match=r"\(M, 4\)"):
        meter.update(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, 4), torch.zeros(1), [torch.zeros(3)])
    with pytest.raises(FovealError, match="iou_threshold"):
        LocalizationMeter(iou_threshold=0.0)


def test_threshold_sweep_finds_the_best_threshold() -> None:
    maps = torch.zeros(2, 20, 20)
    maps[:, 2:18, 2:18] = 0.3  # a dim halo 16 × 16
    maps[:, 5:13, 5:13] = 1.0  # the object 8 × 8
    truth = torch.tensor([[5.0, 5.0, 13.0, 13.0], [0.0, 0.0, 20.0, 20.0]])
    sweep = threshold_sweep({t: maps_to_boxes(maps, t, "max") for t in (0.1, 0.2, 0.3, 0.5, 0.9)}, truth)
    # ≤ 0.3: the halo's box (2, 2, 18, 18): IoU 64/256 with image 0's box, 256/400 with image 1's
    # > 0.3: the object's box: IoU 1 with image 0's box, 64/400 with image 1's
    assert sweep.thresholds == [0.1, 0.2, 0.3, 0.5, 0.9]
    assert sweep.accuracy == [0.5, 0.5, 0.5, 0.5, 0.5]
    assert sweep.best_threshold == 0.1 and sweep.best_accuracy == 0.5  # ties: the smallest threshold
    one = threshold_sweep({t: maps_to_boxes(maps[:1], t, "max") for t in (0.2, 0.5, 0.9)}, [truth[:1]])
    assert one.accuracy == [0.0, 1.0, 1.0] and one.best_threshold == 0.5
    with pytest.raises(FovealError, match=r"\(N, 4\)"):
        threshold_sweep({0.2: maps_to_boxes(maps, 0.2)[0]}, truth)
    with pytest.raises(FovealError, match="at least one threshold"):
        threshold_sweep({}, truth)


# -- MaxBoxAccV2 (Choe et al., CVPR 2020) ------------------------------------------------------------------------------
def _three_maps() -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Three 8 × 8 maps (range 0..1) and their ground truth; the verdicts below are worked out by hand."""
    maps = torch.zeros(3, 8, 8)
    # A: a strong 3 × 8 strip away from the object and a weaker 4 × 4 blob on it, not touching (row 3 between)
    maps[0, 0:3, :] = 1.0
    maps[0, 4:8, 4:8] = 0.505
    # B: the object's left part strong, a dim band to its right
    maps[1, 0:4, 0:4] = 1.0
    maps[1, 0:4, 4:8] = 0.305
    # C: a small peak on the object inside a wide dim square
    maps[2, 0:6, 0:6] = 0.605
    maps[2, 2:4, 2:4] = 1.0
    truth = [torch.tensor([[4.0, 4.0, 8.0, 8.0]]), torch.tensor([[0.0, 0.0, 6.0, 4.0]]), torch.tensor([[2.0, 2, 4, 4]])]
    return maps, truth


def test_max_box_acc_v2_hand_computed() -> None:
    # τ = 0 keeps the whole map (0, 0, 8, 8): IoU A 16/64, B 24/64 = 0.375, C 4/64.
    # A: τ ≤ 0.50 keeps the strip and the blob; the blob's box is the object's (IoU 1): with all regions it counts.
    #    τ > 0.50 keeps the strip only (IoU 0).
    # B: τ ≤ 0.30: (0, 0, 8, 4), IoU 24/32 = 0.75; τ > 0.30: (0, 0, 4, 4), IoU 16/24 ≈ 0.667.
    # C: τ ≤ 0.60: (0, 0, 6, 6), IoU 4/36; τ > 0.60: (2, 2, 4, 4), IoU 1.
    maps, truth = _three_maps()
    meter = MaxBoxAccMeter()
    meter.update(maps, truth)
    result = meter.compute()
    acc = {k: dict(zip(result.thresholds, v, strict=True)) for k, v in result.box_acc.items()}
    assert [acc["0.3"][t] for t in (0.0, 0.01, 0.3, 0.31, 0.5, 0.51, 0.6, 0.61, 0.99)] == pytest.approx(
        [1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 2 / 3, 2 / 3]
    )
    assert [acc["0.5"][t] for t in (0.0, 0.01, 0.31, 0.51, 0.61)] == pytest.approx([0, 2 / 3, 2 / 3, 1 / 3, 2 / 3])
    assert [acc["0.7"][t] for t in (0.0, 0.01, 0.3, 0.31, 0.5, 0.51, 0.61)] == pytest.approx(
        [0, 2 / 3, 2 / 3, 1 / 3, 1 / 3, 0, 1 / 3]
    )
    assert result.max_box_acc == pytest.approx({"0.3": 2 / 3, "0.5": 2 / 3, "0.7": 2 / 3})
    assert result.best_threshold == {"0.3": 0.01, "0.5": 0.01, "0.7": 0.01}  # ties: the smallest τ
    assert result.max_box_acc_v2 == pytest.approx(2 / 3)
    assert result.count == 3 and len(result.thresholds) == 100
    # C alone: only τ > 0.60 finds its object, at every δ
    alone = MaxBoxAccMeter()
    alone.update(maps[2:], truth[2:])
    assert alone.compute().best_threshold == {"0.3": 0.61, "0.5": 0.61, "0.7": 0.61}
    # the largest region alone (the CAM paper's box) misses A's object at any threshold up to 0.5
    largest = maps_to_boxes(maps[0], 0.3, "range", connectivity=2)
    assert largest.tolist() == [0.0, 0.0, 8.0, 3.0]


def test_max_box_acc_any_box_counts_offsets_and_blocks_do_not_matter(monkeypatch: pytest.MonkeyPatch) -> None:
    maps, truth = _three_maps()
    whole = MaxBoxAccMeter()
    whole.update(maps, truth)
    # an offset and a scale change nothing (min–max normalisation); an extra far box of an image changes nothing
    shifted = MaxBoxAccMeter()
    far = torch.tensor([[0.0, 6.0, 1.0, 7.0]])
    shifted.update(3 * maps - 5, [torch.cat([truth[0], far]), truth[1], torch.cat([far, truth[2]])])
    assert shifted.compute() == whole.compute()
    monkeypatch.setattr(localization, "_LABEL_PIXELS", 64 * 7)  # labelling blocks of 7 maps: cut across images
    split = MaxBoxAccMeter()
    split.update(maps[:2], truth[:2])
    split.update(maps[2:], truth[2:])
    assert split.compute() == whole.compute()


def test_max_box_acc_constant_map_and_errors() -> None:
    meter = MaxBoxAccMeter(thresholds=[0.0, 0.5], ious=[0.5])
    meter.update(torch.full((1, 4, 4), 3.0), [torch.tensor([[0.0, 0.0, 4.0, 4.0]])])  # no evidence: image at τ = 0
    meter.update(torch.ones(1, 4, 4), [torch.zeros(0, 4)])  # no ground-truth box: never counts
    result = meter.compute()
    assert result.box_acc == {"0.5": [0.5, 0.0]} and result.max_box_acc_v2 == 0.5
    with pytest.raises(FovealError, match="no images"):
        MaxBoxAccMeter().compute()
    with pytest.raises(FovealError, match=r"\(N, H, W\)"):
        MaxBoxAccMeter().update(torch.zeros(4, 4), [torch.zeros(1, 4)])
    with pytest.raises(FovealError, match="thresholds"):
        MaxBoxAccMeter(thresholds=[1.5])
    with pytest.raises(FovealError, match="ious"):
        MaxBoxAccMeter(ious=[0.0])


def _brute_region_best_iou(maps: torch.Tensor, gts: list[torch.Tensor], thresholds: list[float]) -> torch.Tensor:
    """The definition, one map and one threshold at a time: 8-connected regions by scipy, boxes by find_objects."""
    from scipy import ndimage
    from torchvision.ops import box_iou

    out = torch.zeros(len(maps), len(thresholds))
    for i, m in enumerate(maps):
        m = torch.where(m.isfinite(), m, torch.nan)
        lo, hi = m.nan_to_num(nan=torch.inf).min(), m.nan_to_num(nan=-torch.inf).max()
        norm = ((m - lo) / (hi - lo) if hi > lo else torch.zeros_like(m)).nan_to_num(nan=-1.0)
        for j, t in enumerate(thresholds):
            labels, count = ndimage.label((norm >= torch.tensor(t)).numpy(), structure=[[1, 1, 1]] * 3)
            boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in ndimage.find_objects(labels)]
            if count and len(gts[i]):
                out[i, j] = box_iou(torch.tensor(boxes, dtype=torch.float), gts[i]).max()
    return out


def test_region_best_iou_matches_the_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    # CAM-like maps (a coarse grid upsampled) and noisy ones, a constant map, NaN and inf pixels; several, one or no
    # ground-truth boxes; thresholds unsorted and repeated; blocks of the max-tree cut across the batch
    gen = torch.Generator().manual_seed(0)
    coarse = torch.rand(6, 1, 4, 5, generator=gen) ** 3
    smooth = torch.nn.functional.interpolate(coarse, size=(13, 17), mode="bilinear")[:, 0]
    maps = torch.cat([smooth, torch.rand(3, 13, 17, generator=gen), torch.full((1, 13, 17), 2.0)])
    maps[1, 3:6, 4:9] = torch.nan
    maps[7, 0, 0] = torch.inf
    corners = torch.randint(0, 12, (len(maps), 3, 2), generator=gen).float()
    sizes = torch.randint(1, 9, (len(maps), 3, 2), generator=gen).float()
    boxes = torch.cat([corners, corners + sizes], -1)
    gts = [boxes[i, : i % 4] for i in range(len(maps))]  # 0, 1, 2 or 3 boxes
    thresholds = [0.5, 0.0, 0.25, 0.99, 0.25, 0.7, 0.01, 1.0, 0.333]
    expected = _brute_region_best_iou(maps, gts, thresholds)
    assert (expected > 0).any() and (expected == 0).any()
    got = localization.region_best_iou(maps, gts, torch.tensor(thresholds))
    assert torch.equal(got, expected)
    monkeypatch.setattr(localization, "_LABEL_PIXELS", 14 * 17 * 3)  # max-trees of three maps each
    assert torch.equal(localization.region_best_iou(maps, gts, torch.tensor(thresholds)), expected)


def test_iou_blocks_stay_within_the_pair_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    # images with no, one, a few and many boxes and ground-truth boxes, some over the budget alone: every IoU block
    # holds at most _PAIRS pairs, and each box still gets its best IoU with its own image's ground truth
    from torchvision.ops import box_iou

    gen = torch.Generator().manual_seed(1)

    def boxes_of(count: int) -> torch.Tensor:
        corner = torch.randint(0, 30, (count, 2), generator=gen).float()
        return torch.cat([corner, corner + torch.randint(1, 20, (count, 2), generator=gen).float()], 1)

    gts = [boxes_of(m) for m in (0, 3, 200, 1, 0, 40, 2)]
    rows = [5, 0, 30, 7, 3, 100, 1]
    owner = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(rows))
    owner = owner[torch.randperm(len(owner), generator=gen)]  # boxes of the images interleaved
    boxes = boxes_of(len(owner))
    expected = torch.tensor(
        [
            float(box_iou(b[None], gts[int(i)]).max()) if len(gts[int(i)]) else 0.0
            for b, i in zip(boxes, owner, strict=True)
        ]
    )
    assert (expected > 0).any()
    pairs: list[int] = []
    real = localization._elementwise_iou

    def counted(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = real(a, b)
        pairs.append(out.numel())
        return out

    monkeypatch.setattr(localization, "_elementwise_iou", counted)
    for budget in (1, 7, 64, 1000, 1 << 20):
        monkeypatch.setattr(localization, "_PAIRS", budget)
        pairs.clear()
        got = localization.best_own_iou(boxes, owner, gts)
        assert torch.allclose(got, expected, atol=1e-6), budget
        assert pairs and max(pairs) <= budget, (budget, max(pairs))


def test_max_box_acc_with_many_ground_truth_boxes_agrees_in_small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    # thousands of ground-truth boxes per image (a box file of 50,000 per image) go through tiles, not one block
    gen = torch.Generator().manual_seed(2)
    maps = torch.rand(3, 16, 16, generator=gen)
    corner = torch.randint(0, 12, (3, 2000, 2), generator=gen).float()
    gts = list(torch.cat([corner, corner + torch.randint(1, 5, (3, 2000, 2), generator=gen).float()], -1))
    whole = MaxBoxAccMeter()
    whole.update(maps, gts)
    monkeypatch.setattr(localization, "_PAIRS", 4096)  # 2,000 boxes: a tile holds two regions at a time
    tiled = MaxBoxAccMeter()
    tiled.update(maps, gts)
    assert tiled.compute() == whole.compute()
