"""EfficientNet-B0 speed: foveal against timm and torchvision, eval forward and SGD train step, on CPU.

Run: ``python bench/efficientnet_speed.py`` (peers come from ``pip install -e ".[bench]"``). Batch 8 × 3 × 224², fp32,
two threads for everyone. Every setting is warmed up, then measured in interleaved rounds (one repetition of each
setting per round, so drifting machine load hits all of them alike); we report min / median / max images per second,
the ratio ours / peer on medians, and the achieved GFLOP/s (B0: 0.386 G multiply-adds = 0.77 GFLOP per 224² image
forward, a train step ≈ 3 forwards). Writes ``bench/results/efficientnet_speed.json``.

Each contender runs in the setting a user of that library gets at its best: foveal's eval path is its inference path
(BatchNorm folded with ``fuse_conv_bn``, channels-last, ``torch.inference_mode``); peers get ``inference_mode`` and the
faster of contiguous / channels-last (foveal unfused is listed for reference). For training every library gets the
faster of the two memory formats, and all three use the paper's dropout 0.2 and stochastic depth 0.2 (timm's defaults
are 0, so they are set for it).

``--tuned-malloc`` runs the whole process, every library alike, with the malloc settings that foveal's command line
uses (:mod:`foveal.engine.allocator`: freed tensor memory is kept for reuse instead of being unmapped, so no page
faults on the next allocation) and writes ``efficientnet_speed_tuned_malloc.json``.

``--compiled`` adds a separate eval table in which every library's channels-last eval model (foveal's fused one) goes
through ``torch.compile`` (inductor, with weight freezing), the same way for all three: what compilation adds on top
of each library's eager best, reported beside the eager ratios, never mixed into them.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from _common import measure, write_result
from foveal.engine.allocator import keep_freed_memory
from foveal.models.efficientnet import count_flops, efficientnet_variant
from foveal.models.layers import fuse_conv_bn

BATCH = 8
RES = 224
THREADS = 2


def _peers() -> dict[str, Callable[[], nn.Module]]:
    builders: dict[str, Callable[[], nn.Module]] = {"foveal": lambda: efficientnet_variant("b0")}
    import torchvision

    try:
        import timm

        # the paper's dropout 0.2 and stochastic depth 0.2, as foveal and torchvision use by default (timm's are 0)
        builders["timm"] = lambda: timm.create_model("efficientnet_b0", drop_rate=0.2, drop_path_rate=0.2)
    except ImportError:
        print("timm is not installed (pip install -e '.[bench]'); skipping it")
    builders["torchvision"] = lambda: torchvision.models.efficientnet_b0()
    return builders


def _measure(settings: dict[str, Callable[[], Any]], warmup: int, reps: int, inner: int) -> dict[str, list[float]]:
    """Images per second of each setting: ``warmup`` calls each, then ``reps`` interleaved rounds of ``inner`` calls."""
    return {name: [BATCH / t for t in times] for name, times in measure(settings, warmup, reps, inner).items()}


def _eval_settings(builders: dict[str, Callable[[], nn.Module]], x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    settings: dict[str, Callable[[], Any]] = {}
    for name, build in builders.items():
        torch.manual_seed(0)
        model = build().eval()
        if name == "foveal":
            cl_x = x.contiguous(memory_format=torch.channels_last)
            fused = fuse_conv_bn(copy.deepcopy(model)).to(memory_format=torch.channels_last)
            settings["foveal fused channels_last"] = _eval_fn(fused, cl_x)
            # for reference (what BN folding buys): the same model unfused
            settings["foveal unfused channels_last"] = _eval_fn(model.to(memory_format=torch.channels_last), cl_x)
            continue
        settings[f"{name} contiguous"] = _eval_fn(model, x)
        cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        settings[f"{name} channels_last"] = _eval_fn(cl, x.contiguous(memory_format=torch.channels_last))
    return settings


def _eval_fn(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return model(x)

    return run


def _compiled_settings(builders: dict[str, Callable[[], nn.Module]], x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # constant-fold the eval weights into the compiled graph (all libraries alike)
    cl_x = x.contiguous(memory_format=torch.channels_last)
    settings: dict[str, Callable[[], Any]] = {}
    for name, build in builders.items():
        torch.manual_seed(0)
        model = build().eval()
        if name == "foveal":
            model = fuse_conv_bn(model)
        compiled = torch.compile(model.to(memory_format=torch.channels_last))
        settings[f"{name} channels_last compiled"] = _eval_fn(compiled, cl_x)
    return settings


def _train_settings(builders: dict[str, Callable[[], nn.Module]], x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    settings: dict[str, Callable[[], Any]] = {}
    target = torch.randint(0, 1000, (BATCH,), generator=torch.Generator().manual_seed(0))
    for name, build in builders.items():
        for fmt_name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
            torch.manual_seed(0)
            model = build().train().to(memory_format=fmt)
            settings[f"{name} {fmt_name}"] = _train_fn(model, x.contiguous(memory_format=fmt), target)
    return settings


def _train_fn(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Callable[[], Any]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def run() -> Any:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), target)
        loss.backward()
        opt.step()
        return loss

    return run


def _best(results: dict[str, list[float]], lib: str) -> tuple[str, list[float]]:
    """The setting of ``lib`` with the highest median."""
    own = {k: v for k, v in results.items() if k.split()[0] == lib}
    key = max(own, key=lambda k: statistics.median(own[k]))
    return key, own[key]


def _report(title: str, results: dict[str, list[float]], gflop_per_image: float) -> dict[str, Any]:
    print(f"\n{title} (images/s, batch {BATCH} × {RES}², {THREADS} threads)")
    print(f"  {'setting':34s} {'min':>7s} {'median':>7s} {'max':>7s} {'GFLOP/s':>8s}")
    for key, vals in results.items():
        med = statistics.median(vals)
        print(f"  {key:34s} {min(vals):7.1f} {med:7.1f} {max(vals):7.1f} {med * gflop_per_image:8.1f}")
    libs = list(dict.fromkeys(k.split()[0] for k in results))
    best = {lib: _best(results, lib) for lib in libs}
    ours_key, ours = best["foveal"]
    summary: dict[str, Any] = {"settings": {}, "best": {}, "ratio_ours_over_peer": {}}
    for key, vals in results.items():
        summary["settings"][key] = {"min": min(vals), "median": statistics.median(vals), "max": max(vals), "all": vals}
    for lib, (key, vals) in best.items():
        med = statistics.median(vals)
        summary["best"][lib] = {"setting": key, "img_per_s": med, "gflop_per_s": med * gflop_per_image}
        if lib != "foveal":
            ratio = statistics.median(ours) / med
            summary["ratio_ours_over_peer"][lib] = ratio
            print(f"  ours / {lib}: {ratio:.2f}×  ({ours_key} vs {key})")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9, help="measured eval rounds (median of these)")
    parser.add_argument("--train-reps", type=int, default=5, help="measured train-step rounds (median of these)")
    parser.add_argument("--compiled", action="store_true", help="also an eval table with torch.compile for all")
    parser.add_argument(
        "--tuned-malloc",
        action="store_true",
        help="run the whole process (every library) with the malloc settings of foveal's command line",
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: bench/results/…)")
    args = parser.parse_args()
    name = "efficientnet_speed_tuned_malloc.json" if args.tuned_malloc else "efficientnet_speed.json"
    out = args.out or Path(__file__).parent / "results" / name
    if args.tuned_malloc and not keep_freed_memory():
        raise SystemExit("--tuned-malloc needs glibc (Linux) and FOVEAL_MALLOC unset")

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    x = torch.randn(BATCH, 3, RES, RES)
    builders = _peers()
    gflop = 2 * count_flops(efficientnet_variant("b0"), RES) / 1e9  # 2 FLOP per multiply-add

    start = time.perf_counter()
    evals = _measure(_eval_settings(builders, x), warmup=3, reps=args.reps, inner=2)
    eval_summary = _report("Eval forward", evals, gflop)
    trains = _measure(_train_settings(builders, x), warmup=2, reps=args.train_reps, inner=1)
    train_summary = _report("SGD train step (forward + backward + step)", trains, 3 * gflop)
    compiled_summary = None
    if args.compiled:
        compiled = _measure(_compiled_settings(builders, x), warmup=3, reps=args.reps, inner=2)
        compiled_summary = _report("Eval forward, torch.compile for every library", compiled, gflop)
    elapsed = time.perf_counter() - start
    print(f"\nbench took {elapsed:.0f} s")

    import torchvision

    result = {
        "bench": "efficientnet_b0_speed",
        "batch": BATCH,
        "resolution": RES,
        "threads": THREADS,
        "dtype": "float32",
        "malloc": "freed memory kept (foveal.engine.allocator) for all" if args.tuned_malloc else "glibc default",
        "gflop_per_image_forward": gflop,
        "reps": {"eval": args.reps, "train": args.train_reps},
        "peer_settings": "timm efficientnet_b0 with drop_rate=0.2, drop_path_rate=0.2 (the paper's, as foveal and "
        "torchvision); every library in train mode with SGD(lr=1e-3, momentum=0.9), cross-entropy",
        "eval": eval_summary,
        "train": train_summary,
        "eval_compiled": compiled_summary,
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "timm": _version("timm"),
            "python": platform.python_version(),
        },
        "machine": platform.processor() or platform.machine(),
        "seconds": elapsed,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, result, indent=2)
    print(f"wrote {out}")


def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return None


if __name__ == "__main__":
    main()
