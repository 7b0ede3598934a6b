"""Pretrained weights named by hub: ``torchvision:<WeightsEnum>`` and ``timm:<name>``.

``torchvision:ResNet50_Weights.IMAGENET1K_V2`` goes through torchvision's own weights enum, whose file is cached as
``$TORCH_HOME/hub/checkpoints/<file name of its URL>`` (downloaded there on first use). ``timm:efficientnet_b0.ra_in1k``
goes through timm's pretrained config and huggingface_hub, cached under ``$HF_HUB_CACHE`` (default
``$HF_HOME/hub``); ``HF_HUB_OFFLINE=1`` never downloads. Either way the file is read without executing code
(``torch.load(..., weights_only=True)`` or safetensors) and comes back as a plain state dict in the source library's
key names, for the converters of :mod:`foveal.models.convert` and the tasks to map onto foveal's models.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from torch import Tensor

from foveal.errors import FovealError

PREFIXES = ("torchvision:", "timm:")
_EXAMPLES = "e.g. torchvision:ResNet50_Weights.IMAGENET1K_V2 or timm:efficientnet_b0.ra_in1k"


@dataclass(frozen=True)
class HubWeights:
    """A state dict from a hub and what to record about it.

    Attributes:
        spec: the spec as given, e.g. "timm:efficientnet_b0.ra_in1k".
        state: parameter and buffer names (the source library's) → tensors, on the CPU.
        file: the cached file the weights were read from.
        preprocessing: what the weights were trained with, where the hub says: ``mean`` / ``std`` (per RGB channel,
            images in [0, 1]) and ``resolution`` (the evaluation crop, pixels).
    """

    spec: str
    state: dict[str, Tensor] = field(repr=False)
    file: Path
    preprocessing: dict[str, Any]


def is_hub_spec(spec: object) -> bool:
    """Whether ``spec`` names hub weights (``torchvision:…`` or ``timm:…``) rather than a file or checkpoint."""
    return isinstance(spec, str) and spec.startswith(PREFIXES)


def resolve_weights(spec: str) -> HubWeights:
    """The weights ``spec`` names, from the local cache or (unless offline) downloaded into it.

    Args:
        spec: ``torchvision:<WeightsEnum>.<NAME>`` (e.g. ``torchvision:ResNet50_Weights.IMAGENET1K_V2``) or
            ``timm:<model>.<tag>`` (e.g. ``timm:efficientnet_b0.ra_in1k``).

    Returns:
        The state dict, the cached file and the weights' preprocessing.

    Raises:
        FovealError: an unknown name, or weights neither cached nor downloadable (the message names the path where the
            file is expected and the environment variable that moves the cache).
    """
    kind, _, name = spec.partition(":")
    name = name.strip()
    if not is_hub_spec(spec) or not name:
        raise FovealError(f"weights spec '{spec}' names no hub weights: use {_EXAMPLES}")
    if kind == "torchvision":
        return _torchvision(spec, name)
    return _timm(spec, name)


def weights_record(spec: str | None) -> dict[str, Any]:
    """``{"weights": {spec, file, preprocessing}}`` for hub weights (what a run's record adds), else ``{}``; the
    weights are not read again."""
    if spec is None or not is_hub_spec(spec):
        return {}
    kind, _, name = spec.partition(":")
    name = name.strip()
    if kind == "torchvision":
        weights = _torchvision_enum(name)
        file, preprocessing = _torch_cache_file(weights.url), _tv_preprocessing(weights)
    else:
        from huggingface_hub import try_to_load_from_cache

        cfg = _timm_cfg(name)
        repo, filename = _timm_file(cfg, name)
        found = try_to_load_from_cache(repo, filename, cache_dir=_hf_cache())
        file = Path(found) if isinstance(found, str) else _hf_expected(repo, filename)
        preprocessing = _timm_preprocessing(cfg)
    return {"weights": {"spec": spec, "file": str(file), "preprocessing": preprocessing}}


def efficientnet_kwargs(spec: str) -> dict[str, Any]:
    """:func:`~foveal.models.convert.import_efficientnet` arguments that a hub name implies: timm's ``tf_`` ports of
    the reference weights use TensorFlow "same" padding and BatchNorm epsilon 1e-3."""
    return {"padding": "same", "bn_eps": 1e-3} if "tf_efficientnet" in spec.lower() else {}


def backbone_kwargs(spec: str | None, backbone: str) -> dict[str, Any]:
    """Backbone builder arguments that hub weights ``spec`` imply for ``backbone``: an EfficientNet is built with the
    BatchNorm epsilon (and padding) its weights were trained with, timm and torchvision 1e-5, ``tf_`` ports 1e-3 and
    "same"; a ResNet needs none (torchvision's 1e-5 either way). Derived from the spec alone, so a resumed run or a
    reloaded checkpoint builds the same network."""
    if spec is None or not is_hub_spec(spec) or not backbone.startswith("efficientnet"):
        return {}
    return {"bn_eps": 1e-5, **efficientnet_kwargs(spec)}


# -- torchvision -----------------------------------------------------------------------------------------------------
def _torchvision_enum(name: str) -> Any:
    import torchvision

    try:
        return torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise FovealError(
            f"torchvision has no weights '{name}': write the enum and its member as torchvision lists them, e.g. "
            "torchvision:ResNet50_Weights.IMAGENET1K_V2 (see torchvision.models.list_models and get_model_weights)"
        ) from None


def _torch_cache_file(url: str) -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _torchvision(spec: str, name: str) -> HubWeights:
    from foveal.models.convert import load_state_file

    weights = _torchvision_enum(name)
    file = _torch_cache_file(weights.url)
    if not file.is_file():
        try:  # torchvision's own download into $TORCH_HOME/hub/checkpoints; the file is read below, code-free
            with contextlib.redirect_stderr(io.StringIO()):  # torch.hub's "Downloading: …" line
                weights.get_state_dict(progress=False, check_hash=False, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure to fetch (no network, HTTP, disk) means the same fix
            raise FovealError(
                f"{spec} is not cached and cannot be downloaded ({type(exc).__name__}): put {os.path.basename(file)} "
                f"from {weights.url} at {file}, or set TORCH_HOME to the folder whose hub/checkpoints holds it"
            ) from None
    return HubWeights(spec, load_state_file(file), file, _tv_preprocessing(weights))


def _tv_preprocessing(weights: Any) -> dict[str, Any]:
    transform = weights.transforms()
    out: dict[str, Any] = {}
    for key, attr in (("mean", "mean"), ("std", "std"), ("resolution", "crop_size"), ("resize", "resize_size")):
        value = getattr(transform, attr, None)
        if value is not None:
            value = list(value)
            out[key] = value[0] if key in ("resolution", "resize") and len(value) == 1 else value
    return out


# -- timm / Hugging Face ---------------------------------------------------------------------------------------------
def _timm_cfg(name: str) -> Any:
    import timm.models

    try:
        return timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError, KeyError):
        return None


def _hf_cache() -> Path:
    """The Hugging Face hub cache, read from the environment now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _hf_expected(repo: str, filename: str = "model.safetensors") -> Path:
    return _hf_cache() / f"models--{repo.replace('/', '--')}" / "snapshots" / "<revision>" / filename


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _timm_file(cfg: Any, name: str) -> tuple[str, str]:
    """(Hugging Face repository, file name) of timm weights; a name timm does not list is looked up as timm/<name>."""
    repo = cfg.hf_hub_id if cfg is not None and cfg.hf_hub_id else f"timm/{name}"
    return repo, getattr(cfg, "hf_hub_filename", None) or "model.safetensors"


def _timm(spec: str, name: str) -> HubWeights:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    from foveal.models.convert import load_state_file

    cfg = _timm_cfg(name)
    if cfg is not None and not cfg.hf_hub_id:
        raise FovealError(
            f"{spec}: timm publishes these weights outside the Hugging Face hub ({cfg.url or 'no address'}); foveal "
            "reads timm weights from the hub: download the file and pass its path as model.weights"
        )
    repo, filename = _timm_file(cfg, name)
    fix = (
        f"put the file at {_hf_expected(repo, filename)} (refs/main naming the revision) or set HF_HOME / HF_HUB_CACHE "
        "to the cache that holds it"
    )
    try:
        path = hf_hub_download(repo, filename, cache_dir=_hf_cache(), local_files_only=_offline())
    except RepositoryNotFoundError:
        raise FovealError(
            f"{spec}: the Hugging Face hub has no repository {repo}; use a timm name with pretrained weights, "
            "e.g. timm:efficientnet_b0.ra_in1k (see timm.list_pretrained())"
        ) from None
    except (EntryNotFoundError, OSError, ValueError) as exc:  # not cached offline, or no network
        if _offline():
            raise FovealError(f"{spec} is not cached and HF_HUB_OFFLINE=1 forbids downloading it: {fix}") from None
        raise FovealError(f"{spec} is not cached and cannot be downloaded ({type(exc).__name__}): {fix}") from None
    return HubWeights(spec, load_state_file(path), Path(path), _timm_preprocessing(cfg))


def _timm_preprocessing(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    out: dict[str, Any] = {}
    if cfg.mean is not None:
        out["mean"] = list(cfg.mean)
    if cfg.std is not None:
        out["std"] = list(cfg.std)
    size = cfg.input_size
    if size is not None:
        out["resolution"] = int(size[-1])
    return out
