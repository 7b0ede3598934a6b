"""foveal: faithful U-Net, RetinaNet, CAM and EfficientNet with one API and one CLI.

``foveal.load(path)`` gives a checkpoint's model (:class:`~foveal.api.Classifier`, :class:`~foveal.api.Segmenter`
or :class:`~foveal.api.Detector`) with ``predict``, ``evaluate``, ``explain`` and ``export``; ``foveal.train(task,
config, **overrides)`` trains one. They and the result types are imported on first use, so ``import foveal`` (and
``foveal --help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from foveal.errors import FovealError
from foveal.version import __version__

if TYPE_CHECKING:
    from foveal.api import Classifier, Detector, Model, Segmenter, load, train
    from foveal.results import Classification, ClassScore, Detections, Explanation, Segmentation

_LAZY = {
    **dict.fromkeys(("Classifier", "Detector", "Model", "Segmenter", "load", "train"), "foveal.api"),
    **dict.fromkeys(("Classification", "ClassScore", "Detections", "Explanation", "Segmentation"), "foveal.results"),
}
__all__ = [
    "ClassScore",
    "Classification",
    "Classifier",
    "Detections",
    "Detector",
    "Explanation",
    "FovealError",
    "Model",
    "Segmentation",
    "Segmenter",
    "__version__",
    "load",
    "train",
]


def __getattr__(name: str) -> Any:
    """The API's names, imported from :mod:`foveal.api` / :mod:`foveal.results` when first asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'foveal' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
