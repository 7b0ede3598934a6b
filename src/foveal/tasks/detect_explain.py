"""Explain a RetinaNet's detections: Grad-CAM of each detection's class score at the pyramid level it came from.

A detection is kept for the sigmoid of one logit, ``cls_logits[anchor, class]``; both subnets read the anchor's
pyramid level (P3 … P7) and nothing else, so that level's map is the layer whose evidence the score weighs, and its
resolution suits the object's size (a small object's anchor sits on the fine P3, a large one's on the coarse P7).
Grad-CAM (Selvaraju et al., ICCV 2017) of that logit (:class:`~foveal.explain.cam.DetectionTarget`) at that level
(:meth:`~foveal.models.retinanet.RetinaNet.pyramid_layer`) gives the map; the detections of one level are explained
in one forward and backward pass over copies of the image (the detector is in eval mode, so copies do not interact).

The image goes through the checkpoint's evaluation transform (resize, normalise, zero-pad to a multiple of 32) and
the detector's post-processing, as ``foveal predict`` does; maps are cut to the resized image and resized onto the
original pixels, so maps, map boxes and detection boxes share the image's own coordinates.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from foveal.engine.device import to_device, uses_channels_last
from foveal.errors import FovealError
from foveal.explain.boxes import maps_to_boxes
from foveal.explain.cam import DetectionTarget, GradCAM
from foveal.models.retinanet import RetinaNet, RetinaOutput, postprocess
from foveal.preprocess import boxes_to_original
from foveal.results import Explanation
from foveal.tasks.explain_common import ExplainOptions, load_with_channels, unique_stem


def detection_gradcam(model: RetinaNet, x: Tensor, output: RetinaOutput, anchors: Tensor, labels: Tensor) -> Tensor:
    """Grad-CAM maps of detections of one image.

    Args:
        model: the RetinaNet in eval mode.
        x: (1, C, H, W) the input it saw (resized, normalised, padded).
        output: its output for ``x`` (for the pyramid's sizes).
        anchors, labels: (D,) anchor index and class of each detection (``postprocess``'s ``anchors`` and
            ``labels``).

    Returns:
        (D, H, W) non-negative maps on the input's pixels, in the order of the detections.
    """
    maps = x.new_zeros(len(anchors), *x.shape[-2:], dtype=torch.float32)
    levels = model.anchor_level(anchors, output.level_sizes)
    for level in levels.unique().tolist():
        rows = (levels == level).nonzero().squeeze(1)
        copies = x.expand(len(rows), *x.shape[1:])
        with GradCAM(model, model.pyramid_layer(level)) as gradcam:
            maps[rows] = gradcam(copies, DetectionTarget(anchors[rows], labels[rows])).float()
    return maps


def explain_detector(checkpoint: Path, files: list[Path], out_dir: Path, opt: ExplainOptions) -> list[Explanation]:
    """``foveal explain`` for a detection checkpoint: the ``top_k`` best detections of each image (those above the
    checkpoint's score threshold), each with its Grad-CAM map and the box of the map's largest region above
    ``threshold``. Figures: the top-k panel (``<stem>_top<k>.png``, titled "class (score)") and the best detection's
    map with its detection box in green and the map's box in red (``<stem>_gradcam.png``). An image without
    detections (above ``opt.score_thresh``, default the checkpoint's) gets a record with empty lists and no
    figure."""
    from foveal.data.box_transforms import collate_detection
    from foveal.tasks.detect import fp32_output, load_detector

    # Grad-CAM needs gradients: direct convolutions (no Winograd), BatchNorm folded only in bf16 / fp16
    det = load_detector(checkpoint, fast=False, device=opt.device, precision=opt.precision)
    model = cast(RetinaNet, det.model)
    transform, inference = det.transform(), det.config.inference
    score_thresh = inference.score_thresh if opt.score_thresh is None else opt.score_thresh
    records: list[Explanation] = []
    used: set[str] = set()
    for f in files:
        image = load_with_channels(f, det.channels, "detector")
        height, width = image.shape[-2:]
        batch = collate_detection([transform(image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))])
        weight = next(model.parameters())
        x = to_device(batch.images, weight.device, weight.dtype, uses_channels_last(model))
        with torch.no_grad():
            output = fp32_output(model, model(x))
            (found,) = postprocess(output, batch.image_sizes, score_thresh, inference.topk, inference.nms, opt.top_k)
            found = {k: v.cpu() for k, v in found.items()}
        stem = unique_stem(f, used)
        if len(found["scores"]) == 0:
            records.append(Explanation(str(f), "detect", "gradcam", (int(height), int(width)), [], [], [], []))
            continue
        try:
            maps = detection_gradcam(model, x, output, found["anchors"], found["labels"]).cpu()
        except FovealError as exc:
            raise FovealError(f"cannot explain {f}: {exc}") from None
        h, w = batch.image_sizes[0]
        maps = F.interpolate(maps[:, None, :h, :w], size=(height, width), mode="bilinear", align_corners=False)[:, 0]
        boxes = maps_to_boxes(maps, opt.threshold, opt.relative_to)
        detected = boxes_to_original(found["boxes"].float(), batch.scales[0]).clamp(min=0)
        detected = torch.minimum(detected, detected.new_tensor([width, height, width, height]))
        names = [det.classes[int(k)] for k in found["labels"]]
        scores = found["scores"].float()
        figures = _figures(image, maps, names, scores, detected[0], boxes[0], out_dir / stem)
        records.append(
            Explanation(
                file=str(f),
                task="detect",
                method="gradcam",
                size=(int(height), int(width)),
                classes=names,
                scores=[float(s) for s in scores],
                boxes=boxes.tolist(),
                figures=figures,
                detections=detected.tolist(),
            )
        )
    return records


def _figures(
    image: Tensor, maps: Tensor, names: list[str], scores: Tensor, detected: Tensor, box: Tensor, prefix: Path
) -> list[str]:
    from foveal.explain.overlay import figure_boxes, figure_top5

    shown = image.permute(1, 2, 0).numpy()
    labels = [f"{n} #{i + 1}" for i, n in enumerate(names)]
    top = figure_top5(shown, maps.numpy(), labels, scores.tolist(), f"{prefix}_top{len(names)}.png")
    title = f"{names[0]} ({float(scores[0]):.2f}), Grad-CAM: detection green, map box red"
    boxed = figure_boxes(
        shown, maps[0].numpy(), np.asarray(detected)[None], box.numpy(), f"{prefix}_gradcam.png", title=title
    )
    return [str(top), str(boxed)]
