"""Import EfficientNet weights saved by timm, torchvision or foveal itself into foveal's :class:`EfficientNet`.

Files are read without executing code: ``.safetensors`` through safetensors, PyTorch files (``.pth``, ``.pt``,
``.bin``, ``.ckpt``) only through ``torch.load(..., weights_only=True)``. The source layout is recognised from the key
names, the architecture (width, depth, classes, input channels) from the tensor shapes, and every tensor is checked
against the model it goes into, so a wrong variant or a foreign network fails with a message naming the mismatch.

BatchNorm epsilon is part of the maths: timm and torchvision train with 1e-5, the paper's reference code (and timm's
``tf_`` ports of it) with 1e-3 and TensorFlow "same" padding. The importer builds the model to match its source.
"""

from __future__ import annotations

import math
import pickle
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from foveal.errors import FovealError
from foveal.models.efficientnet import (
    B0_HEAD,
    B0_STAGES,
    B0_STEM,
    VARIANTS,
    EfficientNet,
    from_args,
    round_channels,
    round_repeats,
)

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
LAYOUTS = ("timm", "torchvision", "foveal")

_RESAVE_HINT = (
    "re-save it as a plain state_dict (torch.save(model.state_dict(), path)) or as safetensors "
    "(safetensors.torch.save_file(model.state_dict(), path)) where you trust the code that can read it"
)


def load_state_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a PyTorch file, never executing code stored in the file.

    A PyTorch file may hold the state dict itself or a checkpoint dict with it under ``"state_dict"`` or ``"model"``;
    a ``module.`` (DistributedDataParallel) or ``_orig_mod.`` (torch.compile) prefix on every key is removed.

    Args:
        path: the file.

    Returns:
        Parameter and buffer names → tensors, on the CPU.
    """
    return _unwrap(_read(Path(path)), Path(path))


def detect_layout(state: dict[str, Tensor]) -> str:
    """Which library wrote ``state``: "timm", "torchvision" or "foveal", recognised from the key names."""
    if "conv_stem.weight" in state and any(k.startswith("blocks.") for k in state):
        return "timm"
    if "features.0.0.weight" in state and any(".block." in k for k in state):
        return "torchvision"
    if "stem.conv.weight" in state and any(k.startswith("stages.") for k in state):
        return "foveal"
    sample = ", ".join(sorted(state)[:4])
    raise FovealError(
        f"the weights do not look like an EfficientNet from timm, torchvision or foveal (first keys: {sample}); "
        "pass a state dict of one of those models"
    )


def import_efficientnet(
    path: str | Path | dict[str, Tensor], variant: str | None = None, **model_kwargs: Any
) -> EfficientNet:
    """Build foveal's EfficientNet from a timm, torchvision or foveal weight file, with those weights loaded.

    Args:
        path: ``.safetensors`` or PyTorch state-dict file (see :func:`load_state_file`), or the state dict itself.
        variant: "b0" … "b7", also spelled "efficientnet_b3" or timm's "tf_efficientnet_b3" (a ``tf_`` name selects
            TensorFlow "same" padding and BN eps 1e-3). None infers width and depth from the tensor shapes; a ``tf_``
            port is then recognised only when the path contains "tf_efficientnet" (as timm's hub files do), else pass
            ``padding="same", bn_eps=1e-3``. A foveal file that stores its constructor arguments under "args" is
            rebuilt from them.
        **model_kwargs: :class:`EfficientNet` arguments that override the inferred ones (e.g. ``dropout``); a value of
            None keeps the inferred one.

    Returns:
        The model in eval mode. Input channels and classes are those of the file; BN eps and padding follow the
        source (timm / torchvision: eps 1e-5, symmetric padding).
    """
    if isinstance(path, dict):
        container: Any = path
        state = _unwrap(path, Path("<state dict>"))
        path = Path("")
    else:
        path = Path(path)
        container = _read(path)
        state = _unwrap(container, path)
    layout = detect_layout(state)
    if variant is not None:
        name, tf_port = _parse_variant(variant)
    else:
        name = None
        tf_port = layout == "timm" and "tf_efficientnet" in str(path).lower()
    stages = _block_prefixes(state, layout)
    renamed = _rename(state, layout, stages)

    args: dict[str, Any] = _stored_args(container) if layout == "foveal" and variant is None else {}
    if not args:
        args = _infer_args(renamed, [len(s) for s in stages], name)
        if layout in ("timm", "torchvision"):
            args["bn_eps"] = 1e-5
        if tf_port:
            args.update(padding="same", bn_eps=1e-3)
    args.update({k: v for k, v in model_kwargs.items() if v is not None})
    try:
        model = from_args(args)
    except (TypeError, ValueError) as exc:
        raise FovealError(f"cannot build EfficientNet with arguments {sorted(model_kwargs)}: {exc}") from None
    built = [len(list(stage.children())) for stage in model.stages]
    found = [len(stage) for stage in stages]
    if built != found:
        raise FovealError(
            f"the {layout} weights have {found} blocks per stage, the requested model {built}; pass the right variant "
            "(or variant=None to infer it from the file)"
        )
    _load(model, renamed, layout)
    return model.eval()


def backbone_state(state: dict[str, Tensor], **efficientnet_kwargs: Any) -> dict[str, Tensor] | None:
    """A ResNet or EfficientNet classifier's state dict (torchvision or timm) in the key names of foveal's backbone
    of that family (:mod:`foveal.models.backbones`), the classifier and EfficientNet's 1×1 head left out.

    Args:
        state: the classifier's state dict.
        efficientnet_kwargs: :func:`import_efficientnet` arguments for an EfficientNet (e.g. a TF port's padding).

    Returns:
        The backbone's weights, or None when ``state`` is neither a ResNet nor an EfficientNet.
    """
    if "conv1.weight" in state and "layer4.0.conv1.weight" in state:
        renamed = {}
        for key, value in state.items():
            if key.startswith("fc."):
                continue
            for old, new in (("conv1.", "stem.0."), ("bn1.", "stem.1.")):
                if key.startswith(old):
                    key = new + key[len(old) :]
            renamed[key] = value
        return renamed
    try:
        detect_layout(state)
    except FovealError:
        return None
    model = import_efficientnet(state, **efficientnet_kwargs)
    return {k: v for k, v in model.state_dict().items() if not k.startswith(("head.", "classifier."))}


def _read(path: Path) -> Any:
    if not path.exists():
        raise FovealError(f"weight file '{path}' does not exist; check the path")
    if not path.is_file():
        raise FovealError(f"'{path}' is a directory, not a weight file; pass the .safetensors or .pth file inside it")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise FovealError(
                f"cannot read '{path}' as safetensors ({exc}); the file is corrupt or truncated"
            ) from None
    if suffix not in TORCH_SUFFIXES:
        raise FovealError(
            f"unsupported weight file type '{suffix or path.name}': use .safetensors or one of "
            f"{', '.join(TORCH_SUFFIXES)}"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found:
            raise FovealError(
                f"'{path}' stores a Python object ({found.group(1)}) that would run code when loaded; foveal refuses "
                f"to execute code from weight files: {_RESAVE_HINT}"
            ) from None
        raise FovealError(
            f"cannot read '{path}' safely: it is corrupt, or a pickle that holds more than tensors and plain values "
            f"(foveal refuses to execute code from weight files). If you trust it, {_RESAVE_HINT}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FovealError(f"cannot read '{path}': the file is corrupt or truncated ({first})") from None


def _unwrap(obj: Any, path: Path) -> dict[str, Tensor]:
    if isinstance(obj, dict) and not _all_tensors(obj):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        what = "an empty dict" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        raise FovealError(f"'{path}' holds {what}, not a state dict; save model.state_dict() instead")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise FovealError(
                f"'{path}' entry {key!r} is a {type(value).__name__}, not a tensor; save model.state_dict() "
                "(or put it under a 'state_dict' key)"
            )
    state: dict[str, Tensor] = dict(obj)
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _all_tensors(obj: dict[Any, Any]) -> bool:
    return all(isinstance(v, Tensor) for v in obj.values())


def _stored_args(container: Any) -> dict[str, Any]:
    """The constructor arguments a foveal checkpoint stores next to its weights, if any."""
    if isinstance(container, dict) and isinstance(container.get("args"), dict):
        args = dict(container["args"])
        if "width" in args and "depth" in args:
            return args
    return {}


def _parse_variant(variant: str) -> tuple[str, bool]:
    """Variant and whether it is a TF port: "tf_efficientnet_b3.ns_jft_in1k" → ("b3", True), "b0" → ("b0", False)."""
    found = re.fullmatch(r"(tf_)?(?:efficientnet[_-])?(b\d)", variant.strip().lower().split(".")[0])
    if not found or found.group(2) not in VARIANTS:
        raise FovealError(
            f"unknown EfficientNet variant '{variant}': use one of {', '.join(VARIANTS)} (also written "
            "'efficientnet_b0' or timm's 'tf_efficientnet_b0'), or None to infer it from the weights"
        )
    return found.group(2), found.group(1) is not None


def _block_prefixes(state: dict[str, Tensor], layout: str) -> list[list[str]]:
    """Per stage, the source key prefix of each block, in order."""
    pattern = {
        "timm": r"(blocks\.(\d+)\.(\d+))\.",
        "torchvision": r"(features\.(\d+)\.(\d+)\.block)\.",
        "foveal": r"(stages\.(\d+)\.(\d+))\.",
    }[layout]
    found: dict[int, dict[int, str]] = defaultdict(dict)
    for key in state:
        m = re.match(pattern, key)
        if m:
            found[int(m.group(2))][int(m.group(3))] = m.group(1)
    offset = 1 if layout == "torchvision" else 0  # torchvision: features.0 is the stem, features.1… the stages
    stage_ids = sorted(found)
    if stage_ids != list(range(offset, offset + len(stage_ids))):
        raise FovealError(f"{layout} weights have gaps in their stage numbering ({stage_ids}); the file is incomplete")
    stages = []
    for s in stage_ids:
        blocks = found[s]
        if sorted(blocks) != list(range(len(blocks))):
            raise FovealError(f"{layout} weights: stage {s} has gaps in its block numbering; the file is incomplete")
        stages.append([blocks[b] for b in range(len(blocks))])
    if len(stages) != len(B0_STAGES):
        raise FovealError(
            f"{layout} weights have {len(stages)} stages of MBConv blocks, EfficientNet B0–B7 have "
            f"{len(B0_STAGES)}; these are not EfficientNet (v1) weights"
        )
    return stages


def _module_map(state: dict[str, Tensor], layout: str, stages: list[list[str]]) -> dict[str, str]:
    """foveal module name → source module name."""
    if layout == "timm":
        out = {"stem.conv": "conv_stem", "stem.bn": "bn1", "head.conv": "conv_head", "head.bn": "bn2"}
        out["classifier"] = "classifier"
    else:
        head = f"features.{len(stages) + 1}"
        out = {"stem.conv": "features.0.0", "stem.bn": "features.0.1", "head.conv": f"{head}.0", "head.bn": f"{head}.1"}
        out["classifier"] = "classifier.1"
    for s, blocks in enumerate(stages):
        for b, src in enumerate(blocks):
            dst = f"stages.{s}.{b}"
            if layout == "timm":
                if f"{src}.conv_pwl.weight" in state:  # inverted residual: pw expand, dw, pwl project
                    parts = {
                        "expand": ("conv_pw", "bn1"),
                        "depthwise": ("conv_dw", "bn2"),
                        "project": ("conv_pwl", "bn3"),
                    }
                else:  # depthwise-separable (expand ratio 1): dw, pw project
                    parts = {"depthwise": ("conv_dw", "bn1"), "project": ("conv_pw", "bn2")}
                se = (f"{src}.se.conv_reduce", f"{src}.se.conv_expand")
            else:
                names = ["expand", "depthwise", "se", "project"]
                if f"{src}.3.0.weight" not in state:
                    names = names[1:]
                idx = {n: str(i) for i, n in enumerate(names)}
                parts = {n: (f"{idx[n]}.0", f"{idx[n]}.1") for n in names if n != "se"}
                se = (f"{src}.{idx['se']}.fc1", f"{src}.{idx['se']}.fc2")
            for part, (conv, bn) in parts.items():
                out[f"{dst}.{part}.conv"] = f"{src}.{conv}"
                out[f"{dst}.{part}.bn"] = f"{src}.{bn}"
            out[f"{dst}.se.reduce"], out[f"{dst}.se.expand"] = se
    return out


def _rename(state: dict[str, Tensor], layout: str, stages: list[list[str]]) -> dict[str, Tensor]:
    """``state`` with foveal's key names; a key that has no place in foveal's model is an error."""
    if layout == "foveal":
        return dict(state)
    inverse = {src: dst for dst, src in _module_map(state, layout, stages).items()}
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        module, _, param = key.rpartition(".")
        if module in inverse:
            out[f"{inverse[module]}.{param}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise FovealError(
            f"{layout} weights contain {len(unknown)} key(s) with no counterpart in foveal's EfficientNet "
            f"(e.g. {', '.join(unknown[:3])}); they come from a different architecture"
        )
    return out


def _infer_args(state: dict[str, Tensor], repeats: list[int], variant: str | None) -> dict[str, Any]:
    """EfficientNet arguments from foveal-named tensors: classes, input channels, width and depth."""
    for key in ("stem.conv.weight", "head.conv.weight", "classifier.weight"):
        if key not in state or state[key].ndim < 2:
            raise FovealError(f"the weights lack '{key}' (or it is not a weight matrix); the file is incomplete")
    args: dict[str, Any] = {
        "num_classes": int(state["classifier.weight"].shape[0]),
        "in_channels": int(state["stem.conv.weight"].shape[1]),
    }
    if variant is not None:
        v = VARIANTS[variant]
        args.update(width=v.width, depth=v.depth, dropout=v.dropout)
        return args
    stem, head = int(state["stem.conv.weight"].shape[0]), int(state["head.conv.weight"].shape[0])
    outs = []
    for s, n in enumerate(repeats):
        key = f"stages.{s}.{n - 1}.project.conv.weight"
        if key not in state:
            raise FovealError(f"the weights lack '{key}'; the file is incomplete")
        outs.append(int(state[key].shape[0]))
    for v in VARIANTS.values():  # a released variant (first match: B2's blocks are also ceil(1.1 · L))
        if _width_fits(v.width, stem, head, outs) and _depth_fits(v.depth, repeats):
            args.update(width=v.width, depth=v.depth, dropout=v.dropout)
            return args
    args.update(width=_solve_width(stem, head, outs), depth=_solve_depth(repeats))
    return args


def _width_fits(w: float, stem: int, head: int, outs: list[int]) -> bool:
    return (
        round_channels(B0_STEM, w) == stem
        and round_channels(B0_HEAD, w) == head
        and all(round_channels(s.channels, w) == c for s, c in zip(B0_STAGES, outs, strict=True))
    )


def _depth_fits(d: float, repeats: list[int]) -> bool:
    return all(round_repeats(s.repeats, d) == n for s, n in zip(B0_STAGES, repeats, strict=True))


def _solve_width(stem: int, head: int, outs: list[int]) -> float:
    """A width multiplier whose rounded channels give the stem, head and stage widths found in the file."""
    candidates = [round(head / B0_HEAD, 2), head / B0_HEAD]
    candidates += [(head - 8 + i * 0.01) / B0_HEAD for i in range(1601)]  # every width that rounds the head right
    for w in candidates:
        if w > 0 and _width_fits(w, stem, head, outs):
            return w
    raise FovealError(
        f"no EfficientNet width fits the channels in the file (stem {stem}, stages {outs}, head {head}); these weights "
        "are not an EfficientNet with the paper's channel rounding"
    )


def _solve_depth(repeats: list[int]) -> float:
    """A depth multiplier d with ceil(d · L) equal to the block count of every stage."""
    lo = max((n - 1) / s.repeats for s, n in zip(B0_STAGES, repeats, strict=True))
    hi = min(n / s.repeats for s, n in zip(B0_STAGES, repeats, strict=True))
    candidates = [k / 100 for k in range(math.floor(lo * 100), math.ceil(hi * 100) + 1)] + [(lo + hi) / 2]
    for d in candidates:
        if d > 0 and _depth_fits(d, repeats):
            return d
    raise FovealError(
        f"no EfficientNet depth multiplier gives the block counts in the file ({repeats} per stage); these weights "
        "are not an EfficientNet with the paper's depth rounding"
    )


def _load(model: EfficientNet, state: dict[str, Tensor], layout: str) -> None:
    """Copy ``state`` into ``model``, checking every name and shape; names are reported in foveal's spelling."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise FovealError(
            f"{layout} weights lack {len(missing)} tensor(s) the model needs (e.g. {', '.join(missing[:3])}); "
            "the file is incomplete or the variant is wrong"
        )
    extra = [k for k in state if k not in own]
    if extra:
        raise FovealError(
            f"{layout} weights have {len(extra)} tensor(s) the model lacks (e.g. {', '.join(extra[:3])}); "
            "pass the right variant (or let it be inferred)"
        )
    for key, target in own.items():
        if key in state and state[key].shape != target.shape:
            raise FovealError(
                f"shape mismatch at '{key}': the file has {tuple(state[key].shape)}, the model expects "
                f"{tuple(target.shape)}; pass the right variant / num_classes / in_channels (or let them be inferred)"
            )
    model.load_state_dict(state, strict=False)
