"""What bf16 inference costs in accuracy, on the project's own models and data: fp32 against bf16 (``--precision``).

Models: the bundled demo weights where they fit (``data/samples/demo-weights``: the CAM classifier of
``localize_cpu.yaml`` on 64² localization canvases, and the RetinaNet of ``detect_cpu.yaml``; see their PROVENANCE.md),
and two models trained here with the bundled recipes when ``runs/bench-bf16/`` does not hold them yet: a classifier
(``classify_cpu`` on the full Fashion-MNIST, 0.6 epoch so that the cosine schedule ends within the budget) and a U-Net
(``segment_cpu`` on the nuclei sample, split at column 384, 40 epochs), one thread each. Then, for the same weights run
once in fp32 and once in bf16 (the BatchNorm-folded channels-last copy, as ``foveal eval --precision bf16`` runs it):

- classification: top-1 agreement with fp32 (goal ≥ 99.5 %) and the accuracy of each, on the Fashion-MNIST test split
  (trained classifier) and on localization canvases built from the test images (bundled CAM classifier);
- CAM (bundled classifier, canvases): the box (20 % of the max) of fp32's top-1 class's map from both, agreement at
  IoU ≥ 0.5 and the mean IoU, and each one's box accuracy against the objects' boxes;
- segmentation: pixel label agreement, foreground IoU and instance F1 @ 0.5 of each;
- detection (bundled RetinaNet, the demo's 48 validation canvases): COCO AP of each (goal: |ΔAP| ≤ 0.3 points).

``python bench/bf16_agreement.py`` writes ``bench/results/bf16_agreement.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torchvision.ops import box_iou

from _common import bf16_note, write_result
from foveal.config import CONFIG_DIR, load_config
from foveal.demo import DETECTOR, LOCALIZER
from foveal.engine.allocator import keep_freed_memory
from foveal.explain.boxes import maps_to_boxes
from foveal.explain.upsample import grid_of, upsample_maps
from foveal.tasks import (
    classify,
    classify_explain,
    classify_train,
    detect_eval,
    explain_common,
    segment,
    segment_eval,
    segment_train,
)

RESULTS = Path(__file__).resolve().parent / "results"
RUNS = Path("runs/bench-bf16")
FULL_FASHION = Path("/usr/share/datasets/fashion-mnist")


def _train(module: Any, config_cls: Any, recipe: str, run: Path, overrides: list[str]) -> float:
    """Train ``recipe`` into ``run`` unless it holds a best checkpoint; minutes spent."""
    if (run / "checkpoints" / "best").is_dir():
        return 0.0
    cfg = load_config(config_cls, CONFIG_DIR / f"{recipe}.yaml", [*overrides, "train.progress=false"])
    start = time.perf_counter()
    module.train(cfg, run_dir=run, device="cpu")
    return (time.perf_counter() - start) / 60


@torch.no_grad()
def _predict(models: dict[str, Any], x_all: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Top-1 class of every image from each model, and the seconds each took."""
    preds, seconds = {}, {}
    for name, clf in models.items():
        start = time.perf_counter()
        out = [
            clf.model(explain_common.on_model(x_all[i : i + 256], clf.model)).float() for i in range(0, len(x_all), 256)
        ]
        seconds[name] = time.perf_counter() - start
        preds[name] = torch.cat(out).argmax(1)
    return preds, seconds


@torch.no_grad()
def _classification(checkpoint: Path, data: Any, cam_images: int, truth: torch.Tensor | None) -> dict[str, Any]:
    """Top-1 agreement and accuracy of fp32 and bf16 on ``data``; with ``truth`` (N, 4) object boxes, also the CAM
    box agreement on the first ``cam_images`` images and each one's box accuracy (IoU ≥ 0.5 with the object)."""
    models = {p: classify.load_classifier(checkpoint, fast=True, device="cpu", precision=p) for p in ("fp32", "bf16")}
    ref = models["fp32"]
    samples = classify.ClassifySamples(data, classify.eval_transform(ref.resolution), ref.mean, ref.std)
    x_all = torch.stack([samples[i][0] for i in range(len(samples))])
    labels = torch.tensor([samples[i][1] for i in range(len(samples))])
    preds, seconds = _predict(models, x_all)
    accuracy = {name: float((p == labels).float().mean()) for name, p in preds.items()}
    out: dict[str, Any] = {
        "images": len(labels),
        "top1_agreement": float((preds["fp32"] == preds["bf16"]).float().mean()),
        "top1_fp32": accuracy["fp32"],
        "top1_bf16": accuracy["bf16"],
        "top1_delta_points": 100 * (accuracy["bf16"] - accuracy["fp32"]),
        "seconds": seconds,
    }
    if truth is None:
        return out
    x, classes = x_all[:cam_images], preds["fp32"][:cam_images, None]
    boxes = {}
    for name, clf in models.items():
        grid = grid_of(clf.model)
        with classify_explain.class_maps(clf.model, "cam") as maps_of:
            maps = torch.cat(
                [
                    maps_of(explain_common.on_model(x[i : i + 256], clf.model), classes[i : i + 256]).float()
                    for i in range(0, len(x), 256)
                ]
            )
        boxes[name] = maps_to_boxes(upsample_maps(maps, tuple(x.shape[-2:]), grid), 0.2)[:, 0]
    iou = box_iou(boxes["fp32"], boxes["bf16"]).diagonal()
    hits = {name: box_iou(b, truth[: len(x)].float()).diagonal() >= 0.5 for name, b in boxes.items()}
    return {
        **out,
        "cam_images": len(x),
        "cam_box_agreement_iou50": float((iou >= 0.5).float().mean()),
        "cam_box_mean_iou": float(iou.mean()),
        "cam_box_accuracy_fp32": float(hits["fp32"].float().mean()),
        "cam_box_accuracy_bf16": float(hits["bf16"].float().mean()),
    }


def _segmentation(run: Path) -> dict[str, Any]:
    from foveal.data.segmentation import open_segmentation

    out: dict[str, Any] = {}
    for name in ("fp32", "bf16"):
        s = segment_eval.evaluate_checkpoint(run, None, None, device="cpu", precision=name).summary()
        out[name] = {k: s[k] for k in ("fg_iou", "f1_50", "ap") if k in s}
    image = open_segmentation("nuclei-sample").images[0]  # the whole 256 × 512 image, both halves
    labels = {}
    for name in ("fp32", "bf16"):
        seg = segment.load_segmenter(run, fast=True, device="cpu", precision=name)
        labels[name] = segment.predict_logits(seg.model, image, seg.config.data.eval_tile).argmax(0)
    out["pixel_label_agreement"] = float((labels["fp32"] == labels["bf16"]).float().mean())
    out["f1_50_delta"] = out["bf16"].get("f1_50", 0.0) - out["fp32"].get("f1_50", 0.0)
    return out


def _detection(checkpoint: Path) -> dict[str, Any]:
    result = {
        name: detect_eval.evaluate_checkpoint(checkpoint, "fashion-canvas-sample", "val", device="cpu", precision=name)
        for name in ("fp32", "bf16")
    }
    ap = {name: r.ap for name, r in result.items()}
    return {
        "AP_fp32": ap["fp32"],
        "AP_bf16": ap["bf16"],
        "AP_delta_points": 100 * (ap["bf16"] - ap["fp32"]),
        "AP50_fp32": result["fp32"].ap50,
        "AP50_bf16": result["bf16"].ap50,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="training cap per trained model (default 30)")
    parser.add_argument("--cam-images", type=int, default=2000)
    parser.add_argument("--canvases", type=int, default=5000, help="localization canvases (test images, seed 2)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "bf16_agreement.json")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    if (note := bf16_note()) is not None:
        print(note, file=sys.stderr, flush=True)
    from foveal.data.classification import open_dataset
    from foveal.data.localization_set import build_localization_set

    fashion = "fashion-mnist" if FULL_FASHION.is_dir() else "fashion-mnist-sample"
    common = [f"train.max_minutes={args.minutes}", f"train.threads={args.threads}"]
    minutes = {
        "classify": _train(
            classify_train,
            classify.ClassifyConfig,
            "classify_cpu",
            RUNS / "classify",
            [f"data.train={fashion}", *common, "train.epochs=0.6", "optim.warmup_epochs=0.05", "train.eval_every=1"],
        ),
        "segment": _train(
            segment_train, segment.SegmentConfig, "segment_cpu", RUNS / "segment", [*common, "train.epochs=40"]
        ),
    }
    canvases = build_localization_set(fashion, "test", args.canvases, seed=2)
    result: dict[str, Any] = {
        "what": "fp32 against bf16 inference (foveal's BatchNorm-folded channels-last copy) with the same weights",
        "command": "python bench/bf16_agreement.py " + " ".join(sys.argv[1:]),
        "training_minutes": minutes,
        "note": "shared machine, other jobs running; seconds are not comparable",
    }
    result["classification"] = {
        "model": str(RUNS / "classify"),
        "data": f"{fashion} test split",
        **_classification(RUNS / "classify", open_dataset(fashion, "test", channels=1), 0, None),
    }
    write_result(args.out, result)
    result["classification_canvases"] = {
        "model": "bundled demo-weights/localize",
        "data": f"{args.canvases} localization canvases of {fashion} test images (64², seed 2)",
        **_classification(LOCALIZER, canvases.to_classification(), args.cam_images, canvases.boxes),
    }
    write_result(args.out, result)
    result["detection"] = {"model": "bundled demo-weights/detect", "data": "fashion-canvas-sample val"}
    result["detection"].update(_detection(DETECTOR))
    write_result(args.out, result)
    result["segmentation"] = {
        "model": str(RUNS / "segment"),
        "data": "nuclei-sample, columns 384-511 (metrics), whole image (labels)",
        **_segmentation(RUNS / "segment"),
    }
    write_result(args.out, result)
    print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
