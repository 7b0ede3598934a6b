"""What ``precision: auto`` chooses on this machine, and what bf16 costs or gains here.

Two workloads, each in fp32 and in bf16, timed in interleaved rounds (:func:`_common.measure`):

- inference: EfficientNet-B0, batch 8 × 224², 2 threads, the BatchNorm-folded channels-last model that
  ``--precision`` builds (:func:`foveal.inference.fast.inference_model`);
- training: the ``segment_cpu`` recipe's U-Net (depth 4, width 24, valid convolutions, BatchNorm), one optimizer step
  on a batch of two 316² input tiles under autocast, weighted cross-entropy, AdamW, channels-last, 1 thread.

The JSON records what ``auto`` resolves to for training and inference, with its reason, and the CPU
(``environment``): on a CPU that emulates bf16 (AVX2 only) the bf16 rows are several times slower, which is why
``auto`` takes fp32 there. ``python bench/precision_auto.py`` (≈ 3 minutes on an AVX2 CPU) writes
``bench/results/precision_auto.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from _common import measure, spread, write_result
from foveal.engine.device import native_bf16, resolve_precision
from foveal.inference.fast import inference_model
from foveal.models.efficientnet import efficientnet_variant
from foveal.tasks.segment import SegModelConfig, build_segmenter

RESULTS = Path(__file__).resolve().parent / "results" / "precision_auto.json"


def _inference(reps: int) -> dict[str, list[float]]:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    x = torch.randn(8, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    model = efficientnet_variant("b0").eval()
    settings: dict[str, Callable[[], Any]] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        net, inp = inference_model(model, dtype=dtype), x.to(dtype)

        def run(net: nn.Module = net, inp: torch.Tensor = inp) -> Any:
            with torch.inference_mode():
                return net(inp)

        settings[name] = run
    return measure(settings, warmup=1, reps=reps)


def _training(reps: int) -> dict[str, list[float]]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = SegModelConfig(depth=4, base_width=24, padding="valid", batch_norm=True, dropout=0.5)
    x = torch.randn(2, 1, 316, 316).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        out_size = build_segmenter(cfg, 1, 2).eval()(x).shape[-1]
    target = torch.randint(0, 2, (2, out_size, out_size))
    weight = torch.rand(2, out_size, out_size) + 0.5
    settings: dict[str, Callable[[], Any]] = {}
    for name in ("fp32", "bf16"):
        net = build_segmenter(cfg, 1, 2).to(memory_format=torch.channels_last).train()
        optim = torch.optim.AdamW(net.parameters(), lr=1e-3)

        def step(net: nn.Module = net, optim: torch.optim.Optimizer = optim, bf16: bool = name == "bf16") -> Any:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = net(x)
            loss = (nn.functional.cross_entropy(logits.float(), target, reduction="none") * weight).mean()
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            return loss

        settings[name] = step
    return measure(settings, warmup=1, reps=reps)


def _rows(times: dict[str, list[float]], items: int, unit: str) -> dict[str, Any]:
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "seconds": {k: spread(v) for k, v in times.items()},
        unit: {k: items / m for k, m in med.items()},
        "bf16_slowdown": med["bf16"] / med["fp32"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cpu = torch.device("cpu")
    native, why = native_bf16(cpu)
    train_auto = resolve_precision("auto", cpu, training=True)
    infer_auto = resolve_precision("auto", cpu)
    print(f"bf16 here: {why}; auto trains in {train_auto.name}, predicts in {infer_auto.name}", flush=True)
    inference = _rows(_inference(args.reps), 8, "images_per_second")
    print("EfficientNet-B0 inference, batch 8, 2 threads:", inference["images_per_second"], flush=True)
    training = _rows(_training(args.reps), 2, "images_per_second")
    print("segment_cpu U-Net training step, batch 2, 1 thread:", training["images_per_second"], flush=True)
    write_result(
        args.out,
        {
            "what": "fp32 against bf16 on this CPU, and what precision auto chooses here",
            "command": "python bench/precision_auto.py " + " ".join(sys.argv[1:]),
            "bf16_native": native,
            "bf16_reason": why,
            "auto": {"training": train_auto.describe(), "inference": infer_auto.describe()},
            "efficientnet_b0_inference_batch8_224_2threads": inference,
            "segment_cpu_unet_training_batch2_316_1thread": training,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
