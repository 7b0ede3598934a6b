"""From a class activation map to a bounding box: the weakly supervised localization protocol of CAM.

Reference: Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016, §3: keep the regions whose
value is above 20 % of the map's maximum and take the bounding box of the largest connected component.

Boxes are (x1, y1, x2, y2) in pixel coordinates of the map, with x2 and y2 *exclusive*: a component covering columns
3..7 and rows 10..12 gives (3, 10, 8, 13). Pixel i spans [i, i + 1), so the box is the component's extent in continuous
coordinates, its area (x2 − x1)(y2 − y1) counts pixels, and it is the convention of ``torchvision.ops.box_iou`` and of
COCO's [x, y, w, h].
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from foveal.errors import FovealError

PAPER_THRESHOLD = 0.2
"""The paper's threshold: 20 % of the map's maximum."""


def map_to_box(
    cam: Tensor, threshold: float = PAPER_THRESHOLD, relative_to: str = "max", connectivity: int = 1
) -> Tensor:
    """The box of the largest connected region of a map above a threshold.

    Args:
        cam: (H, W) map (raw CAM values or any score map).
        threshold: fraction in [0, 1].
        relative_to: ``"max"`` (the paper): keep pixels with value ≥ threshold · max; ``"range"``: keep pixels with
            value − min ≥ threshold · (max − min), i.e. the threshold of a min–max normalised map (what libraries that
            normalise first compute; it differs from "max" when the map has an offset).
        connectivity: 1 → 4-neighbour components, 2 → 8-neighbour.

    Returns:
        (4,) float32 box (x1, y1, x2, y2), x2 and y2 exclusive. An empty map — all values equal, or max ≤ 0 for
        ``"max"``, or no finite value — gives the whole map (0, 0, W, H): with no evidence of where the object is,
        the image is the only honest box.
    """
    if cam.ndim != 2:
        raise FovealError(f"a map must be (H, W), got shape {tuple(cam.shape)}; use maps_to_boxes for a batch")
    return maps_to_boxes(cam, threshold, relative_to, connectivity)


def maps_to_boxes(
    maps: Tensor, threshold: float = PAPER_THRESHOLD, relative_to: str = "max", connectivity: int = 1
) -> Tensor:
    """:func:`map_to_box` for every map of a batch, with one connected-component labelling for all of them.

    Args:
        maps: (..., H, W), e.g. (N, k, H, W) CAMs of the top-k classes.
        threshold, relative_to, connectivity: as in :func:`map_to_box`.

    Returns:
        (..., 4) float32 boxes (x1, y1, x2, y2) on the device of ``maps``.
    """
    if maps.ndim < 2 or maps.shape[-1] == 0 or maps.shape[-2] == 0:
        raise FovealError(f"maps must be (..., H, W) with H, W ≥ 1, got shape {tuple(maps.shape)}")
    if not 0.0 <= threshold <= 1.0:
        raise FovealError(f"threshold must be a fraction in [0, 1] (the paper uses 0.2), got {threshold}")
    if connectivity not in (1, 2):
        raise FovealError(f"connectivity must be 1 (4-neighbour) or 2 (8-neighbour), got {connectivity}")
    h, w = maps.shape[-2:]
    flat = maps.detach().float().reshape(-1, h, w).cpu()
    keep = _foreground(flat, threshold, relative_to).numpy()

    boxes = np.tile(np.array([0, 0, w, h], dtype=np.float32), (flat.shape[0], 1))
    # one labelling of the stack; the structure has no links across the stacking axis, so no component spans two maps
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, connectivity)
    labels, count = ndimage.label(keep, structure)
    if count:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
        extents = np.array([[s.start for s in sl] + [s.stop for s in sl] for sl in ndimage.find_objects(labels)])
        owner = extents[:, 0]  # the map each component lies in
        # largest component per map (ties: the first in raster order): sort by map, then size descending
        order = np.lexsort((np.arange(count), -sizes, owner))
        first = order[np.r_[True, owner[order][1:] != owner[order][:-1]]]
        _, y1, x1, _, y2, x2 = extents[first].T
        boxes[owner[first]] = np.stack([x1, y1, x2, y2], axis=1)
    return torch.from_numpy(boxes).reshape(*maps.shape[:-2], 4).to(maps.device)


def _foreground(maps: Tensor, threshold: float, relative_to: str) -> Tensor:
    """(B, H, W) bool: pixels at or above the threshold; all False for an empty map."""
    finite = torch.where(maps.isfinite(), maps, torch.nan)
    high = finite.flatten(1).nan_to_num(nan=-torch.inf).amax(1)[:, None, None]
    if relative_to == "max":
        return (finite >= threshold * high) & (high > 0)
    if relative_to == "range":
        low = finite.flatten(1).nan_to_num(nan=torch.inf).amin(1)[:, None, None]
        return (finite - low >= threshold * (high - low)) & (high > low)
    raise FovealError(f"relative_to must be 'max' (the paper) or 'range', got {relative_to!r}")
