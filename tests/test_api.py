"""The Python API: ``foveal.load`` gives each task's model, whose predict / evaluate / explain / export return typed
results that agree with the command line's outputs on the same inputs; ``foveal.train`` trains from Python."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import foveal
from foveal.cli import main
from foveal.data.detection_set import build_detection_set
from foveal.data.synthetic import write_cells_folder
from foveal.errors import FovealError

# A depth-2 valid U-Net of width 4 (output tile 24 from 64-px inputs), one epoch on three synthetic cell images.
SEGMENT = {
    "model__depth": 2,
    "model__base_width": 4,
    "model__batch_norm": True,
    "data__tile": 24,
    "data__eval_tile": 28,
    "data__batch_size": 2,
    "data__samples_per_epoch": 4,
    "optim__name": "adamw",
    "optim__lr": 0.001,
    "optim__lr_batch": 2,
    "train__epochs": 1,
    "train__progress": False,
}
# ResNet-18-FPN with 16 channels and one conv per subnet, one epoch on six 64-px canvases.
DETECT = [
    "--config",
    str(Path(__file__).parent / "configs" / "detect_tiny.yaml"),
    "data.mean=[0.12]",
    "data.std=[0.26]",
    "data.eval_batch_size=4",
    "optim.lr=0.01",
    "optim.lr_batch=2",
    "inference.score_thresh=0.01",  # an untrained detector's scores are low: keep enough detections to compare
]


def _quiet(argv: list[str]) -> str:
    """Run the CLI in-process; its stdout (it must succeed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def gray_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gray")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (28, 30), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> tuple[foveal.Segmenter, Path]:
    """A U-Net trained by foveal.train from Python, with its data folder."""
    root = tmp_path_factory.mktemp("seg")
    data = write_cells_folder(root / "data", 3, (72, 80))
    with contextlib.redirect_stdout(io.StringIO()):
        model = foveal.train("segment", out=root / "run", device="cpu", data__train=str(data), **SEGMENT)
    assert isinstance(model, foveal.Segmenter)
    return model, data


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run directory, canvas folder) of a tiny RetinaNet trained through the command line."""
    root = tmp_path_factory.mktemp("det")
    canvases = build_detection_set(
        root / "canvas", source="fashion-mnist-sample", n_train=6, n_val=3, size=64, objects=(1, 3), scale=(14, 30)
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _quiet(["train", "detect", f"data.train={canvases}", *DETECT, "--out", str(root / "run"), "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)
    return root / "run", canvases


# -------------------------------------------------------------------------------------------------- classify


def test_load_gives_a_classifier_placed_as_asked(ckpt_run: Path) -> None:
    model = foveal.load(ckpt_run, device="cpu")
    assert isinstance(model, foveal.Classifier) and model.task == "classify"
    assert model.device == torch.device("cpu") and model.precision == "fp32"
    assert not model.model.training and len(model.classes) == 10
    assert next(model.model.parameters()).dtype == torch.float32


def test_classifier_predict_agrees_with_the_cli(ckpt_run: Path, gray_images: Path, tmp_path: Path) -> None:
    model = foveal.load(ckpt_run, device="cpu")
    results = model.predict(gray_images, top_k=3)
    assert [type(r) for r in results] == [foveal.Classification] * 3
    _quiet(["predict", str(ckpt_run), str(gray_images), "--top-k", "3", "--json", str(tmp_path / "p.json")])
    records = json.loads((tmp_path / "p.json").read_text())
    assert [r.source for r in results] == [rec["file"] for rec in records]
    for r, rec in zip(results, records, strict=True):
        assert len(r.topk) == 3 and r.label == r.topk[0].name and r.score == r.topk[0].probability
        ours = {s.name: s.probability for s in r.topk}
        theirs = {p["class"]: p["probability"] for p in rec["predictions"]}
        assert ours.keys() == theirs.keys()  # the same three classes (in any order among equal scores)
        assert all(abs(ours[k] - theirs[k]) < 1e-5 for k in ours)


def test_images_in_memory_give_the_results_of_their_files(ckpt_run: Path, gray_images: Path) -> None:
    model = foveal.load(ckpt_run, device="cpu")
    path = gray_images / "img1.png"
    pixels = np.asarray(Image.open(path))
    want = model.predict(path, top_k=10)[0]
    inputs = [Image.open(path), pixels, torch.from_numpy(pixels.copy())[None], pixels.astype(np.float32) / 255.0]
    got = model.predict(inputs, top_k=10)
    assert [r.source for r in got] == [f"<image {i}>" for i in range(4)]
    for r in got:
        assert {s.name: s.probability for s in r.topk} == pytest.approx(
            {s.name: s.probability for s in want.topk}, abs=1e-5
        )
    batch = model.predict(np.stack([pixels[:, :, None]] * 2), top_k=1)  # (N, H, W, C): a batch
    assert len(batch) == 2 and batch[0].label == want.label


def test_classifier_evaluate_is_the_cli_eval(ckpt_run: Path, tmp_path: Path) -> None:
    result = foveal.load(ckpt_run, device="cpu").evaluate(out=tmp_path / "api")
    _quiet(["eval", str(ckpt_run), "--out", str(tmp_path / "cli"), "--device", "cpu"])
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert result.top1 == pytest.approx(cli["top1"]) and result.top5 == pytest.approx(cli["top5"])
    assert (tmp_path / "api" / "metrics.json").is_file() and (tmp_path / "api" / "confusion.png").is_file()


def test_classifier_explain_and_export(ckpt_run: Path, gray_images: Path, tmp_path: Path) -> None:
    model = foveal.load(ckpt_run, device="cpu")
    path = gray_images / "img0.png"
    (on_file,) = model.explain(path, top_k=2)
    (in_memory,) = model.explain(np.asarray(Image.open(path)), top_k=2)
    assert on_file.file == str(path) and in_memory.file == "<image 0>" and on_file.figures == []
    assert on_file.classes == in_memory.classes and on_file.boxes == in_memory.boxes and len(on_file.boxes) == 2
    assert all(0 <= x1 < x2 <= 30 and 0 <= y1 < y2 <= 28 for x1, y1, x2, y2 in on_file.boxes)
    (kept,) = model.explain(path, tmp_path / "cam", top_k=2)
    assert kept.figures and all(Path(f).is_file() for f in kept.figures)

    report = model.export(tmp_path / "m.onnx")
    assert report.path.is_file() and report.size == (32, 32) and report.max_difference < 1e-3
    cli = _quiet(["export", str(ckpt_run), "--out", str(tmp_path / "cli.onnx")])
    assert re.sub(r"\S*\.onnx|= \S+", "", cli.strip()) == re.sub(r"\S*\.onnx|= \S+", "", report.format())


def test_bad_paths_and_checkpoints_are_one_clear_error(ckpt_run: Path, tmp_path: Path) -> None:
    with pytest.raises(FovealError, match="checkpoint .*nothing does not exist"):
        foveal.load(tmp_path / "nothing")
    with pytest.raises(FovealError, match="'classify' checkpoint, not a segmentation model"):
        foveal.Segmenter(ckpt_run)
    with pytest.raises(FovealError, match="'classify' checkpoint, not a detector"):
        foveal.Detector(ckpt_run)
    model = foveal.load(ckpt_run, device="cpu")
    with pytest.raises(FovealError, match="missing.png does not exist"):
        model.predict(tmp_path / "missing.png")
    with pytest.raises(FovealError, match=r"cannot read an image from .* \(type dict\)"):
        model.predict({"image": 1})  # type: ignore[arg-type]
    with pytest.raises(FovealError, match="opset 99"):
        model.export(tmp_path / "m.onnx", opset=99)
    assert not (tmp_path / "m.onnx").exists()


# -------------------------------------------------------------------------------------------------- segment


def test_train_from_python_returns_the_loaded_segmenter(segmenter: tuple[foveal.Segmenter, Path]) -> None:
    model, _ = segmenter
    assert model.metrics is not None and "fg_iou" in model.metrics and model.metrics["step"] > 0
    assert (model.path / "checkpoints" / "best" / "checkpoint.json").is_file()
    record = json.loads((model.path / "checkpoints" / "best" / "checkpoint.json").read_text())
    assert record["config"]["model"]["depth"] == 2 and record["config"]["data"]["eval_tile"] == 28  # the overrides


def test_segmenter_predict_agrees_with_the_cli(segmenter: tuple[foveal.Segmenter, Path], tmp_path: Path) -> None:
    model, data = segmenter
    images = sorted((data / "images").iterdir())
    results = model.predict(images, probabilities=True)
    _quiet(["predict", str(model.path), *map(str, images), "--out", str(tmp_path / "cli"), "--device", "cpu"])
    records = [json.loads(line) for line in (tmp_path / "cli" / "predictions.jsonl").read_text().splitlines()]
    for r, rec in zip(results, records, strict=True):
        assert isinstance(r, foveal.Segmentation) and r.instances and r.labels.shape == (72, 80)
        assert r.probabilities is not None and r.probabilities.shape == (72, 80, 2)
        cli = tifffile.imread(rec["labels"])
        assert (cli == r.labels).mean() > 0.999 and r.count == rec["instances"]
        assert r.foreground == pytest.approx(rec["foreground"])
    pixels = np.asarray(Image.open(images[0]))
    (in_memory,) = model.predict(pixels)
    assert np.array_equal(in_memory.labels, results[0].labels)


def test_segmenter_evaluate_explain_export(segmenter: tuple[foveal.Segmenter, Path], tmp_path: Path) -> None:
    model, data = segmenter
    result = model.evaluate(str(data))
    assert {"fg_iou", "f1_50", "rand_error"} <= set(result.summary())
    (explained,) = model.explain(sorted((data / "images").iterdir())[0])
    assert explained.task == "segment" and explained.classes == ["foreground"] and len(explained.boxes) == 1
    report = model.export(tmp_path / "unet.onnx")
    assert "output tile" in report.format() and report.max_difference < 1e-3
    with pytest.raises(FovealError, match="this U-Net cannot take"):
        model.export(tmp_path / "bad.onnx", size=[report.size[0] + 1])
    with pytest.raises(FovealError, match="'segment' checkpoint, not a classifier"):
        foveal.Classifier(model.path)


# -------------------------------------------------------------------------------------------------- detect


def _unmatched(ours: foveal.Detections, theirs: list[dict]) -> list[int]:
    """Detections of ``ours`` without a CLI detection of the same class, box (± 0.01 px) and score (± 1e-5), each
    CLI detection matched once (a set match: the order of tied scores does not count)."""
    left = list(theirs)
    missing = []
    for i, (name, box, score) in enumerate(zip(ours.names, ours.boxes.tolist(), ours.scores.tolist(), strict=True)):
        match = next(
            (
                d
                for d in left
                if d["label"] == name and np.allclose(d["box"], box, atol=0.01) and abs(d["score"] - score) < 1e-5
            ),
            None,
        )
        if match is None:
            missing.append(i)
        else:
            left.remove(match)
    return missing


def test_detector_predict_agrees_with_the_cli(detector: tuple[Path, Path], tmp_path: Path) -> None:
    run, canvases = detector
    model = foveal.load(run, device="cpu")
    assert isinstance(model, foveal.Detector)
    images = sorted((canvases / "val").glob("*.png"))
    results = model.predict(images)
    _quiet(["predict", str(run), *map(str, images), "--out", str(tmp_path / "cli"), "--device", "cpu"])
    records = [json.loads(line) for line in (tmp_path / "cli" / "predictions.jsonl").read_text().splitlines()]
    assert sum(len(r) for r in results) > 0
    for r, rec in zip(results, records, strict=True):
        assert isinstance(r, foveal.Detections) and r.size == (rec["height"], rec["width"])
        assert r.boxes.shape == (len(r), 4) and r.boxes.dtype == np.float32
        assert len(r) == len(rec["detections"]) and _unmatched(r, rec["detections"]) == []
    (in_memory,) = model.predict(Image.open(images[0]))
    first = results[0]
    triples = zip(first.names, first.boxes.tolist(), first.scores.tolist(), strict=True)
    as_records = [{"label": n, "box": b, "score": s} for n, b, s in triples]
    assert len(in_memory) == len(first) and _unmatched(in_memory, as_records) == []
    assert len(results[0].above(0.3)) == int((results[0].scores >= 0.3).sum())


def test_detector_evaluate_is_the_cli_eval_and_exports(detector: tuple[Path, Path], tmp_path: Path) -> None:
    run, _ = detector
    model = foveal.load(run, device="cpu")
    result = model.evaluate()
    _quiet(["eval", str(run), "--out", str(tmp_path / "cli"), "--device", "cpu"])
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    if cli["AP"] is None:
        assert result.stat("AP") < 0
    else:
        assert result.stat("AP") == pytest.approx(cli["AP"], abs=1e-6)
    report = model.export(tmp_path / "det.onnx", size=[64, 96])
    assert report.output_names == ("cls_logits", "box_deltas", "anchors") and report.size == (64, 96)


# -------------------------------------------------------------------------------------------------- README


def _readme_blocks() -> list[str]:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text[text.index("## Python API") : text.index("## Command line")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_snippets_run(
    ckpt_run: Path,
    gray_images: Path,
    segmenter: tuple[foveal.Segmenter, Path],
    detector: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    """The README's code with its example paths replaced by the tiny runs and images of these tests."""
    seg, data = segmenter
    det_run, canvases = detector
    paths = {
        "runs/classify-cpu": ckpt_run,
        "runs/segment-cpu": seg.path,
        "runs/detect-demo": det_run,
        "shirt.png": gray_images / "img0.png",
        "photos/": gray_images,
        "model.onnx": tmp_path / "model.onnx",
        "cells.tif": sorted((data / "images").iterdir())[0],
        "photo.png": sorted((canvases / "val").glob("*.png"))[0],
        "runs/x": tmp_path / "x",
    }
    first, second = _readme_blocks()
    code = first + second.replace('"classify_cpu"', '"classify_demo"').replace(
        "train__max_steps=200",
        "train__max_steps=1, data__limit=32, data__val_limit=16, data__batch_size=16, train__progress=False",
    )
    for name, path in paths.items():
        code = code.replace(f'"{name}"', repr(str(path)))
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(code, "<README.md, Python API>", "exec"), {})
    assert "img0.png" in out.getvalue() and (tmp_path / "model.onnx").is_file() and (tmp_path / "x").is_dir()
