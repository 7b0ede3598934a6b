"""``foveal demo``: the main job on bundled data, start to finish, into one output folder with one report.

Classification stage: train a small EfficientNet on the bundled Fashion-MNIST sample (3 short epochs), evaluate
it (metrics, confusion matrix, the most confident mistakes), predict a handful of test images and export it to ONNX.

Explanation stage: class activation maps (the paper's top-5 panels and map boxes, with the true box) of canvases with
one garment each, made from the sample's TEST images, from the bundled localization classifier
(``data/samples/demo-weights/localize``: ``configs/localize_cpu.yaml`` trained on canvases of Fashion-MNIST's
training images; see its PROVENANCE.md); ``localization_check.json`` records whether each map's peak lies inside the
garment and how well its box overlaps it.

Segmentation stage: draw the border weight map of the bundled nuclei labels (the paper's Fig. 3), train a small
U-Net on the image's left 384 columns, evaluate it on the right 128 (pixel and instance metrics, TP / FP / FN
panels), and segment the whole image by overlap-tile inference (label image + overlay).

Detection stage: a short RetinaNet training on the bundled canvas sample (to show training; 80 steps are too short to
detect well), then the bundled detector (``data/samples/demo-weights/detect``, ``configs/detect_cpu.yaml`` with a
small EfficientNet backbone, trained on 8,000 canvases of Fashion-MNIST's training images) evaluated on the sample's
validation canvases (from the test images): COCO AP, PR curves and images coloured TP / FP / FN.

Every stage writes its reports; the demo ends with ``report.html`` in the output folder, which links them all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foveal.config import CONFIG_DIR, load_config
from foveal.errors import FovealError

if TYPE_CHECKING:
    from foveal.tasks.predict import PredictOutcome

DEMO_WEIGHTS = Path(__file__).resolve().parent / "data" / "samples" / "demo-weights"
LOCALIZER = DEMO_WEIGHTS / "localize"
DETECTOR = DEMO_WEIGHTS / "detect"
CANVAS_SEED = 2
"""Seed of the demo's explained canvases (the localization benchmark's test seed)."""
CLASSIFY_SHORT = (
    "model.stem_stride=2",
    "train.epochs=8",
    "train.eval_every=8",
    "optim.warmup_epochs=0.25",
    "optim.lr=0.03",
    "model.dropout=0",
    "model.drop_path=0",
)
"""The demo's cut of ``classify_demo.yaml`` (its time budget is 4 minutes on 2 cores): a stride-2 stem (16² maps after
it, a quarter of the stride-1 stem's cost per step) for 8 epochs, validated once at the end, at a learning rate of 0.03
and without dropout or stochastic depth, which so short a run on 3,000 images does not need. On the sample's 1,000 test
images: top-1 70.7 % (the same for 3 epochs at the recipe's rate 0.1 with dropout: 23.8 %)."""
SHOW_SCORE = 0.4
"""Score from which the demo's detection figures draw a box: chosen on the bundled training canvases, where 66 % of
the boxes so shown have the right class and place (54 % from 0.3, the figures' default; 77 % from 0.5, but then a
canvas shows one garment of four)."""

DETECT_SHORT = ("train.epochs=4", "train.eval_every=4")
"""The demo's cut of ``detect_demo.yaml``: 80 steps, to show training (the bundled detector is what detects)."""


def _save_sample_images(out: Path, count: int) -> list[Path]:
    from PIL import Image

    from foveal.data.classification import open_dataset

    data = open_dataset("fashion-mnist-sample", "test")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image, label = data.get(i)
        path = out / f"test{i:03d}-{_slug(data.classes[label])}.png"
        Image.fromarray(image[0].numpy()).save(path)
        paths.append(path)
    return paths


def _slug(name: str) -> str:
    return name.replace("/", "-").replace(" ", "-").lower()


@dataclass(frozen=True)
class Placement:
    """Where the demo's networks run: ``device`` for training and inference, ``precision`` for evaluation,
    prediction and explanation (training keeps its recipe's number format, ``auto``: bf16 only where the device
    computes it natively)."""

    device: str = "auto"
    precision: str = "auto"

    @property
    def inference(self) -> dict[str, Any]:
        """The ``device`` / ``precision`` keywords of the evaluate, predict and explain functions."""
        return {"device": self.device, "precision": self.precision}


def run_demo(
    out: Path,
    quick: bool = False,
    stages: tuple[str, ...] = ("classify", "explain", "segment", "detect"),
    device: str = "auto",
    precision: str = "auto",
) -> Path:
    """Run the demo's ``stages`` into ``out``, write ``out/report.html`` linking every stage, and return ``out``.

    Each stage's wall-clock and CPU seconds are printed and recorded in ``out/run_info.json``.

    Raises:
        FovealError: a device or precision this machine lacks (before anything is written), or ``out`` is a file.
    """
    from foveal.engine.device import placement, resolve_device, resolve_precision
    from foveal.engine.runinfo import write_run_info
    from foveal.report.build import write_report

    where = resolve_device(device)  # a device the machine lacks is an error before anything is written
    place = Placement(str(where), resolve_precision(precision, where).requested)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FovealError(f"demo output {out} exists and is not a folder: choose another out", options=("out",))
    started = time.time()
    records = []
    for name, stage in STAGES:
        if name not in stages:
            continue
        wall, cpu = time.perf_counter(), time.process_time()
        record = stage(out, quick, place)
        record["seconds"] = {"wall": round(time.perf_counter() - wall, 1), "cpu": round(time.process_time() - cpu, 1)}
        print(f"[demo] {name} stage: {record['seconds']['wall']:.0f} s wall, {record['seconds']['cpu']:.0f} s CPU")
        record["numbers"]["stage time (wall / CPU)"] = (
            f"{record['seconds']['wall']:.0f} s / {record['seconds']['cpu']:.0f} s"
        )
        records.append(record)
    write_run_info(out, "demo", started, stages=records, quick=quick, **placement(place.device, place.precision))
    print(f"[demo] report: {write_report(out)}")
    return out


def _report(folder: Path, out: Path) -> str:
    """Write ``folder``'s report and return its path relative to ``out``."""
    from foveal.report.build import write_report

    return str(write_report(folder).relative_to(out))


def _predict(checkpoint: Path, images: list[Path], place: Placement, **options: Any) -> PredictOutcome:
    """``foveal predict`` of ``images`` (its batched predictor and writer, :mod:`foveal.tasks.predict`)."""
    from foveal.tasks.predict import PredictRequest, run_predict

    inputs = tuple(str(p) for p in images)
    return run_predict(PredictRequest(str(checkpoint), inputs, **options, progress=False, **place.inference))


def _records(done: PredictOutcome) -> list[dict[str, Any]]:
    """The prediction records of a run with an output folder."""
    from foveal.inference.batch_predict import PREDICTIONS, iter_records

    return list(iter_records(Path(str(done.out)) / PREDICTIONS))


# -- classification --------------------------------------------------------------------------------------------------
def _classify_stage(out: Path, quick: bool, place: Placement) -> dict[str, Any]:
    from foveal.inference.export import check_onnx, export_onnx
    from foveal.report.tables import format_metrics
    from foveal.tasks import classify, classify_eval, classify_train

    quick_cut = ["train.max_steps=12", "data.limit=384", "data.val_limit=200"] if quick else []
    overrides = [*CLASSIFY_SHORT, *quick_cut]
    cfg = load_config(classify.ClassifyConfig, CONFIG_DIR / "classify_demo.yaml", overrides)
    stage = out / "classify"
    run_dir = stage / "run"
    print(f"[classify] training {cfg.model.name} (phi={cfg.model.phi}) on the bundled Fashion-MNIST sample")
    classify_train.train(cfg, run_dir=run_dir, device=place.device)

    print("[classify] evaluating on the sample's 1000 test images")
    result = classify_eval.evaluate_checkpoint(run_dir, None, "test", stage / "eval", **place.inference)
    (stage / "eval" / "metrics.txt").write_text(format_metrics(result) + "\n")
    print(format_metrics(result))

    print("[classify] predicting a few test images")
    images = _save_sample_images(stage / "images", 8)
    done = _predict(run_dir, images, place, top_k=3, json=stage / "predictions.json", csv=stage / "predictions.csv")
    print(done.table)

    print("[classify] exporting to ONNX")
    import torch

    clf = classify.load_classifier(run_dir, device=place.device)  # traced from an fp32 CPU copy, checked on the device
    onnx_path = export_onnx(clf.model, stage / "model.onnx", clf.channels, clf.resolution)
    x = torch.randn(2, clf.channels, clf.resolution, clf.resolution, device=place.device)
    print(f"[classify] {onnx_path}: onnxruntime vs torch max |difference| {check_onnx(clf.model, onnx_path, x):.2e}")
    return {
        "name": "classify",
        "title": "Classification: EfficientNet on Fashion-MNIST",
        "summary": f"A φ = {cfg.model.phi:g} EfficientNet trained here on the bundled 3,000-image sample, evaluated on "
        f"its 1,000 test images, exported to ONNX ({onnx_path.name}).",
        "reports": {"training run": _report(run_dir, out), "evaluation": _report(stage / "eval", out)},
        "numbers": {"top-1 accuracy": f"{100 * result.top1:.1f} %", "top-5 accuracy": f"{100 * result.top5:.1f} %"},
        "figures": {"confusion matrix": "classify/eval/confusion.png"},
    }


# -- explanation -----------------------------------------------------------------------------------------------------
def demo_canvases(n: int, seed: int = CANVAS_SEED) -> Any:
    """``n`` localization canvases (64², one garment, clutter) from the bundled sample's TEST images, cycling through
    the classes in order (class i % 10 for canvas i) so that every garment is shown."""
    from foveal.data.localization_set import LocalizationData, build_localization_set

    pool = build_localization_set("fashion-mnist-sample", "test", max(60, 8 * n), seed=seed)
    chosen: list[int] = []
    for i in range(n):
        want = i % len(pool.classes)
        chosen.append(next(j for j, c in enumerate(pool.labels.tolist()) if c == want and j not in chosen))
    return LocalizationData(pool.images[chosen], pool.labels[chosen], pool.boxes[chosen], pool.classes, pool.source)


def localization_outcomes(
    records: list[Any], labels: list[int], boxes: list[list[float]], classes: list[str]
) -> list[dict[str, Any]]:
    """Per explained canvas: the true class and box, the top-1 class, whether the top-1 map's peak lies inside the
    true box (x2, y2 exclusive) and the IoU of the map's box with it."""
    import torch
    from torchvision.ops import box_iou

    rows = []
    for r, label, box in zip(records, labels, boxes, strict=True):
        x, y = r.peaks[0]
        x1, y1, x2, y2 = box
        iou = float(box_iou(torch.tensor([r.boxes[0]]), torch.tensor([box]))[0, 0])
        rows.append(
            {
                "image": Path(r.file).name,
                "class": classes[label],
                "predicted": r.classes[0],
                "box": box,
                "map_box": r.boxes[0],
                "peak": [x, y],
                "peak_inside": bool(x1 <= x < x2 and y1 <= y < y2),
                "iou": round(iou, 4),
            }
        )
    return rows


def _explain_stage(out: Path, quick: bool, place: Placement) -> dict[str, Any]:
    from PIL import Image

    from foveal.io import write_json
    from foveal.tasks.explain import explain, format_records

    stage = out / "explain"
    data = demo_canvases(4 if quick else 10)
    paths = []
    for i in range(len(data)):
        paths.append(stage / "images" / f"canvas{i:02d}-{_slug(data.classes[int(data.labels[i])])}.png")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(data.images[i, 0].numpy()).save(paths[-1])
    boxes = data.boxes.tolist()
    truth = {p.name: [b] for p, b in zip(paths, boxes, strict=True)}
    print(f"[explain] class activation maps of {len(paths)} test canvases from the bundled localization classifier")
    records = explain(LOCALIZER, [str(p) for p in paths], stage, top_k=5, true_boxes=truth, **place.inference)
    print(format_records(records))
    rows = localization_outcomes(records, data.labels.tolist(), boxes, data.classes)
    inside, overlap = sum(r["peak_inside"] for r in rows), sum(r["iou"] > 0 for r in rows)
    write_json(stage / "localization_check.json", {"images": rows, "peak_inside": inside, "box_overlaps": overlap})
    print(f"[explain] map peak inside the garment: {inside} of {len(rows)}; map box overlaps it: {overlap}")
    first = Path(records[0].figures[0]).name
    return {
        "name": "explain",
        "title": "Class activation maps: where the classifier looks",
        "summary": "CAM (Zhou et al. 2016) of the bundled localization classifier (trained on image-level labels "
        "only) on canvases made from Fashion-MNIST test images; green: the true box, red: the box of the map's "
        "largest region above 20 % of its maximum.",
        "reports": {"explanations": _report(stage, out)},
        "numbers": {
            "map peak inside the garment": f"{inside} of {len(rows)}",
            "map box overlaps the garment": f"{overlap} of {len(rows)}",
            "top-1 class right": f"{sum(r['class'] == r['predicted'] for r in rows)} of {len(rows)}",
        },
        "figures": {"top-5 maps": f"explain/{first}", "map and boxes": f"explain/{Path(records[0].figures[1]).name}"},
    }


# -- segmentation ----------------------------------------------------------------------------------------------------
def _segment_stage(out: Path, quick: bool, place: Placement) -> dict[str, Any]:
    from foveal.data.segmentation import NUCLEI_SAMPLE
    from foveal.tasks import segment, segment_eval, segment_train

    stage = out / "segment"
    print("[segment] drawing the border weight map of the nuclei labels (the paper's Fig. 3)")
    for p in segment_eval.weightmap_figures("nuclei-sample", stage / "weightmap", limit=1):
        print(f"[segment] {p}")
    overrides = ["train.max_steps=6", "data.eval_tile=132"] if quick else []
    cfg = load_config(segment.SegmentConfig, CONFIG_DIR / "segment_demo.yaml", overrides)
    run_dir = stage / "run"
    print(f"[segment] training a U-Net (base width {cfg.model.base_width}) on the left 384 columns of the nuclei image")
    segment_train.train(cfg, run_dir=run_dir, device=place.device)

    print("[segment] evaluating on the right 128 columns")
    result = segment_eval.evaluate_checkpoint(run_dir, None, stage / "eval", **place.inference)
    (stage / "eval" / "metrics.txt").write_text(result.format() + "\n")
    print(result.format())

    print("[segment] segmenting the whole image by overlap-tile inference")
    image = NUCLEI_SAMPLE / "image_top.tif"
    done = _predict(run_dir, [image], place, out=stage / "predictions", json=stage / "predictions.json")
    print(done.table)
    summary = result.summary()
    shown = Path(_records(done)[0]["overlay"])
    overlay = shown.relative_to(out.resolve()) if shown.is_absolute() else None
    return {
        "name": "segment",
        "title": "Segmentation: U-Net on nuclei",
        "summary": "A small U-Net trained here on the left 384 columns of the bundled nuclei image (2018 Data Science "
        "Bowl) with the paper's border weight map, evaluated on the right 128 columns.",
        "reports": {"training run": _report(run_dir, out), "evaluation": _report(stage / "eval", out)},
        "numbers": {k: f"{v:.3f}" if isinstance(v, float) else v for k, v in summary.items() if k != "score"},
        "figures": {"whole image, overlap-tile": str(overlay or Path("segment/predictions/image_top_overlay.png"))},
    }


# -- detection -------------------------------------------------------------------------------------------------------
def _detect_stage(out: Path, quick: bool, place: Placement) -> dict[str, Any]:
    from foveal.data.coco import open_coco
    from foveal.io import write_json
    from foveal.tasks import detect, detect_train
    from foveal.tasks.detect_eval import evaluate_checkpoint

    stage = out / "detect"
    overrides = [*DETECT_SHORT, *(["train.max_steps=3", "data.val_limit=8"] if quick else [])]
    cfg = load_config(detect.DetectConfig, CONFIG_DIR / "detect_demo.yaml", overrides)
    run_dir = stage / "run"
    print(f"[detect] a short training of a RetinaNet ({cfg.model.backbone}-FPN) on the bundled canvas sample")
    detect_train.train(cfg, run_dir=run_dir, device=place.device)

    print("[detect] evaluating the bundled detector on the sample's validation canvases (COCO AP)")
    result = evaluate_checkpoint(DETECTOR, "fashion-canvas-sample", "val", stage / "eval", **place.inference)
    (stage / "eval" / "metrics.txt").write_text(result.format() + "\n")
    print(result.format())

    print("[detect] detecting garments in four validation canvases")
    val = open_coco("fashion-canvas-sample", split="val")
    files = [r.path for r in val.images[:4]]
    done = _predict(DETECTOR, files, place, out=stage / "predictions", show_thresh=SHOW_SCORE)
    write_json(stage / "predictions.json", _records(done))
    print(done.table)
    return {
        "name": "detect",
        "title": "Detection: RetinaNet with focal loss",
        "summary": "A RetinaNet trained here for 80 steps on the 160 bundled canvases (its training run), and the "
        "bundled detector (see data/samples/demo-weights/PROVENANCE.md) evaluated on the 48 validation canvases, "
        "made from Fashion-MNIST test images it never saw.",
        "reports": {
            "short training run": _report(run_dir, out),
            "bundled detector's evaluation": _report(stage / "eval", out),
        },
        "numbers": {"AP": f"{result.ap:.3f}", "AP50": f"{result.ap50:.3f}", "AP75": f"{result.ap75:.3f}"},
        "figures": {"precision–recall": "detect/eval/pr_curve.png"},
    }


#: The demo's stages, in the order they run.
STAGES = (
    ("classify", _classify_stage),
    ("explain", _explain_stage),
    ("segment", _segment_stage),
    ("detect", _detect_stage),
)
