"""CAM speed: foveal's CAM and Grad-CAM against a plain forward pass and pytorch-grad-cam's GradCAM, on CPU.

Run: ``python bench/cam_speed.py`` (the peer comes from ``pip install -e ".[bench]"``: grad-cam 1.5.7). Batch 8 × 3 ×
224², fp32, random weights, eval mode, two threads for everyone, on torchvision ResNet-50 (layer4) and foveal
EfficientNet-B0 (the head conv). Settings, each on its own copy of the same weights (pytorch-grad-cam keeps hooks on
the model it is given):

- forward: ``model(x)`` under ``torch.inference_mode`` (the fastest plain forward);
- CAM top-1 / top-5: ``CAM(model)(x, top_k=k)``, maps upsampled to 224², inside an entered context;
- Grad-CAM: ``GradCAM(model, layer)(x, ClassTarget(top-1 class))``, maps upsampled;
- pytorch-grad-cam: ``GradCAM(model, [layer])(x, [ClassifierOutputTarget(c) …])`` for the same classes.

Every setting is warmed up, then measured in interleaved rounds (one call of each setting per round, so drifting
machine load hits all alike); we report min / median / max seconds per batch and ratios of medians. The goals: CAM
≤ 1.15 × the forward pass, and ≥ 3 × faster than pytorch-grad-cam. As a sanity check the two Grad-CAMs' min–max
normalised maps are compared. Writes ``bench/results/cam_speed.json``.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from _common import measure, write_result
from foveal.explain.cam import CAM, ClassTarget, GradCAM, normalize_maps
from foveal.models.efficientnet import count_flops, efficientnet_variant

BATCH = 8
RES = 224
THREADS = 2
GOAL_CAM_OVER_FORWARD = 1.15
GOAL_PEER_OVER_CAM = 3.0


def _models() -> dict[str, tuple[Callable[[], nn.Module], str]]:
    return {
        "resnet50": (lambda: torchvision.models.resnet50(), "layer4"),
        "efficientnet_b0": (lambda: efficientnet_variant("b0"), "head"),
    }


def _settings(
    model: nn.Module, layer: str, x: torch.Tensor, classes: torch.Tensor
) -> tuple[dict[str, Callable[[], Any]], list[Any]]:
    """Callables of every setting (each on its own copy of ``model``) and the contexts to close afterwards."""
    from pytorch_grad_cam import GradCAM as PeerGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    plain = copy.deepcopy(model).eval()
    cam = CAM(copy.deepcopy(model)).__enter__()
    ours = GradCAM(copy.deepcopy(model), layer).__enter__()
    peer_model = copy.deepcopy(model).eval()
    peer = PeerGradCAM(model=peer_model, target_layers=[peer_model.get_submodule(layer)])
    target = ClassTarget(classes)
    peer_targets = [ClassifierOutputTarget(int(c)) for c in classes]

    def forward() -> Any:
        with torch.inference_mode():
            return plain(x)

    settings = {
        "forward": forward,
        "cam top-1": lambda: cam(x, top_k=1).maps,
        "cam top-5": lambda: cam(x, top_k=5).maps,
        "gradcam (foveal)": lambda: ours(x, target),
        "gradcam (pytorch-grad-cam)": lambda: peer(input_tensor=x, targets=peer_targets),
    }
    return settings, [cam, ours, peer]


def _agreement(model: nn.Module, layer: str, x: torch.Tensor, classes: torch.Tensor, peer: Callable[[], Any]) -> float:
    """Largest difference of the two Grad-CAMs after min–max normalisation of each map. pytorch-grad-cam resizes with
    OpenCV, which centres each cell in its block, so ours is upsampled with that grid here (``grid="cell"``); the timed
    setting uses the model's own grid ("stride" for these symmetric-padding nets), the same amount of work."""
    with GradCAM(copy.deepcopy(model), layer, grid="cell") as gradcam:
        ours = normalize_maps(gradcam(x, ClassTarget(classes)))
    return float((ours - torch.from_numpy(peer()).float()).abs().max())


def _report(name: str, times: dict[str, list[float]], gflop: float) -> dict[str, Any]:
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{name} (seconds per batch of {BATCH} × {RES}², {THREADS} threads)")
    print(f"  {'setting':28s} {'min':>7s} {'median':>7s} {'max':>7s} {'× forward':>10s}")
    for key, vals in times.items():
        print(f"  {key:28s} {min(vals):7.3f} {med[key]:7.3f} {max(vals):7.3f} {med[key] / med['forward']:10.2f}")
    ratios = {
        "cam_top1_over_forward": med["cam top-1"] / med["forward"],
        "cam_top5_over_forward": med["cam top-5"] / med["forward"],
        "peer_gradcam_over_cam_top1": med["gradcam (pytorch-grad-cam)"] / med["cam top-1"],
        "peer_gradcam_over_cam_top5": med["gradcam (pytorch-grad-cam)"] / med["cam top-5"],
        "peer_gradcam_over_our_gradcam": med["gradcam (pytorch-grad-cam)"] / med["gradcam (foveal)"],
    }
    goals = {
        "cam_within_1.15x_forward": max(ratios["cam_top1_over_forward"], ratios["cam_top5_over_forward"])
        <= GOAL_CAM_OVER_FORWARD,
        "cam_3x_faster_than_peer": min(ratios["peer_gradcam_over_cam_top1"], ratios["peer_gradcam_over_cam_top5"])
        >= GOAL_PEER_OVER_CAM,
    }
    for key, value in ratios.items():
        print(f"  {key:32s} {value:6.2f}")
    print(f"  goals met: {goals}")
    return {
        "settings": {k: {"min": min(v), "median": med[k], "max": max(v), "all": v} for k, v in times.items()},
        "ratios": ratios,
        "goals_met": goals,
        "forward_gflop_per_s": gflop * BATCH / med["forward"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="measured rounds (median of these)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cam_speed.json")
    args = parser.parse_args()

    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    results: dict[str, Any] = {}
    for name, (build, layer) in _models().items():
        torch.manual_seed(0)
        model = build().eval()
        x = torch.randn(BATCH, 3, RES, RES)
        with torch.inference_mode():
            classes = model(x).argmax(1)
        gflop = 2 * count_flops(model, RES) / 1e9  # 2 FLOP per multiply-add
        settings, contexts = _settings(model, layer, x, classes)
        times = measure(settings, warmup=2, reps=args.reps)
        summary = _report(name, times, gflop)
        summary["gflop_per_image_forward"] = gflop
        summary["target_layer"] = layer
        summary["gradcam_max_abs_difference_normalised"] = _agreement(
            model, layer, x, classes, settings["gradcam (pytorch-grad-cam)"]
        )
        difference = summary["gradcam_max_abs_difference_normalised"]
        print(f"  Grad-CAM maps, foveal vs pytorch-grad-cam, max |Δ| after min–max normalising: {difference:.2e}")
        for context in contexts:
            context.__exit__(None, None, None)
        results[name] = summary
    elapsed = time.perf_counter() - start
    print(f"\nbench took {elapsed:.0f} s")

    record = {
        "bench": "cam_speed",
        "batch": BATCH,
        "resolution": RES,
        "threads": THREADS,
        "dtype": "float32",
        "reps": args.reps,
        "goals": {"cam_over_forward_at_most": GOAL_CAM_OVER_FORWARD, "peer_over_cam_at_least": GOAL_PEER_OVER_CAM},
        "models": results,
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "grad-cam": importlib.metadata.version("grad-cam"),
            "python": platform.python_version(),
        },
        "machine": platform.processor() or platform.machine(),
        "seconds": elapsed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, record, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
