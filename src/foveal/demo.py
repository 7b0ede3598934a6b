"""``foveal demo``: the main job on bundled data, start to finish, into one output folder.

Classification stage: train a small EfficientNet on the bundled Fashion-MNIST sample (a few CPU minutes), evaluate
it (metrics, confusion matrix), predict a handful of test images saved as PNG, and export it to ONNX.

Explanation stage: class activation maps of a few test images from the demo classifier (top-5 maps in the paper's
Fig. 4 layout, the top-1 map with its box).

Detection stage: a small RetinaNet (ResNet-18 FPN, focal loss) trained on the bundled Fashion-MNIST canvas sample,
evaluated with COCO AP, and a few validation images with their predicted boxes.

Segmentation stage: draw the border weight map of the bundled nuclei labels (the paper's Fig. 3), train a small
U-Net on the image's left 384 columns, evaluate it on the right 128 (pixel and instance metrics), and segment the
whole image by overlap-tile inference (label image + overlay).
"""

from __future__ import annotations

from pathlib import Path

from foveal.config import load_config
from foveal.errors import FovealError


def _save_sample_images(out: Path, count: int) -> list[Path]:
    from PIL import Image

    from foveal.data.classification import open_dataset

    data = open_dataset("fashion-mnist-sample", "test")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image, label = data.get(i)
        name = data.classes[label].replace("/", "-").replace(" ", "-").lower()
        path = out / f"test{i:03d}-{name}.png"
        Image.fromarray(image[0].numpy()).save(path)
        paths.append(path)
    return paths


def run_demo(
    out: Path, quick: bool = False, stages: tuple[str, ...] = ("classify", "explain", "segment", "detect")
) -> Path:
    """Run the demo's ``stages`` into ``out`` and return it."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FovealError(f"demo output {out} exists and is not a folder: choose another --out")
    if "classify" in stages:
        _classify_stage(out, quick)
    if "explain" in stages and (out / "classify" / "run").is_dir():
        from foveal.tasks.explain import demo_stage

        print("[explain] class activation maps of the demo classifier, with boxes (the paper's Fig. 4 layout)")
        demo_stage(out, out / "classify" / "run")
    if "segment" in stages:
        _segment_stage(out, quick)
    if "detect" in stages:
        from foveal.tasks.detect_eval import demo_stage as detect_stage

        print("[detect] training a small RetinaNet on the bundled Fashion-MNIST canvas sample")
        detect_stage(out, quick)
    return out


def _segment_stage(out: Path, quick: bool) -> None:
    from foveal.cli import CONFIG_DIR
    from foveal.data.segmentation import NUCLEI_SAMPLE
    from foveal.engine.logging import write_json
    from foveal.tasks import segment, segment_eval

    stage = out / "segment"
    print("[segment] drawing the border weight map of the nuclei labels (the paper's Fig. 3)")
    for p in segment_eval.weightmap_figures("nuclei-sample", stage / "weightmap", limit=1):
        print(f"[segment] {p}")
    overrides = ["train.max_steps=6", "data.eval_tile=132"] if quick else []
    cfg = load_config(segment.SegmentConfig, CONFIG_DIR / "segment_demo.yaml", overrides)
    run_dir = stage / "run"
    print(f"[segment] training a U-Net (base width {cfg.model.base_width}) on the left 384 columns of the nuclei image")
    segment.train(cfg, run_dir=run_dir)

    print("[segment] evaluating on the right 128 columns")
    result = segment_eval.evaluate_checkpoint(run_dir, None, stage / "eval")
    (stage / "eval" / "metrics.txt").write_text(result.format() + "\n")
    print(result.format())

    print("[segment] segmenting the whole image by overlap-tile inference")
    rows = segment_eval.predict(run_dir, [str(NUCLEI_SAMPLE / "image_top.tif")], stage / "predictions")
    write_json(stage / "predictions.json", [r.__dict__ for r in rows])
    print(segment_eval.format_predictions(rows))


def _classify_stage(out: Path, quick: bool) -> None:
    from foveal.cli import CONFIG_DIR
    from foveal.inference.export import check_onnx, export_onnx
    from foveal.report.tables import format_metrics, format_table, write_csv, write_json
    from foveal.tasks import classify

    overrides = ["train.max_steps=12", "data.limit=384", "data.val_limit=200"] if quick else []
    cfg = load_config(classify.ClassifyConfig, CONFIG_DIR / "classify_demo.yaml", overrides)
    stage = out / "classify"
    run_dir = stage / "run"
    print(f"[classify] training {cfg.model.name} (phi={cfg.model.phi}) on the bundled Fashion-MNIST sample")
    classify.train(cfg, run_dir=run_dir)

    print("[classify] evaluating on the sample's 1000 test images")
    result = classify.evaluate_checkpoint(run_dir, None, "test", stage / "eval")
    (stage / "eval" / "metrics.txt").write_text(format_metrics(result) + "\n")
    print(format_metrics(result))

    print("[classify] predicting a few test images")
    images = _save_sample_images(stage / "images", 8)
    preds = classify.predict(run_dir, [str(p) for p in images], top_k=3)
    write_json(preds, stage / "predictions.json")
    write_csv(preds, stage / "predictions.csv")
    print(format_table(preds))

    print("[classify] exporting to ONNX")
    import torch

    clf = classify.load_classifier(run_dir)
    onnx_path = export_onnx(clf.model, stage / "model.onnx", clf.channels, clf.resolution)
    x = torch.randn(2, clf.channels, clf.resolution, clf.resolution)
    print(f"[classify] {onnx_path}: onnxruntime vs torch max |difference| {check_onnx(clf.model, onnx_path, x):.2e}")
