"""Segmentation losses: the U-Net's weighted soft-max cross-entropy, soft Dice, soft-max focal and their mix.

References:

- Olaf Ronneberger, Philipp Fischer and Thomas Brox, "U-Net: Convolutional Networks for Biomedical Image
  Segmentation", MICCAI 2015 (arXiv:1505.04597), Eq. 1: the energy ``E = Σ_x w(x) log p_{ℓ(x)}(x)`` of a pixel-wise
  soft-max combined with cross-entropy, each pixel weighted by the map of :mod:`foveal.data.weightmap`.
- Fausto Milletari, Nassir Navab and Seyed-Ahmad Ahmadi, "V-Net", 3DV 2016 (arXiv:1606.04797): the soft Dice loss.
- Tsung-Yi Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017 (arXiv:1708.02002): the focal term, here in
  its soft-max form (:func:`foveal.losses.focal.softmax_focal_loss`).

Shapes: ``logits`` (N, K, H, W) (any number of trailing spatial dimensions works), ``target`` (N, H, W) int64 class
indices, ``weight`` (N, H, W) per-pixel weights. Pixels whose target equals ``ignore_index`` contribute nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from foveal.errors import FovealError

SEGMENTATION_LOSSES: tuple[str, ...] = ("ce", "focal", "dice", "ce+dice")
"""The ``kind`` values of :func:`segmentation_loss`; ``"ce"`` (weighted cross-entropy) is the paper's."""


def _check_inputs(logits: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int) -> Tensor:
    """Validate shapes and class indices; return the (N, H, W) bool mask of pixels that count."""
    if logits.dim() < 2:
        raise FovealError(f"logits must be (N, K, H, W) (or (N, K, ...)), got shape {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expected:
        raise FovealError(
            f"target must be (N, H, W) = {expected} to match logits {tuple(logits.shape)}, got {tuple(target.shape)}"
        )
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise FovealError(f"target must hold integer class indices (int64), got dtype {target.dtype}")
    if weight is not None and tuple(weight.shape) != expected:
        raise FovealError(f"weight must be (N, H, W) = {expected} like the target, got {tuple(weight.shape)}")
    valid = target != ignore_index
    num_classes = logits.shape[1]
    if bool((((target < 0) | (target >= num_classes)) & valid).any()):
        raise FovealError(
            f"target holds class indices outside 0..{num_classes - 1} (and not ignore_index={ignore_index}): "
            "check the mask values against the number of classes"
        )
    return valid


def weighted_cross_entropy(
    logits: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = -1
) -> Tensor:
    """The U-Net energy: pixel-wise soft-max cross-entropy, each pixel weighted by w(x).

    Normalisation: ``Σ_x w(x) · (−log p_{ℓ(x)}(x)) / M``, the sum over the non-ignored pixels of the whole batch
    divided by their number M (not by the sum of the weights). With ``weight`` None (or all ones) this equals
    ``torch.nn.functional.cross_entropy(logits, target, ignore_index=ignore_index)``. All pixels ignored → 0.

    Args:
        logits: (N, K, H, W) raw scores.
        target: (N, H, W) int64 class indices in 0..K − 1, or ``ignore_index``.
        weight: (N, H, W) per-pixel weights w(x) (e.g. :func:`foveal.data.weightmap.weight_map`), or None for 1.
        ignore_index: target value of pixels that contribute nothing.

    Returns:
        Scalar loss tensor.
    """
    valid = _check_inputs(logits, target, weight, ignore_index)
    per_pixel = F.cross_entropy(logits, torch.where(valid, target, 0).long(), reduction="none")
    if weight is not None:
        per_pixel = per_pixel * weight.to(per_pixel.dtype)
    per_pixel = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
    return per_pixel.sum() / valid.sum().clamp(min=1)


def dice_loss(
    logits: Tensor,
    target: Tensor,
    *,
    eps: float = 1.0,
    include_background: bool = False,
    ignore_index: int = -1,
) -> Tensor:
    """Soft Dice loss on the soft-max probabilities.

    Per class c, over all non-ignored pixels of the batch: ``D_c = (2 Σ p_c g_c + eps) / (Σ p_c + Σ g_c + eps)``
    with p the soft-max probabilities and g the one-hot target; the loss is ``1 − mean_c D_c`` over the classes
    1..K − 1 (0..K − 1 with ``include_background``). A class absent from both prediction and target scores D_c = 1.

    Args:
        logits: (N, K, H, W) raw scores.
        target: (N, H, W) int64 class indices, or ``ignore_index``.
        eps: smoothing added to numerator and denominator (> 0).
        include_background: also average class 0.
        ignore_index: target value of pixels that contribute nothing.

    Returns:
        Scalar loss tensor in [0, 1].
    """
    if not eps > 0:
        raise FovealError(f"dice eps must be > 0 (it keeps empty classes finite), got {eps!r}")
    valid = _check_inputs(logits, target, None, ignore_index)
    num_classes = logits.shape[1]
    first = 0 if include_background else 1
    if num_classes - first < 1:
        raise FovealError(
            f"dice_loss needs at least {first + 1} classes (logits have K = {num_classes}); "
            "use include_background=True or more classes"
        )
    probs = torch.softmax(logits, dim=1)
    one_hot = F.one_hot(torch.where(valid, target, 0).long(), num_classes).movedim(-1, 1).to(probs.dtype)
    keep = valid.unsqueeze(1).to(probs.dtype)
    probs, one_hot = probs * keep, one_hot * keep
    dims = [0, *range(2, logits.dim())]
    overlap = (probs * one_hot).sum(dims)
    total = probs.sum(dims) + one_hot.sum(dims)
    dice = (2.0 * overlap + eps) / (total + eps)
    return 1.0 - dice[first:].mean()


def segmentation_loss(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    *,
    kind: str = "ce",
    focal_gamma: float = 2.0,
    ignore_index: int = -1,
) -> Tensor:
    """One entry point for the segmentation losses.

    Kinds: ``"ce"`` — :func:`weighted_cross_entropy` (the paper's); ``"focal"`` — soft-max focal loss with exponent
    ``focal_gamma``, each pixel weighted by ``weight``, averaged over the non-ignored pixels; ``"dice"`` —
    :func:`dice_loss` (``weight`` is not used); ``"ce+dice"`` — the sum of the weighted cross-entropy and the Dice loss.

    Args:
        logits: (N, K, H, W) raw scores.
        target: (N, H, W) int64 class indices, or ``ignore_index``.
        weight: (N, H, W) per-pixel weights, or None for 1.
        kind: one of :data:`SEGMENTATION_LOSSES`.
        focal_gamma: γ of the focal loss (paper: 2).
        ignore_index: target value of pixels that contribute nothing.

    Returns:
        Scalar loss tensor.
    """
    if kind == "ce":
        return weighted_cross_entropy(logits, target, weight, ignore_index=ignore_index)
    if kind == "dice":
        return dice_loss(logits, target, ignore_index=ignore_index)
    if kind == "ce+dice":
        ce = weighted_cross_entropy(logits, target, weight, ignore_index=ignore_index)
        return ce + dice_loss(logits, target, ignore_index=ignore_index)
    if kind == "focal":
        from foveal.losses.focal import softmax_focal_loss

        _check_inputs(logits, target, weight, ignore_index)
        return softmax_focal_loss(
            logits, target, gamma=focal_gamma, weight=weight, ignore_index=ignore_index, reduction="mean"
        )
    raise FovealError(f"unknown segmentation loss kind {kind!r}: choose one of {', '.join(SEGMENTATION_LOSSES)}")
