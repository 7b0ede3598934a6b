"""Model names → builders. A checkpoint stores (name, args) so the same builder rebuilds its model."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

from torch import nn

from foveal.errors import FovealError
from foveal.models import efficientnet as _eff

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str, builder: Callable[..., nn.Module]) -> None:
    _BUILDERS[name] = builder


for _v in _eff.VARIANTS:
    register(f"efficientnet_{_v}", lambda v=_v, **kw: _eff.efficientnet_variant(v, **kw))
register("efficientnet", _eff.efficientnet)  # needs phi=...


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
    if arch == "efficientnet":
        return _eff.from_args(spec["args"])
    if arch == "unet":
        from foveal.models import unet

        return unet.from_args(spec["args"])
    if arch == "retinanet":
        from foveal.models import retinanet

        return retinanet.from_args(spec["args"])
    raise FovealError(f"checkpoint holds a model of unknown architecture '{arch}'; was it written by a newer foveal?")
