"""Segmentation metrics: hand-computed confusion scores, Rand error against brute-force pair counting, instance AP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from foveal.errors import FovealError
from foveal.metrics.instances import DSB_THRESHOLDS, InstanceMeter, instance_iou, match_instances, merged_pairs
from foveal.metrics.segmentation import SegmentationMeter, pixel_error, rand_error


def _labels(rng: np.random.Generator, shape: tuple[int, int] = (12, 12), k: int = 5) -> np.ndarray:
    return rng.integers(0, k, size=shape)


def _brute_rand_error(pred: np.ndarray, true: np.ndarray, kind: str) -> float:
    """Rand error by enumerating every pixel pair (O(n²)), straight from the definitions."""
    if kind == "index":
        t, p = true.ravel(), pred.ravel()
        same_t, same_p = t[:, None] == t[None, :], p[:, None] == p[None, :]
        upper = np.triu(np.ones_like(same_t), k=1)
        return float(((same_t != same_p) & upper).sum() / upper.sum())
    fg = true != 0
    t, p = true[fg], pred[fg]
    same_t = t[:, None] == t[None, :]
    same_p = (p[:, None] == p[None, :]) & ((p[:, None] != 0) | np.eye(t.size, dtype=bool))
    tp = (same_t & same_p).sum()
    precision, recall = tp / same_p.sum(), tp / same_t.sum()
    return float(1 - 2 * precision * recall / (precision + recall))


# --- SegmentationMeter ---


def test_meter_matches_hand_computation() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 2, -1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 2, 0, 2]])
    meter = SegmentationMeter(3, ["bg", "a", "b"], ignore_index=-1)
    meter.update(pred, target)
    r = meter.result()
    # counted pixels (target, pred): (0,0) (0,1) (1,1) (1,1) (2,2) (2,2) (2,0); the last one is ignored.
    assert r.confusion == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    # class 0: TP 1, FP 1, FN 1; class 1: TP 2, FP 1, FN 0; class 2: TP 2, FP 0, FN 1
    assert r.iou == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert r.dice == pytest.approx([2 / 4, 4 / 5, 4 / 5])
    assert r.mean_iou == pytest.approx(5 / 9)
    assert r.foreground_iou == pytest.approx(2 / 3)
    assert r.pixel_error == pytest.approx(2 / 7)
    assert r.pixels == 7
    assert json.loads(json.dumps(r.to_dict()))["class_names"] == ["bg", "a", "b"]


def test_meter_two_classes_foreground_iou_and_batching() -> None:
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.integers(0, 2, size=(3, 8, 8)))
    pred = torch.from_numpy(rng.integers(0, 2, size=(3, 8, 8)))
    whole, split = SegmentationMeter(2), SegmentationMeter(2)
    whole.update(pred, target)
    for i in range(3):
        split.update(pred[i], target[i])  # (H, W) maps
    a, b = whole.result(), split.result()
    assert a == b
    inter = int(((pred == 1) & (target == 1)).sum())
    union = int(((pred == 1) | (target == 1)).sum())
    assert a.foreground_iou == pytest.approx(inter / union)
    assert a.pixel_error == pytest.approx(float((pred != target).float().mean()))


def test_meter_identical_maps_and_absent_class() -> None:
    target = torch.tensor([[0, 1], [1, 0]])
    meter = SegmentationMeter(3)
    meter.update(target, target)
    r = meter.result()
    assert r.iou == [1.0, 1.0, None]  # class 2 absent from both: undefined, not 0 or NaN
    assert r.mean_iou == 1.0 and r.pixel_error == 0.0


def test_meter_rejects_bad_input() -> None:
    meter = SegmentationMeter(2)
    with pytest.raises(FovealError, match="outside"):
        meter.update(torch.tensor([[0, 2]]), torch.tensor([[0, 1]]))
    with pytest.raises(FovealError, match="equal shape"):
        meter.update(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(FovealError, match="integer"):
        meter.update(torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(FovealError, match="no pixels"):
        meter.result()


# --- Rand and pixel error ---


@pytest.mark.parametrize("kind", ["fscore", "index"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rand_error_equals_brute_force_pair_count(kind: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    true, pred = _labels(rng), _labels(rng, k=4)
    expected = _brute_rand_error(pred, true, kind)
    assert 0 < expected < 1
    assert rand_error(pred, true, kind=kind) == pytest.approx(expected, abs=1e-12)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["fscore", "index"])
def test_rand_error_zero_for_identical_and_invariant_to_relabelling(kind: str) -> None:
    rng = np.random.default_rng(3)
    true, pred = _labels(rng), _labels(rng)
    assert rand_error(true, true, kind=kind) == 0.0  # type: ignore[arg-type]
    # Permute the non-zero labels (0 keeps its meaning of background / boundary).
    perm = np.array([0, 7, 3, 9, 2])
    before = rand_error(pred, true, kind=kind)  # type: ignore[arg-type]
    assert rand_error(perm[pred], perm[true], kind=kind) == pytest.approx(before)  # type: ignore[arg-type]


def test_rand_fscore_ignores_true_background_and_penalises_merges_and_splits() -> None:
    true = np.array([[1, 1, 0, 2, 2]])
    assert rand_error(np.array([[1, 1, 5, 2, 2]]), true) == 0.0  # prediction on true background does not count
    # Merge: ordered pairs (with self) of the 4 fg pixels: truth joins 8, prediction joins 16, both 8.
    merged = rand_error(np.array([[3, 3, 3, 3, 3]]), true)
    assert merged == pytest.approx(1 - 2 * (8 / 16) * 1 / (8 / 16 + 1))
    # Boundary (0) inside a true cell: each such pixel is its own segment.
    split = rand_error(np.array([[1, 0, 0, 2, 2]]), true)
    assert split == pytest.approx(1 - 2 * 1 * (6 / 8) / (1 + 6 / 8))


def test_rand_error_rejects_mismatched_shapes_and_unknown_kind() -> None:
    with pytest.raises(FovealError, match="same shape"):
        rand_error(np.zeros((3, 3), int), np.zeros((3, 4), int))
    with pytest.raises(FovealError, match="kind"):
        rand_error(np.zeros((3, 3), int), np.zeros((3, 3), int), kind="vi")  # type: ignore[arg-type]


def test_pixel_error() -> None:
    true = np.array([[0, 1, 1, 0]])
    assert pixel_error(np.array([[0, 1, 0, 0]]), true) == pytest.approx(0.25)
    assert pixel_error(true.astype(bool), true) == 0.0


# --- instance matching ---


def _square(
    shape: tuple[int, int], y: int, x: int, h: int, w: int, label: int = 1, into: np.ndarray | None = None
) -> np.ndarray:
    out = np.zeros(shape, dtype=np.int32) if into is None else into
    out[y : y + h, x : x + w] = label
    return out


def test_identical_instances_give_ap_one_everywhere() -> None:
    true = _square((16, 16), 1, 1, 4, 4, 1)
    _square((16, 16), 8, 8, 5, 3, 7, into=true)
    r = match_instances(true, true)
    assert r.thresholds == DSB_THRESHOLDS
    assert all(v == 1.0 for v in r.ap.values()) and r.mean_ap == 1.0
    assert r.tp == (2,) * 10 and r.fp == (0,) * 10 and r.fn == (0,) * 10
    assert r.mean_matched_iou == 1.0


def test_shifted_instance_with_iou_two_thirds() -> None:
    true = _square((8, 10), 2, 0, 4, 5)  # 20 px
    pred = _square((8, 10), 2, 1, 4, 5)  # shifted right by one: 16 shared, 24 in the union
    assert instance_iou(pred, true)[0, 0] == pytest.approx(2 / 3)
    r = match_instances(pred, true, thresholds=(0.5, 0.65, 0.7))
    assert r.tp == (1, 1, 0) and r.fp == (0, 0, 1) and r.fn == (0, 0, 1)
    assert r.f1_at(0.65) == 1.0 and r.f1_at(0.7) == 0.0
    assert r.ap_at(0.5) == 1.0
    assert r.mean_matched_iou == pytest.approx(2 / 3)


def test_split_instance() -> None:
    true = _square((6, 6), 1, 1, 4, 4)  # 16 px
    pred = _square((6, 6), 1, 1, 4, 3, 1)  # 12 px: IoU 0.75
    _square((6, 6), 1, 4, 4, 1, 2, into=pred)  # 4 px: IoU 0.25
    r = match_instances(pred, true, thresholds=(0.2, 0.5, 0.75))
    assert r.tp == (1, 1, 0)  # one-to-one even at 0.2; 0.75 is not strictly above 0.75
    assert r.fp == (1, 1, 2) and r.fn == (0, 0, 1)
    assert r.ap[0.5] == pytest.approx(1 / 2)
    assert r.precision[0.5] == pytest.approx(1 / 2) and r.recall[0.5] == 1.0
    assert r.f1_at(0.5) == pytest.approx(2 / 3)


def test_merged_pair_counts_and_merged_pairs() -> None:
    true = _square((6, 10), 1, 1, 4, 4, 1)
    _square((6, 10), 1, 5, 4, 4, 2, into=true)  # touching the first along a column
    pred = _square((6, 10), 1, 1, 4, 8, 9)  # one instance over both: IoU 16/32 = 0.5 with each
    r = match_instances(pred, true)
    assert r.tp[0] == 0 and r.fp[0] == 1 and r.fn[0] == 2
    assert merged_pairs(pred, true) == (1, 1)
    assert merged_pairs(true, true) == (0, 1)
    # Only diagonal contact still touches (8-neighbours); a one-pixel gap does not.
    diagonal = _square((6, 6), 0, 0, 2, 2, 1)
    _square((6, 6), 2, 2, 2, 2, 2, into=diagonal)
    gap = _square((6, 6), 0, 0, 2, 2, 1)
    _square((6, 6), 0, 3, 2, 2, 2, into=gap)
    assert merged_pairs(diagonal, diagonal)[1] == 1 and merged_pairs(gap, gap)[1] == 0


def test_merged_pairs_uses_majority_label_including_background() -> None:
    true = _square((4, 8), 0, 0, 4, 4, 1)
    _square((4, 8), 0, 4, 4, 4, 2, into=true)
    pred = _square((4, 8), 0, 2, 1, 4, 5)  # a sliver over both cells: background is the majority in each
    assert merged_pairs(pred, true) == (0, 1)


def test_low_threshold_matching_maximises_number_of_matches() -> None:
    # One row: true X = 0..9, Y = 10..19; prediction A = 3..12, B = 0..2.
    true = np.zeros((1, 20), dtype=np.int32)
    true[0, 10:] = 2
    true[0, :10] = 1
    pred = np.zeros((1, 20), dtype=np.int32)
    pred[0, 3:13], pred[0, :3] = 1, 2
    # IoU A-X = 7/13, A-Y = 3/17, B-X = 3/10: greedy A-X would leave Y and B unmatched.
    r = match_instances(pred, true, thresholds=(0.15, 0.5))
    assert r.tp == (2, 1)


def test_label_permutation_invariance_of_instance_scores() -> None:
    rng = np.random.default_rng(5)
    true, pred = _labels(rng, (16, 16), 6), _labels(rng, (16, 16), 6)
    perm = np.array([0, 11, 4, 30, 2, 8])
    a, b = match_instances(pred, true), match_instances(perm[pred], perm[true])
    assert a.tp == b.tp and a.fp == b.fp and a.fn == b.fn


def test_empty_images() -> None:
    empty = np.zeros((4, 4), dtype=np.int32)
    r = match_instances(empty, empty)
    assert r.mean_ap == 1.0 and r.mean_matched_iou is None
    one = _square((4, 4), 0, 0, 2, 2)
    assert match_instances(empty, one).mean_ap == 0.0
    assert match_instances(one, empty).precision[0.5] == 0.0


def test_instance_meter_pools_counts() -> None:
    true = _square((8, 10), 2, 0, 4, 5)
    shifted = _square((8, 10), 2, 1, 4, 5)
    meter = InstanceMeter(thresholds=(0.5, 0.7))
    meter.update(true, true)
    meter.update(shifted, true)
    r = meter.result()
    assert r.tp == (2, 1) and r.fp == (0, 1) and r.fn == (0, 1) and r.images == 2
    assert r.ap_at(0.7) == pytest.approx(1 / 3)
    assert r.mean_ap == pytest.approx((1 + 1 / 3) / 2)
    assert meter.per_image_mean_ap == pytest.approx((1.0 + 0.5) / 2)
    assert r.mean_matched_iou == pytest.approx((1 + 2 / 3) / 2)
    record = json.loads(json.dumps(r.to_dict()))
    assert record["per_threshold"]["0.7"]["ap"] == pytest.approx(1 / 3)
    with pytest.raises(FovealError):
        InstanceMeter().result()


def _dense_reference(pred: np.ndarray, true: np.ndarray, thresholds: tuple[float, ...]) -> tuple[list[int], np.ndarray]:
    """Matched pairs per threshold from the dense true × predicted IoU table (an optimal assignment at every
    threshold), and the majority predicted index of each true instance from the dense joint histogram."""
    from scipy.optimize import linear_sum_assignment

    from foveal.metrics.instances import overlap_counts

    iou = instance_iou(pred, true)
    counts = []
    for t in thresholds:
        admissible = iou > t
        rows, cols = linear_sum_assignment(admissible, maximize=True) if admissible.size else ([], [])
        counts.append(int(np.count_nonzero(admissible[rows, cols])) if admissible.size else 0)
    return counts, overlap_counts(pred, true).argmax(axis=1)


@pytest.mark.parametrize("dense", [True, False])
def test_sparse_overlaps_match_the_dense_tables(monkeypatch: pytest.MonkeyPatch, dense: bool) -> None:
    # heavily overlapping rectangles of many labels (non-consecutive), matched at low and high thresholds; the pairs
    # are counted densely or by sorting the pixels, with the same answers as the dense tables
    from foveal.metrics import instances

    if not dense:
        monkeypatch.setattr(instances, "_DENSE_PAIRS", 0)
    rng = np.random.default_rng(3)
    thresholds = (0.05, 0.1, 0.3, 0.5, 0.75)
    for _ in range(6):
        images = []
        for _ in range(2):
            labels = np.zeros((40, 48), np.int64)
            for label in rng.choice(1000, size=30, replace=False) + 1:
                y, x = rng.integers(0, 36), rng.integers(0, 44)
                labels[y : y + rng.integers(2, 12), x : x + rng.integers(2, 12)] = label
            images.append(labels)
        pred, true = images
        counts, majority = _dense_reference(pred, true, thresholds)
        assert list(match_instances(pred, true, thresholds).tp) == counts
        assert np.array_equal(instances.instance_overlaps(pred, true).majority(), majority)
        pairs = instances.touching_pairs(instances._dense_index(true)[0].reshape(true.shape))
        a, b = majority[pairs[:, 0]], majority[pairs[:, 1]]
        assert merged_pairs(pred, true) == (int(np.count_nonzero((a == b) & (a != 0))), len(pairs))


def test_many_instances_need_no_true_by_predicted_table() -> None:
    # 20,000 true dominoes and 20,000 predicted ones shifted by a pixel (each IoU 1/3 with two true ones): a dense
    # table would hold 400 million cells; the sparse pairs hold 40,000
    true = (np.arange(200 * 200) // 2 + 1).reshape(200, 200)
    pred = np.zeros_like(true)
    pred[:, 1:] = true[:, :-1]
    result = match_instances(pred, true, (0.1, 0.5))
    assert result.n_true == result.n_pred == 20_000 and result.tp == (20_000, 0)
    merged, touching = merged_pairs(pred, true)
    assert merged == 0 and touching > 20_000
