"""Sigmoid focal loss speed: foveal's fused loss against torchvision's ``sigmoid_focal_loss``, on CPU.

Run: ``python bench/focal_speed.py``. RetinaNet's classification loss at one image of about 800 × 1333: 120,000
anchors × 80 classes (9.6 M elements), fp32, α = 0.25, γ = 2, about one foreground anchor in a thousand, two threads
for both. Settings:

- "sum": forward + backward of the RetinaNet use, the summed loss divided by the number of foreground anchors;
- "none": forward + backward of the per-element loss, then ``.sum()`` (what a caller that weights elements does);
- "eval": forward only under ``torch.no_grad()`` (validation loss).

Every setting is warmed up, then measured in interleaved rounds (one repetition of each contender per round, so
drifting machine load hits both alike); we report min / median / max seconds, the time ratio foveal / torchvision
on medians (< 1: foveal is faster) with its inverse, the speed-up, and the throughput in M elements/s. The loss
is memory-bound elementwise work (no matrix products), so elements per second, not FLOP/s, is the figure of merit.
Writes ``bench/results/focal_speed.json``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from _common import measure, write_result
from foveal.losses.focal import sigmoid_focal_loss

ANCHORS = 120_000
CLASSES = 80
THREADS = 2
FOREGROUND = 1e-3


def _inputs() -> tuple[torch.Tensor, torch.Tensor, float]:
    g = torch.Generator().manual_seed(0)
    # logits around the prior's −log(99) ≈ −4.6 with a wide spread, as early in training
    logits = torch.randn(ANCHORS, CLASSES, generator=g) * 2 - 4.6
    targets = torch.zeros(ANCHORS, CLASSES)
    fg = torch.rand(ANCHORS, generator=g) < FOREGROUND
    targets[fg, torch.randint(0, CLASSES, (int(fg.sum()),), generator=g)] = 1.0
    return logits, targets, float(max(int(fg.sum()), 1))


def _settings(logits: torch.Tensor, targets: torch.Tensor, num_fg: float) -> dict[str, dict[str, Callable[[], Any]]]:
    leaf = logits.clone().requires_grad_()

    def train(loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], Any]:
        def run() -> Any:
            leaf.grad = None
            loss = loss_fn(leaf)
            loss.backward()
            return loss

        return run

    def evaluate(loss_fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad():
                return loss_fn(logits)

        return run

    return {
        "sum": {
            "foveal": train(lambda x: sigmoid_focal_loss(x, targets, reduction="sum", normalizer=num_fg)),
            "torchvision": train(lambda x: tv_sigmoid_focal_loss(x, targets, reduction="sum") / num_fg),
        },
        "none": {
            "foveal": train(lambda x: sigmoid_focal_loss(x, targets, reduction="none").sum()),
            "torchvision": train(lambda x: tv_sigmoid_focal_loss(x, targets, reduction="none").sum()),
        },
        "eval": {
            "foveal": evaluate(lambda x: sigmoid_focal_loss(x, targets, reduction="sum", normalizer=num_fg)),
            "torchvision": evaluate(lambda x: tv_sigmoid_focal_loss(x, targets, reduction="sum") / num_fg),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9, help="measured rounds per setting (median of these)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "focal_speed.json")
    args = parser.parse_args()

    torch.set_num_threads(THREADS)
    logits, targets, num_fg = _inputs()
    settings = _settings(logits, targets, num_fg)

    # the two losses agree (a check, not part of the timing)
    ours = sigmoid_focal_loss(logits, targets, reduction="sum", normalizer=num_fg)
    ref = tv_sigmoid_focal_loss(logits, targets, reduction="sum") / num_fg
    rel_diff = abs(ours.item() - ref.item()) / abs(ref.item())

    elements = ANCHORS * CLASSES
    summary: dict[str, Any] = {}
    started = time.perf_counter()
    print(f"Sigmoid focal loss, {ANCHORS} × {CLASSES} fp32, {THREADS} threads (seconds per call)")
    print(f"  {'setting':8s} {'library':12s} {'min':>7s} {'median':>7s} {'max':>7s} {'M elem/s':>9s}")
    for name, contenders in settings.items():
        times = measure(contenders, warmup=2, reps=args.reps)
        entry: dict[str, Any] = {}
        for lib, vals in times.items():
            med = statistics.median(vals)
            entry[lib] = {
                "min": min(vals),
                "median": med,
                "max": max(vals),
                "all": vals,
                "melem_per_s": elements / med / 1e6,
            }
            print(f"  {name:8s} {lib:12s} {min(vals):7.3f} {med:7.3f} {max(vals):7.3f} {elements / med / 1e6:9.0f}")
        ratio = entry["foveal"]["median"] / entry["torchvision"]["median"]
        entry["time_ratio_ours_over_peer"] = ratio
        entry["speedup_over_peer"] = 1 / ratio
        print(f"  {name:8s} time ours / torchvision {ratio:.3f}: foveal {1 / ratio:.1f}× faster (medians)")
        summary[name] = entry
    elapsed = time.perf_counter() - started

    result = {
        "bench": "sigmoid_focal_loss_speed",
        "anchors": ANCHORS,
        "classes": CLASSES,
        "foreground_fraction": FOREGROUND,
        "threads": THREADS,
        "dtype": "float32",
        "alpha": 0.25,
        "gamma": 2.0,
        "reps": args.reps,
        "relative_difference_of_loss": rel_diff,
        "settings": summary,
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "python": platform.python_version(),
        },
        "machine": platform.processor() or platform.machine(),
        "seconds": elapsed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, result, indent=2)
    print(f"loss relative difference {rel_diff:.1e}; wrote {args.out}")


if __name__ == "__main__":
    main()
