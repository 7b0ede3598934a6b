"""Winograd F(4×4, 3×3) against PyTorch's direct convolution (oneDNN), per layer and for the paper's U-Net.

Run: ``python bench/winograd_speed.py`` (≈ 3 min). Two threads, fp32, inference (``torch.inference_mode``),
channels-last input and weights for the direct convolution (its faster layout on this CPU). Writes
``bench/results/winograd_speed.json``.

1. Single convolutions, batch 1, padding 1, the shapes of a RetinaNet R50-FPN at 512² / 800² (subnet convs at P3–P5,
   the class output 256 → 9 · 91 at P3) and of ResNet-50's stride-1 3×3s (128 ch at 64², 512 ch at 16²), plus a
   64-channel one at 128², which foveal leaves to the direct convolution (``MIN_CHANNELS`` = 128): it shows why.
   Each row reports both times, the ratio, and the largest deviation of each result from a float64 reference,
   relative to the output's largest magnitude.
2. The paper's U-Net (valid convolutions, depth 4, 64 … 1024 channels, 2 classes), one 572² tile → 388²: direct
   convolutions against :func:`foveal.inference.fast.inference_model` (which swaps the 3×3 convolutions with ≥ 128
   channels for Winograd; there is no BatchNorm to fold).

The process keeps freed memory (:func:`foveal.engine.allocator.keep_freed_memory`, what the ``foveal`` command does):
with glibc's default malloc the transforms' large temporaries are page-faulted back on every call. Every setting is
warmed up, then measured in interleaved rounds; medians with min and max.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from _common import measure, spread, write_result
from foveal.engine.allocator import keep_freed_memory
from foveal.inference.fast import inference_model
from foveal.inference.winograd import WinogradConv2d
from foveal.models.unet import UNet

THREADS = 2
RESULTS = Path(__file__).resolve().parent / "results"
# (C_in, C_out, side): where the layer comes from
LAYERS: list[tuple[int, int, int, str]] = [
    (256, 256, 100, "RetinaNet subnet conv, P3 at 800²"),
    (256, 256, 64, "RetinaNet subnet conv, P3 at 512²"),
    (256, 256, 32, "RetinaNet subnet conv, P4 at 512²"),
    (256, 256, 16, "RetinaNet subnet conv, P5 at 512²"),
    (256, 819, 64, "RetinaNet class output (9 anchors × 91), P3 at 512²"),
    (128, 128, 64, "ResNet-50 layer2 3×3 at 512²"),
    (512, 512, 16, "ResNet-50 layer4 3×3 at 512²"),
    (64, 64, 128, "ResNet-50 layer1 3×3 at 512² (left direct)"),
]


def _relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).abs().max() / ref.abs().max())


def _layers(reps: int) -> list[dict[str, Any]]:
    rows = []
    print(f"{'layer':<52} {'direct ms':>10} {'Winograd ms':>12} {'ratio':>6} {'err direct':>11} {'err Winograd':>13}")
    for cin, cout, side, where in LAYERS:
        torch.manual_seed(0)
        conv = nn.Conv2d(cin, cout, 3, padding=1).eval()
        fast = WinogradConv2d(conv)
        direct = conv.to(memory_format=torch.channels_last)
        x = torch.randn(1, cin, side, side).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
            errors = (_relative_error(direct(x), ref), _relative_error(fast(x), ref))
            runs = {"direct": lambda d=direct, x=x: d(x), "winograd": lambda f=fast, x=x: f(x)}
            times = measure(runs, warmup=3, reps=reps)
        d, w = statistics.median(times["direct"]), statistics.median(times["winograd"])
        gflop = 2 * cin * cout * 9 * side * side / 1e9
        rows.append(
            {
                "layer": where,
                "in_channels": cin,
                "out_channels": cout,
                "side": side,
                "gflop_direct": gflop,
                "direct_seconds": spread(times["direct"]),
                "winograd_seconds": spread(times["winograd"]),
                "speedup": d / w,
                "direct_gflop_per_s": gflop / d,
                "relative_error_direct": errors[0],
                "relative_error_winograd": errors[1],
            }
        )
        print(f"{where:<52} {1e3 * d:>10.2f} {1e3 * w:>12.2f} {d / w:>5.2f}× {errors[0]:>11.1e} {errors[1]:>13.1e}")
    return rows


def _unet(reps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    net = UNet(1, 2, depth=4, base_width=64).eval()
    direct = inference_model(net, winograd=False)
    fast = inference_model(net)
    swapped = sum(isinstance(m, WinogradConv2d) for m in fast.modules())
    total = sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in direct.modules())
    x = torch.randn(1, 1, 572, 572).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        a, b = direct(x), fast(x)
        deviation = float((a - b).abs().max() / a.abs().max())
        times = measure({"direct": lambda: direct(x), "winograd": lambda: fast(x)}, warmup=1, reps=reps)
    d, w = statistics.median(times["direct"]), statistics.median(times["winograd"])
    print(
        f"\nU-Net (paper), 1 × 572² → {tuple(a.shape[-2:])}: direct {d:.2f} s, Winograd {w:.2f} s ({d / w:.2f}×; "
        f"{swapped} of {total} 3×3 convs swapped); largest logit deviation {deviation:.1e} of the largest logit"
    )
    return {
        "network": "U-Net (Ronneberger et al. 2015): valid convs, depth 4, 64…1024 channels, 2 classes",
        "input": [1, 1, 572, 572],
        "convs_swapped": swapped,
        "convs_3x3": total,
        "direct_seconds": spread(times["direct"]),
        "winograd_seconds": spread(times["winograd"]),
        "speedup": d / w,
        "max_logit_deviation_relative": deviation,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=7, help="measured rounds (median of these)")
    parser.add_argument("--out", type=Path, default=RESULTS / "winograd_speed.json")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    layers = _layers(args.reps)
    unet = _unet(max(3, args.reps // 2))
    result = {
        "bench": "winograd_f4x4_3x3_vs_direct_conv",
        "threads": THREADS,
        "dtype": "float32",
        "layers": layers,
        "unet": unet,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "machine": platform.processor() or platform.machine(),
        "seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, result, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
