"""A model made ready for fast CPU inference: eval mode, BatchNorm folded into the convolutions, channels-last memory,
and in fp32 Winograd F(4×4, 3×3) for the 3×3 stride-1 convolutions that are wide enough
(:mod:`foveal.inference.winograd`). Used by detection and segmentation inference; works on any ``nn.Module``."""

from __future__ import annotations

import copy

import torch
from torch import nn

from foveal.inference.winograd import use_winograd


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that directly follows a convolution into it, in place; returns ``model``.

    Covers ``nn.Sequential`` runs (conv, BN), torchvision ResNet blocks (``convN`` → ``bnN``) and foveal's
    ``ConvBNAct``. Inference only: the folded model has no batch statistics left.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from foveal.models.layers import fuse_conv_bn

    fuse_conv_bn(model)
    for parent in list(model.modules()):
        names = list(parent._modules)
        pairs = [(a, b) for a, b in zip(names, names[1:], strict=False)] if isinstance(parent, nn.Sequential) else []
        pairs += [(f"conv{i}", f"bn{i}") for i in (1, 2, 3) if f"conv{i}" in names and f"bn{i}" in names]
        for conv_name, bn_name in pairs:
            conv, bn = parent._modules[conv_name], parent._modules[bn_name]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and not bn.training:
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(parent, bn_name, nn.Identity())
    return model


def inference_model(
    model: nn.Module,
    bf16: bool = False,
    winograd: bool = True,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """A copy of ``model`` for fast inference: eval mode, BatchNorm folded into the convolutions, channels-last.

    With ``winograd`` (fp32 on the CPU only) the 3×3 stride-1 convolutions of 128 or more channels (RetinaNet's
    subnets and FPN outputs, most of ResNet's 3×3s, U-Net's levels from 128 channels on) use Winograd F(4×4, 3×3)
    (:mod:`foveal.inference.winograd`): outputs differ from direct convolution by ≈ 1e-5 of their range. With
    ``bf16`` (or ``dtype=torch.bfloat16`` / ``torch.float16``) the weights are in that format (about twice the speed
    where the CPU has bf16 units, AMX or AVX512-BF16; several times slower where it has not and emulates bf16, see
    :func:`foveal.engine.device.native_bf16`; logits then differ from fp32 by about 1 %); the number format is chosen
    by :func:`foveal.engine.device.resolve_precision`, which warns about an emulated bf16. Callers cast the input to
    the model's dtype and post-process in fp32 (:func:`foveal.tasks.detect.detect_batch` decodes boxes with fp32
    anchors, so boxes keep their precision).

    Args:
        device: where the copy lives (default: where ``model`` is).
    """
    dtype = dtype or (torch.bfloat16 if bf16 else torch.float32)
    param = next(model.parameters(), None)
    device = torch.device(device) if device is not None else (param.device if param is not None else None)
    fast = fold_batchnorm(copy.deepcopy(model).eval())
    if dtype != torch.float32:
        fast = fast.to(dtype)
    elif winograd and (device is None or device.type == "cpu"):
        use_winograd(fast)
    if device is not None:
        fast = fast.to(device)
    return fast.to(memory_format=torch.channels_last)
