"""What the benchmarks share: timing in interleaved rounds, so that drifting machine load hits every setting alike."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def measure(settings: dict[str, Callable[[], Any]], warmup: int, reps: int, inner: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each setting: ``warmup`` calls of each, then ``reps`` rounds in which each setting is
    called ``inner`` times in a row (the mean of those is one measurement)."""
    for fn in settings.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(reps):
        for name, fn in settings.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            out[name].append((time.perf_counter() - start) / inner)
    return out


def spread(times: list[float]) -> dict[str, float]:
    """Min, median and max of ``times``."""
    return {"min": min(times), "median": statistics.median(times), "max": max(times)}


# The CPU features that decide which kernels oneDNN picks (and so the speed of fp32 / bf16 work).
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
_PACKAGES = ("numpy", "torch", "torchvision", "timm", "monai", "segmentation-models-pytorch", "grad-cam", "scipy")


def _cpu() -> dict[str, Any]:
    """CPU model, core count and the ISA flags of ``_ISA_FLAGS`` it has (from ``/proc/cpuinfo``, as ``lscpu``)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    import torch

    return {
        "model": model,
        "logical_cores": os.cpu_count(),
        "isa_flags": [f for f in _ISA_FLAGS if f in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", "default"),
        **_bf16("cpu"),
    }


def _bf16(device: str) -> dict[str, Any]:
    """Whether ``device`` computes bf16 natively, and why (:func:`foveal.engine.device.native_bf16`): a bf16 figure
    from a machine that emulates it (an AVX2-only CPU) measures the emulation, several times slower than fp32."""
    from foveal.engine.device import native_bf16

    native, reason = native_bf16(device)
    return {"bf16_native": native, "bf16": reason}


def bf16_note(device: str = "cpu") -> str | None:
    """A line for the console when ``device`` emulates bf16 (its bf16 timings then say little about foveal), else
    None."""
    info = _bf16(device)
    if info["bf16_native"]:
        return None
    return f"note: bf16 is {info['bf16']}: the bf16 figures measure the emulation (goals assume native bf16)"


def environment() -> dict[str, Any]:
    """What makes figures from different machines incomparable: CPU, GPU, library versions, load note."""
    import torch

    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "cpu": _cpu(),
        "gpu": gpus or None,
        **({"gpu_bf16": _bf16("cuda")} if gpus else {}),
        "versions": versions,
        "note": "taken on a shared machine; other jobs may have been running",
    }


def write_result(path: Path, result: dict[str, Any], indent: int = 2) -> None:
    """Write ``result`` as JSON to ``path`` with the machine's :func:`environment` under ``"environment"``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**result, "environment": environment()}, indent=indent) + "\n")
