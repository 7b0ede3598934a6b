"""Weakly supervised localization on a folder of images and a box file (every format), on canvases, and through the
CLI, bad box files included."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from foveal.cli import main
from foveal.config import CONFIG_DIR, load_config
from foveal.data.localization_set import LocalizationData, build_localization_set
from foveal.errors import FovealError
from foveal.tasks import classify, classify_explain, classify_train
from foveal.tasks.localize_eval import evaluate_canvases, localization_eval_folder

TINY = ["data.limit=null", "data.batch_size=16", "train.progress=false", "train.max_steps=2"]
CLASSES = ["top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
N = 12


def _renamed(data: LocalizationData) -> LocalizationData:
    """The canvases with class names that can be folder names (Fashion-MNIST's "T-shirt/top" cannot)."""
    return LocalizationData(data.images, data.labels, data.boxes, CLASSES, data.source)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, LocalizationData]:
    """A classifier trained 2 steps on canvases; twelve test canvases as PNGs in class folders, and the canvases."""
    root = tmp_path_factory.mktemp("localize")
    _renamed(build_localization_set("fashion-mnist-sample", "train", 32, seed=0)).write_idx(root / "idx", "train")
    _renamed(build_localization_set("fashion-mnist-sample", "train", 16, seed=1)).write_idx(root / "idx", "test")
    cfg = load_config(classify.ClassifyConfig, CONFIG_DIR / "classify_demo.yaml", [*TINY, f"data.train={root / 'idx'}"])
    classify_train.train(cfg, run_dir=root / "run")
    test = _renamed(build_localization_set("fashion-mnist-sample", "test", N, seed=3))
    for i in range(N):
        path = root / "images" / CLASSES[int(test.labels[i])] / f"c{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[i, 0].numpy()).save(path)
    return root / "run", root / "images", test


def _rel(i: int, test: LocalizationData) -> str:
    return f"{CLASSES[int(test.labels[i])]}/c{i:02d}.png"


def _box_files(folder: Path, test: LocalizationData) -> dict[str, tuple[Path, str | None]]:
    """The canvases' boxes in each format: name → (path, --box-format)."""
    folder.mkdir()
    xyxy = test.boxes.tolist()
    xywh = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in xyxy]
    (folder / "b.json").write_text(json.dumps({_rel(i, test): [xywh[i]] for i in range(N)}))
    rows = ["image,x1,y1,x2,y2,label"] + [
        f"c{i:02d}.png,{','.join(map(str, xyxy[i]))},{_rel(i, test)[:-8]}" for i in range(N)
    ]
    (folder / "b.csv").write_text("\n".join(rows) + "\n")
    cub = folder / "CUB"
    cub.mkdir()
    (cub / "images.txt").write_text("".join(f"{i + 1} {_rel(i, test)}\n" for i in range(N)))
    (cub / "bounding_boxes.txt").write_text("".join(f"{i + 1} {' '.join(map(str, xywh[i]))}\n" for i in range(N)))
    xml = folder / "xml"
    xml.mkdir()
    for i, (x1, y1, x2, y2) in enumerate(xyxy):  # VOC: 1-based inclusive pixels
        obj = f"<xmin>{x1 + 1:g}</xmin><ymin>{y1 + 1:g}</ymin><xmax>{x2:g}</xmax><ymax>{y2:g}</ymax>"
        whole = "<xmin>1</xmin><ymin>1</ymin><xmax>64</xmax><ymax>64</ymax>"
        other = f"<object><name>bag</name><bndbox>{whole}</bndbox></object>"
        other = "" if int(test.labels[i]) == CLASSES.index("bag") else other  # another class's box: left out
        (xml / f"c{i:02d}.xml").write_text(
            f"<annotation><filename>c{i:02d}.png</filename><object><name>{CLASSES[int(test.labels[i])]}</name>"
            f"<bndbox>{obj}</bndbox></object>{other}</annotation>"
        )
    return {
        "json": (folder / "b.json", "xywh"),
        "csv": (folder / "b.csv", None),
        "cub": (cub, None),
        "xml": (xml, None),
    }


def test_every_box_format_gives_the_canvas_protocols_figures(setup, tmp_path: Path) -> None:
    run, images, test = setup
    reference = evaluate_canvases(run, test, batch_size=5)
    assert reference.localization == classify_explain.localization_eval(
        run, test
    )  # the canvases' protocol, another path
    assert reference.max_box_acc.count == N and 0.0 <= reference.max_box_acc.max_box_acc_v2 <= 1.0
    for name, (path, fmt) in _box_files(tmp_path / "boxes", test).items():
        found = localization_eval_folder(run, images, path, box_format=fmt)
        assert found.localization == reference.localization, name
        assert found.max_box_acc == reference.max_box_acc, name
        assert [r.label for r in found.images] == [CLASSES[int(c)] for c in test.labels], name


def test_a_perfect_map_scores_every_metric_right(setup) -> None:
    run, _, test = setup

    def ground_truth_maps(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        maps = torch.zeros(len(x), classes.shape[1], 64, 64)
        for i, (x1, y1, x2, y2) in enumerate(test.boxes.long().tolist()):
            maps[i, :, y1:y2, x1:x2] = 1.0
        return maps

    perfect = evaluate_canvases(run, test, method=ground_truth_maps, batch_size=N)
    assert perfect.localization.gt_known_loc_error == 0.0
    assert perfect.localization.top1_loc_error == pytest.approx(perfect.localization.top1_cls_error)
    assert perfect.max_box_acc.max_box_acc_v2 == 1.0 and perfect.max_box_acc.best_threshold["0.7"] == 0.01
    assert all(r.true_class_iou > 0.8 for r in perfect.images)  # the 64-px maps, read as a finer grid of the input


def test_outputs_metrics_rows_and_bounded_panels(setup, tmp_path: Path) -> None:
    run, images, test = setup
    path, fmt = _box_files(tmp_path / "boxes", test)["json"]
    report = localization_eval_folder(run, images, path, box_format=fmt, out=tmp_path / "out", panels=3, flip=True)
    saved = json.loads((tmp_path / "out" / "localization.json").read_text())
    assert saved["localization"]["count"] == N and saved["options"]["flip"] is True
    assert saved["max_box_acc"]["max_box_acc_v2"] == pytest.approx(report.max_box_acc.max_box_acc_v2)
    assert [len(saved["figures"][k]) for k in ("worst", "sample")] == [3, 3]
    pngs = sorted(p.name for p in (tmp_path / "out" / "localization").glob("*.png"))
    assert len(pngs) == 6 and pngs[0].startswith("sample_01_") and pngs[-1].startswith("worst_03_")
    for png in pngs:
        with Image.open(tmp_path / "out" / "localization" / png) as im:
            assert im.size[0] > 100
    worst = [Path(p).stem.split("_", 2)[2] for p in saved["figures"]["worst"]]
    ranked = sorted(report.images, key=lambda r: (r.localized, r.iou))
    assert worst[0] == Path(ranked[0].file).stem  # the worst image first
    with open(tmp_path / "out" / "localization" / "images.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == N and {r["label"] for r in rows} <= set(CLASSES)


def test_labels_must_be_classes(setup, tmp_path: Path) -> None:
    run, images, test = setup
    (tmp_path / "b.json").write_text(json.dumps({_rel(0, test): {"boxes": [[1, 1, 9, 9]], "label": "cat"}}))
    with pytest.raises(FovealError, match="label 'cat' of image .* is not a class"):
        localization_eval_folder(run, images, tmp_path / "b.json", box_format="xyxy")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(test.images[0, 0].numpy()).save(flat / "a.png")
    (tmp_path / "c.json").write_text(json.dumps({"a.png": [1, 1, 9, 9]}))
    with pytest.raises(FovealError, match="has no class: put it in a sub-folder"):
        localization_eval_folder(run, flat, tmp_path / "c.json", box_format="xyxy")


def _foveal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foveal", *args], capture_output=True, text=True, timeout=300)


def test_cli_eval_with_boxes(setup, tmp_path: Path) -> None:
    run, images, test = setup
    path, _ = _box_files(tmp_path / "boxes", test)["csv"]
    result = _foveal("eval", str(run), "--data", str(images), "--boxes", str(path), "--out", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    assert "MaxBoxAccV2" in result.stdout and "top-1 loc error" in result.stdout
    assert (tmp_path / "o" / "localization.json").is_file()
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert 0.0 <= metrics["max_box_acc_v2"] <= 1.0 and metrics["count"] == N
    assert (tmp_path / "o" / "report.html").is_file()


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("unknown", "unknown image 'nothere.png'"),
        ("outside", "lies outside image"),
        ("zero", "has zero area"),
        ("missing", "box file not found"),
        ("malformed", "expected an image and 4 box numbers"),
        ("no-data", "--boxes needs --data FOLDER"),
    ],
)
def test_cli_bad_box_files_one_clear_error(
    setup, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, needle: str
) -> None:
    """Run in this process through the CLI's ``main`` (exit code, stderr, nothing written); the one subprocess run of
    ``foveal eval --boxes`` is :func:`test_cli_eval_with_boxes`."""
    run, images, test = setup
    row = {
        "unknown": "nothere.png,1,1,5,5",
        "outside": f"{_rel(0, test)},1,1,80,5",
        "zero": f"{_rel(0, test)},1,1,1,5",
        "malformed": f"{_rel(0, test)},1,1",
    }.get(case, f"{_rel(0, test)},1,1,5,5")
    boxes = tmp_path / ("none.csv" if case == "missing" else "b.csv")
    if case != "missing":
        boxes.write_text(f"image,x1,y1,x2,y2\n{row}\n")
    data = [] if case == "no-data" else ["--data", str(images)]
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["eval", str(run), *data, "--boxes", str(boxes), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("foveal: error: ") and needle in lines[0], err
    assert not (out / "localization.json").exists()
