"""Where a command runs and in which number format: ``--device`` / ``--precision`` turned into torch objects, once.

Every task resolves its device with :func:`resolve_device` and its precision with :func:`resolve_precision`, so
``auto``, ``cuda:N`` and the errors for a device that is not there mean the same on every verb.

Precision ``auto`` takes bf16 only where the device computes it in hardware (:func:`native_bf16`: a CPU with AMX or
AVX512-BF16 that torch and oneDNN may use, a CUDA GPU of compute capability 8.0 or later). Elsewhere bf16 is emulated
in fp32 arithmetic and runs several times slower than fp32 (EfficientNet-B0 inference 19x, U-Net training 5x on an
AVX2 CPU), so ``auto`` takes fp32 there, and a bf16 asked for explicitly is run with a warning naming the fix.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import re
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from foveal.errors import FovealError

DEVICES = "auto, cpu, cuda or cuda:N"
PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_CHOICES = ("auto", *PRECISIONS)
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
        raise FovealError(
            f"device {spec!r}: torch sees no CUDA device here; use device cpu (or auto)", options=("device",)
        )
    index = int(match.group(1)) if match.group(1) is not None else torch.cuda.current_device()
    if index >= count:
        raise FovealError(
            f"device {spec!r}: this machine has {count} CUDA device{'s' if count > 1 else ''} "
            f"(cuda:0 … cuda:{count - 1}); pick one of those"
        )
    return torch.device("cuda", index)


#: oneDNN ISA limits (``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA``) below the first one with bf16 instructions.
_ONEDNN_BELOW_BF16 = frozenset({"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"})

#: The names a torch dtype given as ``precision`` stands for.
_DTYPE_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


class EmulatedBF16Warning(UserWarning):
    """bf16 was asked for on a device that emulates it (several times slower than fp32)."""


_warned: set[str] = set()  # the emulated-bf16 warnings given in this process (each once)


def _cpu_capability() -> str:
    """The instruction set torch's CPU kernels run at ("AVX512", "AVX2", "DEFAULT"; ATEN_CPU_CAPABILITY lowers it)."""
    return str(torch.backends.cpu.get_cpu_capability())


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (``flags`` on x86, ``Features`` on Arm); empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def _onednn_limit() -> str | None:
    """The oneDNN ISA limit from the environment when it stops below bf16 (e.g. ``ONEDNN_MAX_CPU_ISA=AVX2``)."""
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = os.environ.get(var, "").strip().upper()
        if value in _ONEDNN_BELOW_BF16:
            return f"{var}={value}"
    return None


def _cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 in hardware that torch and oneDNN may use, and why (see :func:`native_bf16`)."""
    flags = _cpu_flags()
    if platform.machine().lower() in ("aarch64", "arm64"):
        native = "bf16" in flags
        return native, f"{'native' if native else 'emulated'} on this CPU (Arm{' BF16' if native else ''})"
    capability = _cpu_capability()
    unit = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else None
    if unit is None:
        return False, f"emulated on this CPU ({capability}, no AMX or AVX512-BF16)"
    if capability != "AVX512":
        aten = os.environ.get("ATEN_CPU_CAPABILITY")
        lowered = f" (ATEN_CPU_CAPABILITY={aten})" if aten else ""
        return False, f"emulated: torch runs this {unit} CPU's kernels at {capability}{lowered}"
    onednn = _onednn_limit()
    if onednn is not None:
        return False, f"emulated: {onednn} keeps oneDNN below this CPU's {unit}"
    return True, f"native on this CPU ({unit})"


def native_bf16(device: str | torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 in hardware, and the reason in words.

    Native: a CPU with AMX or AVX512-BF16 (from ``/proc/cpuinfo``) whose kernels torch runs at AVX512 (not lowered by
    ``ATEN_CPU_CAPABILITY``) and that ``ONEDNN_MAX_CPU_ISA`` leaves to oneDNN; an Arm CPU with BF16; a CUDA GPU that
    :func:`torch.cuda.is_bf16_supported` says runs it without emulation (compute capability 8.0 or later).

    Args:
        device: a device or its name (:func:`resolve_device`).

    Returns:
        (native, reason), e.g. ``(True, "native on this CPU (AMX)")`` or
        ``(False, "emulated on this CPU (AVX2, no AMX or AVX512-BF16)")``.
    """
    device = resolve_device(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
            name = torch.cuda.get_device_name(device)
        return native, f"{'native' if native else 'emulated'} on this GPU ({name})"
    return _cpu_bf16()


@dataclass(frozen=True)
class Precision:
    """The number format of inference or training on one device.

    ``fp32`` runs as stored; ``bf16`` / ``fp16`` run the network's weights in that format (inference) or under
    autocast (training); inputs, anchors, box decoding and metrics stay fp32. ``requested`` is the name asked for
    (``auto`` or the format itself); ``reason`` says in words why ``name`` runs, for run records and reports.
    """

    name: str
    device: torch.device
    requested: str = ""
    reason: str = ""

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the network computes in (torch.float32 / bfloat16 / float16)."""
        return _DTYPES[self.name]

    @property
    def reduced(self) -> bool:
        """True for bf16 and fp16."""
        return self.name != "fp32"

    def describe(self) -> str:
        """``name (reason)``, e.g. ``fp32 (auto: bf16 is emulated on this CPU (AVX2, no AMX or AVX512-BF16))``."""
        return f"{self.name} ({self.reason})" if self.reason else self.name

    def record(self) -> dict[str, str]:
        """What a run record keeps: ``{"name", "requested", "reason"}``."""
        return {"name": self.name, "requested": self.requested or self.name, "reason": self.reason}

    def autocast(self) -> AbstractContextManager[object]:
        """Autocast to :attr:`dtype` on :attr:`device` (a no-op context in fp32)."""
        if not self.reduced:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled for fp16 only (bf16 has fp32's exponent range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")


def precision_name(name: object) -> str:
    """``name`` as one of :data:`PRECISION_CHOICES`: a string (case and spaces ignored), ``None`` (``auto``) or a torch
    dtype (``torch.float32`` / ``bfloat16`` / ``float16``).

    Raises:
        FovealError: anything else (``16``, ``"fp64"``, ``torch.float64``, a list, …).
    """
    choices = ", ".join(PRECISION_CHOICES)
    if name is None:
        return "auto"
    if isinstance(name, torch.dtype):
        if name not in _DTYPE_NAMES:
            raise FovealError(
                f"precision {name}: foveal runs torch.float32, bfloat16 or float16 (or name one: {choices})"
            )
        return _DTYPE_NAMES[name]
    if not isinstance(name, str):
        raise FovealError(f"precision must be a name ({choices}), not {name!r} ({type(name).__name__})")
    text = name.strip().lower()
    if text not in PRECISION_CHOICES:
        raise FovealError(f"unknown precision {name!r}: use {choices} (fp16 on CUDA only)")
    return text


def resolve_precision(name: str | torch.dtype | None, device: torch.device, training: bool = False) -> Precision:
    """The number format named by ``name`` on ``device``: ``auto`` (or ``None``), ``fp32``, ``bf16`` or ``fp16``.

    ``auto`` for training (autocast, fp32 master weights) is bf16 where :func:`native_bf16` says the device runs it
    natively, else fp32. For inference ``auto`` is fp32 on every device, so results do not depend on the machine
    (bf16 weights move a few predictions: ask for them with ``--precision bf16``). A bf16 asked for on a device that
    emulates it runs, with an :class:`EmulatedBF16Warning` (once per process) that names the fix.

    Args:
        name: the format asked for (see :func:`precision_name`).
        device: where it runs.
        training: resolve for training (autocast) rather than inference (weights in that format).

    Returns:
        The :class:`Precision`, its ``reason`` saying why that format runs.

    Raises:
        FovealError: an unknown name, or fp16 on a device without fast fp16 (the CPU).
    """
    name = precision_name(name)
    if name == "fp16" and device.type != "cuda":
        name_of = "train.precision" if training else "precision"
        raise FovealError(
            f"precision fp16 runs on CUDA only: use {name_of} auto or fp32 on the CPU (or a CUDA device)",
            options=() if training else ("precision",),
        )
    if name in ("fp32", "fp16"):
        return Precision(name, device, name, "asked for")
    native, why = native_bf16(device)
    if name == "auto":
        return _auto(device, native, why, training)
    if not native:
        _warn_emulated(device, why, training)
    return Precision(name, device, name, f"asked for; bf16 is {why}")


def placement(
    device: str | torch.device | None, precision: str | torch.dtype | None, training: bool = False
) -> dict[str, Any]:
    """What a run record keeps of where a network ran and in which format, and why:
    ``{"device": "cpu", "precision": {"name": "fp32", "requested": "auto", "reason": "auto: bf16 is emulated …"}}``.

    Resolves ``device`` and ``precision`` as the loaders did (the same answer; a warning is not repeated).
    """
    where = resolve_device(device)
    return {"device": str(where), "precision": resolve_precision(precision, where, training).record()}


def _auto(device: torch.device, native: bool, why: str, training: bool) -> Precision:
    """What ``auto`` resolves to (see :func:`resolve_precision`)."""
    if training:
        return Precision("bf16" if native else "fp32", device, "auto", f"auto: bf16 is {why}")
    if native:
        return Precision("fp32", device, "auto", f"auto: inference in fp32; bf16 is {why} (--precision bf16 is faster)")
    return Precision("fp32", device, "auto", f"auto: bf16 is {why}")


def _warn_emulated(device: torch.device, why: str, training: bool) -> None:
    """One warning line: bf16 asked for where it is emulated, the slowdown to expect and the fix."""
    where = "this GPU" if device.type == "cuda" else "this CPU"
    fix = "train.precision=fp32 or auto (and train.bf16=false)" if training else "--precision fp32 (or auto)"
    message = (
        f"bf16 is {why}: expect it to run several times slower than fp32 on {where} (up to ~20x for EfficientNet "
        f"inference, ~5x for U-Net training); use {fix}"
    )
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, EmulatedBF16Warning, stacklevel=3)


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
