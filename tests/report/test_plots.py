"""Confusion-matrix and training-curve PNGs: valid images, atomic replacement, input checks."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

from foveal.errors import FovealError
from foveal.report import plot_confusion, plot_curves
from foveal.report.plots import _cell_labels, _series


def _png_size(path: Path) -> tuple[int, int]:
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


def test_cell_labels_hand_computed() -> None:
    matrix = np.array([[3, 1, 0], [0, 0, 0], [1, 1, 2]], dtype=float)
    assert _cell_labels(matrix, normalize=True) == [
        ["75%\n3", "25%\n1", "0"],
        ["-", "-", "-"],
        ["25%\n1", "25%\n1", "50%\n2"],
    ]
    assert _cell_labels(matrix, normalize=False)[0] == ["3", "1", "0"]


def test_confusion_png_ten_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    confusion = rng.integers(0, 20, size=(10, 10)) + np.eye(10, dtype=np.int64) * 100
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    path = plot_confusion(confusion.tolist(), classes, tmp_path / "figs" / "confusion.png")
    assert path == tmp_path / "figs" / "confusion.png"
    width, height = _png_size(path)
    side = 0.6 * 10 + 2.5  # inches, at 100 dpi
    assert (width, height) == (round((side + 1) * 100), round(side * 100))
    raw = plot_confusion(confusion, None, tmp_path / "raw.png", normalize=False, title="counts")
    _png_size(raw)


def test_confusion_with_an_empty_row_and_one_class(tmp_path: Path) -> None:
    _png_size(plot_confusion([[2, 1], [0, 0]], ["a", "b"], tmp_path / "a.png"))
    _png_size(plot_confusion([[0]], ["only"], tmp_path / "b.png"))


@pytest.mark.parametrize(
    ("confusion", "classes", "match"),
    [
        ([[1, 2, 3]], ["a"], "K×K"),
        ([[1, 0], [0, 1]], ["a"], "1 class names"),
        ([[1, -1], [0, 1]], ["a", "b"], "negative"),
        ([[1, float("nan")], [0, 1]], ["a", "b"], "non-finite"),
    ],
)
def test_confusion_bad_input(tmp_path: Path, confusion: list, classes: list[str], match: str) -> None:
    with pytest.raises(FovealError, match=match):
        plot_confusion(confusion, classes, tmp_path / "x.png")


def test_existing_png_replaced_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "confusion.png"
    path.write_bytes(b"not a png")
    plot_confusion([[5, 1], [2, 7]], ["a", "b"], path)
    first = path.read_bytes()
    assert first.startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.png"]

    def broken_savefig(self: Figure, fname: object, **kwargs: object) -> None:
        fname.write(b"\x89PNG half")  # type: ignore[attr-defined]
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        plot_confusion([[1, 1], [1, 1]], ["a", "b"], path)
    assert path.read_bytes() == first
    assert [p.name for p in tmp_path.iterdir()] == ["confusion.png"]


_RECORDS: list[dict[str, Any]] = [
    {"step": 10, "epoch": 0.5, "train_loss": 2.0, "lr": 0.1},
    {"step": 20, "epoch": 1.0, "train_loss": 1.5, "val_loss": 1.6, "val_top1": 0.4},
    {"step": 30, "epoch": 1.5, "train_loss": float("nan")},
    {"step": 40, "epoch": 2.0, "train_loss": 1.0, "val_loss": 1.2, "val_top1": 0.6},
    {"step": 35, "epoch": 1.75, "train_loss": 1.2, "val_top1": None},
]


def test_series_skips_missing_and_non_finite_and_sorts() -> None:
    assert _series(_RECORDS, "epoch", "train_loss") == ([0.5, 1.0, 1.75, 2.0], [2.0, 1.5, 1.2, 1.0])
    assert _series(_RECORDS, "epoch", "val_top1") == ([1.0, 2.0], [0.4, 0.6])
    assert _series(_RECORDS, "step", "lr") == ([10.0], [0.1])
    assert _series(_RECORDS, "epoch", "missing") == ([], [])
    assert not any(math.isnan(y) for y in _series(_RECORDS, "epoch", "train_loss")[1])


def test_curves_png(tmp_path: Path) -> None:
    path = plot_curves(_RECORDS, tmp_path / "curves.png", title="run")
    assert _png_size(path) == (1000, 400)  # two 5×4-inch panels at 100 dpi


def test_curves_single_point_missing_keys_and_custom_panels(tmp_path: Path) -> None:
    _png_size(plot_curves([{"step": 1, "epoch": 0.1, "train_loss": 3.0}], tmp_path / "one.png"))
    _png_size(plot_curves([], tmp_path / "empty.png"))
    panels = {"loss": ["train_loss"], "learning rate": ["lr"], "accuracy": "val_top1"}
    path = plot_curves(_RECORDS, tmp_path / "three.png", keys=panels, x_key="step")
    assert _png_size(path) == (1500, 400)
    with pytest.raises(FovealError, match="at least one panel"):
        plot_curves(_RECORDS, tmp_path / "none.png", keys={})
