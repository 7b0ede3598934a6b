"""foveal's bf16 inference path (``--precision bf16``: BatchNorm folded, channels-last, bfloat16 weights) against the
peers' best settings, same run, same input, same threads.

- EfficientNet-B0, eval batch 8 × 224²: foveal bf16 against timm fp32 eager (goal ≥ 2.0×) and timm under
  ``torch.autocast("cpu", torch.bfloat16)`` (goal ≥ 1.3×); each at channels-last, its faster layout here.
- RetinaNet R50-FPN, one image at 512² and 800², post-processing included: foveal bf16 against torchvision under bf16
  autocast (best of contiguous and channels-last; goal ≥ 1.3×). The same network and weights (see
  ``bench/retinanet_speed.py``).
- The paper's valid U-Net (depth 4, ``--base-width``, 16 by default as in ``bench/tiling_speed.py``), a 2048² image:
  foveal's overlap-tile inference in bf16 against MONAI ``sliding_window_inference`` in fp32 (overlap 0.25, its
  default, windows batched by 4; goal ≥ 2×).

The process keeps freed memory (as the ``foveal`` command does) for every library alike. Interleaved rounds, warm-up
first, medians (min and max in the JSON). ``python bench/bf16_speed.py`` (≈ 8 min on 2 cores) writes
``bench/results/bf16_speed.json``; ``--quick`` is a smoke run (small sizes, no JSON).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from _common import bf16_note, measure, spread, write_result
from foveal.engine.allocator import keep_freed_memory
from foveal.inference.fast import inference_model
from foveal.inference.tiling import predict_tiled
from foveal.models.efficientnet import efficientnet_variant
from foveal.models.retinanet import import_torchvision_retinanet
from foveal.models.unet import UNet

RESULTS = Path(__file__).resolve().parent / "results"
THREADS = 2
BF16 = torch.bfloat16


def _infer(model: nn.Module, x: torch.Tensor, autocast: bool = False) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode(), torch.autocast("cpu", dtype=BF16, enabled=autocast):
            return model(x)

    return run


def _efficientnet(reps: int, batch: int, res: int) -> dict[str, list[float]]:
    import timm

    torch.manual_seed(0)
    x = torch.randn(batch, 3, res, res).contiguous(memory_format=torch.channels_last)
    ours = efficientnet_variant("b0").eval()
    timm_cl = timm.create_model("efficientnet_b0").eval().to(memory_format=torch.channels_last)
    settings = {
        "foveal bf16": _infer(inference_model(ours, dtype=BF16), x.to(BF16)),
        "foveal fp32": _infer(inference_model(ours), x),
        "timm fp32 channels_last": _infer(timm_cl, x),
        "timm bf16 autocast channels_last": _infer(timm_cl, x, autocast=True),
    }
    return measure(settings, warmup=3, reps=reps, inner=3)


def _retinanet(reps: int, sizes: list[int]) -> dict[str, dict[str, list[float]]]:
    from retinanet_speed import _busy_bias, _foveal_infer, _torchvision_infer, _torchvision_model

    g = torch.Generator().manual_seed(0)
    tv = _torchvision_model()
    _busy_bias(tv, torch.rand(3, 512, 512, generator=g))
    half = inference_model(import_torchvision_retinanet(tv.state_dict()), dtype=BF16)
    tv_cl = copy.deepcopy(tv).to(memory_format=torch.channels_last)
    out = {}
    for size in sizes:
        image = torch.rand(3, size, size, generator=g)
        settings = {
            "foveal bf16": _foveal_infer(half, image, size),
            "torchvision bf16 autocast contiguous": _torchvision_infer(tv, image, size, bf16=True),
            "torchvision bf16 autocast channels_last": _torchvision_infer(tv_cl, image, size, bf16=True),
        }
        out[str(size)] = measure(settings, warmup=1, reps=reps)
    return out


def _unet(reps: int, base_width: int, size: int) -> dict[str, list[float]]:
    from monai.inferers import sliding_window_inference

    from tiling_speed import BATCH, TILE, WINDOW, _image, _MonaiWindow

    torch.manual_seed(0)
    net = UNet(1, 2, depth=4, base_width=base_width).eval()
    half = inference_model(net, dtype=BF16)
    image = _image(size)
    wrapper = _MonaiWindow(net.to(memory_format=torch.channels_last), WINDOW)

    def ours() -> Any:
        return predict_tiled(half, image, TILE, border=half.border, stride=half.stride, batch=BATCH)

    def monai() -> Any:
        with torch.no_grad():
            return sliding_window_inference(image, (WINDOW, WINDOW), BATCH, wrapper, overlap=0.25, mode="constant")

    return measure({"foveal bf16 overlap-tile": ours, "monai fp32 sliding window": monai}, warmup=1, reps=reps)


def _ratios(results: dict[str, list[float]], ours: str) -> dict[str, Any]:
    med = {k: spread(v)["median"] for k, v in results.items()}
    return {
        "seconds": {k: spread(v) for k, v in results.items()},
        "speedup_of_foveal_bf16": {k: med[k] / med[ours] for k in med if k != ours},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--base-width", type=int, default=16, help="U-Net width of its first level (paper: 64)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, 2 rounds, no JSON written")
    parser.add_argument("--out", type=Path, default=RESULTS / "bf16_speed.json")
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    parser.add_argument("--only", choices=["b0", "retinanet", "unet"], help="run one of the three works only")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    if (note := bf16_note()) is not None:
        print(note, file=sys.stderr, flush=True)
    reps = 2 if args.quick else args.reps
    started = time.perf_counter()
    result: dict[str, Any] = {
        "what": "foveal bf16 inference against peers' best settings; speedup = peer median / foveal bf16 median",
        "command": "python bench/bf16_speed.py " + " ".join(sys.argv[1:]),
        "threads": args.threads,
    }
    if args.only in (None, "b0"):
        b0 = _ratios(_efficientnet(reps, 2 if args.quick else 8, 96 if args.quick else 224), "foveal bf16")
        print("B0", b0["speedup_of_foveal_bf16"], flush=True)
        result["efficientnet_b0_eval_batch8_224"] = b0
    if args.only in (None, "retinanet"):
        sizes = [192] if args.quick else [512, 800]
        det = {size: _ratios(r, "foveal bf16") for size, r in _retinanet(reps, sizes).items()}
        print("R50-FPN", {k: v["speedup_of_foveal_bf16"] for k, v in det.items()}, flush=True)
        result["retinanet_r50_fpn_one_image"] = det
    if args.only in (None, "unet"):
        unet = _ratios(_unet(min(reps, 3), args.base_width, 1024 if args.quick else 2048), "foveal bf16 overlap-tile")
        print("U-Net", unet["speedup_of_foveal_bf16"], flush=True)
        result["unet_overlap_tile_2048"] = {"base_width": args.base_width, **unet}
    result["goals"] = {
        "b0_vs_timm_fp32": 2.0,
        "b0_vs_timm_bf16_autocast": 1.3,
        "r50fpn_vs_torchvision_bf16_autocast": 1.3,
        "unet_vs_monai_fp32": 2.0,
    }
    result["seconds_total"] = time.perf_counter() - started
    if not args.quick:
        write_result(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
