"""LocalizationMeter and the threshold sweep on hand-made boxes and maps."""

from __future__ import annotations

import pytest
import torch

import foveal.metrics.localization as localization
from foveal.errors import FovealError
from foveal.metrics.localization import LocalizationMeter, threshold_sweep

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
    monkeypatch.setattr(localization, "_CHUNK", 1)  # one image per IoU block
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
    sweep = threshold_sweep(maps, truth, thresholds=[0.1, 0.2, 0.3, 0.5, 0.9])
    # ≤ 0.3: the halo's box (2, 2, 18, 18): IoU 64/256 with image 0's box, 256/400 with image 1's
    # > 0.3: the object's box: IoU 1 with image 0's box, 64/400 with image 1's
    assert sweep.accuracy == [0.5, 0.5, 0.5, 0.5, 0.5]
    assert sweep.best_threshold == 0.1 and sweep.best_accuracy == 0.5  # ties: the smallest threshold
    one = threshold_sweep(maps[:1], [truth[:1]], thresholds=[0.2, 0.5, 0.9])
    assert one.accuracy == [0.0, 1.0, 1.0] and one.best_threshold == 0.5
    with pytest.raises(FovealError, match=r"\(N, H, W\)"):
        threshold_sweep(maps[0], truth)
