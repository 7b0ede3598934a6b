"""Where a command runs and in which number format: ``--device`` / ``--precision`` turned into torch objects, once.

Every task resolves its device with :func:`resolve_device` and its precision with :func:`resolve_precision`, so
``auto``, ``cuda:N`` and the errors for a device that is not there mean the same on every verb.
"""

from __future__ import annotations

import contextlib
import os
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor

from foveal.errors import FovealError

DEVICES = "auto, cpu, cuda or cuda:N"
PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device named by ``spec``: ``auto`` (or ``None``) → the first CUDA device when there is one, else the
    CPU; ``cpu``; ``cuda`` (the current CUDA device); ``cuda:N``.

    Raises:
        FovealError: an unknown name, or a CUDA device that this machine does not have.
    """
    if isinstance(spec, torch.device):
        spec = str(spec)
    name = (spec or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise FovealError(f"unknown device {spec!r}: use {DEVICES}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise FovealError(f"device {spec!r}: torch sees no CUDA device here; use --device cpu (or auto)")
    index = int(match.group(1)) if match.group(1) is not None else torch.cuda.current_device()
    if index >= count:
        raise FovealError(
            f"device {spec!r}: this machine has {count} CUDA device{'s' if count > 1 else ''} "
            f"(cuda:0 … cuda:{count - 1}); pick one of those"
        )
    return torch.device("cuda", index)


@dataclass(frozen=True)
class Precision:
    """The number format of inference or training on one device.

    ``fp32`` runs as stored; ``bf16`` / ``fp16`` run the network's weights in that format (inference) or under
    autocast (training); inputs, anchors, box decoding and metrics stay fp32.
    """

    name: str
    device: torch.device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the network computes in (torch.float32 / bfloat16 / float16)."""
        return _DTYPES[self.name]

    @property
    def reduced(self) -> bool:
        """True for bf16 and fp16."""
        return self.name != "fp32"

    def autocast(self) -> AbstractContextManager[object]:
        """Autocast to :attr:`dtype` on :attr:`device` (a no-op context in fp32)."""
        if not self.reduced:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled for fp16 only (bf16 has fp32's exponent range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")


def resolve_precision(name: str | None, device: torch.device) -> Precision:
    """``fp32`` (or ``None``), ``bf16`` or ``fp16`` on ``device``; fp16 is for CUDA only.

    Raises:
        FovealError: an unknown name, or fp16 on a device without fast fp16 (the CPU).
    """
    name = (name or "fp32").strip().lower()
    if name not in PRECISIONS:
        raise FovealError(f"unknown precision {name!r}: use fp32, bf16 or fp16 (CUDA only)")
    if name == "fp16" and device.type != "cuda":
        raise FovealError("precision fp16 runs on CUDA only: use --precision bf16 on the CPU (or --device cuda)")
    return Precision(name, device)


def to_device(x: Tensor, device: torch.device, dtype: torch.dtype | None = None, channels_last: bool = False) -> Tensor:
    """``x`` on ``device`` (non-blocking from pinned memory on CUDA), optionally cast and in channels-last layout."""
    x = x.to(device, dtype=dtype, non_blocking=device.type == "cuda")
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


def uses_channels_last(model: torch.nn.Module) -> bool:
    """Whether ``model``'s first 4-d weight is stored channels-last (so its inputs should be too)."""
    w = next((p for p in model.parameters() if p.ndim == 4), None)
    return w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


def training_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The device one training process uses: :func:`resolve_device`, and under ``torchrun`` on CUDA the GPU of this
    process's ``LOCAL_RANK`` (one GPU per process, as DDP with nccl expects), made the current CUDA device."""
    device = resolve_device(spec)
    if device.type == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = resolve_device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device
