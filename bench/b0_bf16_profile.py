"""Where EfficientNet-B0's bf16 eval time goes: foveal's bf16 path against timm under bf16 autocast and timm fp32.

Run: ``python bench/b0_bf16_profile.py`` (about a minute; writes ``bench/results/b0_bf16_profile.json``). Batch 8 ×
224², channels-last, 2 threads (as bench/bf16_speed.py). ``torch.profiler`` records the CPU operators of ``--reps``
forward passes after a warm-up; their self time is summed per kind:

- depthwise convolutions (a weight of shape (C, 1, k, k)), with the bytes they must read and write (input, output,
  weight) and so the memory bandwidth they reach;
- the other convolutions (1×1 expansions and projections, the stem, the head) with their GFLOP/s;
- matrix products (foveal's squeeze-and-excitation 1×1 convolutions run as ``linear``);
- BatchNorm where it is not folded (timm's eager model);
- element-wise and pooling operators (SiLU, sigmoid, the excitation's multiply, residual adds, means);
- layout and dtype conversions (``to``, ``copy_``, reorders), everything else.

The shares say what bounds B0 in bf16: AMX / AVX512-BF16 speed up the convolutions that are matrix products, not
the depthwise convolutions and element-wise passes, which are limited by memory traffic.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from _common import bf16_note, write_result
from foveal.engine.allocator import keep_freed_memory
from foveal.inference.fast import inference_model
from foveal.models.efficientnet import efficientnet_variant

RESULTS = Path(__file__).resolve().parent / "results" / "b0_bf16_profile.json"
BF16 = torch.bfloat16
CONV = (
    "aten::mkldnn_convolution",
    "aten::_slow_conv2d_forward",
    "aten::_convolution",
    "aten::convolution",
    "aten::conv2d",
)
MATMUL = ("aten::addmm", "aten::mm", "aten::linear", "aten::matmul", "aten::bmm")
ELEMENTWISE = (
    "aten::silu",
    "aten::silu_",
    "aten::sigmoid",
    "aten::sigmoid_",
    "aten::mul",
    "aten::mul_",
    "aten::add",
    "aten::add_",
    "aten::mean",
    "aten::adaptive_avg_pool2d",
    "aten::_adaptive_avg_pool2d",
    "aten::hardtanh_",
    "aten::clamp_",
)
CONVERSION = ("aten::to", "aten::_to_copy", "aten::copy_", "aten::contiguous", "aten::clone", "aten::to_dense")


def _conv_geometry(model: nn.Module, x: torch.Tensor) -> dict[tuple[int, ...], dict[str, Any]]:
    """Per convolution input shape and weight shape: (FLOPs, bytes, depthwise?) from forward hooks."""
    found: dict[tuple[int, ...], dict[str, Any]] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        conv: nn.Conv2d = module  # type: ignore[assignment]
        w = conv.weight
        key = (*inputs[0].shape, *w.shape)
        depthwise = conv.groups > 1 and conv.groups == conv.in_channels
        macs = output.numel() * w.shape[1] * w.shape[2] * w.shape[3]
        size = inputs[0].element_size()
        moved = (inputs[0].numel() + output.numel() + w.numel()) * size
        found[key] = {"flops": 2 * macs, "bytes": moved, "depthwise": depthwise}

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.inference_mode():
        model(x)
    for h in handles:
        h.remove()
    return found


def _kind(name: str, shapes: list[Any], geometry: dict[tuple[int, ...], dict[str, Any]]) -> tuple[str, Any]:
    if name in CONV and len(shapes) >= 2 and len(shapes[0]) == 4 and len(shapes[1]) == 4:
        geo = geometry.get((*shapes[0], *shapes[1]))
        if geo is not None:
            return ("depthwise conv" if geo["depthwise"] else "other conv"), geo
        return "other conv", None
    if name in MATMUL:
        return "matmul (SE)", None
    if name == "aten::native_batch_norm":
        return "batch norm (not folded)", None
    if name in ELEMENTWISE:
        return "element-wise and pooling", None
    if name in CONVERSION or "reorder" in name:
        return "layout / dtype conversion", None
    return "other", None


def profile(name: str, model: nn.Module, x: torch.Tensor, autocast: bool, reps: int) -> dict[str, Any]:
    with torch.autocast("cpu", dtype=BF16, enabled=autocast):
        geometry = _conv_geometry(model, x)

    def run() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=BF16, enabled=autocast):
            model(x)

    for _ in range(3):
        run()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(reps):
            run()
    kinds: dict[str, dict[str, float]] = defaultdict(lambda: {"ms": 0.0, "flops": 0.0, "bytes": 0.0, "calls": 0})
    total = 0.0
    for evt in prof.key_averages(group_by_input_shape=True):
        ms = evt.self_cpu_time_total / 1000 / reps
        if ms <= 0:
            continue
        total += ms
        kind, geo = _kind(evt.key, list(evt.input_shapes or []), geometry)
        row = kinds[kind]
        row["ms"] += ms
        row["calls"] += evt.count / reps
        if geo is not None:
            row["flops"] += geo["flops"] * evt.count / reps
            row["bytes"] += geo["bytes"] * evt.count / reps
    out: dict[str, Any] = {"forward_ms": total, "images_per_s": x.shape[0] / total * 1000, "kinds": {}}
    for kind, row in sorted(kinds.items(), key=lambda kv: -kv[1]["ms"]):
        entry = {"ms": round(row["ms"], 2), "share": round(row["ms"] / total, 3), "calls": round(row["calls"])}
        if row["flops"]:
            entry["gflop_per_s"] = round(row["flops"] / row["ms"] / 1e6, 1)
            entry["gb_per_s"] = round(row["bytes"] / row["ms"] / 1e6, 1)
        out["kinds"][kind] = entry
    print(f"{name}: {total:.1f} ms per batch ({out['images_per_s']:.1f} images/s)")
    for kind, entry in out["kinds"].items():
        extra = f"  {entry['gflop_per_s']} GFLOP/s, {entry['gb_per_s']} GB/s" if "gflop_per_s" in entry else ""
        print(f"  {kind:<28} {entry['ms']:7.2f} ms  {100 * entry['share']:5.1f} %{extra}")
    return out


def main() -> int:
    import timm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    if (note := bf16_note()) is not None:
        print(note, file=sys.stderr, flush=True)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    ours = inference_model(efficientnet_variant("b0").eval(), dtype=BF16)
    peer = timm.create_model("efficientnet_b0").eval().to(memory_format=torch.channels_last)
    results = {
        "foveal bf16": profile("foveal bf16", ours, x.to(BF16), False, args.reps),
        "timm bf16 autocast channels_last": profile("timm bf16 autocast", peer, x, True, args.reps),
        "timm fp32 channels_last": profile("timm fp32", peer, x, False, args.reps),
    }
    write_result(
        RESULTS,
        {
            "benchmark": "EfficientNet-B0 eval batch 8 × 224², operator self time by kind (torch.profiler)",
            "command": "python bench/b0_bf16_profile.py",
            "threads": args.threads,
            "reps": args.reps,
            "results": results,
            "run_note": args.note,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
