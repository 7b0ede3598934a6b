"""Synthetic microscopy-like images of touching cells with exact instance labels, for tests and the demo.

Cells are ellipses of varied size, orientation and brightness, darker towards their rim like a stained membrane. A
chosen fraction is placed against an already placed cell with a slight overlap of their ellipses; each overlapped pixel
goes to the cell whose ellipse it is deeper inside, so the two share a real border and no pixel belongs to two cells.
The other cells keep a gap of at least two pixels. The image is a smooth uneven background plus the cells, blurred by
the optics and with Gaussian noise: the separation of touching cells is visible but faint, the case the U-Net border
weights are for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from foveal.errors import FovealError

_OVERLAP = 2.0
"""Pixels by which the ellipses of a touching pair overlap before the overlap is split between them."""
_GAP = 2.0
"""Minimum free pixels between a cell and every cell it is not meant to touch."""
_ATTEMPTS = 60
"""Placement tries per cell before it is left out (only when the image is too crowded)."""


@dataclass(frozen=True)
class _Ellipse:
    cy: float
    cx: float
    a: float  # semi-axis along the angle
    b: float  # semi-axis across it
    angle: float

    def extent(self, uy: float, ux: float) -> float:
        """Distance from the centre to the rim along the unit vector (uy, ux)."""
        along = ux * np.cos(self.angle) + uy * np.sin(self.angle)
        across = -ux * np.sin(self.angle) + uy * np.cos(self.angle)
        return float(1.0 / np.hypot(along / self.a, across / self.b))

    def window(self, shape: tuple[int, int], pad: float) -> tuple[slice, slice, np.ndarray]:
        """Bounding box (padded) inside the image and the normalized elliptic distance of its pixels (1 = rim)."""
        r = max(self.a, self.b) + pad
        y0, y1 = max(int(self.cy - r), 0), min(int(self.cy + r) + 2, shape[0])
        x0, x1 = max(int(self.cx - r), 0), min(int(self.cx + r) + 2, shape[1])
        dy = np.arange(y0, y1, dtype=np.float64)[:, None] - self.cy
        dx = np.arange(x0, x1, dtype=np.float64)[None, :] - self.cx
        c, s = np.cos(self.angle), np.sin(self.angle)
        dist = np.hypot((dx * c + dy * s) / self.a, (dy * c - dx * s) / self.b)
        return slice(y0, y1), slice(x0, x1), dist


def touching_cells(
    size: tuple[int, int] = (128, 128),
    n_cells: int = 20,
    *,
    radius: tuple[float, float] = (6, 12),
    touching: float = 0.5,
    noise: float = 0.05,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic fluorescence-like image of cells, some touching, and its instance labels.

    The same arguments always give the same image. Every cell lies fully inside the image.

    Args:
        size: (H, W) of the image.
        n_cells: number of cells to place; fewer only if the image is too small to hold them all.
        radius: (min, max) of a cell's long semi-axis in pixels; the short one is 0.65–1 times it.
        touching: probability that a cell (after the first) is placed against an existing cell (where there is room).
        noise: standard deviation of the additive Gaussian noise (image range [0, 1]).
        seed: seed of the random generator.

    Returns:
        ``(image, labels)``: (H, W) float32 image in [0, 1]; (H, W) int32 instance labels, 0 = background, cells
        numbered 1..n in the order they were placed.
    """
    h, w = _check(size, n_cells, radius, touching, noise)
    rng = np.random.default_rng(seed)
    labels = np.zeros((h, w), dtype=np.int32)
    depth = np.full((h, w), np.inf)  # normalized elliptic distance of each pixel to the centre of its cell
    cells: list[_Ellipse] = []
    for _ in range(n_cells):
        a = rng.uniform(*radius)
        b, angle = a * rng.uniform(0.65, 1.0), rng.uniform(0.0, np.pi)
        touch = bool(cells) and rng.random() < touching
        for attempt in range(_ATTEMPTS):
            neighbour = -1
            if touch and attempt < _ATTEMPTS // 2:
                neighbour = int(rng.integers(len(cells)))
                other, phi = cells[neighbour], rng.uniform(0.0, 2 * np.pi)
                uy, ux = np.sin(phi), np.cos(phi)
                cell = _Ellipse(0.0, 0.0, a, b, angle)
                d = other.extent(uy, ux) + cell.extent(uy, ux) - _OVERLAP
                cell = _Ellipse(other.cy + d * uy, other.cx + d * ux, a, b, angle)
            else:
                cell = _Ellipse(rng.uniform(a + 1, h - a - 2), rng.uniform(a + 1, w - a - 2), a, b, angle)
            if _try_place(cell, len(cells) + 1, neighbour + 1, labels, depth):
                cells.append(cell)
                break
    image = _render(labels, depth, rng, noise)
    return image, labels


def write_cells_folder(
    root: str | Path,
    n: int,
    size: tuple[int, int] = (72, 80),
    *,
    n_cells: int = 8,
    radius: tuple[float, float] = (5, 9),
    name: str = "cell",
) -> Path:
    """Write ``n`` :func:`touching_cells` images (seeds 0 … n − 1) as a segmentation folder: ``images/<name>i.png``
    (8-bit) and ``masks/<name>i.tif`` (16-bit instance labels). Returns ``root``."""
    import tifffile
    from PIL import Image

    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for i in range(n):
        image, labels = touching_cells(size, n_cells, radius=radius, seed=i)
        Image.fromarray((image * 255).astype(np.uint8)).save(root / "images" / f"{name}{i}.png")
        tifffile.imwrite(root / "masks" / f"{name}{i}.tif", labels.astype(np.uint16))
    return root


def _check(
    size: tuple[int, int], n_cells: int, radius: tuple[float, float], touching: float, noise: float
) -> tuple[int, int]:
    if len(size) != 2 or min(int(size[0]), int(size[1])) < 8:
        raise FovealError(f"size must be (H, W) with both at least 8 pixels, got {size}")
    h, w = int(size[0]), int(size[1])
    if n_cells < 0:
        raise FovealError(f"n_cells must be ≥ 0, got {n_cells}")
    lo, hi = radius
    if not 1 <= lo <= hi:
        raise FovealError(f"radius must be (min, max) with 1 ≤ min ≤ max, got {radius}")
    if 2 * hi + 4 > min(h, w):
        raise FovealError(f"cells of radius up to {hi} do not fit in a {h}×{w} image; use a larger size or radius")
    if not 0.0 <= touching <= 1.0:
        raise FovealError(f"touching is a probability in [0, 1], got {touching}")
    if noise < 0:
        raise FovealError(f"noise must be ≥ 0, got {noise}")
    return h, w


def _try_place(cell: _Ellipse, label: int, neighbour: int, labels: np.ndarray, depth: np.ndarray) -> bool:
    """Add ``cell`` if it is inside the image and clear of every cell but ``neighbour`` (a label, 0 = none)."""
    h, w = labels.shape
    r = max(cell.a, cell.b)
    if not (r + 1 <= cell.cy <= h - r - 2 and r + 1 <= cell.cx <= w - r - 2):
        return False
    ys, xs, dist = cell.window(labels.shape, _GAP + 1)
    box = labels[ys, xs]
    near = box[dist <= 1.0 + _GAP / min(cell.a, cell.b)]
    if np.any((near != 0) & (near != neighbour)):
        return False
    inside = dist <= 1.0
    if neighbour and np.count_nonzero(box[inside] == neighbour) > 0.25 * np.count_nonzero(inside):
        return False
    take = inside & (dist < depth[ys, xs])
    box[take] = label
    depth[ys, xs][take] = dist[take]
    return True


def _render(labels: np.ndarray, depth: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Background + cells (brightness per cell, darker rim), blurred, plus noise; float32 in [0, 1]."""
    h, w = labels.shape
    coarse = rng.uniform(0.05, 0.25, size=(4, 4))
    background = ndi.zoom(coarse, (h / 4, w / 4), order=3, mode="nearest")[:h, :w]
    brightness = np.concatenate([[0.0], rng.uniform(0.45, 0.9, size=int(labels.max()))])
    rim = 1.0 - 0.35 * np.where(labels > 0, depth, 0.0) ** 4
    image = np.where(labels > 0, brightness[labels] * rim, background)
    image = ndi.gaussian_filter(image, sigma=1.0)
    image = image + rng.normal(0.0, noise, size=image.shape) if noise > 0 else image
    return np.clip(image, 0.0, 1.0).astype(np.float32)
