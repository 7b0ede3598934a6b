"""COCO box evaluation speed: foveal's ``coco_evaluate`` against pycocotools (and faster-coco-eval used directly).

Run: ``python bench/coco_eval_speed.py`` (peers come from ``pip install -e ".[bench]"``). A synthetic set with a fixed
seed: 500 images of 640 × 480, 20 objects each (≈ 2 % of them crowd regions) over 80 categories, sides log-uniform in
8 … 300 px so that small, medium and large objects all occur, and 100 detections per image (≈ 50,000): jittered copies
of the objects, one in five with a wrong class, with random scores. Coordinates lie on a quarter-pixel grid, exact in
float32, so every contender sees the same numbers.

Each contender is timed as a user calls it, from data already in memory:

- foveal: ``coco_evaluate(data, detections)`` with the data opened by ``open_coco`` and the detections as per-image
  float32 tensors (what ``postprocess`` gives): building the ground truth, converting the detections and evaluating;
- pycocotools: ``COCO`` over the annotation dict (``dataset`` + ``createIndex``), ``loadRes`` of the results list,
  ``COCOeval`` ``evaluate`` / ``accumulate`` / ``summarize``;
- faster-coco-eval: the same calls with its ``COCO`` and ``COCOeval_faster``.

Reading JSON files is left out for all. Peers mutate their inputs, so each repetition gets fresh copies, made outside
the timing; a full garbage collection runs before every timed call. Everyone runs with two threads. Warm-up, then
interleaved rounds (one call of each contender per round); min / median / max seconds and the ratios of medians.
The 12 summary numbers of every contender must be identical. Writes ``bench/results/coco_eval_speed.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import io
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from _common import write_result
from foveal.data.coco import open_coco
from foveal.metrics.detection import coco_evaluate
from foveal.results import STAT_NAMES

IMAGES, OBJECTS, DETECTIONS, CATEGORIES = 500, 20, 100, 80
WIDTH, HEIGHT = 640, 480
CROWD = 0.02
THREADS = 2


def _quarter(x: np.ndarray) -> np.ndarray:
    return np.round(x * 4) / 4


def synthetic_set(seed: int = 0) -> tuple[dict[str, Any], list[dict[str, torch.Tensor]]]:
    """A COCO annotation dict and per-image detections ``{"boxes" xyxy, "scores", "labels"}`` (float32 tensors)."""
    rng = np.random.default_rng(seed)
    images, annotations, detections = [], [], []
    for i in range(IMAGES):
        images.append({"id": i + 1, "file_name": f"{i:06d}.png", "width": WIDTH, "height": HEIGHT})
        wh = _quarter(np.exp(rng.uniform(np.log(8), np.log(300), (OBJECTS, 2))))
        xy = _quarter(rng.uniform(0, 1, (OBJECTS, 2)) * ([WIDTH, HEIGHT] - wh))
        labels = rng.integers(0, CATEGORIES, OBJECTS)
        crowd = rng.random(OBJECTS) < CROWD
        for (x, y), (w, h), label, c in zip(xy.tolist(), wh.tolist(), labels.tolist(), crowd.tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": label + 1,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(c),
                }
            )
        source = rng.integers(0, OBJECTS, DETECTIONS)
        centre = xy[source] + wh[source] / 2 + rng.normal(0, 0.1, (DETECTIONS, 2)) * wh[source]
        size = np.maximum(wh[source] * np.exp(rng.normal(0, 0.15, (DETECTIONS, 2))), 1.0)
        boxes = _quarter(np.concatenate([centre - size / 2, centre + size / 2], axis=1))
        wrong = rng.random(DETECTIONS) < 0.2
        det_labels = np.where(wrong, rng.integers(0, CATEGORIES, DETECTIONS), labels[source])
        detections.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "scores": torch.tensor(rng.random(DETECTIONS), dtype=torch.float32),
                "labels": torch.tensor(det_labels, dtype=torch.int64),
            }
        )
    categories = [{"id": c + 1, "name": f"class {c + 1}"} for c in range(CATEGORIES)]
    return {"images": images, "annotations": annotations, "categories": categories}, detections


def results_list(document: dict[str, Any], detections: list[dict[str, torch.Tensor]]) -> list[dict[str, Any]]:
    """The detections in COCO's results format (what a results JSON file holds), from the same float32 numbers."""
    out = []
    for image, det in zip(document["images"], detections, strict=True):
        boxes = det["boxes"].double()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        for b, s, label in zip(xywh, det["scores"].double().tolist(), det["labels"].tolist(), strict=True):
            out.append({"image_id": image["id"], "category_id": label + 1, "bbox": b, "score": s})
    return out


def _pycocotools(gt: dict[str, Any], results: list[dict[str, Any]]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats)


def _faster_coco_eval(gt: dict[str, Any], results: list[dict[str, Any]]) -> np.ndarray:
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO(gt)
    evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(results), "bbox", print_function=lambda *a, **k: None)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return np.asarray(evaluator.stats[:12])


def _measure(
    contenders: dict[str, Callable[[], Callable[[], np.ndarray]]], warmup: int, reps: int
) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Each contender is a factory: it prepares fresh inputs (untimed) and returns the call to time."""
    stats: dict[str, np.ndarray] = {}
    for name, prepare in contenders.items():
        for _ in range(warmup):
            stats[name] = prepare()()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, prepare in contenders.items():
            call = prepare()
            gc.collect()
            start = time.perf_counter()
            stats[name] = call()
            times[name].append(time.perf_counter() - start)
    return times, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="measured rounds (median of these)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "coco_eval_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)

    document, detections = synthetic_set()
    results = results_list(document, detections)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for entry in document["images"]:  # a real COCO folder: blank images of the listed sizes
            Image.new("L", (WIDTH, HEIGHT)).save(root / entry["file_name"])
        (root / "instances_bench.json").write_text(json.dumps(document))
        data = open_coco(root / "instances_bench.json", channels=1)

    def ours() -> Callable[[], np.ndarray]:
        return lambda: np.asarray(coco_evaluate(data, detections).stats)

    def peer(run: Callable[[dict[str, Any], list[dict[str, Any]]], np.ndarray]) -> Callable[[], Callable[[], Any]]:
        def prepare() -> Callable[[], np.ndarray]:
            gt, res = copy.deepcopy(document), copy.deepcopy(results)
            return lambda: run(gt, res)

        return prepare

    contenders = {"foveal": ours, "pycocotools": peer(_pycocotools), "faster-coco-eval": peer(_faster_coco_eval)}
    started = time.perf_counter()
    times, stats = _measure(contenders, warmup=1, reps=args.reps)
    elapsed = time.perf_counter() - started

    n_gt = sum(1 for a in document["annotations"] if not a["iscrowd"])
    n_crowd = len(document["annotations"]) - n_gt
    print(
        f"COCO box evaluation, {IMAGES} images, {n_gt} boxes (+{n_crowd} crowd), {len(results)} detections, "
        f"{THREADS} threads"
    )
    print(f"  {'contender':18s} {'min':>7s} {'median':>7s} {'max':>7s}  (seconds)")
    summary: dict[str, Any] = {}
    for name, vals in times.items():
        med = statistics.median(vals)
        summary[name] = {"min": min(vals), "median": med, "max": max(vals), "all": vals}
        print(f"  {name:18s} {min(vals):7.3f} {med:7.3f} {max(vals):7.3f}")
    ours_median = summary["foveal"]["median"]
    speedups = {name: summary[name]["median"] / ours_median for name in ("pycocotools", "faster-coco-eval")}
    reference = stats["pycocotools"]
    identical = {name: bool(np.array_equal(s, reference)) for name, s in stats.items()}
    max_diff = {name: float(np.abs(s - reference).max()) for name, s in stats.items()}
    for name, ratio in speedups.items():
        print(f"  foveal is {ratio:.2f}× faster than {name} (medians)")
    print(f"  12 statistics identical to pycocotools: {identical}")
    print("  " + "  ".join(f"{n}={v:.4f}" for n, v in zip(STAT_NAMES, stats["foveal"], strict=True)))

    out = {
        "bench": "coco_eval_speed",
        "images": IMAGES,
        "boxes": n_gt,
        "crowd_regions": n_crowd,
        "detections": len(results),
        "categories": CATEGORIES,
        "threads": THREADS,
        "reps": args.reps,
        "seconds": summary,
        "speedup_ours_over_peer": speedups,
        "time_ratio_ours_over_pycocotools": 1 / speedups["pycocotools"],
        "stats": dict(zip(STAT_NAMES, stats["foveal"].tolist(), strict=True)),
        "stats_identical_to_pycocotools": identical,
        "max_abs_stat_difference": max_diff,
        "notes": (
            "foveal = coco_evaluate with the faster-coco-eval backend, as a user calls it (ground truth built from "
            "DetectionData, detections converted from tensors, the garbage collector paused during the call); peers "
            "called on in-memory dicts, JSON parsing excluded for all; figures taken on the shared 2-core machine "
            "with other work running"
        ),
        "versions": _versions(),
        "machine": platform.processor() or platform.machine(),
        "seconds_total": elapsed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, out, indent=2)
    print(f"wrote {args.out}")


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {
        "faster-coco-eval": version("faster-coco-eval"),
        "pycocotools": version("pycocotools"),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


if __name__ == "__main__":
    main()
