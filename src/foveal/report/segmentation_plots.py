"""PNG pictures for segmentation: the U-Net weight-map figure (the paper's Fig. 3) and instance overlays.

- :func:`plot_weight_map_figure` draws four panels with matplotlib (Agg canvas, no pyplot state): (a) the raw image,
  (b) the ground-truth instances in distinct colours, (c) the class mask with the separation borders between touching
  instances, (d) the pixel-wise weight map w(x) with a colour bar — as in Fig. 3 of Ronneberger et al., "U-Net",
  MICCAI 2015.
- :func:`plot_segmentation_overlay` writes the image itself (one PNG pixel per image pixel, or ``scale`` × ``scale``,
  no axes or margins) with Pillow: predicted instances as translucent coloured regions with opaque outlines, and
  ground-truth outlines in yellow.

Arrays may be numpy arrays or (CPU or GPU) torch tensors. Every instance id gets the same colour in every picture
(its hue is the id times the golden ratio, modulo 1). Both functions write atomically and return the path; bad shapes
or options raise :class:`~foveal.errors.FovealError`.
"""

from __future__ import annotations

import colorsys
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from foveal.data.weightmap import separation_borders
from foveal.errors import FovealError
from foveal.io import atomic_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from torch import Tensor

_DPI = 100
_GOLDEN = 0.618033988749895
_BORDER_RGB = (1.0, 0.25, 0.1)  # separation borders in panel (c)
_TRUTH_RGB = (1.0, 1.0, 0.0)  # ground-truth outlines in the overlay


def _as_numpy(value: Any, name: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError):
        raise FovealError(f"{name} must be an array") from None


def _display_image(image: Any) -> np.ndarray:
    """(H, W) or (H, W, C) image → (H, W, 3) float64 in [0, 1] (uint8 as is / 255, others stretched 0.5–99.5 %)."""
    array = _as_numpy(image, "image")
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        array = array[..., 0] if array.shape[2] == 1 else array[..., :3]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)) or 0 in array.shape:
        raise FovealError(f"image must be (H, W) or (H, W, C) with C in 1, 3, 4, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise FovealError(f"image must hold numbers, got dtype {array.dtype}")
    values = array.astype(np.float64)
    if array.dtype == np.uint8:
        values = values / 255.0
    else:
        finite = values[np.isfinite(values)]
        low, high = np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 1.0)
        values = np.clip((np.nan_to_num(values, nan=low) - low) / (high - low), 0.0, 1.0) if high > low else values * 0
    if values.ndim == 2:
        values = np.repeat(values[..., None], 3, axis=2)
    return values


def _labels(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    array = _as_numpy(value, name)
    if array.shape != shape:
        raise FovealError(f"{name} must be (H, W) = {shape} like the image, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise FovealError(f"{name} must hold integer instance ids (0 = background), got dtype {array.dtype}")
    return array.astype(np.int64)


def label_colours(labels: np.ndarray) -> np.ndarray:
    """A colour per instance id: background (0) black, id k the hue ``frac(k · 0.618…)`` at high saturation.

    Args:
        labels: (H, W) integer ids.

    Returns:
        (H, W, 3) float64 RGB in [0, 1].
    """
    ids, inverse = np.unique(labels, return_inverse=True)
    palette = np.array(
        [(0.0, 0.0, 0.0) if k == 0 else colorsys.hsv_to_rgb((int(k) * _GOLDEN) % 1.0, 0.8, 1.0) for k in ids]
    )
    return palette[inverse.reshape(labels.shape)]


def _outlines(labels: np.ndarray) -> np.ndarray:
    """Instance pixels with a 4-neighbour of another id (background included): the inner outline of each instance."""
    cross = ndimage.generate_binary_structure(2, 1)
    larger = ndimage.maximum_filter(labels, footprint=cross, mode="nearest") != labels
    smaller = ndimage.minimum_filter(labels, footprint=cross, mode="nearest") != labels
    return (labels > 0) & (larger | smaller)


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def plot_weight_map_figure(
    image: np.ndarray | Tensor,
    instances: np.ndarray | Tensor,
    weight: np.ndarray | Tensor,
    path: str | os.PathLike[str],
    *,
    borders: np.ndarray | Tensor | None = None,
    title: str | None = None,
) -> Path:
    """The paper's Fig. 3 for one sample: raw image, instances, class mask with separation borders, weight map.

    Panels: (a) the image (grey or RGB, contrast-stretched); (b) each instance in its own colour on black; (c) the
    class mask — foreground white, background black, separation-border pixels (background in the ground truth) in
    orange-red so they can be seen; (d) the weight map w(x) in the ``jet`` colour map with a colour bar.

    Args:
        image: (H, W) or (H, W, C) raw image, C in 1, 3, 4 (any numeric dtype).
        instances: (H, W) integer instance ids, 0 = background.
        weight: (H, W) weight map (:func:`foveal.data.weightmap.weight_map`).
        path: output PNG (written atomically; parent folders are created).
        borders: (H, W) bool separation borders; None → :func:`foveal.data.weightmap.separation_borders` of
            ``instances``.
        title: optional figure title.

    Returns:
        ``path`` as a ``Path``.
    """
    picture = _display_image(image)
    shape = picture.shape[:2]
    labels = _labels(instances, "instances", shape)
    weights = _as_numpy(weight, "weight")
    if weights.shape != shape or not np.issubdtype(weights.dtype, np.number):
        raise FovealError(f"weight must be an (H, W) = {shape} array of numbers like the image, got {weights.shape}")
    panel_w = 4.5
    panel_h = min(max(panel_w * shape[0] / shape[1], 2.0), 9.0)
    fig = _new_figure(2 * panel_w + 1.5, 2 * panel_h + (1.4 if title else 1.0))
    panels = (
        ("(a) image", picture),
        ("(b) ground-truth instances", label_colours(labels)),
        ("(c) class mask, separation borders", _class_mask(labels, borders)),
    )
    for index, (name, rgb) in enumerate(panels, start=1):
        ax = fig.add_subplot(2, 2, index)
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    ax = fig.add_subplot(2, 2, 4)
    shown = ax.imshow(weights.astype(np.float64), cmap="jet", interpolation="nearest")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label="w(x)")
    ax.set_title("(d) weight map", fontsize=10)
    ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_output(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=_DPI)
    return Path(path)


def _class_mask(labels: np.ndarray, borders: np.ndarray | Tensor | None) -> np.ndarray:
    """(H, W, 3) RGB of Fig. 3c: foreground white, background black, separation borders (given, else those of the
    (H, W) instance ``labels``) in orange-red."""
    shape = labels.shape
    border = separation_borders(labels) if borders is None else _as_numpy(borders, "borders")
    if border.shape != shape:
        raise FovealError(f"borders must be (H, W) = {shape} like the image, got shape {border.shape}")
    border = border.astype(bool)
    mask_rgb = np.zeros((*shape, 3))
    mask_rgb[(labels > 0) & ~border] = 1.0
    mask_rgb[border] = _BORDER_RGB
    return mask_rgb


def plot_segmentation_overlay(
    image: np.ndarray | Tensor,
    labels_pred: np.ndarray | Tensor,
    path: str | os.PathLike[str],
    *,
    labels_true: np.ndarray | Tensor | None = None,
    alpha: float = 0.4,
    scale: int = 1,
) -> Path:
    """The image with predicted instances as translucent coloured regions, their outlines, and ground-truth outlines.

    Written with Pillow at the image's own resolution (times ``scale``), without axes or margins: every PNG pixel is
    an image pixel. Inside a predicted instance the colour is ``(1 − alpha) · image + alpha · colour``; its inner
    outline is drawn opaque in its colour; ground-truth outlines (drawn last) are yellow.

    Args:
        image: (H, W) or (H, W, C) raw image, C in 1, 3, 4.
        labels_pred: (H, W) predicted instance ids, 0 = background.
        path: output PNG (written atomically; parent folders are created).
        labels_true: optional (H, W) ground-truth instance ids.
        alpha: opacity of the instance fill in [0, 1].
        scale: integer magnification (nearest neighbour) ≥ 1, to make outlines of small images visible.

    Returns:
        ``path`` as a ``Path``.
    """
    from PIL import Image

    if not 0.0 <= alpha <= 1.0:
        raise FovealError(f"alpha must lie in [0, 1], got {alpha!r}")
    if isinstance(scale, bool) or not isinstance(scale, int) or not 1 <= scale <= 64:
        raise FovealError(f"scale must be an integer in 1..64, got {scale!r}")
    canvas = _display_image(image)
    shape = canvas.shape[:2]
    predicted = _labels(labels_pred, "labels_pred", shape)
    truth = None if labels_true is None else _labels(labels_true, "labels_true", shape)

    colours = label_colours(predicted)
    inside = predicted > 0
    canvas[inside] = (1.0 - alpha) * canvas[inside] + alpha * colours[inside]
    edge = _outlines(predicted)
    canvas[edge] = colours[edge]
    if truth is not None:
        canvas[_outlines(truth)] = _TRUTH_RGB
    pixels = np.round(canvas * 255.0).astype(np.uint8)
    if scale > 1:
        pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    with atomic_output(path, "wb") as handle:
        Image.fromarray(pixels).save(handle, format="PNG")
    return Path(path)
