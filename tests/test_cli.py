"""CLI smoke tests: every command once, in-process, on one tiny training run (phi=-4 at 32 px, a few steps)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from foveal.cli import main

#: A run of a few seconds: the demo recipe (EfficientNet phi=-4 at 32 px) on 64 images, 2 steps of 16.
TINY = ["train.max_steps=2", "data.limit=64", "data.val_limit=32", "data.batch_size=16", "train.progress=false"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str]:
    """(run directory, exit code, stdout) of one tiny training, with a resume point after step 1 and lr=0.05."""
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = ["train", "classify", "--config", "classify_demo", "--out", str(out), *TINY]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main([*argv, "train.checkpoint_every=1", "optim.lr=0.05"])
    return out, code, stdout.getvalue()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with three small grayscale PNGs."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_models_lists_variants(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--phi", "-2"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("efficientnet")]
    assert [r[0] for r in rows[:8]] == [f"efficientnet_b{i}" for i in range(8)]
    resolutions = [int(r[3]) for r in rows[:8]]
    assert resolutions == [224, 240, 260, 300, 380, 456, 528, 600]
    assert all(r[-2].endswith("M") and r[-1].endswith("B") for r in rows)  # params, FLOPs
    assert rows[0][-2] == "5.29M" and rows[0][-1] == "0.39B"  # B0 as in the paper's Table 2
    assert len(rows) == 9 and rows[8][:2] == ["efficientnet", "phi=-2"]


def test_train_writes_run_files(run: tuple[Path, int, str]) -> None:
    out, code, stdout = run
    assert code == 0
    assert "top1=" in stdout and f"run directory: {out}" in stdout
    for name in ("metrics.jsonl", "metrics.csv", "curves.png", "config.json"):
        assert (out / name).is_file(), name
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["best", "step-00000001", "step-00000002"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("val_top1" in r for r in records) and records[-1]["step"] == 2
    assert list(csv.DictReader((out / "metrics.csv").open()))


def test_override_is_stored_in_checkpoint(run: tuple[Path, int, str]) -> None:
    out, _, _ = run
    meta = json.loads((out / "checkpoints" / "step-00000002" / "checkpoint.json").read_text())
    assert meta["config"]["optim"]["lr"] == 0.05  # the recipe says 0.1
    assert meta["config"]["train"]["max_steps"] == 2
    assert json.loads((out / "config.json").read_text())["optim"]["lr"] == 0.05


def test_resume_continues_an_interrupted_run(run: tuple[Path, int, str], tmp_path: Path) -> None:
    out, _, _ = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "checkpoints" / "step-00000002")  # as if killed before step 2 was saved
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert main(["train", "classify", "--resume", str(copy)]) == 0
    assert "step=2" in stdout.getvalue()
    resumed = load_file(str(copy / "checkpoints" / "step-00000002" / "model.safetensors"))
    original = load_file(str(out / "checkpoints" / "step-00000002" / "model.safetensors"))
    assert resumed.keys() == original.keys()
    for key in original:  # the resumed run takes the same step 2 as the uninterrupted one
        np.testing.assert_allclose(resumed[key].numpy(), original[key].numpy(), rtol=1e-4, atol=1e-5, err_msg=key)


def test_eval_prints_and_writes_metrics(run: tuple[Path, int, str], tmp_path: Path, capsys) -> None:
    out, _, _ = run
    assert main(["eval", str(out), "--out", str(tmp_path / "eval")]) == 0
    text = capsys.readouterr().out
    assert re.search(r"top-1\s+\d+\.\d+%", text) and "samples" in text
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["top1"] <= 1.0
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 0


@pytest.mark.parametrize("how", ["file", "folder", "glob"])
def test_predict_file_folder_glob(run: tuple[Path, int, str], images: Path, tmp_path: Path, capsys, how: str) -> None:
    out, _, _ = run
    inputs = {"file": [str(images / "img0.png")], "folder": [str(images)], "glob": [str(images / "img*.png")]}[how]
    n = 1 if how == "file" else 3
    js, cs = tmp_path / "p.json", tmp_path / "p.csv"
    assert main(["predict", str(out), *inputs, "--top-k", "3", "--json", str(js), "--csv", str(cs)]) == 0
    table = capsys.readouterr().out
    assert all(f"img{i}.png" in table for i in range(n))
    records = json.loads(js.read_text())
    assert len(records) == n
    rows = list(csv.DictReader(cs.open()))
    assert len(rows) >= n
    assert all(name in cs.read_text() for name in (f"img{i}.png" for i in range(n)))


def test_export_writes_onnx(run: tuple[Path, int, str], tmp_path: Path, capsys) -> None:
    out, _, _ = run
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", str(out), "--out", str(onnx_path)]) == 0
    text = capsys.readouterr().out
    assert onnx_path.stat().st_size > 0
    found = re.search(r"onnxruntime vs torch: max \|difference\| = (\S+)", text)
    assert found and float(found.group(1)) < 1e-3


def test_explain_with_flip_and_scales(run: tuple[Path, int, str], images: Path, tmp_path: Path, capsys) -> None:
    out, _, _ = run
    argv = ["explain", str(out), str(images / "img0.png"), "--top-k", "2", "--out", str(tmp_path / "x")]
    assert main([*argv, "--flip", "--map-scales", "1", "2"]) == 0
    assert "img0.png" in capsys.readouterr().out
    (flipped,) = json.loads((tmp_path / "x" / "explanations.json").read_text())
    assert main([*argv[:-1], str(tmp_path / "y")]) == 0
    (plain,) = json.loads((tmp_path / "y" / "explanations.json").read_text())
    assert len(flipped["boxes"]) == len(plain["boxes"]) == 2
    assert flipped["scores"] != plain["scores"]  # the mirrored image's scores are averaged in
