"""``foveal demo``: the main job on bundled data, start to finish, into one output folder.

Classification stage: train a small EfficientNet on the bundled Fashion-MNIST sample (a few CPU minutes), evaluate
it (metrics, confusion matrix), predict a handful of test images saved as PNG, and export it to ONNX.
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


def run_demo(out: Path, quick: bool = False) -> Path:
    """Run every stage of the demo into ``out`` and return it."""
    from foveal.cli import CONFIG_DIR
    from foveal.inference.export import check_onnx, export_onnx
    from foveal.report.tables import format_metrics, format_table, write_csv, write_json
    from foveal.tasks import classify

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FovealError(f"demo output {out} exists and is not a folder: choose another --out")
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
    return out
