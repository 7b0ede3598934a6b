"""Weakly supervised localization with CAM on Fashion-MNIST canvases: foveal's CAM against pytorch-grad-cam's GradCAM
on the same EfficientNet, over all test canvases.

Usage: python bench/cam_localization.py [--quick] [--reuse] [--map-stride 2] [--no-map-scales] [--skip-gmp]
       [--out runs/bench-cam-localization] [key=value ...]

1. Canvases (foveal.data.localization_set, 64 × 64, one object of 20–48 px, 3 clutter fragments): training canvases
   from Fashion-MNIST's training images, a small validation set from the same images with another seed (what the
   trainer evaluates), test canvases from the test images. The full Fashion-MNIST (Debian package) when it is
   installed, else the bundled sample; the JSON says which.
2. Training with src/foveal/configs/localize_cpu.yaml on image-level labels only (key=value overrides apply); the
   training time is recorded. A second training with ``model.pool=max`` (same budget and seed) is the paper's
   GAP-vs-GMP ablation (``--skip-gmp`` leaves it out).
3. On ALL test canvases (:func:`foveal.tasks.localize_eval.evaluate_canvases`): the paper's protocol (box of the
   largest region above 20 % of the map's max, correct when the class is right and IoU ≥ 0.5): top-1 / top-5 /
   ground-truth-known localization error and classification error, and MaxBoxAccV2 (Choe et al., CVPR 2020: every
   region at map thresholds 0.00 … 0.99, IoU 0.3 / 0.5 / 0.7), for our CAM, our Grad-CAM and pytorch-grad-cam
   1.5.7's ``GradCAM`` on the same model and layer. pytorch-grad-cam min–max normalises its maps, so its 20 % is of
   the range; it is scored as it is used (MaxBoxAccV2 normalises every map alike). More CAM rows use maps on a finer
   grid from the same weights (``--map-stride``, default 2; :func:`foveal.models.efficientnet.dilated_copy`) and
   multi-scale / mirrored maps (:func:`foveal.tasks.classify_explain.multiscale`, a named deviation from the paper's
   single scale) with the scales and mirroring chosen among ``SCALE_CANDIDATES`` × (no mirror, mirror) on the validation
   canvases, never on the test canvases (``--no-map-scales`` leaves them out).

``--reuse`` evaluates the trained runs already in ``--out`` (their training figures are read from their logs) and
keeps the rows that the results JSON already holds for the same checkpoint, canvases and protocol. The
process keeps freed memory, as the ``foveal`` command does. The JSON is written after every row (``"complete":
false`` until the last), so an interrupted run keeps what it measured.

Goal: foveal's CAM at least 5 points lower top-1 localization error than pytorch-grad-cam's GradCAM on the same model
over all test canvases. Writes bench/results/cam_localization.json and prints a table. ``--quick`` runs the whole path
on a tiny budget (a smoke test; its figures mean nothing) and writes its JSON into the ``--out`` folder instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from _common import write_result
from foveal.config import CONFIG_DIR, load_config
from foveal.data.classification import DEBIAN_FASHION_MNIST
from foveal.data.localization_set import LocalizationData, build_localization_set
from foveal.engine.allocator import keep_freed_memory
from foveal.engine.checkpoint import latest_checkpoint
from foveal.explain.boxes import PAPER_THRESHOLD
from foveal.results import LocalizationReport
from foveal.tasks import classify, classify_train
from foveal.tasks.classify_explain import MapFn, localization_eval
from foveal.tasks.localize_eval import evaluate_canvases

RESULTS = Path(__file__).resolve().parent / "results"
THREADS = 2
SEEDS = {"train": 0, "val": 1, "test": 2}
FULL = {"train": 60000, "val": 1000, "test": 5000}
QUICK = {"train": 256, "val": 64, "test": 64}
GOAL_POINTS = 5.0  # foveal's CAM vs pytorch-grad-cam's GradCAM, top-1 localization error
SCALE_CANDIDATES: tuple[tuple[float, ...], ...] = (
    (1.0,),
    (1.0, 1.5),
    (1.0, 2.0),
    (1.0, 2.5),
    (1.0, 3.0),
    (1.0, 2.0, 3.0),
)
QUICK_OVERRIDES = ["train.max_steps=3", "data.batch_size=32", "model.resolution=64"]


def _peer_maps(model: torch.nn.Module) -> MapFn:
    """pytorch-grad-cam's GradCAM at our CAM layer: (N, k) classes → (N, k, H, W) maps, min–max normalised by it."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    peer = GradCAM(model=model, target_layers=[model.head])

    def maps(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        ranks = []
        for r in range(classes.shape[1]):
            targets = [ClassifierOutputTarget(int(c)) for c in classes[:, r]]
            ranks.append(torch.from_numpy(peer(input_tensor=x, targets=targets)))
        return torch.stack(ranks, 1)

    return maps


def _train(cfg_overrides: list[str], run: Path, reuse: bool) -> tuple[Path, dict[str, Any]]:
    wall = None
    if not (reuse and latest_checkpoint(run) is not None):
        cfg = load_config(classify.ClassifyConfig, CONFIG_DIR / "localize_cpu.yaml", cfg_overrides)
        started = time.perf_counter()
        classify_train.train(cfg, run_dir=run)
        wall = time.perf_counter() - started
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_top1" in r]
    rates = [r["images_per_s"] for r in records if "images_per_s" in r][1:]  # the first includes start-up
    final = latest_checkpoint(run)
    assert final is not None
    info = {
        "checkpoint": str(final),
        "steps": evals[-1]["step"] if evals else None,
        "epochs_done": evals[-1]["epoch"] if evals else None,
        "training_minutes_incl_eval": evals[-1]["time_s"] / 60 if evals else None,
        "wall_minutes_incl_startup": None if wall is None else wall / 60,
        "reused": wall is None,
        "train_images_per_s_median": sorted(rates)[len(rates) // 2] if rates else None,
        "val_top1": evals[-1]["val_top1"] if evals else None,
    }
    return final, info


def _row(report: LocalizationReport, seconds: float) -> dict[str, Any]:
    mba = report.max_box_acc
    return {
        **report.localization.to_dict(),
        "max_box_acc_v2": mba.max_box_acc_v2,
        "max_box_acc": mba.max_box_acc,
        "max_box_acc_best_threshold": mba.best_threshold,
        "box_acc_curves": {k: [round(v, 4) for v in curve] for k, curve in mba.box_acc.items()},
        "eval_seconds": round(seconds, 1),
    }


def _plans(
    name: str, with_peer: bool, map_stride: int, averaged: tuple[tuple[float, ...], bool] | None
) -> list[tuple[str, Any, int | None, tuple[tuple[float, ...], bool] | None]]:
    """(row, method, map stride, (scales, flip)) to evaluate, the head-to-head rows first."""
    if not with_peer:
        return [("cam", "cam", None, None)]
    plans: list[tuple[str, Any, int | None, tuple[tuple[float, ...], bool] | None]] = [
        ("cam", "cam", None, None),
        ("pytorch_grad_cam", "peer", None, None),
        ("gradcam", "gradcam", None, None),
    ]
    if map_stride:
        plans.append((f"cam_map_stride{map_stride}", "cam", map_stride, None))
    if averaged:
        plans.append((_averaged_name(*averaged), "cam", None, averaged))
        scales, flip = averaged
        if flip:  # what mirroring adds on the test canvases: the same scales without it, and mirroring alone
            if len(scales) > 1:
                plans.append((_averaged_name(scales, False), "cam", None, (scales, False)))
            if scales != (1.0,):
                plans.append((_averaged_name((1.0,), True), "cam", None, ((1.0,), True)))
    return plans


def _evaluate(
    checkpoint: Path,
    test: LocalizationData,
    plans: list[tuple[str, Any, int | None, tuple[tuple[float, ...], bool] | None]],
    rows: dict[str, Any],
    save: Any,
) -> None:
    """Evaluate each plan on ``test`` into ``rows``, calling ``save()`` after each."""
    for name, method, stride, views in plans:
        if name in rows:  # measured by an earlier run on the same weights and canvases (--reuse)
            print(f"  {name:<32} {_line(rows[name])}  (kept)", flush=True)
            continue
        scales, flip = views or (None, False)
        if method == "peer":
            method = _peer_maps(classify.load_classifier(checkpoint).model)
        started = time.perf_counter()
        report = evaluate_canvases(
            checkpoint, test, threshold=PAPER_THRESHOLD, method=method, map_stride=stride, map_scales=scales, flip=flip
        )
        rows[name] = _row(report, time.perf_counter() - started)
        print(f"  {name:<32} {_line(rows[name])}", flush=True)
        save()


def _earlier_rows(path: Path, name: str, info: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The rows of ``name`` that the JSON at ``path`` holds for the same checkpoint, canvases and protocol."""
    if not path.exists():
        return {}
    before = json.loads(path.read_text())
    same = all(before.get(k) == result[k] for k in ("canvases", "protocol", "objects_from"))
    if not same or before.get("training", {}).get(name, {}).get("checkpoint") != info["checkpoint"]:
        return {}
    return {
        k: v
        for k, v in before.get("results", {}).get(name, {}).items()
        if k != "averaged_maps_validation_top1_loc_error"
    }


def _averaged_name(scales: tuple[float, ...], flip: bool) -> str:
    return f"cam_map_scales{'_'.join(f'{v:g}' for v in scales)}" + ("_flip" if flip else "")


def _choose_views(checkpoint: Path, val: LocalizationData) -> tuple[tuple[tuple[float, ...], bool], dict[str, float]]:
    """The (scales, flip) setting, among :data:`SCALE_CANDIDATES` with and without mirroring, with the lowest top-1
    localization error on the validation canvases (never the test canvases), and every candidate's error."""
    candidates = [(scales, flip) for scales in SCALE_CANDIDATES for flip in (False, True) if len(scales) > 1 or flip]
    found = {
        views: localization_eval(
            checkpoint, val, threshold=PAPER_THRESHOLD, map_scales=views[0], flip=views[1]
        ).top1_loc_error
        for views in candidates
    }
    best = min(found, key=found.__getitem__)
    errors = {_averaged_name(*views): error for views, error in found.items()}
    print(f"  averaged maps on the validation canvases: {errors}; chosen {_averaged_name(*best)}", flush=True)
    return best, errors


def _ideal_map_accuracy(data: LocalizationData, grids: tuple[int, ...] = (4, 8, 16)) -> dict[str, float]:
    """Box accuracy (IoU ≥ 0.5) of an ideal g × g map, the object's own ink pooled per cell, upsampled and boxed at
    20 % of its max: the ceiling that the last conv map's grid puts on any CAM."""
    from torchvision.ops import box_iou

    from foveal.explain.boxes import maps_to_boxes

    ink = data.images.float()
    inside = torch.zeros_like(ink)
    for i, (x1, y1, x2, y2) in enumerate(data.boxes.long().tolist()):
        inside[i, :, y1:y2, x1:x2] = 1.0
    out = {}
    for g in grids:
        cells = torch.nn.functional.adaptive_avg_pool2d(ink * inside, g)
        maps = torch.nn.functional.interpolate(cells, size=ink.shape[-2:], mode="bilinear", align_corners=False)
        iou = box_iou(maps_to_boxes(maps[:, 0], PAPER_THRESHOLD), data.boxes).diagonal()
        out[f"{g}x{g}"] = float((iou >= 0.5).float().mean())
    return out


def _line(row: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "  –  " if v is None else f"{100 * v:5.1f}"

    return (
        f"top-1 loc {pct(row['top1_loc_error'])}  top-5 loc {pct(row['top5_loc_error'])}  "
        f"GT-known loc {pct(row['gt_known_loc_error'])}  top-1 cls {pct(row['top1_cls_error'])}  "
        f"MaxBoxAccV2 {pct(row['max_box_acc_v2'])}  (n={row['count']}, {row['eval_seconds']:.0f} s)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench-cam-localization")
    parser.add_argument("--quick", action="store_true", help="tiny budget: checks the path, figures mean nothing")
    parser.add_argument("--train-canvases", type=int, default=None)
    parser.add_argument("--test-canvases", type=int, default=None)
    parser.add_argument("--skip-gmp", action="store_true", help="leave out the GAP-vs-GMP ablation")
    parser.add_argument(
        "--map-stride", type=int, default=2, help="also CAM on this finer grid from the same weights (0: not)"
    )
    parser.add_argument(
        "--no-map-scales",
        action="store_true",
        help="leave out the multi-scale / mirrored CAM row (and its validation sweep)",
    )
    parser.add_argument(
        "--reuse", action="store_true", help="evaluate the runs already in --out instead of training them again"
    )
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of localize_cpu.yaml")
    args = parser.parse_args()
    keep_freed_memory()  # as the foveal command does for its training runs
    torch.set_num_threads(args.threads)
    sizes = dict(QUICK if args.quick else FULL)
    for key, value in (("train", args.train_canvases), ("test", args.test_canvases)):
        if value is not None:
            sizes[key] = value
    source = "fashion-mnist" if DEBIAN_FASHION_MNIST.is_dir() else "fashion-mnist-sample"
    print(f"objects from {source}" + ("" if source == "fashion-mnist" else " (the full set is not installed)"))

    out = Path(args.out)
    started = time.perf_counter()
    train = build_localization_set(source, "train", sizes["train"], seed=SEEDS["train"])
    val = build_localization_set(source, "train", sizes["val"], seed=SEEDS["val"])
    test = build_localization_set(source, "test", sizes["test"], seed=SEEDS["test"])
    folder = out / "canvases"
    train.write_idx(folder, "train")
    val.write_idx(folder, "test")
    made = time.perf_counter() - started
    print(f"canvases: {sizes['train']} train, {sizes['val']} val, {sizes['test']} test ({made:.0f} s)")

    overrides = [
        *(QUICK_OVERRIDES if args.quick else []),
        "train.progress=false",
        *args.overrides,
        f"data.train={folder}",
    ]
    trainings: dict[str, Any] = {}
    evaluations: dict[str, Any] = {}
    result = {
        "benchmark": "weakly supervised localization: foveal's CAM against pytorch-grad-cam's GradCAM on the same "
        "EfficientNet, 64 × 64 Fashion-MNIST canvases",
        "command": "python bench/cam_localization.py " + " ".join(sys.argv[1:]),
        "complete": False,
        "quick": args.quick,
        "objects_from": source,
        "canvases": {**sizes, "size": 64, "object_side": [20, 48], "clutter": 3, "seeds": SEEDS},
        "protocol": {
            "threshold": PAPER_THRESHOLD,
            "ours": "largest 4-connected region ≥ 20 % of the map's max; IoU ≥ 0.5 with the object's box",
            "pytorch_grad_cam": "its min–max normalised map, thresholded at 0.2 (20 % of the range), same box rule",
            "max_box_acc_v2": "Choe et al. 2020: min–max normalised map of the true class, every 8-connected region "
            "at thresholds 0.00 … 0.99, best threshold per IoU 0.3 / 0.5 / 0.7, mean over the three",
        },
        "ideal_map_box_accuracy": _ideal_map_accuracy(test),
        "recipe": "src/foveal/configs/localize_cpu.yaml",
        "overrides": args.overrides,
        "training": trainings,
        "results": evaluations,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_model(),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "note": "figures taken on a shared machine; other jobs were running (times are not comparable across rows)",
    }
    # a quick run only checks the path: its JSON stays in the run folder
    path = out / "cam_localization_quick.json" if args.quick else RESULTS / "cam_localization.json"
    path.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        write_result(path, result, indent=1)

    variants = [("gap", [])] + ([] if args.skip_gmp else [("gmp", ["model.pool=max"])])
    for name, extra in variants:
        print(f"[{name}] training with localize_cpu.yaml {' '.join(extra + args.overrides)}", flush=True)
        checkpoint, info = _train([*overrides, *extra], out / name, args.reuse)
        trainings[name] = info
        print(f"[{name}] {info['training_minutes_incl_eval']:.2f} min, {info['steps']} steps; evaluating", flush=True)
        rows: dict[str, Any] = _earlier_rows(path, name, info, result) if args.reuse else {}
        evaluations[name] = rows
        _evaluate(checkpoint, test, _plans(name, name == "gap", args.map_stride, None), rows, save)
        if name == "gap" and not args.no_map_scales:
            views, view_errors = _choose_views(checkpoint, val)
            rows["averaged_maps_validation_top1_loc_error"] = view_errors
            extra_plans = [p for p in _plans(name, True, 0, views) if p[0] not in rows]
            _evaluate(checkpoint, test, extra_plans, rows, save)
        if name == "gap":
            result["goal"] = _goal(rows)

    result["complete"] = True
    save()
    print()
    print(f"{'model / maps':<40} result")
    for model_name, model_rows in evaluations.items():
        for name, row in model_rows.items():
            if isinstance(row, dict) and "top1_loc_error" in row:
                print(f"{model_name + ' ' + name:<40} {_line(row)}")
    print(f"goal: {result['goal']}; wrote {path}")
    return 0


def _goal(rows: dict[str, Any]) -> dict[str, Any]:
    """foveal's CAM (the paper's single scale, and the best CAM row) against pytorch-grad-cam, in points."""
    peer = rows["pytorch_grad_cam"]
    cams = {name: row for name, row in rows.items() if name == "cam" or name.startswith("cam_map_")}
    best = min(cams, key=lambda name: cams[name]["top1_loc_error"])
    return {
        "top1_loc_error_points_below_pytorch_grad_cam_at_least": GOAL_POINTS,
        "cam_points_below": round(100 * (peer["top1_loc_error"] - rows["cam"]["top1_loc_error"]), 2),
        "best_cam_row": best,
        "best_cam_points_below": round(100 * (peer["top1_loc_error"] - cams[best]["top1_loc_error"]), 2),
        "cam_max_box_acc_v2_points_above": round(100 * (rows["cam"]["max_box_acc_v2"] - peer["max_box_acc_v2"]), 2),
        "met_by_cam": 100 * (peer["top1_loc_error"] - rows["cam"]["top1_loc_error"]) >= GOAL_POINTS,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
