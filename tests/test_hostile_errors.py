"""Hostile files and options that once ended in "failed unexpectedly" or a misleading message, through the CLI: an
export size no memory holds, JSON and YAML nested 100,000 deep, a CUB table naming an image id images.txt lacks, a
binary metric log, a report file of the wrong kind, a box folder whose error must name the file that is wrong, box
files with tens of thousands of boxes per image, and an image whose channels may be the planes of a stack. Each
failure is one ``foveal: error:`` line naming the problem and the fix, exit code 2, no traceback, earlier outputs
left as they were."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import foveal
from foveal.cli import main
from foveal.errors import FovealError

pytestmark = pytest.mark.usefixtures("one_thread")
DEEP = 100_000


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoints: dict[str, str]) -> dict[str, str]:
    """Task → a tiny untrained checkpoint (see tests/conftest.py)."""
    return tiny_checkpoints


def fail(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    """Run the CLI in-process: exit code 2 and one ``foveal: error:`` line holding every needle; the line."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert "Traceback" not in err and "unexpectedly" not in err, err
    assert err.startswith("foveal: error: ") and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


def _gray(path: Path, value: int = 100, size: tuple[int, int] = (28, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.arange(size[0] * size[1]).reshape(size) * 7 + value).astype(np.uint8)).save(path)
    return path


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    """A data folder of four 28 × 30 images in the classifier's class folders: class0/a0.png … class1/a3.png."""
    root = tmp_path / "data"
    for i in range(4):
        _gray(root / f"class{i % 2}" / f"a{i}.png", 10 * i)
    return root


def _eval_boxes(ckpt: dict[str, str], images: Path, boxes: Path, *extra: str) -> list[str]:
    return ["eval", ckpt["classify"], "--data", str(images), "--boxes", str(boxes), *extra]


# -- export ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "needles"), [(["100000"], ("--size 100000", "8192", "leave out --size")), (["0"], ("--size", "0"))]
)
def test_export_size_out_of_bounds_leaves_the_earlier_file(
    capsys: pytest.CaptureFixture[str], ckpt: dict[str, str], tmp_path: Path, size: list[str], needles: tuple[str, ...]
) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier export")
    fail(capsys, ["export", ckpt["classify"], "--out", str(out), "--size", *size], *needles)
    assert out.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_export_size_bound_in_the_python_api(ckpt: dict[str, str], tmp_path: Path) -> None:
    with pytest.raises(FovealError, match="at most 8192 px a side"):
        foveal.load(ckpt["classify"]).export(tmp_path / "m.onnx", size=[100_000])
    from foveal.inference.export import export_onnx

    with pytest.raises(FovealError, match="at most 8192 px a side"):
        export_onnx(foveal.load(ckpt["classify"]).export_spec().model, tmp_path / "m.onnx", 1, (16, 9000))
    assert not list(tmp_path.iterdir())


# -- JSON and YAML nested too deeply ---------------------------------------------------------------------------------
def test_box_json_nested_too_deep(capsys: pytest.CaptureFixture[str], ckpt: dict[str, str], images: Path) -> None:
    deep = images.parent / "deep.json"
    deep.write_text('{"box_format": "xyxy", "images": {"class0/a0.png": ' + "[" * DEEP + "]" * DEEP + "}}")
    fail(capsys, _eval_boxes(ckpt, images, deep), "deep.json", "too deeply", "fix the file")


def test_box_json_not_text(capsys: pytest.CaptureFixture[str], ckpt: dict[str, str], images: Path) -> None:
    binary = images.parent / "binary.json"
    binary.write_bytes(bytes(range(128, 256)) * 4)
    fail(capsys, _eval_boxes(ckpt, images, binary, "--box-format", "xyxy"), "binary.json", "not UTF-8", "JSON")


def test_coco_json_nested_too_deep(capsys: pytest.CaptureFixture[str], ckpt: dict[str, str], tmp_path: Path) -> None:
    deep = tmp_path / "instances_val.json"
    deep.write_text('{"images": ' + "[" * DEEP + "]" * DEEP + ', "annotations": [], "categories": []}')
    fail(capsys, ["eval", ckpt["detect"], "--data", str(deep)], "instances_val.json", "too deeply", "regenerate")


def test_config_yaml_nested_too_deep(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("model:\n  resolution: " + "[" * DEEP + "]" * DEEP + "\n")
    argv = ["train", "classify", "--config", str(deep), "--out", str(tmp_path / "run")]
    fail(capsys, argv, "deep.yaml", "too deeply", "configs/classify_cpu.yaml")
    assert not (tmp_path / "run").exists()


def test_report_json_nested_too_deep_or_of_the_wrong_kind(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "metrics.json").write_text("[" * DEEP + "]" * DEEP)
    fail(capsys, ["report", str(folder)], "metrics.json", "too deeply", "rerun the command that writes it")
    explained = tmp_path / "explain"
    explained.mkdir()
    (explained / "explanations.json").write_text('{"image": "a.png"}')
    fail(capsys, ["report", str(explained)], "explanations.json", "holds a dict, not a list")
    assert not (folder / "report.html").exists() and not (explained / "report.html").exists()


# -- CUB ---------------------------------------------------------------------------------------------------------------
def _cub(folder: Path, boxes: str, split: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "images.txt").write_text("".join(f"{i + 1} class{i % 2}/a{i}.png\n" for i in range(4)))
    (folder / "bounding_boxes.txt").write_text(boxes)
    (folder / "train_test_split.txt").write_text(split)
    return folder


def test_cub_table_naming_an_unknown_image_id(
    capsys: pytest.CaptureFixture[str], ckpt: dict[str, str], images: Path
) -> None:
    rows = "".join(f"{i + 1} 2 2 10 10\n" for i in range(4))
    split = "".join(f"{i + 1} 0\n" for i in range(4))
    cub = _cub(images.parent / "boxes_99", rows + "99 1 1 4 4\n", split)
    fail(capsys, _eval_boxes(ckpt, images, cub), "bounding_boxes.txt:5", "image id 99", "images.txt", "remove the row")
    cub = _cub(images.parent / "split_77", rows, split + "77 0\n")
    fail(capsys, _eval_boxes(ckpt, images, cub), "train_test_split.txt:5", "image id 77", "images.txt")
    cub = _cub(images.parent / "outside", rows.replace("3 2 2 10 10", "3 2 2 10 90"), split)
    fail(capsys, _eval_boxes(ckpt, images, cub), "bounding_boxes.txt:3: box", "lies outside image")


# -- the report of a run -----------------------------------------------------------------------------------------------
def test_report_of_a_binary_metric_log(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_bytes(bytes(range(256)) * 40)
    (run / "report.html").write_text("the earlier report")
    fail(capsys, ["report", str(run)], "metrics.jsonl", "binary or damaged", "restore it")
    assert (run / "report.html").read_text() == "the earlier report"


def test_report_of_a_metric_log_cut_mid_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps({"step": s, "loss": 1.0 / s, "lr": 0.1}) for s in range(1, 4)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 4, "lo')
    assert main(["report", str(run)]) == 0, capsys.readouterr().err
    assert (run / "report.html").is_file()


# -- box folders and rows: a message names the file or row that is wrong ----------------------------------------------
def _voc(path: Path, image: str, box: tuple[int, int, int, int]) -> None:
    x1, y1, x2, y2 = box
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<annotation><filename>{image}</filename><object><name>class0</name><bndbox><xmin>{x1}</xmin>"
        f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object></annotation>"
    )


def test_box_folder_error_names_the_file_that_is_wrong(
    capsys: pytest.CaptureFixture[str], ckpt: dict[str, str], images: Path
) -> None:
    xml = images.parent / "xml"
    _voc(xml / "a.xml", "a0.png", (2, 2, 20, 20))
    _voc(xml / "b.xml", "a0.png", (2, 2, 200, 20))  # the second file of the same image: a box past its edge
    err = fail(capsys, _eval_boxes(ckpt, images, xml), "b.xml: object 1", "lies outside image", "fix the box")
    assert "a.xml" not in err
    rows = images.parent / "boxes.csv"
    rows.write_text("image,x1,y1,x2,y2\nclass0/a0.png,2,2,20,20\nclass0/a0.png,2,2,20,90\n")
    err = fail(capsys, _eval_boxes(ckpt, images, rows), "boxes.csv:3", "lies outside image")
    assert "boxes.csv:2" not in err


# -- many boxes per image ----------------------------------------------------------------------------------------------
def test_thousands_of_boxes_per_image_are_evaluated_and_drawn(
    capsys: pytest.CaptureFixture[str], ckpt: dict[str, str], images: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    corner = rng.integers(0, 12, (4, 5000, 2))
    boxes = np.concatenate([corner, corner + rng.integers(1, 14, (4, 5000, 2))], -1).tolist()
    names = [f"class{i % 2}/a{i}.png" for i in range(4)]
    doc = {"box_format": "xyxy", "images": dict(zip(names, boxes, strict=True))}
    (tmp_path / "many.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    assert main(_eval_boxes(ckpt, images, tmp_path / "many.json", "--out", str(out))) == 0, capsys.readouterr().err
    assert json.loads((out / "localization.json").read_text())["localization"]["count"] == 4
    assert len(list((out / "localization").glob("*.png"))) == 8  # four worst and four spaced


# -- messages ----------------------------------------------------------------------------------------------------------
def test_an_image_of_many_channels_may_be_a_stack(
    capsys: pytest.CaptureFixture[str], ckpt: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "planes.tif"
    tifffile.imwrite(path, np.zeros((40, 40, 5), np.uint8), photometric="minisblack", planarconfig="contig")
    err = fail(capsys, ["predict", ckpt["segment"], str(path), "--out", str(tmp_path / "out")], "planes.tif")
    assert "5 channel(s)" in err and "planes of a stack" in err and "set channels to" not in err


@pytest.mark.parametrize(
    ("task", "config", "bundled"),
    [
        ("classify", "classify_demo", "fashion-mnist-sample"),
        ("segment", "segment_cpu", "nuclei-sample"),
        ("detect", str(Path(__file__).parent / "configs" / "detect_tiny.yaml"), "fashion-canvas-sample"),
    ],
)
def test_a_missing_training_dataset_names_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, task: str, config: str, bundled: str
) -> None:
    for key in ("data.train", "data.val"):
        argv = ["train", task, "--config", config, "--out", str(tmp_path / "run"), f"{key}={tmp_path / 'nowhere'}"]
        err = fail(capsys, argv, f"{key}={tmp_path / 'nowhere'} does not exist", f"set {key} to", bundled)
        assert "--data" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()
