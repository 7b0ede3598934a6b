"""RetinaNet R50-FPN speed on CPU: foveal against torchvision, one-image inference and a two-image SGD training step.

Run: ``python bench/retinanet_speed.py`` (``--quick`` for a small smoke run). Two threads for both.

Same network, same weights: torchvision's ``retinanet_resnet50_fpn(weights=None, weights_backbone=None)`` (91
classes, BatchNorm since no pretrained weights are loaded) is built once, its BatchNorm statistics are calibrated on a
few random images (so that activations stay in a realistic range), and foveal's model is made from its state dict
with :func:`foveal.models.retinanet.import_torchvision_retinanet` (P6 from P5 and integer anchors, as torchvision);
the JSON records how close the two models' detections are. The classification bias is shifted so that about half of
the (anchor, class) scores pass the 0.05 threshold: post-processing then works as on a busy image (1000 candidates per
level, NMS over them), not on an untrained network whose scores all sit at the 0.01 prior. Both keep at most 100
detections (the paper's; torchvision's default is 300).

What is timed, per image of S × S (S = 512 and 800; torchvision with ``min_size = max_size = S``):

- torchvision: ``model([image])`` in eval mode under ``torch.inference_mode()`` — its transform (normalisation, a
  resize by 1.0, batching), the network, its post-processing and the map back to the input size;
- foveal: :func:`resize_for_detection` (also a resize by 1.0), normalisation, then
  :func:`foveal.tasks.detect.detect_batch` (the network, post-processing, the map back) under
  ``torch.inference_mode()`` — the same steps, so the pre-processing is included equally. foveal's inference model is
  :func:`foveal.inference.fast.inference_model` (BatchNorm folded into the convolutions, channels-last, and in
  fp32 the 3×3 stride-1 convolutions of ≥ 128 channels computed with Winograd F(4×4, 3×3),
  :mod:`foveal.inference.winograd`); foveal with direct convolutions, foveal unfused and torchvision channels-last
  are listed too.
- in fp32, and in bf16: foveal's inference model with bf16 weights (post-processing in fp32), torchvision under
  ``torch.autocast("cpu", torch.bfloat16)`` (the way to run it in bf16). Ratios compare each library's best setting
  of the same precision, plus foveal bf16 against torchvision fp32 (its default).

In fp32 both networks' direct convolutions run near the machine's fp32 matrix limit (~175 GFLOP/s on 2 cores), so
folding BatchNorm and channels-last can only win the non-matrix part. Winograd F(4×4, 3×3) needs 36 instead of 144
multiplications per 4 × 4 output tile; the subnets' 3×3 convolutions are ~60 % of the detector's FLOPs, so that is
where the fp32 speed-up comes from (GFLOP/s is still counted on the direct convolution's FLOPs, so it can exceed the
matrix limit). bf16 (about 420 GFLOP/s here) is the other way; there foveal's folded BatchNorm saves the conversions
autocast inserts around torchvision's separate BatchNorm layers.

The whole process runs with glibc malloc keeping freed memory (:func:`foveal.engine.allocator.keep_freed_memory`,
what the ``foveal`` command does): both libraries run under it. It does not change torchvision's time (its direct
convolutions are compute-bound) but Winograd's large temporaries would otherwise be page-faulted back on every call.
``--default-malloc`` leaves malloc as it is.

Training step: two images of 800 × 800 (``--train-size``), three boxes each, forward + loss + backward + SGD step
(lr 0.01, momentum 0.9, weight decay 1e-4), fp32, BatchNorm in training mode in both; torchvision's own loss (L1,
low-quality matches), foveal's paper loss (smooth L1, no low-quality matches, fused focal loss); each in contiguous
and channels-last memory format.

Every setting is warmed up, then measured in interleaved rounds (one repetition of each setting per round, so
drifting machine load hits all alike); we report min / median / max seconds, ratios on medians (torchvision time /
foveal time: > 1 means foveal is faster), and GFLOP/s from the network's FLOPs counted
by ``torch.utils.flop_counter`` (2 FLOP per multiply-add; the training count includes the backward pass).
Writes ``bench/results/retinanet_speed.json``.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from _common import bf16_note, measure, write_result
from foveal.engine.allocator import keep_freed_memory
from foveal.inference.fast import inference_model
from foveal.models.retinanet import RetinaNet, import_torchvision_retinanet, retinanet_loss
from foveal.preprocess import IMAGENET_MEAN, IMAGENET_STD, normalize, resize_for_detection
from foveal.tasks.detect import DetectInferenceConfig, detect_batch

THREADS = 2
DETECTIONS = 100
RESULTS = Path(__file__).resolve().parent / "results"


def _torchvision_model() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.detection.retinanet_resnet50_fpn(
        weights=None, weights_backbone=None, detections_per_img=DETECTIONS
    )
    # BatchNorm statistics of random images, accumulated (momentum None) in training mode
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model.backbone(torch.randn(2, 3, 256, 256))
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def _busy_bias(tv: nn.Module, image: Tensor) -> None:
    """Shift torchvision's class bias so that about half of the scores pass 0.05 (foveal copies it afterwards)."""
    ours = import_torchvision_retinanet(tv.state_dict())
    with torch.inference_mode():
        logits = ours(_foveal_input(image, 512)).cls_logits
    bias = tv.head.classification_head.cls_logits.bias
    with torch.no_grad():
        bias += math.log(0.05 / 0.95) - float(logits.median()) + 0.02


def _foveal_input(image: Tensor, size: int) -> Tensor:
    resized, _ = resize_for_detection(image, size, size)
    return normalize(resized * 255.0, IMAGENET_MEAN, IMAGENET_STD)[None]


def _foveal_infer(model: nn.Module, image: Tensor, size: int) -> Callable[[], Any]:
    """foveal's inference path: resize and normalise outside the model, then :func:`detect_batch` (the network,
    post-processing in fp32, boxes mapped back to the image)."""
    inference = DetectInferenceConfig(max_detections=DETECTIONS)

    def run() -> Any:
        with torch.inference_mode():
            resized, scale = resize_for_detection(image, size, size)
            x = normalize(resized * 255.0, IMAGENET_MEAN, IMAGENET_STD)[None]
            original = (int(image.shape[-2]), int(image.shape[-1]))
            return detect_batch(model, x, [tuple(resized.shape[-2:])], [scale], [original], inference)[0]

    return run


def _torchvision_infer(model: nn.Module, image: Tensor, size: int, bf16: bool = False) -> Callable[[], Any]:
    def run() -> Any:
        model.transform.min_size, model.transform.max_size = (size,), size
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return model([image])[0]

    return run


def _targets(size: int) -> list[dict[str, Tensor]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(2):
        xy = torch.rand(3, 2, generator=g) * size * 0.6
        wh = torch.rand(3, 2, generator=g) * size * 0.3 + 16
        out.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(1, 91, (3,), generator=g)})
    return out


def _foveal_train(model: RetinaNet, images: list[Tensor], size: int, channels_last: bool) -> Callable[[], Any]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.train().to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    targets = _targets(size)

    def run() -> Any:
        x = torch.cat([_foveal_input(im, size) for im in images]).contiguous(memory_format=fmt)
        losses = retinanet_loss(model(x), targets)
        loss = losses["cls"] + losses["box"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return run


def _torchvision_train(model: nn.Module, images: list[Tensor], size: int, channels_last: bool) -> Callable[[], Any]:
    model = model.train().to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    model.transform.min_size, model.transform.max_size = (size,), size
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    targets = _targets(size)

    def run() -> Any:
        losses = model(images, targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return run


def _count_flops(fn: Callable[[], Any]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def _report(title: str, results: dict[str, list[float]], gflop: float) -> dict[str, Any]:
    """Print a table; the best setting of each library per precision (the key's second word) and the ratios."""
    print(f"\n{title} (seconds, {THREADS} threads)")
    print(f"  {'setting':40s} {'min':>8s} {'median':>8s} {'max':>8s} {'GFLOP/s':>8s}")
    summary: dict[str, Any] = {"settings": {}, "best": {}, "gflop": gflop, "speedup_foveal_over_torchvision": {}}
    for key, vals in results.items():
        med = statistics.median(vals)
        print(f"  {key:40s} {min(vals):8.3f} {med:8.3f} {max(vals):8.3f} {gflop / med:8.1f}")
        summary["settings"][key] = {"min": min(vals), "median": med, "max": max(vals), "all": vals}
    groups = sorted({tuple(k.split()[:2]) for k in results})
    for lib, precision in groups:
        own = {k: statistics.median(v) for k, v in results.items() if tuple(k.split()[:2]) == (lib, precision)}
        key = min(own, key=lambda k: own[k])
        summary["best"][f"{lib} {precision}"] = {"setting": key, "seconds": own[key], "gflop_per_s": gflop / own[key]}
    best = summary["best"]
    for ours, theirs in (("fp32", "fp32"), ("bf16", "bf16"), ("bf16", "fp32")):
        a, b = best.get(f"foveal {ours}"), best.get(f"torchvision {theirs}")
        if a is None or b is None:
            continue
        ratio = b["seconds"] / a["seconds"]
        summary["speedup_foveal_over_torchvision"][f"foveal {ours} / torchvision {theirs}"] = ratio
        print(f"  foveal {ours} is {ratio:.2f}× torchvision {theirs}'s speed ({a['setting']} vs {b['setting']})")
    return summary


def _agreement(tv: nn.Module, ours: nn.Module, image: Tensor, size: int) -> dict[str, Any]:
    """How close foveal's detections are to torchvision's fp32 ones (same weights): a check that both do one job,
    and the error of bf16. A foveal detection is matched when torchvision has one of the same class with IoU ≥ 0.9."""
    tv_det = _torchvision_infer(tv, image, size)()
    our_det = _foveal_infer(ours, image, size)()
    top = min(20, len(our_det["scores"]))
    iou = torchvision.ops.box_iou(our_det["boxes"][:top], tv_det["boxes"])
    iou[our_det["labels"][:top, None] != tv_det["labels"][None, :]] = 0.0
    best, which = iou.max(dim=1) if iou.numel() else (torch.zeros(top), torch.zeros(top, dtype=torch.int64))
    matched = best >= 0.9
    gap = (our_det["scores"][:top][matched] - tv_det["scores"][which[matched]]).abs()
    return {
        "detections": [len(our_det["scores"]), len(tv_det["scores"])],
        "top20_matched_fraction": float(matched.float().mean()) if top else 1.0,
        "top20_min_matched_iou": float(best[matched].min()) if bool(matched.any()) else None,
        "top20_max_score_difference": float(gap.max()) if gap.numel() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 800], help="inference image sizes")
    parser.add_argument("--train-size", type=int, default=800, help="training image size")
    parser.add_argument("--reps", type=int, default=7, help="measured inference rounds (median of these)")
    parser.add_argument("--train-reps", type=int, default=5, help="measured training rounds (3 if a step > 30 s)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 192-px images, 2 rounds, no JSON written")
    parser.add_argument("--skip-train", action="store_true", help="inference only (no JSON written)")
    parser.add_argument(
        "--default-malloc", action="store_true", help="leave glibc malloc as it is (see the module docstring)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "retinanet_speed.json")
    args = parser.parse_args()
    if not args.default_malloc:
        keep_freed_memory()
    if args.quick:
        args.sizes, args.train_size, args.reps, args.train_reps = [192], 192, 2, 2

    torch.set_num_threads(THREADS)
    if (note := bf16_note()) is not None:
        print(note, file=sys.stderr, flush=True)
    started = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    tv = _torchvision_model()
    _busy_bias(tv, torch.rand(3, 512, 512, generator=g))
    ours = import_torchvision_retinanet(tv.state_dict())
    fast = inference_model(ours)
    direct = inference_model(ours, winograd=False)

    half = inference_model(ours, bf16=True)
    tv_cl = copy.deepcopy(tv).to(memory_format=torch.channels_last)
    inference: dict[str, Any] = {}
    for size in args.sizes:
        image = torch.rand(3, size, size, generator=g)
        settings = {
            "foveal fp32 fused channels_last": _foveal_infer(fast, image, size),
            "foveal fp32 fused channels_last direct conv": _foveal_infer(direct, image, size),
            "foveal fp32 unfused contiguous": _foveal_infer(ours, image, size),
            "torchvision fp32 contiguous": _torchvision_infer(tv, image, size),
            "torchvision fp32 channels_last": _torchvision_infer(tv_cl, image, size),
            "foveal bf16 fused channels_last": _foveal_infer(half, image, size),
            "torchvision bf16 autocast contiguous": _torchvision_infer(tv, image, size, bf16=True),
            "torchvision bf16 autocast channels_last": _torchvision_infer(tv_cl, image, size, bf16=True),
        }
        gflop = _count_flops(lambda im=image, s=size: ours(_foveal_input(im, s))) / 1e9
        results = measure(settings, warmup=2, reps=args.reps)
        summary = _report(f"Inference, one {size}×{size} image", results, gflop)
        summary["agreement_fp32"] = _agreement(tv, fast, image, size)
        summary["agreement_bf16"] = _agreement(tv, half, image, size)
        print(f"  foveal vs torchvision fp32 detections: fp32 {summary['agreement_fp32']}")
        print(f"                                         bf16 {summary['agreement_bf16']}")
        inference[str(size)] = summary

    if args.skip_train:
        print(f"\nbench took {time.perf_counter() - started:.0f} s")
        return
    images = [torch.rand(3, args.train_size, args.train_size, generator=g) for _ in range(2)]
    train_settings = {
        f"{lib} fp32 {fmt}": build(copy.deepcopy(model), images, args.train_size, fmt == "channels_last")
        for lib, model, build in (("foveal", ours, _foveal_train), ("torchvision", tv, _torchvision_train))
        for fmt in ("contiguous", "channels_last")
    }
    probe = _foveal_train(copy.deepcopy(ours), images, args.train_size, False)
    step_start = time.perf_counter()
    train_gflop = _count_flops(probe) / 1e9
    reps = 3 if time.perf_counter() - step_start > 30 and args.train_reps > 3 else args.train_reps
    trains = measure(train_settings, warmup=1, reps=reps)
    train = _report(f"Training step, 2 images of {args.train_size}²", trains, train_gflop)
    elapsed = time.perf_counter() - started
    print(f"\nbench took {elapsed:.0f} s")
    if args.quick:
        return
    result = {
        "bench": "retinanet_r50_fpn_speed",
        "threads": THREADS,
        "dtype": "float32 and bfloat16 (inference); float32 (training)",
        "inference": inference,
        "train": {**train, "image_size": args.train_size, "images": 2, "reps": reps},
        "reps": {"inference": args.reps, "train": reps},
        "notes": "same weights for both (torchvision's random init with calibrated BatchNorm, imported into foveal); "
        "class bias shifted so that post-processing sees ~1000 candidates per level; pre-processing (resize by 1.0 "
        "and normalisation) timed for both; at most 100 detections for both; ratios are torchvision median time / "
        "foveal median time of each library's best setting of the given precisions",
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
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
