"""Image classification with EfficientNet: config, data pipeline, evaluation and prediction.

Training is in :mod:`foveal.tasks.classify_train`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.transforms import v2

from foveal.config import ANY_FINITE, FRACTION, POSITIVE, at_least, between
from foveal.engine import checkpoint as ckpt_io
from foveal.engine.device import placement, to_device, uses_channels_last
from foveal.engine.optim import OptimConfig
from foveal.engine.runinfo import write_run_info
from foveal.engine.trainer import TrainConfig, seeded
from foveal.errors import FovealError
from foveal.io import atomic_output, write_json
from foveal.models import efficientnet as eff
from foveal.models.hub import efficientnet_kwargs, is_hub_spec, resolve_weights
from foveal.preprocess import normalize
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
class _Square(v2.Transform):
    """Resize the shorter side to ``resolution`` and centre-crop a square; images already that size pass untouched."""

    def __init__(self, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.resize = v2.Compose([v2.Resize(resolution, antialias=True), v2.CenterCrop(resolution)])

    def forward(self, *inputs: Any) -> Any:
        image = inputs[0]
        if isinstance(image, Tensor) and image.shape[-2:] == (self.resolution, self.resolution):
            return image
        return self.resize(*inputs)


def eval_transform(resolution: int) -> v2.Transform:
    """Resize the shorter side to ``resolution`` and centre-crop a square (uint8 tensors)."""
    return _Square(resolution)


def train_transform(resolution: int, augment: str) -> v2.Transform:
    if augment == "autoaugment":
        return v2.Compose(
            [
                v2.RandomResizedCrop(resolution, antialias=True),
                v2.RandomHorizontalFlip(),
                v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET),
            ]
        )
    base = eval_transform(resolution)
    if augment == "crop-flip":
        pad = max(1, resolution // 8)
        return v2.Compose(
            [base, v2.RandomCrop(resolution, padding=pad, padding_mode="reflect"), v2.RandomHorizontalFlip()]
        )
    if augment == "flip":
        return v2.Compose([base, v2.RandomHorizontalFlip()])
    return base


class ClassifySamples(Dataset[tuple[Tensor, int]]):
    """Transformed samples of a classification dataset.

    Indexed by an int, or by (index, seed) from the trainer: then the random augmentation is a pure function of the
    seed (the global RNG is forked around it), which makes resumed and distributed runs exact.
    """

    def __init__(self, data: Any, transform: v2.Transform, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
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


# -- evaluation ------------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(
    model: nn.Module,
    samples: Dataset[Any],
    classes: list[str],
    batch_size: int = 128,
    outcomes: list[Any] | None = None,
) -> Any:
    """Top-1, top-5, per-class accuracy and confusion matrix of ``model`` on ``samples``; with ``outcomes``, also
    appends (top-1 probability, predicted class, true class) for each sample, in order."""
    from torch.utils.data import DataLoader

    from foveal.metrics.classification import ClassificationMeter

    meter = ClassificationMeter(len(classes), classes)
    # A generator of its own keeps evaluation from drawing on the global RNG (exact resume depends on it).
    weight = next(model.parameters())
    loader = DataLoader(
        samples,
        batch_size=batch_size,
        collate_fn=collate,
        generator=torch.Generator(),
        pin_memory=weight.device.type == "cuda",  # non-blocking copies to the GPU
    )
    channels_last = uses_channels_last(model)
    for images, targets in loader:
        # on the model's device and in its dtype (bf16 / fp16 weights); logits and metrics in fp32 on the CPU
        logits = model(to_device(images, weight.device, weight.dtype, channels_last)).float().cpu()
        meter.update(logits, targets, loss=F.cross_entropy(logits, targets, reduction="sum") / len(targets))
        if outcomes is not None:
            conf, pred = logits.softmax(1).max(1)
            outcomes.extend(zip(conf.tolist(), pred.tolist(), targets.tolist(), strict=True))
    return meter.compute()


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


def check_task(ckpt: ckpt_io.Checkpoint) -> None:
    task = ckpt.meta.get("task")
    if task != TASK:
        raise FovealError(
            f"checkpoint {ckpt.path} is a '{task}' checkpoint, not a classifier; pass a classify checkpoint"
        )


def load_classifier(
    path: str | Path, fuse: bool = False, device: str | torch.device = "cpu", precision: str = "auto"
) -> LoadedClassifier:
    """Load a classification checkpoint for inference (eval mode; BN folded and channels-last when ``fuse``).

    Args:
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`foveal.engine.device.resolve_device`).
        precision: ``auto`` (fp32 for inference), ``fp32``, ``bf16`` or ``fp16`` (CUDA): the weights' format (see
            :func:`foveal.engine.device.resolve_precision`); bf16 / fp16 imply ``fuse``.
    """
    model, (classes, resolution, channels, mean, std), ckpt = load_for_inference(
        path, check_task, _read_record, fast=fuse, device=device, precision=precision
    )
    if not isinstance(model, eff.EfficientNet):
        raise FovealError(f"checkpoint {ckpt.path} does not hold an EfficientNet classifier")
    return LoadedClassifier(model, classes, resolution, channels, mean, std, ckpt.meta)


def _read_record(meta: dict[str, Any]) -> tuple[list[str], int, int, tuple[float, ...], tuple[float, ...]]:
    """Classes, input resolution and channels, mean and std of a classification checkpoint's record."""
    inp = meta["input"]
    mean, std = tuple(float(v) for v in inp["mean"]), tuple(float(v) for v in inp["std"])
    return list(meta["classes"]), int(inp["resolution"]), int(inp["channels"]), mean, std


class _PrepareClassify:
    """Path → (C, R, R) normalised float image, as evaluation prepares it (runs in DataLoader workers)."""

    def __init__(self, clf: LoadedClassifier) -> None:
        self.channels, self.mean, self.std = clf.channels, clf.mean, clf.std
        self.transform = eval_transform(clf.resolution)

    def __call__(self, path: Path) -> Tensor:
        from foveal.data.images import load_image

        return self.image(load_image(path, self.channels))

    def image(self, pixels: Tensor) -> Tensor:
        """(C, H, W) uint8 pixels (:func:`foveal.data.images.load_image`'s) → the model's (C, R, R) input."""
        return normalize(self.transform(pixels), self.mean, self.std)


class ClassifyPredictor:
    """Batched top-k classification (a :class:`foveal.inference.batch_predict.Predictor`): each result is the
    image's ``top_k`` ``(class index, name, probability)``, best first."""

    def __init__(
        self,
        checkpoint: str | Path | LoadedClassifier,
        top_k: int = 5,
        device: str | torch.device = "auto",
        precision: str = "auto",
    ) -> None:
        if top_k < 1:
            raise FovealError(f"--top-k {top_k}: use a positive number of classes, e.g. --top-k 5")
        if isinstance(checkpoint, LoadedClassifier):  # already loaded (device and precision as it was loaded)
            self.clf = checkpoint
        else:
            self.clf = load_classifier(checkpoint, fuse=True, device=device, precision=precision)
        self.k = min(top_k, len(self.clf.classes))
        self.prepare = _PrepareClassify(self.clf)

    @torch.no_grad()
    def predict_batch(self, prepared: Sequence[Tensor]) -> list[tuple[Any, ...]]:
        from foveal.report.tables import predictions_from_logits

        weight = next(self.clf.model.parameters())
        batch = to_device(torch.stack(list(prepared)), weight.device, weight.dtype, channels_last=True)
        logits = self.clf.model(batch).float().cpu()  # probabilities in fp32
        return [p.topk for p in predictions_from_logits([""] * len(prepared), logits, self.clf.classes, k=self.k)]


class ClassifyWriter:
    """Records ``{"predictions": [{"class", "index", "probability"}]}`` and, at the end, ``predictions.csv``."""

    def write(self, item: Any, prepared: Any, result: tuple[Any, ...], out: Any) -> dict[str, Any]:
        return {
            "predictions": [{"class": s.name, "index": s.class_index, "probability": s.probability} for s in result]
        }

    def finish(self, records: Callable[[], Iterator[dict[str, Any]]], out: Any) -> None:
        write_predictions_csv(records(), out.staged("predictions.csv"))


def write_predictions_csv(records: Iterator[dict[str, Any]], path: str | Path) -> None:
    """One CSV row per image × rank (:data:`foveal.report.tables.CSV_HEADER`) from prediction records, atomically."""
    import csv

    from foveal.report.tables import CSV_HEADER

    with atomic_output(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for r in records:
            for rank, s in enumerate(r["predictions"], start=1):
                writer.writerow([r["file"], rank, s["index"], s["class"], repr(s["probability"])])


def predict(
    path: str | Path,
    inputs: list[str],
    top_k: int = 5,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> list[Any]:
    """Top-k classes with probabilities for each image of ``inputs`` (files, folders, globs), in memory.

    For streams of any length with outputs on disk, use ``foveal predict`` (:mod:`foveal.inference.batch_predict`
    with :class:`ClassifyPredictor`)."""
    from foveal.data.images import expand_inputs
    from foveal.report.tables import Prediction

    predictor = ClassifyPredictor(path, top_k, device, precision)
    files = expand_inputs(list(inputs))
    preds: list[Prediction] = []
    for i in range(0, len(files), batch_size):
        chunk = files[i : i + batch_size]
        results = predictor.predict_batch([predictor.prepare(f) for f in chunk])
        preds.extend(Prediction(str(f), topk) for f, topk in zip(chunk, results, strict=True))
    return preds


def evaluate_checkpoint(
    path: str | Path,
    data: str | None,
    split: str,
    out: str | Path | None,
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> Any:
    """Evaluate a checkpoint on a dataset (default: its own validation data); write metrics and confusion PNG.

    The network runs on ``device`` in ``precision`` (see :func:`load_classifier`); metrics are computed in fp32."""
    from foveal.data.classification import open_dataset
    from foveal.report.plots import plot_confusion
    from foveal.report.tables import write_metrics_json

    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise FovealError(f"output folder {out} is a file: pass a folder for metrics.json and confusion.png")
    clf = load_classifier(path, fuse=True, device=device, precision=precision)
    cfg_data = clf.meta.get("config", {}).get("data", {})
    spec = data or cfg_data.get("val") or cfg_data.get("train")
    if spec is None:
        raise FovealError("the checkpoint names no dataset: pass --data")
    dataset = open_dataset(spec, split, channels=clf.channels)
    if len(dataset.classes) != len(clf.classes):
        raise FovealError(
            f"dataset {spec} has {len(dataset.classes)} classes but checkpoint has {len(clf.classes)}: "
            "evaluate on data with the classes the model was trained on"
        )
    samples = ClassifySamples(dataset, eval_transform(clf.resolution), clf.mean, clf.std)
    started, outcomes = time.time(), list[Any]()
    result = evaluate(clf.model, samples, clf.classes, outcomes=outcomes)
    if out is not None:
        out = Path(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FovealError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
        write_metrics_json(result, out / "metrics.json")
        plot_confusion(result.confusion, clf.classes, out / "confusion.png")
        _write_mistakes(dataset, outcomes, clf.classes, out)
        data_info = {"data": {"spec": spec, "split": split, "samples": len(dataset)}}
        where = placement(device, precision)
        write_run_info(out, "eval", started, task=TASK, checkpoint=str(path), **data_info, **where)
    return result


MISTAKES_SHOWN = 16


def _write_mistakes(dataset: Any, outcomes: list[Any], classes: list[str], out: Path) -> None:
    """``mistakes.json`` and thumbnails (``mistakes/``) of the most confident misclassifications."""
    from foveal.report.eval_figures import thumbnail

    wrong = sorted((i for i, (_, p, t) in enumerate(outcomes) if p != t), key=lambda i: (-outcomes[i][0], i))
    records = []
    for rank, i in enumerate(wrong[:MISTAKES_SHOWN]):
        conf, pred, true = outcomes[i]
        image, _ = dataset.get(i)
        thumb = thumbnail(image.numpy(), out / "mistakes" / f"{rank:02d}-{i}.png")
        row = {"index": i, "true": classes[true], "predicted": classes[pred], "confidence": round(conf, 4)}
        records.append({**row, "thumbnail": str(thumb.relative_to(out))})
    write_json(out / "mistakes.json", {"errors": len(wrong), "samples": len(outcomes), "shown": records})
