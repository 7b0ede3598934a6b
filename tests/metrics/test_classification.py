"""ClassificationMeter: hand-computed top-1/top-5/confusion/per-class values, batching, merging, distributed state."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.distributed as dist

from foveal.errors import FovealError
from foveal.metrics import ClassificationMeter
from foveal.results import ClassificationResult

# K = 6. Per sample: target, logits, and (by hand) arg-max and how many classes score strictly above the target.
_SAMPLES = [
    (0, [5, 1, 0, 0, 0, 0]),  # pred 0 ✓; 0 above → top-5 ✓
    (1, [3, 2, 1, 0, 0, 0]),  # pred 0;   1 above → top-5 ✓
    (2, [0, 1, 2, 3, 4, 5]),  # pred 5;   3 above → top-5 ✓
    (3, [5, 4, 3, 2, 1, 0]),  # pred 0;   3 above → top-5 ✓
    (0, [0, 1, 2, 3, 4, 5]),  # pred 5;   5 above → top-5 ✗
    (5, [0, 0, 0, 0, 0, 9]),  # pred 5 ✓; 0 above → top-5 ✓
]
_TARGETS = torch.tensor([t for t, _ in _SAMPLES])
_LOGITS = torch.tensor([row for _, row in _SAMPLES], dtype=torch.float32)
_CONFUSION = [
    [1, 0, 0, 0, 0, 1],
    [1, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 1],
    [1, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],  # class 4 has no samples
    [0, 0, 0, 0, 0, 1],
]


def test_hand_computed_metrics() -> None:
    meter = ClassificationMeter(6, classes=list("abcdef"))
    meter.update(_LOGITS, _TARGETS, loss=0.5)
    result = meter.compute()
    assert result.count == 6
    assert result.top1 == pytest.approx(2 / 6)
    assert result.top5 == pytest.approx(5 / 6)
    assert result.top5_k == 5
    assert result.confusion == _CONFUSION
    assert result.per_class_accuracy == [0.5, 0.0, 0.0, 0.0, None, 1.0]
    assert result.support == [2, 1, 1, 1, 0, 1]
    assert result.mean_class_accuracy == pytest.approx(1.5 / 5)
    assert result.loss == pytest.approx(0.5)
    assert result.classes == list("abcdef")


def test_batching_gives_same_result_and_weights_loss_by_batch_size() -> None:
    whole = ClassificationMeter(6)
    whole.update(_LOGITS, _TARGETS)
    split = ClassificationMeter(6)
    for (lo, hi), loss in zip([(0, 1), (1, 4), (4, 6)], [1.0, 2.0, 4.0], strict=True):
        split.update(_LOGITS[lo:hi], _TARGETS[lo:hi], loss=torch.tensor(loss))
    a, b = whole.compute(), split.compute()
    assert a.loss is None
    assert b.loss == pytest.approx((1 * 1.0 + 3 * 2.0 + 2 * 4.0) / 6)
    assert {**a.to_dict(), "loss": None} == {**b.to_dict(), "loss": None}


def test_random_batches_match_a_topk_reference() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g)
    targets = torch.randint(0, 7, (50,), generator=g)
    one, three = ClassificationMeter(7), ClassificationMeter(7)
    one.update(logits, targets)
    for chunk in (slice(0, 13), slice(13, 40), slice(40, 50)):
        three.update(logits[chunk], targets[chunk])
    assert one.compute() == three.compute()
    ref_top5 = (logits.topk(5, dim=1).indices == targets[:, None]).any(dim=1).float().mean().item()
    ref_top1 = (logits.argmax(1) == targets).float().mean().item()
    assert one.compute().top5 == pytest.approx(ref_top5)
    assert one.compute().top1 == pytest.approx(ref_top1)


def test_fewer_than_five_classes() -> None:
    meter = ClassificationMeter(3)
    logits = torch.tensor([[2.0, 1, 0], [2, 1, 0], [0, 0, 1], [1, 0, 0]])
    meter.update(logits, torch.tensor([0, 1, 2, 2]))
    result = meter.compute()
    assert result.top5_k == 3
    assert result.top5 == 1.0
    assert result.top1 == 0.5
    assert result.confusion == [[1, 0, 0], [1, 0, 0], [1, 0, 1]]
    assert result.per_class_accuracy == [1.0, 0.0, 0.5]


def test_ties_favour_the_target_for_topk_but_argmax_takes_the_first() -> None:
    meter = ClassificationMeter(6)
    meter.update(torch.zeros(1, 6), torch.tensor([5]))
    result = meter.compute()
    assert result.top5 == 1.0
    assert result.top1 == 0.0
    assert result.confusion[5][0] == 1


def test_nan_target_score_is_never_correct() -> None:
    meter = ClassificationMeter(6)
    meter.update(torch.tensor([[float("nan"), 0, 0, 0, 0, 0]]), torch.tensor([0]))
    assert meter.compute().top5 == 0.0


def test_empty_meter_raises() -> None:
    meter = ClassificationMeter(4)
    meter.update(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert meter.count == 0
    with pytest.raises(FovealError, match="no samples"):
        meter.compute()


@pytest.mark.parametrize(
    ("logits", "targets", "match"),
    [
        (torch.zeros(2, 5), torch.tensor([0, 1]), r"shape \(N, 4\)"),
        (torch.zeros(2, 4), torch.tensor([0, 4]), "outside"),
        (torch.zeros(2, 4), torch.tensor([-1, 0]), "outside"),
        (torch.zeros(2, 4), torch.tensor([0.0, 1.0]), "integer"),
        (torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.long), "one-hot"),
        (torch.zeros(2, 4), torch.tensor([0, 1, 2]), "2 rows"),
        (torch.zeros(2, 4, dtype=torch.long), torch.tensor([0, 1]), "floating"),
    ],
)
def test_bad_inputs_raise(logits: torch.Tensor, targets: torch.Tensor, match: str) -> None:
    with pytest.raises(FovealError, match=match):
        ClassificationMeter(4).update(logits, targets)


def test_bad_construction_raises() -> None:
    with pytest.raises(FovealError):
        ClassificationMeter(0)
    with pytest.raises(FovealError, match="2 class names"):
        ClassificationMeter(3, classes=["a", "b"])


def test_reset_forgets_samples() -> None:
    meter = ClassificationMeter(6)
    meter.update(_LOGITS, _TARGETS, loss=1.0)
    meter.reset()
    meter.update(_LOGITS[:1], _TARGETS[:1])
    result = meter.compute()
    assert result.count == 1
    assert result.loss is None


def test_merge_and_state_tensor_round_trip() -> None:
    a, b = ClassificationMeter(6), ClassificationMeter(6)
    a.update(_LOGITS[:2], _TARGETS[:2], loss=1.0)
    b.update(_LOGITS[2:], _TARGETS[2:], loss=4.0)
    state = a.state_tensor() + b.state_tensor()
    assert state.shape == (6 * 6 + 3,)
    assert state.dtype == torch.float64
    merged = a.merge(b).compute()
    assert merged.confusion == _CONFUSION
    assert merged.top5 == pytest.approx(5 / 6)
    assert merged.loss == pytest.approx((2 * 1.0 + 4 * 4.0) / 6)
    assert ClassificationMeter.from_state_tensor(state, 6).compute() == merged
    with pytest.raises(FovealError, match="merge"):
        a.merge(ClassificationMeter(5))
    with pytest.raises(FovealError, match="39 values"):
        ClassificationMeter.from_state_tensor(torch.zeros(10), 6)


def test_all_reduce_without_process_group_is_a_no_op() -> None:
    meter = ClassificationMeter(6)
    meter.update(_LOGITS, _TARGETS)
    before = meter.compute()
    meter.all_reduce()
    assert meter.compute() == before


def test_all_reduce_in_a_single_process_gloo_group(tmp_path) -> None:
    meter = ClassificationMeter(6)
    meter.update(_LOGITS, _TARGETS, loss=0.25)
    before = meter.compute()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        meter.all_reduce()
    finally:
        dist.destroy_process_group()
    assert meter.compute() == before


def test_result_dict_is_json_ready_and_round_trips() -> None:
    meter = ClassificationMeter(6, classes=list("abcdef"))
    meter.update(_LOGITS, _TARGETS, loss=0.5)
    result = meter.compute()
    record = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert record["per_class_accuracy"][4] is None
    assert math.isclose(record["mean_class_accuracy"], 0.3)
    assert ClassificationResult.from_dict(record) == result
    with pytest.raises(FovealError, match="not a classification metrics record"):
        ClassificationResult.from_dict({"top1": 0.5})
