"""Heat-map overlays and the CAM paper's figures: the top-5 maps of an image (Fig. 4) and map-derived boxes (Fig. 6).

Figures are drawn with ``matplotlib.figure.Figure`` on the Agg canvas (no display, no pyplot state) and written
atomically; matplotlib is imported when something is drawn. Boxes are (x1, y1, x2, y2) with x2, y2 exclusive.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from foveal.errors import FovealError
from foveal.io import atomic_output

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_DPI = 100
_PANEL = 2.6  # inches per image panel
_TRUE_COLOUR = "#00c000"
_PRED_COLOUR = "#ff2020"


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """Blend a colour-mapped map over an image.

    Args:
        image: (H, W) grayscale or (H, W, 3) RGB; uint8, or float in [0, 1] (values outside are clipped).
        cam: (H', W') map, any range: min–max scaled to [0, 1] (a constant map is drawn as 0), resized bilinearly
            to (H, W) when its size differs.
        alpha: weight of the heat map, in [0, 1].
        cmap: a matplotlib colormap name (the paper's figures use "jet").

    Returns:
        (H, W, 3) uint8 RGB.
    """
    if not 0.0 <= alpha <= 1.0:
        raise FovealError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _as_rgb(image)
    heat = _colour(_fit(cam, rgb.shape[:2]), cmap)
    return np.round(255.0 * ((1.0 - alpha) * rgb + alpha * heat)).astype(np.uint8)


def figure_top5(
    image: np.ndarray,
    maps: np.ndarray,
    class_names: Sequence[str],
    scores: Sequence[float] | np.ndarray,
    path: str | os.PathLike[str],
    alpha: float = 0.5,
) -> Path:
    """The paper's Fig. 4 layout: the image, then one overlay per map titled "class name (score)".

    Args:
        image: (H, W) or (H, W, 3), uint8 or float in [0, 1].
        maps: (k, H', W') maps of the k classes (typically the top-5 of :class:`foveal.explain.cam.CAM`).
        class_names: k names, one per map.
        scores: k scores (soft-max probabilities).
        path: output PNG.
        alpha: heat-map weight of the overlays.

    Returns:
        ``path`` as a ``Path``.
    """
    maps = _numpy(maps)
    if maps.ndim != 3 or maps.shape[0] == 0:
        raise FovealError(f"maps must be (k, H, W) with k ≥ 1, got shape {maps.shape}")
    k = maps.shape[0]
    scores = np.asarray(_numpy(scores), dtype=np.float64).reshape(-1)
    if len(class_names) != k or len(scores) != k:
        raise FovealError(
            f"give one class name and one score per map: {k} maps, {len(class_names)} names, {len(scores)} scores"
        )
    fig = _new_figure(_PANEL * (k + 1), _PANEL + 0.4)
    axes = [fig.add_subplot(1, k + 1, i + 1) for i in range(k + 1)]
    _show(axes[0], _as_rgb(image), "image")
    for ax, cam, name, score in zip(axes[1:], maps, class_names, scores, strict=True):
        _show(ax, overlay(image, cam, alpha), f"{name} ({score:.2f})")
    fig.tight_layout()
    return _save_png(fig, path)


def figure_boxes(
    image: np.ndarray,
    cam: np.ndarray,
    true_box: np.ndarray | Sequence[float],
    pred_box: np.ndarray | Sequence[float],
    path: str | os.PathLike[str],
    alpha: float = 0.5,
    title: str | None = None,
) -> Path:
    """The paper's Fig. 6 layout: the heat map over the image, ground-truth boxes in green, the predicted box in red.

    Args:
        image: (H, W) or (H, W, 3), uint8 or float in [0, 1].
        cam: (H', W') map of the class.
        true_box: (4,) or (M, 4) ground-truth boxes.
        pred_box: (4,) or (M, 4) predicted boxes (e.g. from :func:`foveal.explain.boxes.map_to_box`).
        path: output PNG.
        alpha: heat-map weight.
        title: optional panel title.

    Returns:
        ``path`` as a ``Path``.
    """
    from matplotlib.patches import Rectangle

    fig = _new_figure(_PANEL * 1.6, _PANEL * 1.6 + (0.3 if title else 0.0))
    ax = fig.add_subplot(1, 1, 1)
    _show(ax, overlay(image, cam, alpha), title)
    for boxes, colour, label in ((true_box, _TRUE_COLOUR, "ground truth"), (pred_box, _PRED_COLOUR, "predicted")):
        for i, (x1, y1, x2, y2) in enumerate(_boxes(boxes)):
            # pixel i is drawn over [i - 0.5, i + 0.5]: the exclusive box edge x2 sits at x2 - 0.5
            corner = (x1 - 0.5, y1 - 0.5)
            ax.add_patch(
                Rectangle(corner, x2 - x1, y2 - y1, fill=False, lw=2, ec=colour, label=label if i == 0 else None)
            )
    ax.legend(loc="lower right", fontsize=7, framealpha=0.7)
    fig.tight_layout()
    return _save_png(fig, path)


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) float64 in [0, 1] from a (H, W) / (H, W, 1) / (H, W, 3) uint8 or float image."""
    image = _numpy(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise FovealError(f"an image must be (H, W) or (H, W, 3), got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    if not np.issubdtype(image.dtype, np.floating):
        raise FovealError(f"an image must be uint8 or float in [0, 1], got dtype {image.dtype}")
    return np.clip(np.nan_to_num(image.astype(np.float64)), 0.0, 1.0)


def _fit(cam: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The map min–max scaled to [0, 1] at ``shape`` (bilinear resize when needed)."""
    cam = np.nan_to_num(_numpy(cam).astype(np.float64))
    if cam.ndim != 2 or cam.size == 0:
        raise FovealError(f"a map must be (H, W), got shape {cam.shape}")
    if cam.shape != tuple(shape):
        resized = F.interpolate(
            torch.from_numpy(cam)[None, None], size=tuple(shape), mode="bilinear", align_corners=False
        )
        cam = resized[0, 0].numpy()
    low, high = cam.min(), cam.max()
    return (cam - low) / (high - low) if high > low else np.zeros_like(cam)


def _colour(values: np.ndarray, cmap: str) -> np.ndarray:
    import matplotlib

    try:
        colormap = matplotlib.colormaps[cmap]
    except KeyError:
        raise FovealError(f"unknown colormap {cmap!r}; use a matplotlib name such as 'jet' or 'viridis'") from None
    return np.asarray(colormap(values)[..., :3], dtype=np.float64)


def _boxes(boxes: np.ndarray | Sequence[float]) -> np.ndarray:
    array = np.asarray(_numpy(boxes), dtype=np.float64)
    if array.size == 0:
        return array.reshape(0, 4)
    if array.shape[-1] != 4 or array.ndim > 2:
        raise FovealError(f"boxes must be (4,) or (M, 4) x1, y1, x2, y2; got shape {array.shape}")
    return array.reshape(-1, 4)


def _show(ax: Axes, rgb: np.ndarray, title: str | None) -> None:
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Figure, path: str | os.PathLike[str]) -> Path:
    with atomic_output(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=_DPI)
    return Path(path)
