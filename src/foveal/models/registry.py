"""Model names → builders, and architectures → rebuilders.

A checkpoint stores ``{"arch": ..., "args": {...}}``; :func:`rebuild` looks the architecture up in one table, so the
same builder that made a model rebuilds it. :func:`build_model` builds any registered model by name.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from torch import nn

from foveal.errors import FovealError
from foveal.models import efficientnet as _eff
from foveal.models import unet as _unet

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}

# checkpoint "arch" → the function that rebuilds the model from its stored args
ARCHITECTURES: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "efficientnet": _eff.from_args,
    "unet": _unet.from_args,
    "retinanet": lambda args: _retinanet().from_args(args),
}


def register(name: str, builder: Callable[..., nn.Module]) -> None:
    _BUILDERS[name] = builder


for _v in _eff.VARIANTS:
    register(f"efficientnet_{_v}", lambda v=_v, **kw: _eff.efficientnet_variant(v, **kw))
register("efficientnet", _eff.efficientnet)  # needs phi=...
register("unet", _unet.UNet)
register("backbone_unet", _unet.BackboneUNet)
register("retinanet", lambda **kw: _retinanet().RetinaNet(**kw))


def _retinanet() -> Any:
    """The RetinaNet module, imported when a detector is built or rebuilt: it imports torchvision's detection ops,
    which import torch._dynamo (about a second) that a classifier or U-Net does not need."""
    from foveal.models import retinanet

    return retinanet


def model_names() -> list[str]:
    return sorted(_BUILDERS)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name with keyword arguments."""
    if name not in _BUILDERS:
        close = difflib.get_close_matches(name, model_names(), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"choose one of {', '.join(model_names())}"
        raise FovealError(f"unknown model '{name}': {hint}")
    try:
        return _BUILDERS[name](**kwargs)
    except TypeError as exc:
        raise FovealError(f"bad arguments for model '{name}': {exc}") from None


def rebuild(spec: dict[str, Any]) -> nn.Module:
    """Rebuild a model from a checkpoint's ``{"arch": ..., "args": {...}}`` record."""
    arch = spec.get("arch")
    if arch not in ARCHITECTURES:
        raise FovealError(
            f"checkpoint holds a model of unknown architecture '{arch}'; was it written by a newer foveal?"
        )
    return ARCHITECTURES[arch](spec["args"])
