"""RetinaNet: a backbone, a feature pyramid P3–P7 and two small subnets shared across levels.

Reference: Tsung-Yi Lin, Priya Goyal, Ross Girshick, Kaiming He and Piotr Dollár, "Focal Loss for Dense Object
Detection", ICCV 2017 (arXiv:1708.02002), Sec. 4. The model returns raw head outputs (the same type in training and
evaluation); :func:`retinanet_loss` and :func:`postprocess` are separate, and resizing / normalisation stay outside
the model (:func:`foveal.preprocess.resize_for_detection`, :func:`foveal.preprocess.boxes_to_original`).

Boxes are (x1, y1, x2, y2) in pixels of the image the model saw; class labels are 0 … K − 1 (no background class:
a sigmoid per class, as in the paper).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image

from foveal.errors import FovealError
from foveal.losses.focal import sigmoid_focal_loss
from foveal.models.anchors import AnchorGenerator, BoxCoder, Matcher
from foveal.models.backbones import Backbone, build_backbone, describe
from foveal.models.fpn import FPN

# Detectron's RETINANET.BBOX_REG_BETA (detectron/core/config.py), the smooth-L1 transition point of the authors' code.
SMOOTH_L1_BETA = 0.11
_PYRAMID_STRIDES = (8, 16, 32)  # C3, C4, C5


class RetinaOutput(NamedTuple):
    """Raw outputs of one forward pass; the anchor axis runs level by level (P3 first), then in
    :class:`AnchorGenerator` order.

    Attributes:
        cls_logits: (N, ΣHWA, K) class logits (apply a sigmoid for probabilities).
        box_deltas: (N, ΣHWA, 4) box regression (tx, ty, tw, th) relative to ``anchors``.
        anchors: (ΣHWA, 4) xyxy anchors in input pixels.
        level_sizes: (H_l, W_l) of each pyramid level's feature map.
        num_anchors: anchors per location A.
    """

    cls_logits: Tensor
    box_deltas: Tensor
    anchors: Tensor
    level_sizes: list[tuple[int, int]]
    num_anchors: int


class RetinaHead(nn.Module):
    """One subnet: ``convs`` × (3×3 conv + ReLU), then a 3×3 conv with A · ``outputs`` channels, shared by all levels.

    Weights are Gaussian with σ = 0.01 and biases 0; with ``prior`` set, the last bias is −log((1 − π) / π) so that
    every class starts at probability π. Output channel a · outputs + k belongs to anchor a, output k.
    """

    def __init__(
        self, channels: int, num_anchors: int, outputs: int, convs: int = 4, prior: float | None = None
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(convs):
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.trunk = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels, num_anchors * outputs, 3, padding=1)
        self.outputs = outputs
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if prior is not None:
            nn.init.constant_(cast(Tensor, self.out.bias), -math.log((1 - prior) / prior))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """[(N, C, H_l, W_l)] → (N, ΣHWA, outputs).

        Runs layer by layer over all levels; a layer with a ``forward_levels`` method (the inference model's
        :class:`~foveal.inference.winograd.WinogradConv2d`) takes all levels in one call.
        """
        ys = list(features)
        for layer in [*self.trunk, self.out]:
            ys = layer.forward_levels(ys) if hasattr(layer, "forward_levels") else [layer(y) for y in ys]
        outs = []
        for y in ys:
            n, _, h, w = y.shape
            outs.append(y.view(n, -1, self.outputs, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, self.outputs))
        return torch.cat(outs, dim=1)


class RetinaNet(nn.Module):
    """RetinaNet detector (the paper's Fig. 3).

    Args:
        backbone: a name of :func:`~foveal.models.backbones.backbone_names` ("resnet18" … "resnet101",
            "efficientnet_b0" … "efficientnet_b7") or an ``nn.Module`` of the backbone contract (``forward_features``
            + ``feature_info``); the maps at strides 8, 16, 32 are C3, C4, C5. A module is used as it is; the model's
            ``args`` then record ``"module:<class>"`` and :func:`from_args` needs the module again.
        num_classes: K, object classes (no background class).
        in_channels: image channels.
        fpn_channels: channels of the pyramid and of the subnets (256).
        p6_from: "c5" (paper) or "p5" (torchvision).
        anchor_sizes, anchor_scales, anchor_ratios, anchor_offset, anchor_round_to_pixels: see
            :class:`AnchorGenerator` (the paper's defaults).
        head_convs: 3×3 conv + ReLU layers in each subnet (4).
        prior: π, the initial foreground probability of every class (0.01).
        backbone_kwargs: extra arguments for the backbone constructor (e.g. ``{"drop_path": 0.0}`` for EfficientNet).

    ``forward`` maps (N, in_channels, H, W) images, already resized and normalised, to a :class:`RetinaOutput`.
    """

    def __init__(
        self,
        backbone: str | nn.Module = "resnet50",
        num_classes: int = 80,
        in_channels: int = 3,
        fpn_channels: int = 256,
        p6_from: str = "c5",
        anchor_sizes: Sequence[float] = (32, 64, 128, 256, 512),
        anchor_scales: Sequence[float] = (2**0, 2 ** (1 / 3), 2 ** (2 / 3)),
        anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        anchor_offset: float = 0.0,
        anchor_round_to_pixels: bool = False,
        head_convs: int = 4,
        prior: float = 0.01,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise FovealError(f"num_classes must be at least 1, got {num_classes}")
        if not 0.0 < prior < 1.0:
            raise FovealError(f"prior must be a probability in (0, 1), got {prior}")
        if len(anchor_sizes) != 5:
            raise FovealError(f"RetinaNet has five levels P3–P7: give five anchor sizes, got {len(anchor_sizes)}")
        self.args: dict[str, Any] = {
            "backbone": describe(backbone),
            "num_classes": num_classes,
            "in_channels": in_channels,
            "fpn_channels": fpn_channels,
            "p6_from": p6_from,
            "anchor_sizes": list(anchor_sizes),
            "anchor_scales": list(anchor_scales),
            "anchor_ratios": list(anchor_ratios),
            "anchor_offset": anchor_offset,
            "anchor_round_to_pixels": anchor_round_to_pixels,
            "head_convs": head_convs,
            "prior": prior,
            "backbone_kwargs": dict(backbone_kwargs or {}),
        }
        self.num_classes = num_classes
        self.backbone = build_backbone(backbone, in_channels, **(backbone_kwargs or {}))
        info = cast(Backbone, self.backbone).feature_info
        strides = [i.stride for i in info]
        if not set(_PYRAMID_STRIDES) <= set(strides):
            raise FovealError(
                f"backbone '{describe(backbone)}' gives maps at strides {strides}; RetinaNet needs strides 8, 16 "
                "and 32 (keep the backbone's default stem stride)"
            )
        self._levels = [strides.index(s) for s in _PYRAMID_STRIDES]
        pyramid_in = [info[i].channels for i in self._levels]
        self.fpn = FPN(pyramid_in, fpn_channels, p6_from)
        self.anchor_generator = AnchorGenerator(
            anchor_sizes, (8, 16, 32, 64, 128), anchor_scales, anchor_ratios, anchor_offset, anchor_round_to_pixels
        )
        a = self.anchor_generator.num_anchors
        self.cls_head = RetinaHead(fpn_channels, a, num_classes, head_convs, prior)
        self.box_head = RetinaHead(fpn_channels, a, 4, head_convs)

    def pyramid_layer(self, level: int) -> nn.Module:
        """The module whose output is pyramid level ``level`` (0 = P3 … 4 = P7), the map both subnets read there."""
        fpn = self.fpn
        layers = [*fpn.output, fpn.p6, fpn.p7]
        if not 0 <= level < len(layers):
            raise FovealError(f"pyramid level {level} does not exist: RetinaNet has levels 0 (P3) to 4 (P7)")
        return cast(nn.Module, layers[level])

    def anchor_level(self, anchors: Tensor, level_sizes: Sequence[tuple[int, int]]) -> Tensor:
        """Pyramid level (0 = P3) of each anchor index of a :class:`RetinaOutput` with these ``level_sizes``."""
        a = self.anchor_generator.num_anchors
        ends = torch.tensor([h * w * a for h, w in level_sizes]).cumsum(0)
        return torch.searchsorted(ends, anchors.cpu(), right=True)

    def forward(self, images: Tensor) -> RetinaOutput:
        """(N, in_channels, H, W) resized, normalised images → raw outputs over all levels and anchors."""
        feats = cast(Backbone, self.backbone).forward_features(images)
        pyramid = self.fpn([feats[i] for i in self._levels])
        sizes = [(int(p.shape[-2]), int(p.shape[-1])) for p in pyramid]
        anchors = torch.cat(self.anchor_generator(sizes, images.device, images.dtype))
        a = self.anchor_generator.num_anchors
        return RetinaOutput(self.cls_head(pyramid), self.box_head(pyramid), anchors, sizes, a)


def from_args(args: dict[str, Any], backbone: nn.Module | None = None) -> RetinaNet:
    """Rebuild a :class:`RetinaNet` from the ``args`` dict stored in a checkpoint; ``backbone``: the module again for a
    model that was built around a user's backbone module."""
    return RetinaNet(**(args if backbone is None else {**args, "backbone": backbone}))


def retinanet_loss(
    output: RetinaOutput,
    targets: Sequence[dict[str, Tensor]],
    matcher: Matcher | None = None,
    box_coder: BoxCoder | None = None,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    smooth_l1_beta: float = SMOOTH_L1_BETA,
    ignore_coverage: float = 0.5,
) -> dict[str, Tensor]:
    """The paper's training loss: sigmoid focal loss over all non-ignored anchors plus smooth L1 on foreground boxes,
    both summed over the batch and divided by the number of foreground anchors (at least 1).

    Crowd regions (COCO's ``iscrowd``): an anchor that is not foreground and whose intersection with one ``ignore``
    box covers at least ``ignore_coverage`` of the anchor's own area is ignored — neither positive nor negative —
    as Detectron does with its crowd threshold. Crowd regions are never matched as objects.

    Args:
        output: the model's output for N images.
        targets: per image ``{"boxes": (M, 4) xyxy, "labels": (M,) int64 in [0, K)}``, optionally ``"ignore": (G, 4)
            xyxy`` crowd regions; M may be 0 (the image then only contributes negatives to the classification loss).
        matcher: anchor assignment (default: the paper's IoU ≥ 0.5 foreground, < 0.4 background).
        box_coder: box parameterisation (default: Faster R-CNN deltas, weights 1).
        alpha, gamma: focal loss α and γ (0.25, 2).
        smooth_l1_beta: smooth-L1 transition point: 0.11 as in the authors' Detectron configuration; 0 gives the L1
            loss of torchvision / detectron2.
        ignore_coverage: fraction of an anchor's area inside one crowd region that makes a non-foreground anchor
            ignored (0.5); above 1 switches crowd handling off.

    Returns:
        ``{"cls": scalar, "box": scalar}``; the training objective is their sum.
    """
    matcher = matcher or Matcher()
    box_coder = box_coder or BoxCoder()
    cls_logits, box_deltas, anchors = output.cls_logits, output.box_deltas, output.anchors
    n, _, k = cls_logits.shape
    if len(targets) != n:
        raise FovealError(f"got {len(targets)} targets for a batch of {n} images; give one dict per image")
    cls_targets = torch.zeros_like(cls_logits)
    keep = torch.ones(cls_logits.shape[:2], dtype=torch.bool, device=cls_logits.device)
    fg_deltas, fg_targets = [], []
    for i, target in enumerate(targets):
        row, fg, fg_labels, fg_boxes = _assign(target, anchors, k, matcher, ignore_coverage)
        keep[i] = row
        cls_targets[i, fg, fg_labels] = 1.0
        fg_deltas.append(box_deltas[i, fg])
        fg_targets.append(box_coder.encode(fg_boxes, anchors[fg]))
    normalizer = max(sum(t.shape[0] for t in fg_targets), 1)
    # losses in fp32 also when the model runs under autocast
    cls = sigmoid_focal_loss(
        cls_logits[keep].float(), cls_targets[keep].float(), alpha, gamma, reduction="sum", normalizer=float(normalizer)
    )
    box = F.smooth_l1_loss(
        torch.cat(fg_deltas).float(), torch.cat(fg_targets).float(), reduction="sum", beta=smooth_l1_beta
    )
    return {"cls": cls, "box": box / normalizer}


def _assign(
    target: dict[str, Tensor], anchors: Tensor, k: int, matcher: Matcher, ignore_coverage: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Match one image's objects to the (A, 4) ``anchors``.

    Returns:
        keep (A,) bool: anchors that count in the classification loss (not ignored by the matcher or a crowd region);
        fg (F,) int64: the foreground anchors; and the class (F,) and xyxy box (F, 4) of each one's object.
    """
    boxes, labels = _checked_target(target, k, anchors)
    matched = matcher(box_iou(boxes, anchors))
    keep = matched != Matcher.IGNORE
    crowd = target.get("ignore")
    if crowd is not None and crowd.numel() and ignore_coverage <= 1.0:
        covered = _coverage(anchors, crowd.to(device=anchors.device, dtype=anchors.dtype).reshape(-1, 4))
        keep &= (matched >= 0) | (covered < ignore_coverage)
    fg = (matched >= 0).nonzero().squeeze(1)
    gt = matched[fg]
    return keep, fg, labels[gt], boxes[gt]


def _coverage(anchors: Tensor, regions: Tensor) -> Tensor:
    """(A,) the largest fraction of each xyxy anchor's area that lies inside one of the (G, 4) xyxy regions."""
    lt = torch.maximum(anchors[None, :, :2], regions[:, None, :2])
    rb = torch.minimum(anchors[None, :, 2:], regions[:, None, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=2).amax(dim=0)
    area = (anchors[:, 2:] - anchors[:, :2]).prod(dim=1)
    return inter / area.clamp(min=torch.finfo(area.dtype).tiny)


def _checked_target(target: dict[str, Tensor], num_classes: int, anchors: Tensor) -> tuple[Tensor, Tensor]:
    if "boxes" not in target or "labels" not in target:
        raise FovealError(f"a detection target needs 'boxes' and 'labels', got keys {sorted(target)}")
    boxes = target["boxes"].to(device=anchors.device, dtype=anchors.dtype).reshape(-1, 4)
    labels = target["labels"].to(device=anchors.device, dtype=torch.int64).reshape(-1)
    if boxes.shape[0] != labels.shape[0]:
        raise FovealError(f"a target has {boxes.shape[0]} boxes but {labels.shape[0]} labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        low, high = int(labels.min()), int(labels.max())
        raise FovealError(f"target labels must be in [0, {num_classes}) (no background class), got {low} … {high}")
    if boxes.numel() and bool((boxes[:, 2:] <= boxes[:, :2]).any()):
        raise FovealError("target boxes must be (x1, y1, x2, y2) with x2 > x1 and y2 > y1; drop empty boxes first")
    return boxes, labels


@torch.no_grad()
def postprocess(
    output: RetinaOutput,
    image_sizes: Sequence[tuple[int, int]],
    score_thresh: float = 0.05,
    topk_per_level: int = 1000,
    nms_thresh: float = 0.5,
    max_detections: int = 100,
    box_coder: BoxCoder | None = None,
) -> list[dict[str, Tensor]]:
    """The paper's inference: per level keep the ``topk_per_level`` best (anchor, class) scores above
    ``score_thresh``, decode their boxes, merge levels, class-aware NMS, keep the ``max_detections`` best.

    Args:
        output: the model's output for N images.
        image_sizes: (height, width) of each image as the model saw it (before any batch padding); boxes are
            clipped to it.
        score_thresh, topk_per_level, nms_thresh, max_detections: the paper's 0.05, 1000, 0.5, 100.
        box_coder: must match the one used in training.

    Returns:
        Per image ``{"boxes": (D, 4) xyxy, "scores": (D,), "labels": (D,) int64, "anchors": (D,) int64}``, by
        decreasing score; ``anchors`` indexes the anchor axis of ``output`` (what :class:`~foveal.explain.cam.
        DetectionTarget` needs to explain a detection).
    """
    box_coder = box_coder or BoxCoder()
    n, _, k = output.cls_logits.shape
    if len(image_sizes) != n:
        raise FovealError(f"got {len(image_sizes)} image sizes for a batch of {n} images")
    # compare logits, not probabilities: a sigmoid over every (anchor, class) is the expensive part
    logit_thresh = math.log(score_thresh / (1 - score_thresh)) if 0 < score_thresh < 1 else None
    counts = [h * w * output.num_anchors for h, w in output.level_sizes]
    results = []
    for i in range(n):
        boxes_all, scores_all, labels_all, anchors_all = [], [], [], []
        start = 0
        for count in counts:
            logits = output.cls_logits[i, start : start + count].reshape(-1)
            idx = _candidates(logits, k, logit_thresh, score_thresh, topk_per_level)
            scores = logits[idx].sigmoid()
            if scores.numel() > topk_per_level:
                scores, order = scores.topk(topk_per_level)
                idx = idx[order]
            anchor_idx = idx // k + start
            boxes = box_coder.decode(output.box_deltas[i, anchor_idx], output.anchors[anchor_idx])
            boxes_all.append(clip_boxes_to_image(boxes, tuple(image_sizes[i])))
            scores_all.append(scores)
            labels_all.append(idx % k)
            anchors_all.append(anchor_idx)
            start += count
        boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
        keep = batched_nms(boxes, scores, labels, nms_thresh)[:max_detections]
        anchors = torch.cat(anchors_all)[keep]
        results.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep], "anchors": anchors})
    return results


def _candidates(logits: Tensor, k: int, logit_thresh: float | None, score_thresh: float, topk: int) -> Tensor:
    """Indices of the (anchor, class) logits of one level, (A·K,), that score above the threshold and can be among the
    ``topk`` best of those: a superset of them, often far smaller than all above the threshold.

    Exact, not a heuristic: with at least ``topk`` anchors, let m be the ``topk``-th largest per-anchor maximum. At
    least ``topk`` pairs (those maxima) are ≥ m, so the ``topk``-th best pair is ≥ m too, and no pair below m can be
    kept. On a busy image that leaves thousands of candidates instead of millions for the threshold mask, the
    sigmoid and the top-k selection.
    """
    bound: Tensor | None = None
    if logits.numel() // k >= topk:
        bound = logits.view(-1, k).amax(1).topk(topk, sorted=False).values.amin()
    if logit_thresh is not None:
        if bound is not None and float(bound) > logit_thresh:
            return (logits >= bound).nonzero().squeeze(1)
        return (logits > logit_thresh).nonzero().squeeze(1)
    idx = (
        (logits >= bound).nonzero().squeeze(1) if bound is not None else torch.arange(len(logits), device=logits.device)
    )
    return idx[logits[idx].sigmoid() > score_thresh]


# torchvision retinanet_resnet50_fpn key → foveal key (v2 layout ".N.0." and v1 layout ".2N." of the subnet convs)
_TV_RENAMES = (
    (r"^backbone\.body\.conv1\.", "backbone.stem.0."),
    (r"^backbone\.body\.bn1\.", "backbone.stem.1."),
    (r"^backbone\.body\.(layer\d)\.", r"backbone.\1."),
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.(?:0\.)?", r"fpn.lateral.\1."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.(?:0\.)?", r"fpn.output.\1."),
    (r"^backbone\.fpn\.extra_blocks\.(p6|p7)\.", r"fpn.\1."),
    (r"^head\.classification_head\.cls_logits\.", "cls_head.out."),
    (r"^head\.regression_head\.bbox_reg\.", "box_head.out."),
)
_TV_SUBNET = re.compile(r"^head\.(classification|regression)_head\.conv\.(\d+)\.(0\.)?(weight|bias)$")


def import_torchvision_retinanet(
    state: dict[str, Tensor] | str | Path, num_classes: int | None = None, **kwargs: Any
) -> RetinaNet:
    """A foveal :class:`RetinaNet` holding the weights of torchvision's ``retinanet_resnet50_fpn``.

    The model is built the torchvision way: P6 from P5 and integer anchors (``anchor_round_to_pixels``); feed it
    the same resized, normalised images as torchvision's internal transform would produce. torchvision's
    FrozenBatchNorm statistics load into BatchNorm layers, which give the same numbers in eval mode.

    Args:
        state: the state dict, or a path to a file holding it (``.pth`` / ``.safetensors``).
        num_classes: K; inferred from the classification layer when None. A torchvision COCO model has 91 outputs
            (index 0 is an unused background slot) and keeps them all.
        kwargs: further :class:`RetinaNet` arguments.

    Returns:
        The model in eval mode.
    """
    if not isinstance(state, dict):
        from foveal.models.convert import load_state_file

        state = load_state_file(state)
    if "head.classification_head.cls_logits.weight" not in state or "backbone.body.layer4.0.conv1.weight" not in state:
        raise FovealError("the weights are not a torchvision retinanet_resnet50_fpn state dict (keys do not match)")
    found = state["head.classification_head.cls_logits.weight"].shape[0] // 9
    if num_classes is not None and num_classes != found:
        raise FovealError(f"the weights have {found} classes, not {num_classes}; pass num_classes={found} or None")
    model = RetinaNet("resnet50", found, p6_from="p5", anchor_round_to_pixels=True, **kwargs)
    renamed: dict[str, Tensor] = {}
    for key, value in state.items():
        sub = _TV_SUBNET.match(key)
        if sub:
            index = int(sub.group(2)) if sub.group(3) else int(sub.group(2)) // 2
            head = "cls_head" if sub.group(1) == "classification" else "box_head"
            renamed[f"{head}.trunk.{2 * index}.{sub.group(4)}"] = value
            continue
        new = key
        for pattern, repl in _TV_RENAMES:
            new = re.sub(pattern, repl, new)
        renamed[new] = value
    missing, unexpected = model.load_state_dict(renamed, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise FovealError(
            f"the torchvision weights do not fit RetinaNet-R50 (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.eval()
