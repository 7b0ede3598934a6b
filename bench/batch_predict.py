"""``foveal predict`` end to end against the network alone: does the streaming pipeline keep the model busy?

Run: ``python bench/batch_predict.py`` (writes ``bench/results/batch_predict.json``). For each model, in interleaved
rounds after a warm-up (bench/_common.measure):

- ``forward``: the network's forward pass (``inference_mode``, as the predictor runs it: BatchNorm folded,
  channels-last for the classifier) on one batch of ``B`` already prepared images, images/s = B / time;
- ``predict``: :func:`foveal.tasks.predict.run_predict` (what ``foveal predict CKPT FOLDER --out OUT --batch-size B
  --workers W`` runs, minus the interpreter's start-up) over a folder of ``N`` image files: model loading, decoding
  and resizing in ``W`` DataLoader worker processes, the forward passes, post-processing, per-image outputs, the
  records (fsync'd per batch) and the final files; images/s = N / time.

The ratio predict / forward is the share of the network's speed that the pipeline delivers (goal ≥ 0.9).

Models (random weights: speed does not depend on them): EfficientNet-B0 (the paper's B0, 224² RGB, 1000 classes) on
256² JPEG files (decoded, resized and centre-cropped to 224 as evaluation does); the detector of
``configs/detect_cpu.yaml`` (RetinaNet, ResNet-18-FPN of 64 channels, 10 classes) on 128² grayscale PNG canvases,
its outputs a detections figure per image and the COCO results JSON. The network runs on ``--threads`` threads (default
1) and decoding in ``--workers`` processes (default 1): on a 2-core machine each gets one core.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from _common import measure, spread, write_result
from foveal.config import load_config, to_dict
from foveal.engine.checkpoint import save_checkpoint

RESULTS = Path(__file__).parent / "results" / "batch_predict.json"
CONFIGS = Path(__file__).parent.parent / "configs"


def _classifier(folder: Path) -> Path:
    from foveal.tasks import classify

    torch.manual_seed(0)
    cfg = load_config(classify.ClassifyConfig, None, ["model.name=efficientnet", "model.phi=0"])
    model = classify.build_classifier(cfg.model, 1000, 3).eval()
    meta = {
        "task": "classify",
        "model": {"arch": "efficientnet", "args": model.args},
        "config": to_dict(cfg),
        "classes": [f"class{i}" for i in range(1000)],
        "input": {"resolution": 224, "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    }
    return save_checkpoint(folder / "b0", model=model, meta=meta, with_rng=False)


def _detector(folder: Path) -> Path:
    from foveal.tasks import detect

    torch.manual_seed(0)
    cfg = load_config(detect.DetectConfig, CONFIGS / "detect_cpu.yaml", [])
    model = detect.build_detector(cfg.model, 10, 1).eval()
    names = [f"class{i}" for i in range(10)]
    meta = {
        "task": "detect",
        "model": {"arch": "retinanet", "args": model.args},
        "config": to_dict(cfg),
        "classes": names,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)],
        "input": {"channels": 1, "min_size": 128, "max_size": 128, "mean": [0.124], "std": [0.263]},
    }
    return save_checkpoint(folder / "detector", model=model, meta=meta, with_rng=False)


def _images(folder: Path, n: int, size: int, rgb: bool, suffix: str) -> Path:
    """``n`` smooth random images (blocks of noise upsampled: they compress like photographs, not like noise)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (size // 16, size // 16, 3) if rgb else (size // 16, size // 16)
        small = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        small.resize((size, size), Image.BILINEAR).save(folder / f"img{i:05d}{suffix}", quality=90)
    return folder


def _forward(checkpoint: Path, task: str, folder: Path, batch: int) -> Callable[[], Any]:
    """The network's forward pass on one batch of prepared images, as the task's predictor runs it."""
    from foveal.tasks.predict import PredictRequest, build
    from foveal.tasks.table import task_spec

    predictor, _ = build(task_spec(task), PredictRequest(str(checkpoint), (str(folder),)))
    paths = sorted(folder.iterdir())[:batch]
    prepared = [predictor.prepare(p) for p in paths]
    if task == "classify":
        model = predictor.clf.model  # type: ignore[attr-defined]
        x = torch.stack(prepared).contiguous(memory_format=torch.channels_last)
    else:
        from foveal.data.box_transforms import collate_detection
        from foveal.engine.device import to_device, uses_channels_last

        model = predictor.det.model  # type: ignore[attr-defined]
        images = collate_detection([sample for _, sample in prepared]).images
        x = to_device(images, torch.device("cpu"), torch.float32, uses_channels_last(model))  # as detect_batch does

    def run() -> Any:
        with torch.inference_mode():
            return model(x)

    return run


def _predict(checkpoint: Path, folder: Path, out: Path, batch: int, workers: int) -> Callable[[], Any]:
    from foveal.tasks.predict import PredictRequest, run_predict

    req = PredictRequest(str(checkpoint), (str(folder),), out=str(out), batch_size=batch, workers=workers)
    return lambda: run_predict(PredictRequest(**{**req.__dict__, "progress": False}))


def _case(
    name: str, task: str, ckpt: Path, images: Path, out: Path, args: argparse.Namespace, batch: int
) -> dict[str, Any]:
    n = sum(1 for _ in images.iterdir())
    times = measure(
        {"forward": _forward(ckpt, task, images, batch), "predict": _predict(ckpt, images, out, batch, args.workers)},
        warmup=1,
        reps=args.reps,
    )
    forward = [batch / t for t in times["forward"]]
    predict = [n / t for t in times["predict"]]
    ratio = statistics.median(predict) / statistics.median(forward)
    print(
        f"{name}: forward {statistics.median(forward):.1f} img/s, predict {statistics.median(predict):.1f} img/s, "
        f"ratio {ratio:.3f}",
        flush=True,
    )
    return {
        "task": task,
        "images": n,
        "batch_size": batch,
        "workers": args.workers,
        "forward_images_per_s": spread(forward),
        "predict_images_per_s": spread(predict),
        "ratio_predict_to_forward": ratio,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="images per predict run (default 256)")
    parser.add_argument("--batch-size", type=int, default=32, help="classifier batch (default 32)")
    parser.add_argument("--detect-batch-size", type=int, default=8, help="detector batch (default 8)")
    parser.add_argument("--workers", type=int, default=1, help="decoding worker processes (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the network (default 1)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--only", choices=["classify", "detect"], help="run one model only")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="free text stored with the result (e.g. other jobs running)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-batch-predict-") as tmp:
        root = Path(tmp)
        if args.only in (None, "classify"):
            images = _images(root / "jpeg", args.images, 256, True, ".jpg")
            ckpt = _classifier(root)
            results["efficientnet_b0"] = _case(
                "efficientnet_b0", "classify", ckpt, images, root / "out-c", args, args.batch_size
            )
        if args.only in (None, "detect"):
            images = _images(root / "png", args.images, 128, False, ".png")
            ckpt = _detector(root)
            results["retinanet_r18_fpn"] = _case(
                "retinanet_r18_fpn", "detect", ckpt, images, root / "out-d", args, args.detect_batch_size
            )
    write_result(args.out, {"threads": args.threads, "results": results, "run_note": args.note})


if __name__ == "__main__":
    main()
