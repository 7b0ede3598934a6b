"""Object detection with RetinaNet: config, model, data and loss.

Lin, Goyal, Girshick, He, Dollár, "Focal Loss for Dense Object Detection", ICCV 2017. The defaults are the paper's
COCO recipe: ResNet-50-FPN with P6 from C5, anchors of areas 32² … 512² with 3 scales × 3 ratios, IoU ≥ 0.5
foreground / < 0.4 background, focal loss α = 0.25, γ = 2, smooth L1 (β = 0.11, the authors' Detectron value), SGD
with momentum 0.9, weight decay 1e-4, lr 0.01 for 16 images per batch, 90k iterations with ×0.1 at 60k and 80k,
horizontal flip only, shorter side 800 (longer ≤ 1333); inference keeps scores ≥ 0.05, the top 1000 per level, NMS
at 0.5 per class and 100 detections per image.

Images without objects are kept for training (they only contribute negatives). Crowd regions (``iscrowd``) are
ignored by the loss and the evaluation. Training is in :mod:`foveal.tasks.detect_train`; loading for inference,
evaluation and prediction are in :mod:`foveal.tasks.detect_eval`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import torch
from torch import Tensor, nn

from foveal.config import ANY_FINITE, FRACTION, POSITIVE, at_least, between, from_dict
from foveal.data.box_transforms import DetectionTransform
from foveal.engine import checkpoint as ckpt_io
from foveal.engine.device import to_device, uses_channels_last
from foveal.engine.optim import OptimConfig
from foveal.engine.trainer import TrainConfig
from foveal.errors import FovealError
from foveal.models.anchors import AnchorGenerator, Matcher
from foveal.models.hub import backbone_kwargs, efficientnet_kwargs, is_hub_spec, resolve_weights
from foveal.models.retinanet import SMOOTH_L1_BETA, RetinaNet, RetinaOutput, postprocess, retinanet_loss
from foveal.preprocess import IMAGENET_MEAN, IMAGENET_STD, boxes_to_original
from foveal.tasks.classify import TASK as CLASSIFY
from foveal.tasks.scaffold import load_for_inference

TASK = "detect"

# COCO train2017 has 118,287 images: 90k iterations of 16 images are 12.17 epochs, the steps at 60k / 80k fall at
# epochs 8.11 / 10.82, and Detectron's 500 warm-up iterations last 0.068 epochs.
_COCO_TRAIN_IMAGES = 118_287


def _coco_epochs(iterations: int, batch: int = 16) -> float:
    return round(iterations * batch / _COCO_TRAIN_IMAGES, 3)


@dataclass(frozen=True)
class DetectModelConfig:
    """The RetinaNet. ``backbone``: resnet18/34/50/101 or efficientnet_b0 … b7. ``weights`` initialises from a foveal
    checkpoint (a detect run: every layer but a class layer of another size; a classify run: the backbone), a
    torchvision ``retinanet_resnet50_fpn`` state dict (needs resnet50, ``p6_from: p5``; the class layer stays new) or
    a torchvision ResNet state dict (ImageNet weights, backbone only), or hub weights of either or of an EfficientNet
    (``torchvision:RetinaNet_ResNet50_FPN_Weights.COCO_V1``, ``torchvision:ResNet50_Weights.IMAGENET1K_V2``,
    ``timm:efficientnet_b0.ra_in1k``; a backbone alone leaves the FPN and heads at their initialisation).
    ``freeze_bn`` keeps every BatchNorm at its running statistics and affine values (as Detectron does with pretrained
    weights). ``backbone_width`` / ``backbone_depth`` scale an EfficientNet backbone's channels / layers instead of its
    variant's (a smaller net)."""

    backbone: str = "resnet50"
    fpn_channels: Annotated[int, between(1, 4096)] = 256
    p6_from: Literal["c5", "p5"] = "c5"
    anchor_sizes: Annotated[tuple[float, ...], POSITIVE] = (32.0, 64.0, 128.0, 256.0, 512.0)
    anchor_scales: Annotated[tuple[float, ...], POSITIVE] = (2**0, 2 ** (1 / 3), 2 ** (2 / 3))
    anchor_ratios: Annotated[tuple[float, ...], POSITIVE] = (0.5, 1.0, 2.0)
    anchor_offset: Annotated[float, between(-1, 1)] = 0.0
    anchor_round_to_pixels: bool = False
    head_convs: Annotated[int, between(0, 64)] = 4
    prior: Annotated[float, between(0, 1, low_open=True, high_open=True)] = 0.01
    weights: str | None = None
    freeze_bn: bool = False
    backbone_width: float | None = None
    backbone_depth: float | None = None


@dataclass(frozen=True)
class DetectDataConfig:
    """Detection data and how images are prepared.

    ``train`` / ``val``: a COCO JSON file, a COCO folder (``annotations/instances_<split>.json`` + ``<split>/``),
    "fashion-canvas-sample", or a dataset in another format (``format``: ``auto`` recognises PASCAL VOC, YOLO,
    LabelMe, CVAT, Label Studio and CSV layouts; see :mod:`foveal.data.formats`); ``val`` defaults to ``train`` (its
    ``val_split``). Images are resized so the shorter
    side is ``min_size`` (a random one of ``jitter_min_sizes`` in training when given) and the longer at most
    ``max_size``, flipped left–right with probability 0.5 in training when ``flip``, then normalised with
    ``mean`` / ``std`` (one entry serves every channel). ``batch_size`` is global; ``val_limit`` evaluates on the
    first images of the validation split only during training.
    """

    train: str = "fashion-canvas-sample"
    train_split: str = "train"
    val: str | None = None
    val_split: str = "val"
    format: Literal["auto", "coco", "voc", "yolo", "labelme", "cvat", "labelstudio", "csv"] = "auto"
    channels: Annotated[int | None, between(1, 3)] = None
    min_size: Annotated[int, between(1, 65536)] = 800
    max_size: Annotated[int, between(1, 65536)] = 1333
    jitter_min_sizes: Annotated[tuple[int, ...] | None, between(1, 65536)] = None
    flip: bool = True
    mean: Annotated[tuple[float, ...], ANY_FINITE] = IMAGENET_MEAN
    std: Annotated[tuple[float, ...], POSITIVE] = IMAGENET_STD
    batch_size: Annotated[int, at_least(1)] = 16
    eval_batch_size: Annotated[int, at_least(1)] = 8
    val_limit: Annotated[int | None, at_least(1)] = None


@dataclass(frozen=True)
class DetectLossConfig:
    """Focal loss (``alpha`` None: no α-balancing), smooth L1 (``smooth_l1_beta`` 0: L1), the matcher's IoU
    thresholds and low-quality matches (off in the paper, on in torchvision / detectron2), and the share of an
    anchor inside a crowd region that makes a background anchor ignored."""

    alpha: Annotated[float | None, FRACTION] = 0.25
    gamma: float = 2.0
    smooth_l1_beta: float = SMOOTH_L1_BETA
    fg_iou: Annotated[float, FRACTION] = 0.5
    bg_iou: Annotated[float, FRACTION] = 0.4
    allow_low_quality: bool = False
    crowd_coverage: Annotated[float, FRACTION] = 0.5


@dataclass(frozen=True)
class DetectInferenceConfig:
    """Post-processing: score threshold, candidates per pyramid level, class-wise NMS IoU, detections per image."""

    score_thresh: Annotated[float, FRACTION] = 0.05
    topk: Annotated[int, at_least(1)] = 1000
    nms: Annotated[float, FRACTION] = 0.5
    max_detections: Annotated[int, at_least(1)] = 100


def _paper_optim() -> OptimConfig:
    return OptimConfig(
        name="sgd",
        lr=0.01,
        lr_batch=16,
        momentum=0.9,
        weight_decay=1e-4,
        schedule="multistep",
        decay_rate=0.1,
        milestones=(_coco_epochs(60_000), _coco_epochs(80_000)),
        warmup_epochs=_coco_epochs(500),
    )


def _paper_train() -> TrainConfig:
    return TrainConfig(epochs=_coco_epochs(90_000), eval_every=1.0, log_every=20)


@dataclass(frozen=True)
class DetectConfig:
    """The whole detection recipe: model, data, loss, inference, optimizer, training loop, output folder."""

    model: DetectModelConfig = field(default_factory=DetectModelConfig)
    data: DetectDataConfig = field(default_factory=DetectDataConfig)
    loss: DetectLossConfig = field(default_factory=DetectLossConfig)
    inference: DetectInferenceConfig = field(default_factory=DetectInferenceConfig)
    optim: OptimConfig = field(default_factory=_paper_optim)
    train: TrainConfig = field(default_factory=_paper_train)
    out: str = "runs/detect"


# -- model -----------------------------------------------------------------------------------------------------------
def build_detector(cfg: DetectModelConfig, num_classes: int, in_channels: int) -> RetinaNet:
    """The RetinaNet of ``cfg`` for ``num_classes`` classes and ``in_channels``-channel images (fresh weights)."""
    return RetinaNet(
        backbone=cfg.backbone,
        num_classes=num_classes,
        in_channels=in_channels,
        fpn_channels=cfg.fpn_channels,
        p6_from=cfg.p6_from,
        anchor_sizes=cfg.anchor_sizes,
        anchor_scales=cfg.anchor_scales,
        anchor_ratios=cfg.anchor_ratios,
        anchor_offset=cfg.anchor_offset,
        anchor_round_to_pixels=cfg.anchor_round_to_pixels,
        head_convs=cfg.head_convs,
        prior=cfg.prior,
        backbone_kwargs=_backbone_kwargs(cfg),
    )


def _backbone_kwargs(cfg: DetectModelConfig) -> dict[str, Any] | None:
    scaled = {k: v for k, v in (("width", cfg.backbone_width), ("depth", cfg.backbone_depth)) if v is not None}
    if scaled and not cfg.backbone.startswith("efficientnet_"):
        raise FovealError(
            f"model.backbone_width / backbone_depth scale EfficientNet backbones; {cfg.backbone} is not one: drop "
            "them or choose model.backbone=efficientnet_b0"
        )
    scaled.update(backbone_kwargs(cfg.weights, cfg.backbone))
    return scaled or None


def _weights_of(cfg: DetectModelConfig) -> tuple[dict[str, Tensor], str, str]:
    """(weights, the prefix of the keys they must cover, a description) of ``cfg.weights``."""
    assert cfg.weights is not None
    if is_hub_spec(cfg.weights):
        hub = resolve_weights(cfg.weights)
        return _foreign_weights(hub.state, cfg, f"model.weights {cfg.weights}")
    path = Path(cfg.weights).expanduser()
    if not path.exists():
        raise FovealError(
            f"model.weights {path} not found: pass a foveal checkpoint, a torchvision retinanet_resnet50_fpn or "
            "ResNet state-dict file (.pth / .safetensors), or model.weights=null"
        )
    source = f"model.weights {path}"
    if path.is_dir():
        ckpt = ckpt_io.load_checkpoint(path)
        task = ckpt.meta.get("task")
        if task == TASK:
            return ckpt.weights, "", source
        if task == CLASSIFY:  # a classifier's EfficientNet: the backbone
            drop = ("head.", "classifier.")
            return {f"backbone.{k}": v for k, v in ckpt.weights.items() if not k.startswith(drop)}, "backbone.", source
        raise FovealError(f"{source} is a '{task}' checkpoint: initialise from a detect or classify checkpoint")
    from foveal.models.convert import load_state_file

    return _foreign_weights(load_state_file(path), cfg, source)


def _foreign_weights(
    state: dict[str, Tensor], cfg: DetectModelConfig, source: str
) -> tuple[dict[str, Tensor], str, str]:
    """:func:`_weights_of` for a torchvision RetinaNet or a ResNet / EfficientNet classifier's state dict."""
    from foveal.models.convert import backbone_state
    from foveal.models.retinanet import import_torchvision_retinanet

    if "head.classification_head.cls_logits.weight" in state:
        if cfg.backbone != "resnet50" or cfg.p6_from != "p5" or cfg.fpn_channels != 256:
            raise FovealError(
                f"{source} holds torchvision RetinaNet-R50 weights: set model.backbone=resnet50, model.p6_from=p5 "
                "and model.fpn_channels=256 to use them"
            )
        return import_torchvision_retinanet(state).state_dict(), "", source
    backbone = backbone_state(state, **efficientnet_kwargs(source))
    if backbone is not None:
        return {f"backbone.{k}": v for k, v in backbone.items()}, "backbone.", source
    raise FovealError(
        f"{source} is not a detector or backbone state dict foveal knows (torchvision retinanet_resnet50_fpn, "
        "ResNet or EfficientNet keys): pass one of those, or a foveal checkpoint"
    )


_STEM_WEIGHTS = ("backbone.stem.0.weight", "backbone.stem.conv.weight")  # the first conv: ResNet, EfficientNet


def init_weights(model: RetinaNet, cfg: DetectModelConfig) -> None:
    """Load ``cfg.weights`` into ``model`` in place (see :class:`DetectModelConfig`); a classification layer of
    another class count keeps its fresh (prior) initialisation, any other mismatch is an error naming it."""
    weights, prefix, source = _weights_of(cfg)
    own = model.state_dict()
    theirs = weights.get("cls_head.out.weight")
    new_classes = theirs is not None and theirs.shape != own["cls_head.out.weight"].shape
    take: dict[str, Tensor] = {}
    for key, value in own.items():
        if new_classes and key.startswith("cls_head.out."):
            continue
        if key not in weights:
            if key.startswith(prefix) and not key.endswith("num_batches_tracked"):
                raise FovealError(f"{source} does not fit this model: it lacks '{key}' (is model.backbone right?)")
            continue
        shape = tuple(weights[key].shape)
        if shape != tuple(value.shape):
            if key in _STEM_WEIGHTS and shape[0] == value.shape[0]:
                raise FovealError(
                    f"{source} was trained on {shape[1]}-channel images but this data has {value.shape[1]}: set "
                    f"data.channels={shape[1]} (images are converted), or use weights for {value.shape[1]} channels"
                )
            raise FovealError(
                f"{source} does not fit this model: '{key}' has shape {shape} there but {tuple(value.shape)} here "
                "(check model.backbone, model.fpn_channels, model.head_convs and the anchors)"
            )
        take[key] = weights[key]
    model.load_state_dict(take, strict=False)


def freeze_batchnorm(model: nn.Module) -> None:
    """Stop training every BatchNorm of ``model``: no gradient for its affine parameters, and (called again before
    each forward pass, as the training loss does) eval mode, so that its running statistics are used and kept."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


# -- data ------------------------------------------------------------------------------------------------------------
def open_data(cfg: DetectDataConfig) -> tuple[Any, Any]:
    """(train, val) :class:`~foveal.data.coco.DetectionData` of ``cfg``, checked to fit each other."""
    from foveal.data.formats import open_detection

    train = open_detection(cfg.train, split=cfg.train_split, channels=cfg.channels, format=cfg.format)
    val_spec = cfg.val or cfg.train
    val = open_detection(val_spec, split=cfg.val_split, channels=cfg.channels, format=cfg.format)
    if val.channels != train.channels:
        raise FovealError(
            f"validation data {val_spec} has {val.channels}-channel images but training data {cfg.train} has "
            f"{train.channels}: set data.channels=1 or data.channels=3 to convert both"
        )
    ours = [(int(c["id"]), str(c["name"])) for c in train.categories]
    theirs = [(int(c["id"]), str(c["name"])) for c in val.categories]
    if ours != theirs:
        raise FovealError(
            f"validation data {val_spec} has categories {theirs[:5]}… but training data {cfg.train} has "
            f"{ours[:5]}…: use annotation files with the same categories (ids and names)"
        )
    if train.num_boxes() == 0:
        raise FovealError(
            f"training data {cfg.train} (split {cfg.train_split}) holds no boxes in its {len(train)} images: a "
            "detector cannot learn from background alone; annotate objects, or check that the annotations are "
            "not all crowd regions"
        )
    if cfg.val_limit is not None:
        if cfg.val_limit < 1:
            raise FovealError(f"data.val_limit={cfg.val_limit}: use a positive number of images, or null for all")
        val = val.subset(range(min(cfg.val_limit, len(val))))
    return train, val


def train_transform(cfg: DetectDataConfig) -> DetectionTransform:
    return DetectionTransform(
        train=True,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        jitter_min_sizes=cfg.jitter_min_sizes,
        flip_p=0.5 if cfg.flip else 0.0,
        mean=cfg.mean,
        std=cfg.std,
    )


def eval_transform(min_size: int, max_size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> DetectionTransform:
    return DetectionTransform(train=False, min_size=min_size, max_size=max_size, mean=mean, std=std)


def detection_loss(output: RetinaOutput, targets: list[dict[str, Tensor]], cfg: DetectLossConfig) -> dict[str, Tensor]:
    """:func:`~foveal.models.retinanet.retinanet_loss` with the settings of ``cfg``."""
    return retinanet_loss(
        output,
        targets,
        matcher=Matcher(cfg.fg_iou, cfg.bg_iou, cfg.allow_low_quality),
        alpha=cfg.alpha,
        gamma=cfg.gamma,
        smooth_l1_beta=cfg.smooth_l1_beta,
        ignore_coverage=cfg.crowd_coverage,
    )


# -- loading for inference --------------------------------------------------------------------------------------------
@dataclass
class LoadedDetector:
    """A detector ready for inference and what its inputs must look like.

    Attributes:
        model: the RetinaNet in eval mode (BatchNorm folded and channels-last when loaded with ``fast``).
        classes: class names; label k is ``classes[k]``.
        categories: ``[{"id", "name"}]``; label k has category id ``categories[k]["id"]``.
        channels: image channels the model takes (1 or 3).
        min_size, max_size: the resize of :func:`foveal.preprocess.resize_for_detection`.
        mean, std: the normalisation of :func:`foveal.preprocess.normalize`.
        config: the training recipe (its ``inference`` section holds the post-processing settings).
        meta: the checkpoint record.
    """

    model: nn.Module
    classes: list[str]
    categories: list[dict[str, Any]]
    channels: int
    min_size: int
    max_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    config: DetectConfig
    meta: dict[str, Any]

    def transform(self) -> DetectionTransform:
        """The evaluation transform (resize + normalise) of the model's inputs."""
        return eval_transform(self.min_size, self.max_size, self.mean, self.std)


def load_detector(
    path: str | Path,
    fast: bool = True,
    bf16: bool = False,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> LoadedDetector:
    """Load a detection checkpoint (a checkpoint folder or a run directory) for inference.

    Args:
        path: the checkpoint.
        fast: fold BatchNorm into the convolutions and use channels-last (:func:`inference_model`).
        bf16: bfloat16 weights, the same as ``precision="bf16"`` (with ``fast``; see :func:`inference_model`).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`foveal.engine.device.resolve_device`).
        precision: ``auto`` (fp32 for inference), ``fp32``, ``bf16`` or ``fp16`` (CUDA) weights; anchors, box
            decoding and NMS stay fp32.
    """
    precision = "bf16" if bf16 and precision in ("auto", "fp32") else precision
    model, (classes, categories, config, geometry, mean, std), ckpt = load_for_inference(
        path, TASK, _read_record, fast=fast, device=device, precision=precision
    )
    return LoadedDetector(model, classes, categories, *geometry, mean, std, config, ckpt.meta)


def _read_record(
    meta: dict[str, Any],
) -> tuple[list[str], list[dict[str, Any]], DetectConfig, tuple[int, int, int], tuple[float, ...], tuple[float, ...]]:
    """Classes, categories, config, input geometry (channels, min_size, max_size), mean and std of a detection
    checkpoint's record."""
    inp = meta["input"]
    categories = [dict(c) for c in meta["categories"]]
    config = from_dict(DetectConfig, meta["config"])
    geometry = (int(inp["channels"]), int(inp["min_size"]), int(inp["max_size"]))
    mean, std = tuple(float(v) for v in inp["mean"]), tuple(float(v) for v in inp["std"])
    return list(meta["classes"]), categories, config, geometry, mean, std


def fp32_output(model: nn.Module, output: RetinaOutput) -> RetinaOutput:
    """``output`` of a bf16 / fp16 RetinaNet with fp32 logits, deltas and anchors (anchors made anew in fp32: in
    bf16 they and the deltas would put boxes off by pixels); an fp32 output as it is."""
    if output.cls_logits.dtype == torch.float32:
        return output
    generator = cast(AnchorGenerator, model.anchor_generator)
    anchors = torch.cat(generator(output.level_sizes, output.cls_logits.device, torch.float32))
    return output._replace(cls_logits=output.cls_logits.float(), box_deltas=output.box_deltas.float(), anchors=anchors)


@torch.no_grad()
def detect_batch(
    model: nn.Module,
    images: Tensor,
    image_sizes: Sequence[tuple[int, int]],
    scales: Sequence[float],
    original_sizes: Sequence[tuple[int, int]],
    inference: DetectInferenceConfig,
) -> list[dict[str, Tensor]]:
    """Detections of one padded batch, in the original images' pixels.

    Args:
        model: a RetinaNet in eval mode.
        images: (N, C, H, W) resized, normalised, zero-padded images (:func:`collate_detection`).
        image_sizes: (H', W') of each image before padding.
        scales: resize factor of each image (resized = original · scale).
        original_sizes: (H, W) of each original image; boxes are clipped to it.
        inference: the post-processing settings.

    Returns:
        Per image ``{"boxes": (D, 4) xyxy, "scores": (D,), "labels": (D,) int64}`` on the CPU, by decreasing score.
    """
    weight = next(model.parameters())
    output = fp32_output(model, model(to_device(images, weight.device, weight.dtype, uses_channels_last(model))))
    dets = postprocess(
        output, image_sizes, inference.score_thresh, inference.topk, inference.nms, inference.max_detections
    )
    results = []
    for det, scale, (h, w) in zip(dets, scales, original_sizes, strict=True):
        boxes = boxes_to_original(det["boxes"].float(), scale).cpu()
        limit = boxes.new_tensor([w, h, w, h])
        boxes = torch.minimum(boxes.clamp(min=0), limit)
        results.append({"boxes": boxes, "scores": det["scores"].float().cpu(), "labels": det["labels"].cpu()})
    return results
