"""Segmentation losses: weighted CE against torch and by hand, Dice, ignored pixels, gradients of every kind."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from foveal.errors import FovealError
from foveal.losses.segmentation import SEGMENTATION_LOSSES, dice_loss, segmentation_loss, weighted_cross_entropy


def _batch(seed: int = 0, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 5, 6, generator=generator, dtype=torch.float64)
    target = torch.randint(0, classes, (2, 5, 6), generator=generator)
    weight = torch.rand(2, 5, 6, generator=generator, dtype=torch.float64) * 10
    return logits, target, weight


def test_unit_weight_equals_torch_cross_entropy() -> None:
    logits, target, _ = _batch()
    expected = F.cross_entropy(logits, target)
    torch.testing.assert_close(weighted_cross_entropy(logits, target), expected)
    torch.testing.assert_close(
        weighted_cross_entropy(logits, target, torch.ones_like(target, dtype=logits.dtype)), expected
    )
    target[0, 0] = -1
    torch.testing.assert_close(weighted_cross_entropy(logits, target), F.cross_entropy(logits, target, ignore_index=-1))


def test_weighted_cross_entropy_hand_computed() -> None:
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 0]]])
    weight = torch.tensor([[[3.0, 0.5]]])
    nll_first = -math.log(math.exp(2) / (math.exp(2) + 1))
    nll_second = -math.log(1 / (1 + math.e))
    expected = (3.0 * nll_first + 0.5 * nll_second) / 2  # divided by the number of pixels, not the weight sum
    assert weighted_cross_entropy(logits, target, weight).item() == pytest.approx(expected, rel=1e-6)


def test_weighted_cross_entropy_is_the_weighted_mean() -> None:
    logits, target, weight = _batch(1)
    per_pixel = -torch.log_softmax(logits, 1).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(weighted_cross_entropy(logits, target, weight), (weight * per_pixel).mean())


def test_ignored_pixels_contribute_nothing() -> None:
    logits, target, weight = _batch(2)
    ignored = torch.zeros_like(target, dtype=torch.bool)
    ignored[0, :2] = True
    target = torch.where(ignored, -1, target)
    changed = logits.clone()  # wild scores and weights on the ignored pixels (rows 0-1 of sample 0) only
    changed[0, :, :2] = torch.tensor([50.0, -50.0, 3.0], dtype=logits.dtype)[:, None, None]
    weight_changed = torch.where(ignored, 1e6, weight)
    for kind in SEGMENTATION_LOSSES:
        before = segmentation_loss(logits, target, weight, kind=kind)
        after = segmentation_loss(changed, target, weight_changed, kind=kind)
        torch.testing.assert_close(before, after)
    # and the mean is over the kept pixels only
    keep = ~ignored
    per_pixel = -torch.log_softmax(logits, 1).gather(1, target.clamp(min=0)[:, None])[:, 0]
    expected = (weight * per_pixel)[keep].sum() / keep.sum()
    torch.testing.assert_close(weighted_cross_entropy(logits, target, weight), expected)
    everything = torch.full_like(target, -1)
    assert weighted_cross_entropy(logits, everything, weight).item() == 0.0


def test_dice_of_perfect_prediction_is_zero() -> None:
    _, target, _ = _batch(3)
    logits = F.one_hot(target, 3).movedim(-1, 1).double() * 100.0
    assert dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-9)
    assert dice_loss(logits, target, include_background=True).item() == pytest.approx(0.0, abs=1e-9)
    assert dice_loss(-logits, target, eps=1e-6).item() == pytest.approx(1.0, abs=1e-6)


def test_dice_hand_computed() -> None:
    logits = torch.zeros(1, 2, 1, 4, dtype=torch.float64)  # p = 0.5 everywhere
    target = torch.tensor([[[1, 1, 0, 0]]])
    # class 1: overlap 2·0.5 = 1, sums 2 + 2 → (2·1 + 1) / (4 + 1)
    assert dice_loss(logits, target).item() == pytest.approx(1 - 3 / 5)


@pytest.mark.parametrize("kind", SEGMENTATION_LOSSES)
def test_gradients_are_finite(kind: str) -> None:
    logits, target, weight = _batch(4)
    target[1, 0, 0] = -1
    logits.requires_grad_(True)
    loss = segmentation_loss(logits, target, weight, kind=kind)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert torch.all(logits.grad[1, :, 0, 0] == 0)  # the ignored pixel gets no gradient


def test_focal_with_gamma_zero_is_weighted_cross_entropy() -> None:
    logits, target, weight = _batch(5)
    focal = segmentation_loss(logits, target, weight, kind="focal", focal_gamma=0.0)
    torch.testing.assert_close(focal, weighted_cross_entropy(logits, target, weight))
    assert segmentation_loss(logits, target, weight, kind="focal").item() < focal.item()


def test_ce_plus_dice_is_the_sum() -> None:
    logits, target, weight = _batch(6)
    torch.testing.assert_close(
        segmentation_loss(logits, target, weight, kind="ce+dice"),
        weighted_cross_entropy(logits, target, weight) + dice_loss(logits, target),
    )


def test_bad_input_raises() -> None:
    logits, target, weight = _batch(7)
    with pytest.raises(FovealError, match="ce, focal, dice, ce\\+dice"):
        segmentation_loss(logits, target, kind="bce")
    with pytest.raises(FovealError, match="target must be"):
        weighted_cross_entropy(logits, target[:, :4])
    with pytest.raises(FovealError, match="weight must be"):
        weighted_cross_entropy(logits, target, weight[0])
    with pytest.raises(FovealError, match="integer"):
        weighted_cross_entropy(logits, target.double())
    with pytest.raises(FovealError, match="outside 0..2"):
        weighted_cross_entropy(logits, torch.full_like(target, 3))
    with pytest.raises(FovealError, match="eps"):
        dice_loss(logits, target, eps=0.0)
    with pytest.raises(FovealError, match="at least 2 classes"):
        dice_loss(logits[:, :1], torch.zeros_like(target))
