"""PNG figures for reports: confusion matrix and training curves.

Figures are drawn with ``matplotlib.figure.Figure`` on the Agg canvas (no display, no pyplot global state) and written
atomically, so an earlier PNG is never left half-written. matplotlib is imported when a plot is drawn, not on import.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from foveal.errors import FovealError
from foveal.io import atomic_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DEFAULT_CURVE_KEYS: dict[str, tuple[str, ...]] = {
    "loss": ("train_loss", "val_loss"),
    "accuracy": ("val_top1",),
}
"""Panel title → record keys drawn in that panel (the default two panels of :func:`plot_curves`)."""

_ANNOTATE_MAX_CLASSES = 30  # above this, cells are too small for text
_DPI = 100


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


# --- confusion matrix ---


def _as_confusion(confusion: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    try:
        matrix = np.asarray(confusion, dtype=np.float64)
    except (TypeError, ValueError):
        raise FovealError("a confusion matrix must be a K×K grid of counts") from None
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise FovealError(f"a confusion matrix must be K×K with K ≥ 1, got shape {matrix.shape}")
    if not np.isfinite(matrix).all() or (matrix < 0).any():
        raise FovealError("a confusion matrix holds counts; found a negative or non-finite entry")
    return matrix


def _row_fractions(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (rows without samples stay 0)."""
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def _cell_labels(matrix: np.ndarray, normalize: bool) -> list[list[str]]:
    """Cell annotations: ``"75%\\n3"`` (row percent over count) when normalizing, else the count.

    Empty cells of a row with samples read ``"0"``; every cell of a row without samples reads ``"-"``.
    """
    fractions = _row_fractions(matrix)
    labels = []
    for i, row in enumerate(matrix):
        if row.sum() == 0:
            labels.append(["-"] * len(row))
        elif normalize:
            cells = zip(fractions[i], row, strict=True)
            labels.append([f"{100 * f:.0f}%\n{int(c)}" if c > 0 else "0" for f, c in cells])
        else:
            labels.append([str(int(c)) for c in row])
    return labels


def plot_confusion(
    confusion: Sequence[Sequence[int]] | np.ndarray,
    classes: Sequence[str] | None,
    path: str | os.PathLike[str],
    normalize: bool = True,
    title: str = "Confusion matrix",
) -> Path:
    """Draw a confusion matrix as a PNG.

    Args:
        confusion: K×K counts, rows = true class, columns = predicted class
            (``ClassificationResult.confusion``).
        classes: K class names for the axes; ``None`` → class indices.
        path: output PNG (written atomically; parent folders are created).
        normalize: colour by the fraction of each true class (row) and annotate "percent / count"; otherwise colour
            and annotate raw counts. Cells are annotated up to 30 classes.
        title: figure title.

    Returns:
        ``path`` as a ``Path``.
    """
    matrix = _as_confusion(confusion)
    k = matrix.shape[0]
    names = [str(i) for i in range(k)] if classes is None else [str(c) for c in classes]
    if len(names) != k:
        raise FovealError(f"got {len(names)} class names for a {k}×{k} confusion matrix")
    values = _row_fractions(matrix) if normalize else matrix
    vmax = 1.0 if normalize else max(float(matrix.max()), 1.0)

    side = min(max(4.0, 0.6 * k + 2.5), 30.0)
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class" if normalize else "samples")
    ax.set_xticks(range(k), labels=names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels=names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if k <= _ANNOTATE_MAX_CLASSES:
        fontsize = 9 if k <= 12 else 7
        for i, row in enumerate(_cell_labels(matrix, normalize)):
            for j, text in enumerate(row):
                dark = values[i, j] > 0.5 * vmax
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color="white" if dark else "black")
    fig.tight_layout()
    return _save_png(fig, path)


# --- training curves ---


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _series(records: Sequence[Mapping[str, Any]], x_key: str, key: str) -> tuple[list[float], list[float]]:
    """(x, y) of every record that has finite numbers under both keys, sorted by x (stable for repeated x)."""
    points = []
    for record in records:
        x, y = _number(record.get(x_key)), _number(record.get(key))
        if x is not None and y is not None:
            points.append((x, y))
    points.sort(key=lambda p: p[0])
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(
    records: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    keys: Mapping[str, Sequence[str]] | None = None,
    x_key: str = "epoch",
    title: str | None = None,
) -> Path:
    """Draw training curves from metric records (the trainer's JSONL lines) as a PNG with one panel per key group.

    Records may miss any key: each series uses only the records that hold a finite number under both ``x_key`` and
    its own key, so per-step train losses and per-epoch validation metrics share one axis. A series of one point is
    drawn as a marker; a panel without data says so.

    Args:
        records: dicts such as ``{"step": 120, "epoch": 1.5, "train_loss": 0.7, "val_top1": 0.81, "lr": 0.01}``.
        path: output PNG (written atomically; parent folders are created).
        keys: panel title → record keys drawn in it; default :data:`DEFAULT_CURVE_KEYS` (loss: train and val loss;
            accuracy: val top-1). A panel titled "accuracy" (or whose keys all end in "top1"/"top5"/"acc") whose
            values lie in [0, 1] gets a 0..1 axis.
        x_key: the horizontal axis ("epoch" or "step").
        title: optional figure title.

    Returns:
        ``path`` as a ``Path``.
    """
    panels = dict(DEFAULT_CURVE_KEYS if keys is None else keys)
    if not panels:
        raise FovealError("plot_curves needs at least one panel of keys")
    fig = _new_figure(5.0 * len(panels), 4.0)
    for index, (panel, panel_keys) in enumerate(panels.items(), start=1):
        if isinstance(panel_keys, str):
            panel_keys = (panel_keys,)
        ax = fig.add_subplot(1, len(panels), index)
        drawn: list[float] = []
        for key in panel_keys:
            xs, ys = _series(records, x_key, key)
            if not xs:
                continue
            marker = "o" if len(xs) <= 50 else None
            ax.plot(xs, ys, label=key, marker=marker, markersize=4, linewidth=1.5)
            drawn.extend(ys)
        ax.set_title(panel)
        ax.set_xlabel(x_key)
        ax.grid(True, alpha=0.3)
        if not drawn:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
            continue
        ax.legend(loc="best", fontsize=8)
        accuracy = panel.lower().startswith("acc") or all(k.endswith(("top1", "top5", "acc")) for k in panel_keys)
        if accuracy and min(drawn) >= 0.0 and max(drawn) <= 1.0:
            ax.set_ylim(0.0, 1.02)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save_png(fig, path)
