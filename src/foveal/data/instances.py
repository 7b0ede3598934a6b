"""Instance labels from a semantic (background / foreground) prediction.

U-Net separates touching cells by predicting the thin border between them as background (Ronneberger et al., MICCAI
2015, Sec. 3: the separation borders are background in the training masks and weighted up by w(x)). The instances are
therefore simply the connected components of the predicted foreground; :func:`instances_from_classes` labels them,
drops specks and, optionally, grows each instance back over the removed border.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels

from foveal.errors import FovealError


def instances_from_classes(
    classes: np.ndarray, *, foreground: int = 1, min_size: int = 0, connectivity: int = 1, expand: int = 0
) -> np.ndarray:
    """Label the connected components of the foreground of a class map.

    Defaults and why:

    - ``connectivity=1`` (4-connected): a one-pixel separation line that runs diagonally is crossed by 8-connected
      paths, so 8-connectivity would merge cells that the network did separate.
    - ``expand=0``: the result is exactly what the network marked as foreground. How wide the separation borders of
      the training masks were depends on how they were drawn, so growing instances is the caller's decision. Targets
      made by :func:`foveal.data.weightmap.class_mask` with ``border_width=w`` take ``w`` pixels from each side of a
      contact but leave the outer rims alone, while growing also widens every outer rim by ``expand`` pixels: on such
      targets the components themselves match the true instances better than grown ones (``expand=1`` lowers the
      mean AP of perfect border-separated targets of :func:`foveal.data.synthetic.touching_cells`). Growing pays off
      when the network was trained with borders that also erode the outer rims.

    Args:
        classes: (H, W) class map: bool (``True`` = foreground) or integer classes, where pixels equal to
            ``foreground`` are foreground and every other class (background, a border class) is not.
        foreground: the foreground class of an integer map.
        min_size: components with fewer pixels are removed (0 keeps all).
        connectivity: 1 (4-neighbourhood) or 2 (8-neighbourhood).
        expand: grow every instance by up to this many pixels into the background (``skimage.segmentation.
            expand_labels``): a background pixel goes to the nearest instance, so instances never overlap or merge.

    Returns:
        (H, W) int32 instance labels, 0 = background, instances numbered 1..n consecutively in raster order of their
        first pixel.
    """
    classes = np.asarray(classes)
    if classes.ndim != 2:
        raise FovealError(f"expected a 2-D (H, W) class map, got shape {classes.shape}; predict one image at a time")
    if classes.dtype == np.bool_:
        mask = classes
    elif np.issubdtype(classes.dtype, np.integer):
        mask = classes == foreground
    else:
        raise FovealError(
            f"expected a bool or integer class map, got dtype {classes.dtype}; for probabilities use "
            "instances_from_probabilities"
        )
    if connectivity not in (1, 2):
        raise FovealError(f"connectivity must be 1 (4-neighbours) or 2 (8-neighbours), got {connectivity}")
    if min_size < 0 or expand < 0:
        raise FovealError(f"min_size and expand must be ≥ 0, got min_size={min_size}, expand={expand}")
    labels, n = ndi.label(mask, structure=ndi.generate_binary_structure(2, connectivity))
    if min_size > 0 and n > 0:
        keep = np.bincount(labels.ravel(), minlength=n + 1) >= min_size
        keep[0] = False
        relabel = np.zeros(n + 1, dtype=np.int64)
        relabel[keep] = np.arange(1, int(keep.sum()) + 1)
        labels = relabel[labels]
    if expand > 0:
        labels = expand_labels(labels, distance=expand)
    return labels.astype(np.int32)


def instances_from_probabilities(
    prob_fg: np.ndarray,
    threshold: float = 0.5,
    *,
    min_size: int = 0,
    connectivity: int = 1,
    expand: int = 0,
) -> np.ndarray:
    """Instance labels of a foreground probability map: :func:`instances_from_classes` of ``prob_fg > threshold``.

    Args:
        prob_fg: (H, W) float foreground probability (e.g. ``softmax(logits)[1]``).
        threshold: pixels strictly above it are foreground.
        min_size, connectivity, expand: as for :func:`instances_from_classes`.

    Returns:
        (H, W) int32 instance labels, 0 = background, 1..n consecutive.
    """
    prob = np.asarray(prob_fg)
    if prob.ndim != 2 or not np.issubdtype(prob.dtype, np.floating):
        raise FovealError(
            f"expected a 2-D float probability map (H, W), got shape {prob.shape} and dtype {prob.dtype}; for a "
            "class map use instances_from_classes"
        )
    return instances_from_classes(prob > threshold, min_size=min_size, connectivity=connectivity, expand=expand)
