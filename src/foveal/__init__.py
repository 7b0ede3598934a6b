"""foveal: faithful U-Net, RetinaNet, CAM and EfficientNet with one CLI."""

from foveal.errors import FovealError

__version__ = "0.1.0"
__all__ = ["FovealError", "__version__"]
