"""Explaining a classifier: class activation maps (the paper's), Grad-CAM, finer and multi-scale maps, the top-k
figures, and the weakly supervised localization of a checkpoint's maps.

References:
    Zhou, Khosla, Lapedriza, Oliva, Torralba, "Learning Deep Features for Discriminative Localization", CVPR 2016.
    Selvaraju et al., "Grad-CAM", ICCV 2017.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from foveal.data.localization_set import LocalizationData
from foveal.errors import FovealError
from foveal.explain.boxes import PAPER_THRESHOLD, maps_to_boxes
from foveal.explain.cam import CAM, ClassTarget, GradCAM
from foveal.explain.upsample import grid_of, upsample_maps
from foveal.metrics.localization import TOP_K, LocalizationMeter
from foveal.models.efficientnet import EfficientNet, dilated_copy
from foveal.preprocess import normalize
from foveal.results import Explanation, LocalizationResult
from foveal.tasks.classify import LoadedClassifier, eval_transform, load_classifier
from foveal.tasks.explain_common import (
    ExplainOptions,
    check_options,
    crop_region,
    load_with_channels,
    on_model,
    unique_stem,
)

MapFn = Callable[[Tensor, Tensor], Tensor]
"""Maps of chosen classes: (images (N, C, H, W) preprocessed, classes (N, k) int64) → maps (N, k, h, w), any h, w
covering the whole input (they are resized to the image)."""


@contextmanager
def class_maps(model: nn.Module, method: str, map_stride: int | None = None) -> Iterator[MapFn]:
    """Raw maps of chosen classes at the feature grid of a foveal EfficientNet, for the length of a ``with`` block.

    ``"cam"``: ``M_c = Σ_k w_k^c f_k`` of the last conv map (:class:`~foveal.explain.cam.CAM`; a global-max-pooling
    model gets the same weighted sum, as in the paper's GMP ablation, without CAM's average-pooling identity check).
    ``"gradcam"``: Grad-CAM of the class logit at the same layer (for global average pooling this is ReLU(CAM) / hw).
    With ``map_stride`` the maps come from :func:`~foveal.models.efficientnet.dilated_copy` of the model: the same
    weights evaluated on a finer grid (e.g. 2 gives 32 × 32 maps where the network's own are 16 × 16).

    Yields:
        A :data:`MapFn` returning (N, k, h, w) maps.
    """
    if map_stride is not None:
        if not isinstance(model, EfficientNet):
            raise FovealError(f"map_stride works with foveal's EfficientNet, not {type(model).__name__}")
        model = dilated_copy(model, map_stride).eval()
    if method == "cam" and isinstance(model, EfficientNet) and model.pool == "max":
        net = model  # bound for the closure: ``model`` may have been replaced above
        yield lambda x, classes: _weighted_features(net, x, classes)
    elif method == "cam":
        with CAM(model) as cam:
            yield lambda x, classes: cam(x, classes=classes, upsample=False).maps
    elif method == "gradcam":
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Module):
            raise FovealError("Grad-CAM of a classifier needs its last conv layer ('head'); this model has none")
        with GradCAM(model, head) as gradcam:
            yield lambda x, classes: torch.stack(
                [gradcam(x, ClassTarget(classes[:, r]), upsample=False) for r in range(classes.shape[1])], 1
            )
    else:
        raise FovealError(f"unknown method {method!r}: use 'cam' or 'gradcam'")


def multiscale(maps_of: MapFn, scales: Sequence[float], grid: str, flip: bool = False) -> MapFn:
    """Maps from several scales of the image (and optionally its mirror), for sharper boxes around thin objects (a
    named deviation from the CAM paper's single scale).

    The image is resized by each of ``scales`` (bilinear), each scale's maps are placed on the image's own pixels
    (:func:`~foveal.explain.upsample.upsample_maps` with the network's ``grid``), divided by their maximum (by their
    largest magnitude when no value is positive), and the scales are averaged. An enlarged image shrinks the
    network's receptive field relative to the object, so its map falls off closer to the object's edges; the unscaled
    map keeps the average anchored on the object. With ``flip`` each scale is also explained mirrored (left–right),
    its maps mirrored back on the image's pixels and averaged in. The classes are the caller's (e.g. those predicted
    on the unscaled image, see :func:`class_scores`).

    Returns:
        A :data:`MapFn` giving (N, k, H, W) maps at the input's H × W.
    """
    import torch.nn.functional as F

    views = [(float(scale), mirrored) for scale in scales for mirrored in ((False, True) if flip else (False,))]

    def maps(x: Tensor, classes: Tensor) -> Tensor:
        size = tuple(x.shape[-2:])
        total: Tensor | None = None
        for scale, mirrored in views:
            xs = x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            xs = xs.flip(-1) if mirrored else xs
            m = upsample_maps(maps_of(xs, classes).float(), size, grid, xs.shape[-2:])
            m = m.flip(-1) if mirrored else m
            peak = m.amax((-2, -1), keepdim=True)
            # a map without a positive value (a class absent from the image) is divided by its largest magnitude
            peak = torch.where(peak > 0, peak, m.abs().amax((-2, -1), keepdim=True)).clamp_min(1e-12)
            m = m / peak
            total = m if total is None else total + m
        assert total is not None
        return total / len(views)

    return maps


def _views(maps_of: MapFn, grid: str, scales: Sequence[float] | None, flip: bool) -> MapFn:
    """``maps_of`` itself for the paper's single view, else :func:`multiscale` over ``scales`` (default: the image's
    own) and, with ``flip``, their mirrors."""
    if scales is None and not flip:
        return maps_of
    return multiscale(maps_of, tuple(scales or (1.0,)), grid, flip)


@torch.no_grad()
def class_scores(model: nn.Module, x: Tensor, flip: bool = False) -> Tensor:
    """(N, classes) softmax probabilities of ``model`` on ``x``; with ``flip`` the mean of those of ``x`` and of its
    left–right mirror (test-time mirroring)."""
    probs = model(x).float().softmax(1)
    if flip:
        probs = (probs + model(x.flip(-1)).float().softmax(1)) / 2
    return probs


@torch.inference_mode()
def _weighted_features(model: EfficientNet, x: Tensor, classes: Tensor) -> Tensor:
    features = model.forward_head_features(x)
    weights = model.classifier.weight[classes]
    return torch.einsum("nkc,nchw->nkhw", weights.to(features.dtype), features)


def explain_classifier(checkpoint: Path, files: list[Path], out_dir: Path, opt: ExplainOptions) -> list[Explanation]:
    clf = load_classifier(checkpoint, device=opt.device, precision=opt.precision)
    k = min(opt.top_k, len(clf.classes))
    transform = eval_transform(clf.resolution)
    grid = grid_of(clf.model)
    records: list[Explanation] = []
    used: set[str] = set()
    with class_maps(clf.model, opt.method, opt.map_stride) as own_maps:
        maps_of = _views(own_maps, grid, opt.map_scales, opt.flip)
        for f in files:
            image = load_with_channels(f, clf.channels)
            height, width = image.shape[-2:]
            x = on_model(normalize(transform(image), clf.mean, clf.std)[None], clf.model)
            try:
                scores, classes = class_scores(clf.model, x, opt.flip).topk(k, dim=1)
                maps = maps_of(x, classes)[0].float().cpu()  # (k, h, w)
                scores, classes = scores.cpu(), classes.cpu()
            except FovealError as exc:
                raise FovealError(f"cannot explain {f}: {exc}") from None
            x1, y1, x2, y2 = crop_region(height, width, clf.resolution)
            region = upsample_maps(maps, (y2 - y1, x2 - x1), grid, (clf.resolution, clf.resolution))
            boxes = maps_to_boxes(region, opt.threshold, opt.relative_to) + torch.tensor([x1, y1, x1, y1])
            full = region.amin((1, 2), keepdim=True).expand(k, height, width).clone()
            full[:, y1:y2, x1:x2] = region
            names = [clf.classes[int(c)] for c in classes[0]]
            stem = unique_stem(f, used)
            truth = np.asarray((opt.true_boxes or {}).get(f.name, []), dtype=np.float64).reshape(-1, 4)
            figures = _class_figures(image, full, names, scores[0], boxes[0], out_dir / stem, opt.method, truth)
            peaks = full.flatten(1).argmax(1)
            records.append(
                Explanation(
                    file=str(f),
                    task="classify",
                    method=opt.method,
                    size=(int(height), int(width)),
                    classes=names,
                    scores=[float(s) for s in scores[0]],
                    boxes=boxes.tolist(),
                    figures=figures,
                    peaks=[[int(p % width), int(p // width)] for p in peaks.tolist()],
                )
            )
    return records


def _class_figures(
    image: Tensor,
    maps: Tensor,
    names: list[str],
    scores: Tensor,
    box: Tensor,
    prefix: Path,
    method: str,
    truth: np.ndarray | None = None,
) -> list[str]:
    """The Fig. 4 panel of the top-k maps (``<prefix>_top<k>.png``) and the top-1 map with its box
    (``<prefix>_<method>.png``); ``image`` (C, H, W) uint8, ``maps`` (k, H, W) on the image's pixels."""
    from foveal.explain.overlay import figure_boxes, figure_top5

    shown = image.permute(1, 2, 0).numpy()
    top = figure_top5(shown, maps.numpy(), names, scores.tolist(), f"{prefix}_top{len(names)}.png")
    title = f"{names[0]} ({float(scores[0]):.2f}), {'CAM' if method == 'cam' else 'Grad-CAM'}"
    truth = np.zeros((0, 4)) if truth is None else truth
    boxed = figure_boxes(shown, maps[0].numpy(), truth, box.numpy(), f"{prefix}_{method}.png", title=title)
    return [str(top), str(boxed)]


# -- weakly supervised localization ----------------------------------------------------------------------------------
def localization_eval(
    checkpoint: str | Path,
    data: LocalizationData,
    *,
    threshold: float = PAPER_THRESHOLD,
    relative_to: str = "max",
    method: str | MapFn = "cam",
    batch_size: int = 64,
    map_stride: int | None = None,
    map_scales: Sequence[float] | None = None,
    flip: bool = False,
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> LocalizationResult:
    """The paper's localization protocol on canvases with ground-truth boxes.

    For each canvas: the top-5 classes of the classifier (fewer when it has fewer classes), a map per class, upsampled
    to the canvas; the box of the largest region above ``threshold``; correct when the class is the label and the box
    has IoU ≥ 0.5 with the object's box. The ground-truth-known error uses the label's map whatever the prediction.

    Args:
        checkpoint: a classification checkpoint (or its run directory).
        data: canvases from :func:`foveal.data.localization_set.build_localization_set`.
        threshold: fraction of the map kept (0.2 in the paper).
        relative_to: "max" (the paper) or "range" (see :func:`foveal.explain.boxes.map_to_box`).
        method: "cam", "gradcam", or any :data:`MapFn` (e.g. another library's maps, for comparison).
        batch_size: canvases per forward pass.
        map_stride: maps on this finer grid from the same weights (see :func:`class_maps`); classes always come from
            the network as trained.
        map_scales: average the maps of the canvases resized by these scales (:func:`multiscale`); classes still
            come from the unscaled canvas.
        flip: average class scores and maps with those of the mirrored canvas (test-time mirroring).
        device, precision: where and in which format the network runs (see :func:`explain`); boxes and the
            protocol in fp32 on the CPU.

    Returns:
        Top-1 / top-5 localization error, ground-truth-known localization error and classification errors.
    """
    if isinstance(method, str):
        check_options(1, method, threshold, relative_to, map_stride=map_stride, map_scales=map_scales, flip=flip)
    if batch_size < 1:
        raise FovealError(f"batch_size={batch_size}: use a positive number of canvases per batch")
    clf = _classifier_for(checkpoint, data, device, precision)
    k = min(TOP_K, len(clf.classes))
    size = tuple(data.images.shape[-2:])
    transform = eval_transform(clf.resolution)
    meter = LocalizationMeter()
    grid = grid_of(clf.model)
    with _map_source(clf.model, method, map_stride) as own_maps:
        maps_of = _views(own_maps, grid, map_scales, flip)
        for start in range(0, len(data), batch_size):
            stop = min(start + batch_size, len(data))
            x = on_model(normalize(transform(data.images[start:stop]), clf.mean, clf.std), clf.model)
            labels = data.labels[start:stop]
            top = class_scores(clf.model, x, flip).topk(k, dim=1).indices.cpu()
            maps = maps_of(x, torch.cat([top, labels[:, None]], 1).to(x.device)).float()
            maps = upsample_maps(maps, size, grid, x.shape[-2:]).cpu()
            boxes = maps_to_boxes(maps, threshold, relative_to)
            meter.update(top, boxes[:, :k], labels, data.boxes[start:stop], boxes[:, k])
    return meter.compute()


def _classifier_for(
    checkpoint: str | Path, data: LocalizationData, device: str | torch.device, precision: str
) -> LoadedClassifier:
    """The classifier of ``checkpoint``, once it is known to take the canvases (their classes and channels)."""
    clf = load_classifier(checkpoint, device=device, precision=precision)
    if len(data.classes) != len(clf.classes):
        raise FovealError(
            f"the canvases have {len(data.classes)} classes but the classifier {checkpoint} has {len(clf.classes)}: "
            "evaluate a classifier trained on canvases of the same source"
        )
    if data.images.shape[1] != clf.channels:
        raise FovealError(f"the canvases have {data.images.shape[1]} channel(s) but the model takes {clf.channels}")
    return clf


@contextmanager
def _map_source(model: nn.Module, method: str | MapFn, map_stride: int | None = None) -> Iterator[MapFn]:
    if isinstance(method, str):
        with class_maps(model, method, map_stride) as maps_of:
            yield maps_of
    elif map_stride is not None:
        raise FovealError("map_stride applies to the methods 'cam' and 'gradcam', not to a map function")
    else:
        yield method
