"""Focal loss, sigmoid (per-class, as in RetinaNet) and soft-max (multi-class) forms.

Reference: Tsung-Yi Lin, Priya Goyal, Ross Girshick, Kaiming He and Piotr Dollár, "Focal Loss for Dense Object
Detection", ICCV 2017 (arXiv:1708.02002). With p_t = p for the true class and 1 − p otherwise,
``FL(p_t) = −α_t (1 − p_t)^γ log(p_t)``; γ = 2 and α = 0.25 are the paper's best values, γ = 0 gives α-balanced
cross-entropy.

:func:`sigmoid_focal_loss` runs as one fused autograd function. For a 0/1 target y, let s = 1 − 2y and w = s·x
(x the logit); then 1 − p_t = σ(w), computed without the cancellation of 1 − p (so (1 − p_t)^γ stays accurate for
confident predictions), −log p_t = softplus(w), and

    dFL/dx = s · α_t · σ(w)^γ · (γ · p_t · softplus(w) + σ(w)).

The gradient is formed in the forward pass from the same intermediates (on the CPU in cache-sized chunks), so the
backward pass is one multiplication and no large temporaries are kept.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from foveal.errors import FovealError

_REDUCTIONS = ("none", "mean", "sum")
# Elements per chunk of the fused sigmoid loss on the CPU: the chunk's few temporaries stay in the caches.
_CHUNK = 1 << 18


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "none",
    normalizer: float | Tensor | None = None,
) -> Tensor:
    """Sigmoid focal loss, one independent binary problem per element (the paper's form for K classes).

    Args:
        logits: raw scores of any shape, e.g. (N, HWA, K) for RetinaNet.
        targets: the same shape, 1.0 for the positive class and 0.0 otherwise. Hard labels only: the fused form
            relies on y ∈ {0, 1}, and other values (label smoothing) give a wrong loss, not an error. Any dtype
            (bool too); converted to the dtype of ``logits``. Receives no gradient.
        alpha: weight α of the positives (1 − α for the negatives), in [0, 1]; ``None`` for no α-balancing.
        gamma: focusing parameter γ ≥ 0 (0 gives α-balanced binary cross-entropy).
        reduction: "none" (per-element loss), "mean" (over all elements) or "sum".
        normalizer: if given, divides the loss: the sum for "sum", every element for "none" (not allowed with
            "mean"). RetinaNet passes the number of foreground anchors. A float or a 0-d tensor (no device sync).

    Returns:
        The loss: the shape of ``logits`` for "none", a scalar otherwise.
    """
    _check(reduction, gamma, normalizer)
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise FovealError(f"focal loss alpha must be in [0, 1] or None (no balancing), got {alpha}")
    if logits.shape != targets.shape:
        raise FovealError(f"focal loss logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    scale: float | Tensor = 1.0
    if reduction == "mean":
        scale = 1.0 / max(logits.numel(), 1)
    elif normalizer is not None:
        scale = 1.0 / normalizer if isinstance(normalizer, Tensor) else 1.0 / float(normalizer)
    if isinstance(scale, Tensor):
        scale = scale.detach().to(logits.dtype)
    return _SigmoidFocal.apply(logits, targets, alpha, float(gamma), reduction, scale)


class _SigmoidFocal(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: Tensor,
        targets: Tensor,
        alpha: float | None,
        gamma: float,
        reduction: str,
        scale: float | Tensor,
    ) -> Tensor:
        x = logits.detach().reshape(-1)
        y = targets.detach().to(x.dtype).reshape(-1)
        grad = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        per_element = torch.empty_like(x) if reduction == "none" else None
        total = x.new_zeros(())
        chunk = max(1, min(_CHUNK if x.device.type == "cpu" else x.numel(), x.numel()))
        # one workspace for every chunk's temporaries: no allocation (and no fresh pages to fault in) per chunk
        workspace = x.new_empty((5, chunk))
        for start in range(0, x.numel(), chunk):
            sl = slice(start, start + chunk)
            part = _chunk(
                x[sl],
                y[sl],
                alpha,
                gamma,
                scale,
                workspace[:, : x[sl].numel()],
                None if per_element is None else per_element[sl],
                None if grad is None else grad[sl],
            )
            if part is not None:
                total += part
        if grad is not None:
            ctx.save_for_backward(grad)
            ctx.shape = logits.shape
        if per_element is not None:
            return per_element.view(logits.shape)
        return total * scale

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        grad_in = grad.view(ctx.shape) * grad_out
        return grad_in, None, None, None, None, None


def _chunk(
    x: Tensor,
    y: Tensor,
    alpha: float | None,
    gamma: float,
    scale: float | Tensor,
    workspace: Tensor,
    loss_out: Tensor | None,
    grad_out: Tensor | None,
) -> Tensor | None:
    """Focal loss of one flat chunk: writes per-element loss / gradient where asked, returns the unscaled sum.

    ``workspace`` is (5, n) scratch memory; every temporary lives there.
    """
    w, q, p_t, aux, ce = workspace.unbind(0)
    one = x.new_ones(())
    torch.addcmul(x, x, y, value=-2.0, out=w)  # w = (1 − 2y)·x, the logit of 1 − p_t
    torch.sigmoid(w, out=q)  # 1 − p_t
    torch.sub(one, q, out=p_t)
    # −log p_t = softplus(w) = max(w, 0) − log σ(|w|) with σ(|w|) = max(q, 1 − q): no exp beyond the sigmoid's, and
    # log rather than log1p (no vector kernel on CPU); the absolute error stays below an ulp of 1, as in PyTorch's
    # own BCE-with-logits
    torch.maximum(q, p_t, out=aux).log_()
    torch.clamp(w, min=0.0, out=ce).sub_(aux)
    mod: Tensor | None = None  # σ(w)^γ
    if gamma == 1.0:
        mod = q
    elif gamma != 0.0:
        mod = torch.mul(q, q, out=aux) if gamma == 2.0 else torch.pow(q, gamma, out=aux)
    loss = ce if mod is None else torch.mul(mod, ce, out=w)
    part: Tensor | None = None
    if loss_out is not None:
        if alpha is None:
            torch.mul(loss, scale, out=loss_out)
        else:
            torch.mul(loss, 1.0 - alpha, out=loss_out).addcmul_(y, loss, value=2.0 * alpha - 1.0)
            if _scales(scale):
                loss_out.mul_(scale)
    elif alpha is None:
        part = loss.sum()
    else:
        # Σ α_t·L = (1 − α)·ΣL + (2α − 1)·Σ y·L, two reads instead of a weighted copy
        part = (1.0 - alpha) * loss.sum() + (2.0 * alpha - 1.0) * torch.dot(y, loss)
    if grad_out is not None:
        # g = c · σ(w)^γ · (γ p_t ce + q), with c = s·α_t = (1 − α) − y (or 1 − 2y without α) times a float scale;
        # c goes where w (now the consumed loss) was
        k = scale if isinstance(scale, float) else 1.0
        if alpha is None:
            c = torch.sub(one * k, y, alpha=2.0 * k, out=w)
        else:
            c = torch.sub(one * ((1.0 - alpha) * k), y, alpha=k, out=w)
        if mod is None:
            torch.mul(q, c, out=grad_out)
        else:
            torch.mul(torch.addcmul(q, p_t, ce, value=gamma, out=p_t).mul_(mod), c, out=grad_out)
        if isinstance(scale, Tensor):
            grad_out.mul_(scale)
    return part


def softmax_focal_loss(
    logits: Tensor,
    target: Tensor,
    gamma: float = 2.0,
    alpha: float | Tensor | None = None,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Multi-class (soft-max) focal loss for classification and segmentation: ``−α_t w (1 − p_t)^γ log p_t``.

    Args:
        logits: (N, K, ...) raw class scores (e.g. (N, K) or (N, K, H, W)).
        target: (N, ...) int64 class indices in [0, K), or ``ignore_index``.
        gamma: focusing parameter γ ≥ 0 (0 gives cross-entropy).
        alpha: ``None``; a float that multiplies every element; or a (K,) tensor of per-class weights α_c (α_t is
            the weight of each element's true class, like ``F.cross_entropy``'s ``weight``).
        weight: optional (N, ...) per-element weight, e.g. U-Net's border weight map w(x).
        ignore_index: target value of elements that contribute nothing (and do not count for "mean").
        reduction: "mean" (sum over the non-ignored elements divided by their number), "sum" or "none".

    Returns:
        A scalar, or the (N, ...) per-element loss for "none" (0 at ignored elements).
    """
    _check(reduction, gamma, None)
    if logits.dim() < 2 or target.shape != logits.shape[:1] + logits.shape[2:]:
        raise FovealError(
            f"softmax focal loss needs logits (N, K, ...) and target (N, ...); got {tuple(logits.shape)} and "
            f"{tuple(target.shape)}"
        )
    valid = target != ignore_index
    safe = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)
    logp = torch.log_softmax(logits, dim=1).gather(1, safe).squeeze(1)
    loss = -logp
    if gamma != 0.0:
        # 1 − p_t via expm1 (exact for confident predictions); the clamp keeps γ < 1 from a 0·∞ gradient
        mod = (-torch.expm1(logp)).clamp_min(torch.finfo(logp.dtype).tiny).pow(gamma)
        loss = loss * mod
    if isinstance(alpha, Tensor):
        loss = loss * alpha.to(loss)[safe.squeeze(1)]
    elif alpha is not None:
        loss = loss * alpha
    if weight is not None:
        loss = loss * weight
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum().clamp_min(1)


def _scales(scale: float | Tensor) -> bool:
    return isinstance(scale, Tensor) or scale != 1.0


def _check(reduction: str, gamma: float, normalizer: float | Tensor | None) -> None:
    if reduction not in _REDUCTIONS:
        raise FovealError(f"unknown reduction '{reduction}': choose one of {', '.join(_REDUCTIONS)}")
    if gamma < 0:
        raise FovealError(f"focal loss gamma must be >= 0, got {gamma}")
    if normalizer is not None and reduction == "mean":
        raise FovealError("a normalizer replaces the mean's element count: use reduction='sum' with it")
