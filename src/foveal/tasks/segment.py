"""Semantic and instance segmentation with U-Net: config, model, training tiles and checkpoint loading.

Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015.
The defaults are the paper's: valid convolutions, training tiles with the context the network consumes, elastic
deformation, the border weight map (w0 = 10, σ = 5 px) on a pixel-wise soft-max cross-entropy, SGD with momentum
0.99 and batch 1. Training is in :mod:`foveal.tasks.segment_train`; evaluation, prediction and the weight-map figure
are in :mod:`foveal.tasks.segment_eval`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from foveal.config import POSITIVE, at_least, between, from_dict
from foveal.data.augment import AugmentConfig, augment_batch
from foveal.data.instances import instances_from_classes
from foveal.engine import checkpoint as ckpt_io
from foveal.engine.optim import OptimConfig
from foveal.engine.trainer import TrainConfig
from foveal.errors import FovealError
from foveal.inference.tiling import predict_tiled, reflect_pad
from foveal.tasks.scaffold import load_for_inference

TASK = "segment"


@dataclass(frozen=True)
class SegModelConfig:
    """Which network. ``name`` "unet" is the paper's (``padding`` "valid", no BatchNorm); "same" padding with
    ``batch_norm`` is the common modern variant. "backbone_unet" puts a U-Net decoder on ``encoder`` (any backbone of
    the contract: efficientnet_b0 … b7, resnet18/34/50/101); ``weights`` initialises that encoder from a ResNet or
    EfficientNet classifier's state-dict file or hub weights (``torchvision:ResNet18_Weights.IMAGENET1K_V1``,
    ``timm:efficientnet_b0.ra_in1k``); the decoder keeps its initialisation. On grayscale images the first conv's
    RGB filters are summed (the output for an image whose three channels are equal)."""

    name: Literal["unet", "backbone_unet"] = "unet"
    depth: Annotated[int, between(1, 8)] = 4
    base_width: Annotated[int, between(1, 4096)] = 64
    padding: Literal["valid", "same"] = "valid"
    batch_norm: bool = False
    dropout: Annotated[float, between(0, 1, high_open=True)] = 0.5
    encoder: str = "efficientnet_b0"
    weights: str | None = None


@dataclass(frozen=True)
class SegDataConfig:
    """Images and masks, and how training tiles are cut from them.

    ``train`` / ``val`` are dataset specs: "nuclei-sample" (bundled), a folder with images/ and masks/, or a TIFF
    stack. Without ``val``, ``split_columns`` trains on the columns left of it and validates on the rest (one large
    image), else ``val_fraction`` of the images are held out. ``tile`` is the OUTPUT edge of a training tile (the
    paper: 388, from a 572 input); ``eval_tile`` the output edge used for overlap-tile inference. An epoch is
    ``samples_per_epoch`` random tiles.
    """

    train: str = "nuclei-sample"
    val: str | None = None
    split_columns: Annotated[int | None, at_least(1)] = None
    val_fraction: Annotated[float, between(0, 1, low_open=True, high_open=True)] = 0.2
    channels: Annotated[int | None, between(1, 3)] = None
    masks: Literal["auto", "instances", "classes"] = "auto"
    num_classes: Annotated[int | None, between(2, 65536)] = None
    normalize: Literal["percentile", "dtype", "minmax"] = "percentile"
    tile: Annotated[int, at_least(1)] = 388
    eval_tile: Annotated[int, at_least(1)] = 388
    batch_size: Annotated[int, at_least(1)] = 1
    samples_per_epoch: Annotated[int, at_least(1)] = 100


@dataclass(frozen=True)
class WeightMapConfig:
    """The border weight map w = w_c + w0·exp(−(d1 + d2)² / 2σ²) (instance masks only; class masks get w_c)."""

    w0: float = 10.0
    sigma: Annotated[float, POSITIVE] = 5.0
    class_weights: Literal["balanced", "none"] = "balanced"
    borders: bool = True


@dataclass(frozen=True)
class PostConfig:
    """Instances from the predicted class map: connected components of at least ``min_size`` pixels, grown back by
    ``expand`` pixels (the separation borders the network learned to leave as background). ``tta``: "none" (one
    pass) or "dihedral" (class probabilities averaged over the 8 rotations and flips of the image, each mapped back;
    8 x the inference time)."""

    min_size: int = 8
    expand: int = 0
    tta: str = "none"


def _paper_optim() -> OptimConfig:
    # The paper: SGD with momentum 0.99 and batch 1 (the reference release trains with lr 0.01).
    return OptimConfig(name="sgd", lr=0.01, lr_batch=1, momentum=0.99, weight_decay=0.0, schedule="constant")


def _paper_train() -> TrainConfig:
    return TrainConfig(epochs=100, eval_every=5, log_every=20, channels_last=False)


@dataclass(frozen=True)
class SegmentConfig:
    """The whole segmentation recipe. ``loss``: "ce" (the paper's weighted cross-entropy), "focal", "dice",
    "ce+dice"."""

    model: SegModelConfig = field(default_factory=SegModelConfig)
    data: SegDataConfig = field(default_factory=SegDataConfig)
    weights: WeightMapConfig = field(default_factory=WeightMapConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: Literal["ce", "focal", "dice", "ce+dice"] = "ce"
    focal_gamma: float = 2.0
    post: PostConfig = field(default_factory=PostConfig)
    optim: OptimConfig = field(default_factory=_paper_optim)
    train: TrainConfig = field(default_factory=_paper_train)
    out: str = "runs/segment"


# -- model -----------------------------------------------------------------------------------------------------------
def build_segmenter(cfg: SegModelConfig, in_channels: int, num_classes: int) -> nn.Module:
    from foveal.models import unet

    if cfg.name == "unet":
        return unet.UNet(
            in_channels=in_channels,
            num_classes=num_classes,
            depth=cfg.depth,
            base_width=cfg.base_width,
            padding=cfg.padding,
            batch_norm=cfg.batch_norm,
            dropout=cfg.dropout,
        )
    from foveal.models.hub import backbone_kwargs

    encoder_args = backbone_kwargs(cfg.weights, cfg.encoder) or None  # the BN epsilon of EfficientNet hub weights
    return unet.BackboneUNet(cfg.encoder, in_channels, num_classes, encoder_args=encoder_args)


def init_encoder(model: nn.Module, cfg: SegModelConfig) -> None:
    """Load ``cfg.weights`` (a classifier's state-dict file or hub weights) into the encoder of a backbone U-Net."""
    from foveal.models.convert import backbone_state, load_state_file
    from foveal.models.hub import efficientnet_kwargs, is_hub_spec, resolve_weights

    assert cfg.weights is not None
    if cfg.name != "backbone_unet":
        raise FovealError(
            f"model.weights={cfg.weights} initialises a pretrained encoder: set model.name=backbone_unet with "
            "model.encoder=<its family>, or drop model.weights"
        )
    source = f"model.weights {cfg.weights}"
    state = resolve_weights(cfg.weights).state if is_hub_spec(cfg.weights) else load_state_file(cfg.weights)
    encoder = backbone_state(state, **efficientnet_kwargs(cfg.weights))
    if encoder is None:
        raise FovealError(
            f"{source} is not a ResNet or EfficientNet classifier's state dict (torchvision or timm): pass one of "
            "those for the encoder"
        )
    own = model.get_submodule("encoder").state_dict()
    for key in ("stem.0.weight", "stem.conv.weight"):  # the first conv: ResNet, EfficientNet
        if key in encoder and key in own and encoder[key].ndim == 4 and encoder[key].shape[1] != own[key].shape[1]:
            theirs, ours = encoder[key].shape[1], own[key].shape[1]
            if ours == 1:  # a grayscale image seen as RGB with equal channels: the filters summed over R, G, B
                encoder[key] = encoder[key].sum(dim=1, keepdim=True)
                continue
            raise FovealError(
                f"{source} was trained on {theirs}-channel images but this data has {ours}: convert the images to "
                f"{theirs} channels (or to grayscale), or use weights for {ours} channels"
            )
    ckpt_io.load_weights_into(model.get_submodule("encoder"), encoder, f"{source} (model.encoder={cfg.encoder})")


def tile_input(model: nn.Module, out_tile: int) -> int:
    """The input edge that gives an output tile of ``out_tile`` (FovealError naming valid sizes otherwise)."""
    size = out_tile + 2 * int(model.border)  # type: ignore[arg-type]
    problem = _check_size(model, size) if out_tile > 0 else f"tile size {out_tile} must be positive"
    if problem is not None:
        raise FovealError(problem)
    return size


def _check_size(model: nn.Module, size: int) -> str | None:
    """None when ``model`` takes inputs of ``size``, else a message naming the nearest valid output tiles."""
    from foveal.models import unet

    args = getattr(model, "args", {})
    if args.get("kind", "unet") != "unet":
        stride = int(model.stride)  # type: ignore[arg-type]
        if size % stride == 0 and size > 0:
            return None
        lo, hi = max(stride, size // stride * stride), (size // stride + 1) * stride
        return f"tile {size} is not a multiple of {stride}, which this network needs: use {lo} or {hi}"
    depth, padding = int(args["depth"]), str(args["padding"])
    try:
        unet.unet_output_size(size, depth=depth, padding=padding)
    except FovealError:
        border = int(model.border)  # type: ignore[arg-type]
        lo = unet.valid_input_size(size, depth=depth, padding=padding, round="down") - 2 * border
        hi = unet.valid_input_size(size, depth=depth, padding=padding, round="up") - 2 * border
        choices = " or ".join(str(v) for v in (lo, hi) if v > 0)
        return f"tile size {size - 2 * border} is not one this network can take: use {choices}"
    return None


# -- data ------------------------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """One training/validation image with what the loss needs: image (C,H,W) float, class target (H,W) int64 (borders
    between touching instances set to background), weight map (H,W) float, and the instance labels when known.

    ``context`` is the whole image this one was cut from at column ``offset`` (``data.split_columns``): evaluation
    predicts the whole image (its pixels only, no labels) and scores the columns of this part, as a user segmenting
    the whole image would get them.
    """

    name: str
    image: Tensor
    target: Tensor
    weight: Tensor
    instances: np.ndarray | None
    context: Tensor | None = None
    offset: int = 0


def prepare(data: Any, wcfg: WeightMapConfig, num_classes: int) -> list[Prepared]:
    """Targets and weight maps of every sample of a ``SegmentationData`` (computed once, before training)."""
    from foveal.data import weightmap

    class_weights = "balanced" if wcfg.class_weights == "balanced" else None
    out = []
    for name, image, mask in zip(data.names, data.images, data.masks, strict=True):
        m = mask.numpy()
        if data.kind == "instances":
            target = weightmap.class_mask(m, borders=wcfg.borders)
            weight = weightmap.weight_map(
                m, w0=wcfg.w0, sigma=wcfg.sigma, class_weights=class_weights, borders=wcfg.borders
            )
            instances: np.ndarray | None = m
        else:
            target = m.astype(np.int64)
            weight = _class_weight_map(target, num_classes, class_weights is not None)
            instances = None
        out.append(
            Prepared(name, image, torch.from_numpy(np.asarray(target, np.int64)), torch.from_numpy(weight), instances)
        )
    return out


def _class_weight_map(target: np.ndarray, num_classes: int, balanced: bool) -> np.ndarray:
    """w_c per pixel for a class mask (balanced: each class carries the weight of the most frequent one)."""
    from foveal.data.weightmap import class_weights_of

    if not balanced:
        return np.ones(target.shape, np.float32)
    return class_weights_of(target, num_classes)[target].astype(np.float32)


class TrainingTiles(Dataset[tuple[Tensor, Tensor, Tensor]]):
    """Random training tiles: input (C, in, in) with its context, target and weight (out, out) under the output.

    Indexed by ``(index, sample_seed)`` (see the trainer): the image is ``index mod n_images``, the tile position
    and the augmentation follow from the seed only, so resumed and distributed runs see the same tiles.
    """

    def __init__(self, samples: list[Prepared], out_tile: int, in_tile: int, length: int, augment: AugmentConfig):
        self.samples, self.out, self.inp, self.length, self.augment = samples, out_tile, in_tile, length, augment
        self.margin = (in_tile - out_tile) // 2
        for s in samples:
            h, w = s.target.shape
            if h < out_tile or w < out_tile:
                raise FovealError(
                    f"image {s.name} is {h}×{w}, smaller than one training tile ({out_tile}×{out_tile} output): "
                    f"set data.tile to at most {min(h, w)} (a size the network takes)"
                )
        m = self.margin
        self.padded = [
            (reflect_pad(s.image, m), reflect_pad(s.target[None], m)[0], reflect_pad(s.weight[None], m)[0])
            for s in samples
        ]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, key)
        g = torch.Generator().manual_seed(int(seed))
        image, target, weight = self.padded[index % len(self.padded)]
        h, w = target.shape[0] - 2 * self.margin, target.shape[1] - 2 * self.margin
        y = int(torch.randint(0, h - self.out + 1, (1,), generator=g))
        x = int(torch.randint(0, w - self.out + 1, (1,), generator=g))
        # Output window rows [y, y + out) of the image are rows [y + m, ...) of the padded arrays; its input window
        # starts m rows earlier, i.e. at row y of the padded arrays.
        win = (slice(y, y + self.inp), slice(x, x + self.inp))
        img, tgt, wgt = image[(slice(None), *win)], target[win], weight[win]
        img, tgt, wgt2 = augment_batch(img[None], tgt[None], wgt[None], self.augment, g)
        assert wgt2 is not None
        m = self.margin
        inner = (slice(m, m + self.out), slice(m, m + self.out))
        return img[0], tgt[0][inner], wgt2[0][inner]


def collate(batch: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    return (
        torch.stack([b[0] for b in batch]),
        torch.stack([b[1] for b in batch]),
        torch.stack([b[2] for b in batch]),
    )


def open_data(cfg: SegDataConfig) -> tuple[Any, Any]:
    """(train, val) ``SegmentationData`` of ``cfg``."""
    from foveal.data.segmentation import open_segmentation, split_columns

    def load(spec: str, channels: int | None) -> Any:
        return open_segmentation(
            spec, channels=channels, masks=cfg.masks, num_classes=cfg.num_classes, normalize=cfg.normalize
        )

    train = load(cfg.train, cfg.channels)
    if cfg.val is not None:
        val = load(cfg.val, train.channels)
        if val.kind != train.kind or val.num_classes != train.num_classes:
            raise FovealError(
                f"validation data {cfg.val} has {val.kind} masks with {val.num_classes} classes but training data "
                f"has {train.kind} masks with {train.num_classes}: use masks of the same kind"
            )
        return train, val
    if cfg.split_columns is not None:
        widths = {int(m.shape[1]) for m in train.masks}
        if cfg.split_columns <= 0 or any(cfg.split_columns >= w for w in widths):
            raise FovealError(
                f"data.split_columns={cfg.split_columns} must lie inside every image (widths {sorted(widths)}): "
                "choose a column between 1 and the narrowest width − 1"
            )
        return split_columns(train, cfg.split_columns)
    if len(train) < 2:
        raise FovealError(
            f"training data {cfg.train} holds one image, so none is left for validation: set data.val to a "
            "dataset, or data.split_columns to a column that splits the image"
        )
    n_val = max(1, int(round(len(train) * cfg.val_fraction)))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    return train.subset(sorted(order[n_val:])), train.subset(sorted(order[:n_val]))


def attach_context(samples: list[Prepared], cfg: SegDataConfig) -> list[Prepared]:
    """Give the validation part of a column split its whole image as context (see :class:`Prepared`)."""
    if cfg.val is not None or cfg.split_columns is None:
        return samples
    from foveal.data.segmentation import open_segmentation

    full = open_segmentation(
        cfg.train, channels=cfg.channels, masks=cfg.masks, num_classes=cfg.num_classes, normalize=cfg.normalize
    )
    for s, image in zip(samples, full.images, strict=True):
        s.context, s.offset = image, cfg.split_columns
    return samples


def class_names(num_classes: int) -> list[str]:
    """Names of ``num_classes`` semantic classes without names of their own: background, class1, class2, …"""
    return ["background"] + [f"class{i}" for i in range(1, num_classes)]


# -- loading for inference -------------------------------------------------------------------------------------------
@dataclass
class LoadedSegmenter:
    model: nn.Module
    classes: list[str]
    channels: int
    normalize: str
    masks: str
    config: SegmentConfig
    meta: dict[str, Any]


def load_segmenter(
    path: str | Path, fast: bool = False, device: str | torch.device = "cpu", precision: str = "auto"
) -> LoadedSegmenter:
    """Load a segmentation checkpoint for inference (eval mode) on ``device`` (``auto``, ``cpu``, ``cuda``,
    ``cuda:N``).

    With ``fast`` the model is :func:`foveal.inference.fast.inference_model`'s copy (BatchNorm folded, channels-last,
    on the CPU in fp32 Winograd F(4×4, 3×3) for the 3×3 convolutions of 128 or more channels; outputs within ≈ 1e-5
    of the direct ones). Not for Grad-CAM of a layer that folding removes. ``precision`` ``bf16`` / ``fp16`` (CUDA)
    stores the folded copy's weights in that format (implies ``fast``).
    """
    model, (classes, config, geometry), ckpt = load_for_inference(
        path, TASK, _read_record, fast=fast, device=device, precision=precision
    )
    return LoadedSegmenter(model, classes, *geometry, config, ckpt.meta)


def _read_record(meta: dict[str, Any]) -> tuple[list[str], SegmentConfig, tuple[int, str, str]]:
    """Classes, config and input (channels, normalisation, mask kind) of a segmentation checkpoint's record."""
    inp = meta["input"]
    config = from_dict(SegmentConfig, meta["config"])
    return list(meta["classes"]), config, (int(inp["channels"]), str(inp["normalize"]), str(inp["masks"]))


# -- overlap-tile inference ------------------------------------------------------------------------------------------
TTA_MODES = ("none", "dihedral")


def predict_logits(
    model: nn.Module, image: Tensor, tile: int, batch: int = 2, progress: bool = False, tta: str = "none"
) -> Tensor:
    """Logits (K, H, W), fp32 on the CPU, of one image (C, H, W) by overlap-tile inference with output tiles of
    ``tile``, computed on the model's device in its dtype.

    ``tta="dihedral"``: the image is predicted in each of its 8 rotations / flips, each result mapped back, and the
    soft-max probabilities averaged; their logarithm is returned (a valid logit map: its arg-max and soft-max are
    those of the average).
    """
    if tta not in TTA_MODES:
        raise FovealError(f"unknown test-time augmentation {tta!r}: use 'none' or 'dihedral' (8 rotations / flips)")
    border, stride = int(model.border), int(model.stride)  # type: ignore[arg-type]

    def once(x: Tensor) -> Tensor:
        with torch.no_grad():
            return predict_tiled(model, x, tile, border=border, stride=stride, batch=batch, progress=progress)[0]

    param = next(model.parameters())
    image = image.to(param.device)
    if tta == "none":
        return once(image).float().cpu()
    total = torch.zeros(0)
    for flip in (False, True):
        for turns in range(4):
            x = image.flip(-1) if flip else image
            probs = once(torch.rot90(x, turns, (-2, -1))).float().softmax(0)
            probs = torch.rot90(probs, -turns, (-2, -1))
            probs = probs.flip(-1) if flip else probs
            total = probs if total.numel() == 0 else total + probs
    return (total / 8).clamp_min(1e-12).log().cpu()


def to_instances(classes: np.ndarray, post: PostConfig) -> np.ndarray:
    """Instance labels from a predicted class map (foreground = every class ≥ 1)."""
    return instances_from_classes(classes > 0, min_size=post.min_size, expand=post.expand)
