"""Explain a U-Net's segmentation: Grad-CAM of the foreground score summed over the predicted foreground.

:class:`~foveal.explain.cam.MaskTarget` (one per foreground class) at the U-Net's bottom: the deepest, most semantic
map, the one every output pixel depends on (the contracting path's last level; for a backbone U-Net, the encoder's
stride-32 map). An image up to 1024 px on a side is explained in one forward pass: it is mirror-padded
(:func:`foveal.inference.tiling.reflect_pad`) to an input whose output covers it (for valid U-Nets that adds the border
the valid convolutions consume), the way overlap-tile inference extends the image. A larger image is explained tile
by tile with the checkpoint's evaluation tile; each tile then has its own Grad-CAM weights.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foveal.engine.device import to_device
from foveal.errors import FovealError
from foveal.explain.boxes import maps_to_boxes
from foveal.explain.cam import GradCAM, MaskTarget
from foveal.io import atomic_output
from foveal.results import Explanation
from foveal.tasks.explain_common import ExplainOptions, unique_stem

_WHOLE_IMAGE_EDGE = 1024  # larger images are explained tile by tile


def bottom_layer(model: nn.Module) -> str:
    """Dotted name of a U-Net's bottom: the last block of the contracting path (``down.<depth>``) of a
    :class:`~foveal.models.unet.UNet`, the encoder's stride-32 stage of a :class:`~foveal.models.unet.BackboneUNet`."""
    from foveal.models.unet import BackboneUNet, UNet

    if isinstance(model, UNet):
        return f"down.{len(model.down) - 1}"
    if isinstance(model, BackboneUNet):
        return f"encoder.{model.encoder.feature_info[-1].name}"  # type: ignore[union-attr,index]
    raise FovealError(f"cannot find the bottom of a {type(model).__name__}: Grad-CAM needs a foveal U-Net")


def _single_tile(model: nn.Module, height: int, width: int) -> int:
    """The smallest valid output tile whose kept part (a multiple of the stride) covers the whole image."""
    stride, border = int(model.stride), int(model.border)  # type: ignore[arg-type]
    edge = math.ceil(max(height, width) / stride) * stride
    return int(model.valid_input_size(edge + 2 * border, round="up")) - 2 * border  # type: ignore[operator]


def segment_gradcam(model: nn.Module, image: Tensor, tile: int | None = None) -> tuple[Tensor, Tensor]:
    """Grad-CAM at the U-Net's bottom of the foreground score summed over the predicted foreground.

    Args:
        model: a foveal U-Net in eval mode, output (N, K, h, w) with class 0 the background.
        image: (C, H, W) float image, normalised as for the model.
        tile: output tile edge; ``None`` → one tile covering the whole image (a single forward pass).

    Returns:
        ((H, W) non-negative Grad-CAM map, (H, W) int64 predicted class map).
    """
    from foveal.inference.tiling import TileGeometry, reflect_pad
    from foveal.tasks.segment import predict_logits

    height, width = image.shape[-2:]
    stride, border = int(model.stride), int(model.border)  # type: ignore[arg-type]
    tile = _single_tile(model, height, width) if tile is None else tile
    predicted = predict_logits(model, image, tile).argmax(0)
    geom = TileGeometry(height, width, tile, border, stride)
    weight = next(model.parameters())
    padded = reflect_pad(to_device(image[None], weight.device, weight.dtype), geom.pads)
    heat = torch.zeros(height, width)
    classes = int(model.args["num_classes"])  # type: ignore[index]
    with GradCAM(model, bottom_layer(model)) as gradcam:
        for y, x in geom.origins():
            h, w = min(geom.step, height - y), min(geom.step, width - x)
            mask = torch.zeros(tile, tile, dtype=torch.long)
            mask[:h, :w] = predicted[y : y + h, x : x + w]
            mask = mask.to(weight.device)

            def target(output: Any, mask: Tensor = mask) -> Tensor:
                return torch.stack([MaskTarget(c, mask == c)(output) for c in range(1, classes)]).sum(0)

            crop = padded[:, :, y : y + geom.input_size, x : x + geom.input_size]
            cam = gradcam(crop, target, upsample=False)[0].float().cpu()
            heat[y : y + h, x : x + w] = _bottom_to_output(cam, geom.input_size, stride, border)[:h, :w]
    return heat, predicted


def _bottom_to_output(cam: Tensor, input_size: int, stride: int, border: int) -> Tensor:
    """A bottom map (hb, wb) on the pixels of the network's output: each bottom cell covers ``stride`` input pixels,
    the cells centred on the input tile (valid convolutions trim both sides alike); the output starts ``border`` px
    into the input."""
    hb, wb = cam.shape
    up = F.interpolate(cam[None, None], size=(hb * stride, wb * stride), mode="bilinear", align_corners=False)[0, 0]
    off_y, off_x = (input_size - hb * stride) // 2, (input_size - wb * stride) // 2
    grid = torch.zeros(input_size, input_size)
    grid[off_y : off_y + hb * stride, off_x : off_x + wb * stride] = up
    return grid[border : input_size - border, border : input_size - border]


def explain_segmenter(checkpoint: Path, files: list[Path], out_dir: Path, opt: ExplainOptions) -> list[Explanation]:
    from PIL import Image

    from foveal.data.seg_io import load_seg_image
    from foveal.explain.overlay import overlay
    from foveal.tasks.segment import load_segmenter, tile_input

    seg = load_segmenter(checkpoint, device=opt.device, precision=opt.precision)
    records: list[Explanation] = []
    used: set[str] = set()
    for f in files:
        image = load_seg_image(f, channels=seg.channels, normalize=seg.normalize)
        height, width = image.shape[-2:]
        tile = None if max(height, width) <= _WHOLE_IMAGE_EDGE else seg.config.data.eval_tile
        try:
            if tile is not None:
                tile_input(seg.model, tile)
            heat, predicted = segment_gradcam(seg.model, image, tile)
        except FovealError as exc:
            raise FovealError(f"cannot explain {f}: {exc}") from None
        box = maps_to_boxes(heat, opt.threshold, opt.relative_to)
        shown = image[0] if image.shape[0] != 3 else image.permute(1, 2, 0)
        path = out_dir / f"{unique_stem(f, used)}_gradcam.png"
        with atomic_output(path, "wb") as handle:
            Image.fromarray(overlay(shown.clamp(0, 1).numpy(), heat.numpy())).save(handle, format="PNG")
        records.append(
            Explanation(
                file=str(f),
                task="segment",
                method="gradcam",
                size=(int(height), int(width)),
                classes=["foreground"],
                scores=[float((predicted > 0).float().mean())],
                boxes=[box.tolist()],
                figures=[str(path)],
            )
        )
    return records
