"""Image classification with EfficientNet: the config, the model's build and initial weights, the data pipeline,
and the checkpoint loaded for inference.

The task's other files: training (:mod:`foveal.tasks.classify_train`), prediction (:mod:`foveal.tasks.
classify_predict`), evaluation (:mod:`foveal.tasks.classify_eval`) and explanation (:mod:`foveal.tasks.
classify_explain`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch import Tensor
from torch.utils.data import Dataset

from foveal.config import ANY_FINITE, FRACTION, POSITIVE, at_least, between
from foveal.engine import checkpoint as ckpt_io
from foveal.engine.optim import OptimConfig
from foveal.engine.trainer import TrainConfig, seeded
from foveal.errors import FovealError
from foveal.models import efficientnet as eff
from foveal.models.hub import efficientnet_kwargs, is_hub_spec, resolve_weights
from foveal.preprocess import normalize, resize_square
from foveal.tasks.scaffold import load_for_inference

TASK = "classify"
#: The compound coefficients φ that build a sensible EfficientNet (B0 … B7 are φ = 0 … about 7; negative: smaller).
PHI_RANGE = between(-10, 12)


@dataclass(frozen=True)
class ModelConfig:
    """Which EfficientNet. ``name`` is "efficientnet_b0" … "efficientnet_b7" (released coefficients) or
    "efficientnet" (built from ``phi`` with ``alpha``, ``beta``, ``gamma``). ``resolution`` and ``dropout`` default
    to the variant's. ``weights`` initialises from a foveal checkpoint, a timm / torchvision state-dict file or hub
    weights (``torchvision:<WeightsEnum>.<NAME>``, ``timm:<name>``; ``new_classifier`` for another class count).
    ``pool``: "avg" (global average pooling, the paper's) or "max" (global max pooling). ``output_stride``: total
    stride of the last conv map (default: the table's; smaller gives finer class activation maps)."""

    name: str = "efficientnet_b0"
    phi: Annotated[float, PHI_RANGE] = 0.0
    alpha: Annotated[float, between(0, 4, low_open=True)] = 1.2
    beta: Annotated[float, between(0, 4, low_open=True)] = 1.1
    gamma: Annotated[float, between(0, 4, low_open=True)] = 1.15
    resolution: Annotated[int | None, between(1, 8192)] = None
    dropout: Annotated[float | None, between(0, 1, high_open=True)] = None
    drop_path: Annotated[float, between(0, 1, high_open=True)] = 0.2
    stem_stride: Annotated[int, between(1, 32)] = 2
    output_stride: Annotated[int | None, between(1, 64)] = None
    bn_momentum: Annotated[float, FRACTION] = 0.01
    bn_eps: Annotated[float, POSITIVE] = 1e-3
    padding: Literal["symmetric", "same"] = "symmetric"
    weights: str | None = None
    new_classifier: bool = False
    pool: Literal["avg", "max"] = "avg"


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are prepared.

    ``train`` / ``val`` are dataset specs: "fashion-mnist", "fashion-mnist-sample", a folder of IDX files or an image
    folder (one sub-folder per class). ``val`` defaults to the test split of ``train``. ``batch_size`` is global.
    An image folder without train/ and val/ sub-folders is split: ``val_fraction`` of each class is held out.
    ``augment``: "autoaugment" (the paper: random-resized crop, flip, AutoAugment ImageNet policy), "crop-flip"
    (reflect-pad, random crop, flip), "flip" or "none".
    """

    train: str = "fashion-mnist-sample"
    val: str | None = None
    channels: Annotated[int | None, between(1, 3)] = None
    batch_size: Annotated[int, at_least(1)] = 64
    augment: Literal["autoaugment", "crop-flip", "flip", "none"] = "autoaugment"
    mean: Annotated[tuple[float, ...], ANY_FINITE] = (0.5,)
    std: Annotated[tuple[float, ...], POSITIVE] = (0.5,)
    limit: Annotated[int | None, at_least(1)] = None
    val_limit: Annotated[int | None, at_least(1)] = None
    val_fraction: Annotated[float, between(0, 1, low_open=True, high_open=True)] = 0.1


@dataclass(frozen=True)
class ClassifyConfig:
    """The whole classification recipe: model, data, optimizer, training loop and output folder."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    label_smoothing: Annotated[float, between(0, 1, high_open=True)] = 0.0
    out: str = "runs/classify"


# -- model -----------------------------------------------------------------------------------------------------------
def resolution_of(cfg: ModelConfig) -> int:
    if cfg.resolution is not None:
        return cfg.resolution
    if cfg.name == "efficientnet":
        return eff.compound_scaling(cfg.phi, cfg.alpha, cfg.beta, cfg.gamma).resolution
    return _variant(cfg.name).resolution


def _variant(name: str) -> eff.Scaling:
    key = name.removeprefix("efficientnet_")
    if key not in eff.VARIANTS:
        raise FovealError(f"unknown model '{name}': use efficientnet_b0 … efficientnet_b7, or efficientnet with phi=")
    return eff.VARIANTS[key]


def build_classifier(cfg: ModelConfig, num_classes: int, in_channels: int) -> eff.EfficientNet:
    """The EfficientNet that ``cfg`` names, for ``num_classes`` outputs and ``in_channels`` input channels."""
    if cfg.name == "efficientnet":
        scaling = eff.compound_scaling(cfg.phi, cfg.alpha, cfg.beta, cfg.gamma)
    else:
        scaling = _variant(cfg.name)
    return eff.EfficientNet(
        width=scaling.width,
        depth=scaling.depth,
        num_classes=num_classes,
        in_channels=in_channels,
        dropout=scaling.dropout if cfg.dropout is None else cfg.dropout,
        drop_path=cfg.drop_path,
        stem_stride=cfg.stem_stride,
        output_stride=cfg.output_stride,
        padding=cfg.padding,
        bn_momentum=cfg.bn_momentum,
        bn_eps=cfg.bn_eps,
        pool=cfg.pool,
    )


def init_weights(model: eff.EfficientNet, cfg: ModelConfig) -> eff.EfficientNet:
    """``model`` initialised from ``cfg.weights`` (a foveal checkpoint, a foreign state-dict file or hub weights:
    ``torchvision:EfficientNet_B0_Weights.IMAGENET1K_V1``, ``timm:efficientnet_b0.ra_in1k``).

    The weights keep the BatchNorm epsilon and padding they were trained with (timm and torchvision use 1e-5 and
    symmetric padding, TF ports "same"), so the model is rebuilt with those when they differ from the config.
    """
    assert cfg.weights is not None
    path = Path(cfg.weights)
    if is_hub_spec(cfg.weights):
        from foveal.models.convert import import_efficientnet

        hub = resolve_weights(cfg.weights)
        imported = import_efficientnet(hub.state, num_classes=None, **efficientnet_kwargs(cfg.weights))
        weights, source_args = imported.state_dict(), imported.args
    elif path.is_dir():
        ckpt = ckpt_io.load_checkpoint(path)
        ckpt_io.require_task(ckpt, (TASK,), f"model.weights={path}")
        weights, source_args = ckpt.weights, dict(ckpt.meta.get("model", {}).get("args", {}))
    else:
        from foveal.models.convert import import_efficientnet

        imported = import_efficientnet(path, num_classes=None)
        weights, source_args = imported.state_dict(), imported.args
    kept: dict[str, Any] = {k: source_args[k] for k in ("bn_eps", "padding") if k in source_args}
    if any(model.args[k] != v for k, v in kept.items()):
        model = eff.from_args({**model.args, **kept})
    _check_channels(weights.get("stem.conv.weight"), model.args["in_channels"], f"weights {path}")
    own_head, hub_head = model.state_dict().get("classifier.weight"), weights.get("classifier.weight")
    other_classes = own_head is not None and hub_head is not None and own_head.shape[0] != hub_head.shape[0]
    if cfg.new_classifier or (is_hub_spec(cfg.weights) and other_classes):  # a hub's ImageNet head: a fresh one
        weights = {k: v for k, v in weights.items() if not k.startswith("classifier.")}
        weights.update({k: v for k, v in model.state_dict().items() if k.startswith("classifier.")})
    own = model.state_dict().get("classifier.weight")
    theirs = weights.get("classifier.weight")
    if own is not None and theirs is not None and own.shape != theirs.shape:
        raise FovealError(
            f"weights {path} were trained for {theirs.shape[0]} classes but this data has {own.shape[0]}: "
            "add model.new_classifier=true to fine-tune with a fresh classifier"
        )
    ckpt_io.load_weights_into(model, weights, f"weights {path}")
    return model


def _check_channels(stem: Tensor | None, in_channels: int, source: str) -> None:
    """Weights for other image channels than the data's are an error that names the fix."""
    if stem is not None and stem.ndim == 4 and stem.shape[1] != in_channels:
        raise FovealError(
            f"{source} were trained on {stem.shape[1]}-channel images but this data has {in_channels}: set "
            f"data.channels={stem.shape[1]} (images are converted), or use weights for {in_channels} channels"
        )


# -- data ------------------------------------------------------------------------------------------------------------
def eval_transform(resolution: int) -> Callable[[Tensor], Tensor]:
    """Resize the shorter side to ``resolution`` and centre-crop a square (:func:`foveal.preprocess.resize_square`:
    torchvision's ``Resize`` + ``CenterCrop`` pixel for pixel, without importing torchvision)."""
    return functools.partial(resize_square, resolution=resolution)


class ClassifySamples(Dataset[tuple[Tensor, int]]):
    """Transformed samples of a classification dataset.

    Indexed by an int, or by (index, seed) from the trainer: then the random augmentation is a pure function of the
    seed (the global RNG is forked around it), which makes resumed and distributed runs exact.
    """

    def __init__(
        self, data: Any, transform: Callable[[Tensor], Tensor], mean: tuple[float, ...], std: tuple[float, ...]
    ) -> None:
        self.data, self.transform, self.mean, self.std = data, transform, mean, std

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        if isinstance(key, tuple):
            index, seed = key
            image, label = self.data.get(index)
            with seeded(seed):
                image = self.transform(image)
        else:
            image, label = self.data.get(key)
            image = self.transform(image)
        return normalize(image, self.mean, self.std), int(label)


def collate(batch: list[tuple[Tensor, int]]) -> tuple[Tensor, Tensor]:
    images = torch.stack([b[0] for b in batch])
    return images, torch.tensor([b[1] for b in batch], dtype=torch.long)


def _subset(data: Any, limit: int | None, seed: int = 0) -> Any:
    """A class-stratified subset of about ``limit`` samples (all of ``data`` when ``limit`` is None)."""
    if limit is None or limit >= len(data):
        return data
    from foveal.data.classification import split_train_val, subset

    _, chosen = split_train_val(data, limit / len(data), seed)
    return subset(data, chosen)


def open_data(cfg: DataConfig) -> tuple[Any, Any]:
    """(train, val) ``ClassificationData`` of ``cfg``; checks that both have the same classes and that every image
    of an image folder decodes (so a corrupt file stops the run before training, naming the file)."""
    from foveal.data.classification import open_dataset, split_train_val, subset

    for key, limit in (("data.limit", cfg.limit), ("data.val_limit", cfg.val_limit)):
        if limit is not None and limit < 1:
            raise FovealError(f"{key}={limit}: use a positive number of images, or null for all of them")
    train = open_dataset(cfg.train, "train", channels=cfg.channels)
    val = open_dataset(cfg.val or cfg.train, "test" if cfg.val is None else "val", channels=train.channels)
    if isinstance(train.images, list) and train.images == val.images:
        # An image folder without train/ and val/ sub-folders: hold out a stratified part for validation.
        keep, held = split_train_val(train, cfg.val_fraction, seed=0)
        train, val = subset(train, keep), subset(train, held)
    if list(val.classes) != list(train.classes):
        raise FovealError(
            f"validation data {cfg.val or cfg.train} has classes {val.classes} but training data has {train.classes}: "
            "use datasets with the same class folders"
        )
    train, val = _subset(train, cfg.limit), _subset(val, cfg.val_limit)
    train.verify()  # a no-op for in-memory (IDX) data
    val.verify()
    return train, val


# -- loading for inference -------------------------------------------------------------------------------------------
@dataclass
class LoadedClassifier:
    model: eff.EfficientNet
    classes: list[str]
    resolution: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict[str, Any]


def load_classifier(
    path: str | Path, fast: bool = False, device: str | torch.device = "cpu", precision: str = "auto"
) -> LoadedClassifier:
    """Load a classification checkpoint for inference (eval mode; BN folded and channels-last when ``fast``).

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`foveal.engine.device.resolve_device`).
        precision: ``auto`` (fp32 for inference), ``fp32``, ``bf16`` or ``fp16`` (CUDA): the weights' format (see
            :func:`foveal.engine.device.resolve_precision`); bf16 / fp16 imply ``fast``.
    """
    model, (classes, resolution, channels, mean, std), ckpt = load_for_inference(
        path, TASK, _read_record, fast=fast, device=device, precision=precision
    )
    if not isinstance(model, eff.EfficientNet):
        raise FovealError(f"checkpoint {ckpt.path} does not hold an EfficientNet classifier")
    return LoadedClassifier(model, classes, resolution, channels, mean, std, ckpt.meta)


def _read_record(meta: dict[str, Any]) -> tuple[list[str], int, int, tuple[float, ...], tuple[float, ...]]:
    """Classes, input resolution and channels, mean and std of a classification checkpoint's record."""
    inp = meta["input"]
    mean, std = tuple(float(v) for v in inp["mean"]), tuple(float(v) for v in inp["std"])
    return list(meta["classes"]), int(inp["resolution"]), int(inp["channels"]), mean, std
