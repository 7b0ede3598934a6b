"""A short check of foveal's CUDA path, prepared for a machine with a GPU: agreement with the CPU, speed, training.

Run: ``python bench/gpu_check.py`` (≈ 2–3 min on one GPU after start-up; ``--device cpu --quick`` runs the same path
on the CPU as a smoke test). Writes ``$OUT/gpu_check.json`` when ``OUT`` is set, else ``bench/results/gpu_check.json``.

1. Agreement, fp32, the same weights on the CPU and on the device: EfficientNet-B0 logits, RetinaNet R50-FPN raw
   outputs (the CPU side is foveal's inference model with Winograd F(4×4, 3×3); on the device the same module falls
   back to cuDNN), U-Net overlap-tile prediction, CAM maps, sigmoid focal loss and its gradient, with TF32 off. Each
   row is the largest absolute difference relative to the largest CPU value.
2. Speed on the device (medians of interleaved rounds after a warm-up, synchronised): EfficientNet-B0 eval and SGD
   train step (batch 64, fp32 and bf16 autocast), RetinaNet R50-FPN inference of one 800² image, the paper's U-Net on
   a 572² tile.
3. Training loops on the device, each a few steps on bundled or synthetic data through the task APIs (which pick
   CUDA when it is there): classify (bundled Fashion-MNIST sample), segment (synthetic cells), detect (canvases);
   classify again with AMP (``train.precision=bf16`` and ``fp16`` with its gradient scaler).
4. Peers on the same device (``--skip-peers`` leaves them out): EfficientNet-B0 eval and train step against timm
   (fp32, bf16 autocast; foveal's eval as ``--precision bf16`` runs it), RetinaNet R50-FPN inference against
   torchvision (same weights, one 800² image, fp32 and bf16) and overlap-tile U-Net inference of a 2048² image
   against MONAI ``sliding_window_inference``; ratios are peer time / foveal time.
5. The tests marked ``cuda`` (``pytest -m cuda``; ``--skip-tests`` leaves them out), summary in the JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from _common import write_result
from foveal.engine.allocator import keep_freed_memory

RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(settings: dict[str, Callable[[], Any]], device: torch.device, reps: int) -> dict[str, float]:
    """Median seconds per call of each setting, interleaved rounds after two warm-up calls each."""
    for fn in settings.values():
        fn()
        fn()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(reps):
        for name, fn in settings.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(v) for name, v in times.items()}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _agreement(device: torch.device, quick: bool) -> dict[str, float]:
    import copy

    from foveal.explain.cam import CAM
    from foveal.inference.fast import inference_model
    from foveal.inference.tiling import predict_tiled
    from foveal.losses.focal import sigmoid_focal_loss
    from foveal.models.efficientnet import efficientnet_variant
    from foveal.models.retinanet import RetinaNet
    from foveal.models.unet import UNet

    torch.manual_seed(0)
    rows: dict[str, float] = {}
    side = 128 if quick else 224
    b0 = efficientnet_variant("b0").eval()
    x = torch.randn(4, 3, side, side)
    with torch.no_grad():
        rows["efficientnet_b0_logits"] = _relative(copy.deepcopy(b0).to(device)(x.to(device)), b0(x))
    with CAM(b0) as cam_cpu:
        on_cpu = cam_cpu(x, top_k=3).maps
    moved = copy.deepcopy(b0).to(device)
    with CAM(moved) as cam_dev:
        rows["cam_maps"] = _relative(cam_dev(x.to(device), top_k=3).maps, on_cpu)

    detector = RetinaNet("resnet50", num_classes=91).eval()
    fast = inference_model(detector)
    image = torch.randn(1, 3, 256 if quick else 512, 256 if quick else 512)
    with torch.no_grad():
        cpu_out = fast(image.contiguous(memory_format=torch.channels_last))
        dev_out = copy.deepcopy(fast).to(device)(image.to(device).contiguous(memory_format=torch.channels_last))
    rows["retinanet_cls_logits"] = _relative(dev_out.cls_logits, cpu_out.cls_logits)
    rows["retinanet_box_deltas"] = _relative(dev_out.box_deltas, cpu_out.box_deltas)

    net = UNet(1, 2, depth=3 if quick else 4, base_width=8 if quick else 16).eval()
    big = torch.rand(1, 1, 300, 340)
    tile = 100 if quick else 196
    with torch.no_grad():
        cpu_tiles = predict_tiled(net, big, tile, border=net.border, stride=net.stride)
        dev_net = copy.deepcopy(net).to(device)
        dev_tiles = predict_tiled(dev_net, big.to(device), tile, border=net.border, stride=net.stride)
    rows["unet_overlap_tile_logits"] = _relative(dev_tiles, cpu_tiles)

    logits = torch.randn(20000, 80, requires_grad=True)
    targets = (torch.rand(20000, 80) < 0.01).float()
    loss = sigmoid_focal_loss(logits, targets, reduction="sum")
    (grad,) = torch.autograd.grad(loss, logits)
    dev_logits = logits.detach().to(device).requires_grad_()
    dev_loss = sigmoid_focal_loss(dev_logits, targets.to(device), reduction="sum")
    (dev_grad,) = torch.autograd.grad(dev_loss, dev_logits)
    rows["focal_loss"] = _relative(dev_loss, loss)
    rows["focal_loss_grad"] = _relative(dev_grad, grad)
    return rows


def _speed(device: torch.device, quick: bool) -> dict[str, Any]:
    from foveal.inference.fast import inference_model
    from foveal.models.efficientnet import efficientnet_variant
    from foveal.models.layers import fuse_conv_bn
    from foveal.models.retinanet import RetinaNet
    from foveal.models.unet import UNet

    reps = 3 if quick else 10
    batch, side = (8, 128) if quick else (64, 224)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, side, side, device=device).contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, 1000, (batch,), device=device)
    eval_net = fuse_conv_bn(efficientnet_variant("b0").eval()).to(device, memory_format=torch.channels_last)
    train_net = efficientnet_variant("b0").train().to(device, memory_format=torch.channels_last)
    opt = torch.optim.SGD(train_net.parameters(), lr=1e-3, momentum=0.9)

    def infer(bf16: bool) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                return eval_net(x)

        return run

    def step(bf16: bool) -> Callable[[], Any]:
        def run() -> Any:
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                loss = torch.nn.functional.cross_entropy(train_net(x), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return run

    detector = inference_model(RetinaNet("resnet50", num_classes=91)).to(device)
    image = torch.randn(1, 3, 800 if not quick else 256, 800 if not quick else 256, device=device)
    image = image.contiguous(memory_format=torch.channels_last)
    unet = UNet(1, 2, base_width=64 if not quick else 8).eval().to(device, memory_format=torch.channels_last)
    tile = torch.randn(1, 1, 572, 572, device=device).contiguous(memory_format=torch.channels_last)

    def no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return fn()

        return run

    seconds = _timed(
        {
            "efficientnet_b0_eval_fp32": infer(False),
            "efficientnet_b0_eval_bf16": infer(True),
            "efficientnet_b0_train_fp32": step(False),
            "efficientnet_b0_train_bf16": step(True),
            "retinanet_r50_infer": no_grad(lambda: detector(image)),
            "unet_572": no_grad(lambda: unet(tile)),
        },
        device,
        reps,
    )
    images_per_s = {k: batch / v for k, v in seconds.items() if k.startswith("efficientnet")}
    return {"batch": batch, "side": side, "seconds": seconds, "efficientnet_images_per_s": images_per_s}


def _peers(device: torch.device, quick: bool) -> dict[str, Any]:
    """foveal against timm / torchvision / MONAI on ``device``: seconds per call and peer / foveal ratios."""
    import copy

    import timm
    import torchvision
    from monai.inferers import sliding_window_inference

    from foveal.inference.fast import inference_model
    from foveal.inference.tiling import predict_tiled
    from foveal.models.efficientnet import efficientnet_variant
    from foveal.models.retinanet import import_torchvision_retinanet
    from foveal.models.unet import UNet

    reps, (batch, side) = (3, (8, 128)) if quick else (10, (64, 224))
    half = torch.float16 if device.type == "cuda" else torch.bfloat16
    torch.manual_seed(0)
    x = torch.randn(batch, 3, side, side, device=device).contiguous(memory_format=torch.channels_last)
    ours = efficientnet_variant("b0").eval().to(device)
    theirs = timm.create_model("efficientnet_b0").eval().to(device, memory_format=torch.channels_last)
    fast32, fast16 = inference_model(ours), inference_model(ours, dtype=half)

    def run(model: Any, inp: torch.Tensor, amp: torch.dtype | None = None) -> Callable[[], Any]:
        def call() -> Any:
            with torch.inference_mode(), torch.autocast(device.type, amp or torch.float32, enabled=amp is not None):
                return model(inp)

        return call

    b0 = _timed(
        {
            "foveal fp32": run(fast32, x),
            f"foveal {half}": run(fast16, x.to(half)),
            "timm fp32": run(theirs, x),
            f"timm autocast {half}": run(theirs, x, half),
        },
        device,
        reps,
    )
    tv = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None).eval()
    size = 256 if quick else 800
    tv.transform.min_size, tv.transform.max_size = (size,), size
    det32 = inference_model(import_torchvision_retinanet(tv.state_dict()), device=device)
    det16 = inference_model(import_torchvision_retinanet(tv.state_dict()), dtype=half, device=device)
    tv = tv.to(device)
    image = torch.rand(3, size, size, device=device)
    norm = ((image - image.new_tensor([0.485, 0.456, 0.406])[:, None, None]) / 0.226)[None]
    r50 = _timed(
        {
            "foveal fp32": run(det32, norm.contiguous(memory_format=torch.channels_last)),
            f"foveal {half}": run(det16, norm.to(half).contiguous(memory_format=torch.channels_last)),
            "torchvision fp32": run(tv, [image]),  # type: ignore[arg-type]
            f"torchvision autocast {half}": run(tv, [image], half),  # type: ignore[arg-type]
        },
        device,
        reps,
    )
    unet = UNet(1, 2, depth=4, base_width=8 if quick else 64).eval().to(device)
    unet16 = inference_model(unet, dtype=half)
    big = torch.rand(1, 1, *((512, 512) if quick else (2048, 2048)), device=device)
    tile = 516

    class Window(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, t: torch.Tensor) -> torch.Tensor:  # mirror-pad 512 → 700, the U-Net returns 516
            y = self.net(torch.nn.functional.pad(t, (94, 94, 94, 94), mode="reflect"))
            return y[..., 2:-2, 2:-2]

    window = Window(copy.deepcopy(unet))
    seg = _timed(
        {
            "foveal fp32": lambda: predict_tiled(unet, big, tile, border=unet.border, stride=unet.stride, batch=4),
            f"foveal {half}": lambda: predict_tiled(unet16, big, tile, border=unet.border, stride=unet.stride, batch=4),
            "monai fp32": run(lambda t: sliding_window_inference(t, (512, 512), 4, window, overlap=0.25), big),
            f"monai autocast {half}": run(
                lambda t: sliding_window_inference(t, (512, 512), 4, window, overlap=0.25), big, half
            ),
        },
        device,
        max(2, reps // 3),
    )

    def ratios(times: dict[str, float], peer: str) -> dict[str, float]:
        return {f"{p} / {o}": times[p] / times[o] for p in times if p.startswith(peer) for o in times if "foveal" in o}

    return {
        "efficientnet_b0_eval": {"batch": batch, "side": side, "seconds": b0, "ratios": ratios(b0, "timm")},
        "retinanet_r50_fpn_one_image": {"size": size, "seconds": r50, "ratios": ratios(r50, "torchvision")},
        "unet_overlap_tile": {"image": list(big.shape[-2:]), "seconds": seg, "ratios": ratios(seg, "monai")},
    }


def _cuda_tests() -> dict[str, Any]:
    """``pytest -m cuda`` in a subprocess: its return code and summary line."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider", "-rfEs", "tests"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return {"returncode": proc.returncode, "summary": lines[-1] if lines else "", "tail": lines[-30:]}


def _training(quick: bool) -> dict[str, Any]:
    """A few steps of each task's training loop (the device is the task API's choice)."""
    from foveal.config import CONFIG_DIR, load_config
    from foveal.data.detection_set import build_detection_set
    from foveal.data.synthetic import write_cells_folder
    from foveal.tasks import classify, classify_train, detect, detect_train, segment, segment_train

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        steps = 3 if quick else 20
        cfg = load_config(
            classify.ClassifyConfig,
            CONFIG_DIR / "classify_demo.yaml",
            [f"train.max_steps={steps}", "train.progress=false", "data.limit=512"],
        )
        start = time.perf_counter()
        metrics = classify_train.train(cfg, run_dir=root / "classify")
        out["classify"] = {"seconds": time.perf_counter() - start, "val_top1": metrics.get("top1")}
        for precision in ("bf16", "fp16") if torch.cuda.is_available() else ("bf16",):
            amp = load_config(
                classify.ClassifyConfig,
                CONFIG_DIR / "classify_demo.yaml",
                [f"train.max_steps={steps}", "train.progress=false", "data.limit=512", f"train.precision={precision}"],
            )
            start = time.perf_counter()
            metrics = classify_train.train(amp, run_dir=root / f"classify-{precision}")
            out[f"classify_{precision}"] = {"seconds": time.perf_counter() - start, "val_top1": metrics.get("top1")}

        write_cells_folder(root / "cells", 4, (96, 96), n_cells=10)
        cfg_s = load_config(
            segment.SegmentConfig,
            None,
            [
                f"data.train={root / 'cells'}",
                "model.depth=2",
                "model.base_width=8",
                "data.tile=40",
                "data.eval_tile=40",
                "data.batch_size=2",
                f"data.samples_per_epoch={2 * steps}",
                "train.epochs=1",
                "train.progress=false",
            ],
        )
        start = time.perf_counter()
        segment_train.train(cfg_s, run_dir=root / "segment")
        out["segment"] = {"seconds": time.perf_counter() - start}

        canvases = build_detection_set(root / "canvas", source="fashion-mnist-sample", n_train=16, n_val=8, seed=0)
        cfg_d = load_config(
            detect.DetectConfig,
            CONFIG_DIR / "detect_demo.yaml",
            [f"data.train={canvases}", f"train.max_steps={steps}", "train.progress=false"],
        )
        start = time.perf_counter()
        detect_train.train(cfg_d, run_dir=root / "detect")
        out["detect"] = {"seconds": time.perf_counter() - start}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke test of the script)")
    parser.add_argument("--quick", action="store_true", help="small sizes and few repetitions")
    parser.add_argument("--skip-training", action="store_true", help="leave out the training loops")
    parser.add_argument("--skip-peers", action="store_true", help="leave out timm / torchvision / MONAI")
    parser.add_argument("--skip-tests", action="store_true", help="leave out pytest -m cuda")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it where there is one, or pass --device cpu for a smoke test")
        return 2
    keep_freed_memory()
    started = time.perf_counter()
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "quick": args.quick,
    }
    # fp32 agreement means fp32 on the device too: no TF32 in cuDNN convolutions or matmuls while comparing
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        result["agreement_relative"] = _agreement(device, args.quick)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    for name, value in result["agreement_relative"].items():
        print(f"agreement {name:<28} {value:.1e}")
    result["speed"] = _speed(device, args.quick)
    for name, value in result["speed"]["seconds"].items():
        print(f"speed     {name:<28} {value * 1e3:9.2f} ms")
    if not args.skip_training:
        if device.type != "cuda":
            print("training loops: the task APIs pick CUDA when it is there; here they run on the CPU")
        result["training"] = _training(args.quick)
        for name, value in result["training"].items():
            print(f"training  {name:<28} {value['seconds']:9.1f} s")
    if not args.skip_peers:
        result["peers"] = _peers(device, args.quick)
        for name, block in result["peers"].items():
            print(f"peers     {name:<28} {block['ratios']}")
    if not args.skip_tests:
        result["cuda_tests"] = _cuda_tests()
        print(f"pytest -m cuda: {result['cuda_tests']['summary']}")
    result["seconds"] = time.perf_counter() - started
    out = args.out or (
        Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else RESULTS / "gpu_check.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, result, indent=2)
    print(f"wrote {out} ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
