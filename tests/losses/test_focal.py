"""Focal loss: equality with torchvision, gradients against the naive formula, γ = 0 reductions to (B)CE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

import foveal.losses.focal as focal
from foveal.errors import FovealError
from foveal.losses.focal import sigmoid_focal_loss, softmax_focal_loss


def _inputs(shape: tuple[int, ...] = (6, 50, 7), dtype: torch.dtype = torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # logits from very confident (|x| ≈ 25) to uncertain, positives rare as in detection
    logits = (torch.randn(shape, generator=g, dtype=torch.float64) * 6).to(dtype)
    targets = (torch.rand(shape, generator=g) < 0.2).to(dtype)
    return logits, targets


def _naive(logits, targets, alpha=0.25, gamma=2.0):
    """The paper's formula written out (torchvision's expression), for autograd."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 1.0), (0.9, 0.5), (0.25, 3.0)])
def test_sigmoid_equals_torchvision(reduction, alpha, gamma):
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        x, y = _inputs(dtype=dtype)
        ours = sigmoid_focal_loss(x, y, alpha, gamma, reduction)
        ref = tv_sigmoid_focal_loss(x, y, alpha, gamma, reduction)
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, rtol=tol, atol=tol)


def test_sigmoid_without_alpha_equals_torchvision_alpha_minus_one():
    x, y = _inputs(dtype=torch.float64)
    torch.testing.assert_close(
        sigmoid_focal_loss(x, y, alpha=None, reduction="sum"), tv_sigmoid_focal_loss(x, y, -1, 2.0, "sum")
    )


def test_sigmoid_chunks_cover_whole_tensor(monkeypatch):
    # a chunk size that does not divide the element count: every element still counts exactly once
    x, y = _inputs((3, 37, 5), dtype=torch.float64)
    monkeypatch.setattr(focal, "_CHUNK", 64)
    for reduction in ("none", "sum"):
        torch.testing.assert_close(
            sigmoid_focal_loss(x, y, reduction=reduction), tv_sigmoid_focal_loss(x, y, reduction=reduction)
        )
    xg = x.clone().requires_grad_()
    sigmoid_focal_loss(xg, y, reduction="sum").backward()
    xr = x.clone().requires_grad_()
    _naive(xr, y).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (None, 2.0), (0.25, 0.0), (0.7, 1.0), (0.25, 0.5), (0.3, 2.5)])
def test_sigmoid_gradcheck_float64(alpha, gamma):
    # logits away from the extremes so finite differences are meaningful
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 9, dtype=torch.float64, generator=g) * 3).requires_grad_()
    y = (torch.rand(4, 9, generator=g) < 0.4).double()
    for reduction in ("none", "mean", "sum"):
        assert torch.autograd.gradcheck(lambda t, r=reduction: sigmoid_focal_loss(t, y, alpha, gamma, r), (x,))
    assert torch.autograd.gradcheck(lambda t: sigmoid_focal_loss(t, y, alpha, gamma, "sum", normalizer=7.0), (x,))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_sigmoid_gradient_equals_naive_autograd_float32(reduction):
    x, y = _inputs(dtype=torch.float32, seed=3)
    ours = x.clone().requires_grad_()
    ref = x.clone().requires_grad_()
    upstream = torch.rand(x.shape) if reduction == "none" else torch.tensor(1.7)
    sigmoid_focal_loss(ours, y, reduction=reduction).backward(upstream)
    naive = _naive(ref, y)
    naive = {"none": naive, "mean": naive.mean(), "sum": naive.sum()}[reduction]
    naive.backward(upstream)
    torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-4, atol=1e-7)


def test_sigmoid_extreme_logits_are_finite():
    x = torch.tensor([-200.0, -30.0, 0.0, 30.0, 200.0]).repeat(2)
    y = torch.tensor([0.0] * 5 + [1.0] * 5)
    xg = x.clone().requires_grad_()
    loss = sigmoid_focal_loss(xg, y, reduction="none")
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(xg.grad).all()
    # a confident wrong answer costs α_t·|x| (p_t → e^{−|x|}, (1 − p_t)^γ → 1)
    torch.testing.assert_close(loss[4], torch.tensor(0.75 * 200.0))
    torch.testing.assert_close(loss[5], torch.tensor(0.25 * 200.0))
    torch.testing.assert_close(xg.grad[4], torch.tensor(0.75))
    assert loss[0] == 0 and loss[9] == 0


def test_sigmoid_gamma_zero_is_alpha_balanced_bce():
    x, y = _inputs(dtype=torch.float64)
    bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    weight = 0.25 * y + 0.75 * (1 - y)
    torch.testing.assert_close(sigmoid_focal_loss(x, y, 0.25, 0.0, "sum"), (weight * bce).sum())
    torch.testing.assert_close(sigmoid_focal_loss(x, y, None, 0.0, "mean"), bce.mean())


def test_sigmoid_normalizer_divides_the_sum():
    x, y = _inputs(dtype=torch.float64)
    total = sigmoid_focal_loss(x, y, reduction="sum")
    torch.testing.assert_close(sigmoid_focal_loss(x, y, reduction="sum", normalizer=12.0), total / 12)
    torch.testing.assert_close(sigmoid_focal_loss(x, y, reduction="sum", normalizer=torch.tensor(12.0)), total / 12)
    torch.testing.assert_close(sigmoid_focal_loss(x, y, reduction="none", normalizer=4.0).sum(), total / 4)


def test_sigmoid_no_grad_and_empty():
    x, y = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            sigmoid_focal_loss(x, y, reduction="sum"), tv_sigmoid_focal_loss(x, y, reduction="sum")
        )
    empty = torch.zeros(0, 80, requires_grad=True)
    loss = sigmoid_focal_loss(empty, torch.zeros(0, 80), reduction="sum")
    loss.backward()
    assert loss.item() == 0.0 and empty.grad.shape == (0, 80)


def test_sigmoid_bad_options():
    x, y = _inputs()
    with pytest.raises(FovealError, match="reduction"):
        sigmoid_focal_loss(x, y, reduction="avg")
    with pytest.raises(FovealError, match="alpha"):
        sigmoid_focal_loss(x, y, alpha=1.5)
    with pytest.raises(FovealError, match="gamma"):
        sigmoid_focal_loss(x, y, gamma=-1)
    with pytest.raises(FovealError, match="normalizer"):
        sigmoid_focal_loss(x, y, reduction="mean", normalizer=3.0)
    with pytest.raises(FovealError, match="shape"):
        sigmoid_focal_loss(x, y[:1])


def _seg_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 5, 6, dtype=torch.float64, generator=g) * 3
    target = torch.randint(0, 4, (2, 5, 6), generator=g)
    target[0, 0, :3] = 255
    weight = torch.rand(2, 5, 6, dtype=torch.float64, generator=g) + 0.5
    return logits, target, weight


def test_softmax_gamma_zero_equals_cross_entropy():
    logits, target, weight = _seg_inputs()
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    valid = target != 255
    torch.testing.assert_close(softmax_focal_loss(logits, target, 0.0, ignore_index=255, reduction="none"), ce)
    torch.testing.assert_close(
        softmax_focal_loss(logits, target, 0.0, ignore_index=255), F.cross_entropy(logits, target, ignore_index=255)
    )
    # per-class α as cross_entropy's class weight; "mean" divides by the number of non-ignored elements
    alpha = torch.tensor([0.5, 1.0, 2.0, 0.25], dtype=torch.float64)
    ce_w = F.cross_entropy(logits, target, weight=alpha, ignore_index=255, reduction="sum")
    torch.testing.assert_close(softmax_focal_loss(logits, target, 0.0, alpha, ignore_index=255), ce_w / valid.sum())
    # per-element weight map
    torch.testing.assert_close(
        softmax_focal_loss(logits, target, 0.0, weight=weight, ignore_index=255, reduction="sum"), (ce * weight).sum()
    )
    # plain classification (N, K)
    flat = logits[:, :, 1, 1]
    torch.testing.assert_close(softmax_focal_loss(flat, target[:, 1, 1], 0.0), F.cross_entropy(flat, target[:, 1, 1]))


def test_softmax_focal_formula_and_gradient():
    logits, target, weight = _seg_inputs(1)
    logits.requires_grad_()
    ours = softmax_focal_loss(logits, target, 2.0, 0.5, weight, ignore_index=255, reduction="none")
    p = logits.softmax(1).gather(1, target.clamp(max=3)[:, None]).squeeze(1)
    ref = -0.5 * weight * (1 - p) ** 2 * p.log() * (target != 255)
    torch.testing.assert_close(ours, ref)
    assert (ours[0, 0, :3] == 0).all()
    # gradcheck on a corner that holds ignored and valid pixels
    leaf = logits.detach()[:, :, :2, :3].clone().requires_grad_()
    t, w = target[:, :2, :3], weight[:, :2, :3]
    assert torch.autograd.gradcheck(lambda z: softmax_focal_loss(z, t, 1.5, weight=w, ignore_index=255), (leaf,))
    # γ < 1 at a saturated prediction: finite gradient, no 0·∞
    sat = torch.tensor([[200.0, -200.0]], requires_grad=True)
    softmax_focal_loss(sat, torch.tensor([0]), gamma=0.5).backward()
    assert torch.isfinite(sat.grad).all()


def test_softmax_all_ignored_and_bad_shapes():
    logits, target, _ = _seg_inputs()
    loss = softmax_focal_loss(logits, torch.full_like(target, 255), ignore_index=255)
    assert loss.item() == 0.0
    with pytest.raises(FovealError, match="target"):
        softmax_focal_loss(logits, target[:, :2])
