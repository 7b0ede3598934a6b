"""``foveal predict`` on hostile inputs and folders, through the CLI: a run where no image could be predicted fails and
says why, a summary counts only the predicted images, every path (in memory and streamed) skips and lists an image it
cannot use, output names the file system refuses are shortened, an ``--out`` folder holding another model's or
command's outputs is refused unless ``--overwrite``, and a full disk stops the run with a message and ``--resume``."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image

from foveal import io as foveal_io
from foveal.cli import main
from foveal.inference import batch_predict

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoints: dict[str, str]) -> dict[str, str]:
    """Task → a tiny untrained checkpoint (see tests/conftest.py)."""
    return tiny_checkpoints


def _gray(path: Path, value: int = 100, size: tuple[int, int] = (28, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.arange(size[0] * size[1]).reshape(size) * 7 + value).astype(np.uint8)).save(path)
    return path


def _corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 2)
    return path


def _truncated_tiled_bigtiff(path: Path) -> Path:
    """A tiled zlib BigTIFF cut to two thirds: its header opens, its later tiles do not decode."""
    buf = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 255, (192, 192), np.uint8)
    tifffile.imwrite(buf, pixels, tile=(32, 32), bigtiff=True, compression="zlib")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` → its bytes (not the lock, nor the staging a failed run keeps for --resume)."""
    files = (p for p in sorted(folder.rglob("*")) if p.is_file() and foveal_io.STAGING_NAME not in p.parts)
    return {str(p.relative_to(folder)): p.read_bytes() for p in files if p.name != foveal_io.LOCK_NAME}


def _fail(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    """The CLI fails with exit code 2 and one error (its reasons may follow on indented lines), no traceback."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert "Traceback" not in err and err.startswith("foveal: error: ") and err.count("foveal: error:") == 1, err
    assert all(line.startswith("  ") for line in err.splitlines()[1:]), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


def _ok(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out, captured.err


def _errors(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "errors.jsonl").read_text().splitlines()]


# -------------------------------------------------------------------------------------------------- false success


def test_every_input_failing_is_an_error_that_gives_each_reason(capsys, ckpt, tmp_path):
    bad = [_corrupt(tmp_path / "bad" / f"x{i}.png") for i in range(3)]
    preds = tmp_path / "preds.json"
    err = _fail(capsys, ["predict", ckpt["classify"], *map(str, bad), "--json", str(preds)], "none of the 3 images")
    assert all(str(p) in err for p in bad) and "errors.jsonl" not in err  # no temporary file is named
    assert not preds.exists()


def test_a_decompression_bomb_alone_says_why(capsys, ckpt, tmp_path):
    bomb = tmp_path / "bomb.tif"
    tifffile.imwrite(bomb, np.zeros((64, 64), np.uint8), bigtiff=True, tile=(64, 64), compression="zlib")
    with tifffile.TiffFile(bomb, mode="r+") as tif:
        page = tif.pages.first
        for tag in ("ImageWidth", "ImageLength"):
            page.tags[tag].overwrite(200_000)
    _fail(capsys, ["predict", ckpt["classify"], str(bomb), "--json", str(tmp_path / "p.json")], "bomb.tif", "too large")


def test_every_input_failing_leaves_the_earlier_outputs(capsys, ckpt, tmp_path):
    out = tmp_path / "out"
    _ok(capsys, ["predict", ckpt["segment"], str(_gray(tmp_path / "good.png")), "--out", str(out)])
    before = _snapshot(out)
    bad = _corrupt(tmp_path / "good.png")  # the same name: its files would be replaced
    _fail(capsys, ["predict", ckpt["segment"], str(bad), "--out", str(out)], "no image could be predicted", "good.png")
    assert _snapshot(out) == before


def test_summary_counts_the_predicted_images_and_prints_the_reasons_without_out(capsys, ckpt, tmp_path):
    good = [_gray(tmp_path / "in" / f"g{i}.png", i) for i in range(3)]
    bad = [_corrupt(tmp_path / "in" / f"x{i}.png") for i in range(2)]
    csv = tmp_path / "p.csv"
    out, err = _ok(capsys, ["predict", ckpt["classify"], str(tmp_path / "in"), "--csv", str(csv)])
    assert "predicted 3 of 5 images; 2 failed, each named on stderr" in out and "errors.jsonl" not in out + err
    skipped = [line for line in err.splitlines() if line.startswith("foveal: skipped: ")]
    assert len(skipped) == 2 and all(str(p) in err for p in bad)
    rows = csv.read_text().splitlines()[1:]
    assert {r.split(",")[0] for r in rows} == {str(p) for p in good}


def test_summary_with_out_names_the_error_list(capsys, ckpt, tmp_path):
    inputs = [_gray(tmp_path / "a.png"), _corrupt(tmp_path / "b.png"), _gray(tmp_path / "c.png", 9)]
    out = tmp_path / "out"
    text, err = _ok(capsys, ["predict", ckpt["classify"], *map(str, inputs), "--out", str(out)])
    assert f"predicted 2 of 3 images; 1 failed, listed in {out / 'errors.jsonl'}" in text
    assert err.startswith(f"foveal: skipped: {inputs[1]}") and len(err.splitlines()) == 1  # the reason said too
    assert [e["file"] for e in _errors(out)] == [str(inputs[1])]
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2
    # the same model again, every image good: the earlier list of failures goes
    text, _ = _ok(capsys, ["predict", ckpt["classify"], str(inputs[0]), "--out", str(out)])
    assert "predicted 1 image\n" in text and not (out / "errors.jsonl").exists()


def test_json_onto_a_folder_is_refused_before_predicting(capsys, ckpt, tmp_path):
    _fail(capsys, ["predict", ckpt["classify"], str(_gray(tmp_path / "a.png")), "--json", str(tmp_path)], "is a folder")


# ------------------------------------------------------------------------------------------------ skip mode


@pytest.fixture()
def rgb_and_gray(tmp_path: Path) -> tuple[Path, Path]:
    """A 3-channel TIFF (the tiny models take one channel) and a grayscale one."""
    rgb, gray = tmp_path / "rgb.tif", tmp_path / "gray.tif"
    tifffile.imwrite(rgb, np.zeros((48, 48, 3), np.uint8), photometric="rgb")
    tifffile.imwrite(gray, (np.arange(48 * 48).reshape(48, 48) % 251).astype(np.uint8))
    return rgb, gray


def test_streamed_path_skips_and_lists_an_image_of_other_channels(capsys, ckpt, tmp_path, rgb_and_gray):
    rgb, gray = rgb_and_gray
    out = tmp_path / "out"
    argv = ["predict", ckpt["segment"], str(rgb), str(gray), "--format", "zarr", "--out", str(out)]
    text, _ = _ok(capsys, argv)
    assert "predicted 1 of 2 images" in text
    (error,) = _errors(out)
    assert error["file"] == str(rgb) and "3 channel(s) but the model takes 1" in error["error"]
    assert (out / "gray_labels.zarr").is_dir() and not (out / "rgb_labels.zarr").exists()
    before = _snapshot(out)
    text, _ = _ok(capsys, [*argv, "--resume"])  # nothing was left to do: said so, nothing changes
    assert f"nothing to resume in {out}" in text and "predicted 1 of 2 images" in text
    assert _snapshot(out) == before


def test_full_disk_stops_the_run_and_resume_goes_past_the_skipped_image(
    capsys, ckpt, tmp_path, rgb_and_gray, monkeypatch
):
    rgb, gray = rgb_and_gray
    out = tmp_path / "out"
    argv = ["predict", ckpt["segment"], str(rgb), str(gray), "--format", "zarr", "--out", str(out)]
    real, calls = batch_predict.append_records, []

    def full_disk(*args: Any) -> None:
        calls.append(1)
        if len(calls) == 2:  # the second batch: gray.tif (the first one recorded rgb.tif as failed)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(*args)

    monkeypatch.setattr(batch_predict, "append_records", full_disk)
    err = _fail(capsys, argv, f"the disk holding {out} is full", "No space left on device", "--resume")
    assert len(err.splitlines()) == 1
    assert not (out / "predictions.jsonl").exists()
    monkeypatch.setattr(batch_predict, "append_records", real)
    text, _ = _ok(capsys, [*argv, "--resume"])
    assert "predicted 1 of 2 images (1 done before the resume)" in text
    assert [e["file"] for e in _errors(out)] == [str(rgb)] and (out / "gray_labels.zarr").is_dir()


def test_truncated_tiled_bigtiff_on_the_streamed_path(capsys, ckpt, tmp_path, rgb_and_gray):
    _, gray = rgb_and_gray
    cut = _truncated_tiled_bigtiff(tmp_path / "cut.tif")
    out = tmp_path / "out"
    _ok(capsys, ["predict", ckpt["segment"], str(gray), str(cut), "--format", "zarr", "--out", str(out)])
    (error,) = _errors(out)
    assert error["file"] == str(cut) and "corrupt or truncated" in error["error"]
    assert not (out / "cut_labels.zarr").exists() and not list(out.glob(".cut*"))
    alone = ["predict", ckpt["segment"], str(cut), "--format", "zarr", "--out", str(tmp_path / "o2")]
    _fail(capsys, alone, "no image could be predicted", "cut.tif", "corrupt or truncated")


def test_zarr_of_strings_is_refused_cleanly(capsys, ckpt, tmp_path, rgb_and_gray):
    zarr = pytest.importorskip("zarr")
    _, gray = rgb_and_gray
    strings = tmp_path / "strings.zarr"
    with pytest.warns(Warning):  # zarr warns that fixed-length strings have no zarr v3 specification yet
        zarr.open_array(str(strings), mode="w", shape=(32, 32), dtype="U4")[:] = "ab"
    _fail(capsys, ["predict", ckpt["segment"], str(strings), "--out", str(tmp_path / "o")], "strings.zarr", "<U4")
    _ok(capsys, ["predict", ckpt["segment"], str(gray), str(strings), "--out", str(tmp_path / "o2")])
    assert [e["file"] for e in _errors(tmp_path / "o2")] == [str(strings)]


def test_file_names_too_long_for_outputs_are_shortened(capsys, ckpt, tmp_path):
    long_a = _gray(tmp_path / "a" / ("n" * 240 + "a.png"))
    long_b = _gray(tmp_path / "b" / ("n" * 240 + "b.png"), 7)  # the same first 240 characters
    out = tmp_path / "out"
    text, _ = _ok(
        capsys, ["predict", ckpt["detect"], str(long_a), str(long_b), str(_gray(tmp_path / "s.png")), "--out", str(out)]
    )
    assert "predicted 3 images" in text
    figures = sorted(p.name for p in out.glob("*_detections.png"))
    assert len(figures) == 3 and all(len(f.encode()) <= batch_predict.STEM_BYTES + 15 for f in figures)
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted(Path(r["figure"]).name for r in records) == figures  # one file each, as its record says


# ------------------------------------------------------------------------------------------------- earlier output


def test_a_folder_holding_another_models_predictions_is_refused(capsys, ckpt, tmp_path):
    image, out = str(_gray(tmp_path / "a.png")), tmp_path / "out"
    _ok(capsys, ["predict", ckpt["classify"], image, "--out", str(out)])
    before = _snapshot(out)
    err = _fail(capsys, ["predict", ckpt["detect"], image, "--out", str(out)], str(out), "--overwrite", "another --out")
    assert f"predictions of the model {Path(ckpt['classify']).resolve()}" in err
    _fail(capsys, ["predict", ckpt["detect"], image, "--out", str(out), "--resume"], str(out))
    _fail(capsys, ["eval", ckpt["classify"], "--out", str(out)], "already holds predictions", "another --out")
    _fail(capsys, ["explain", ckpt["classify"], image, "--out", str(out)], "already holds predictions", "another --out")
    assert _snapshot(out) == before
    _ok(capsys, ["predict", ckpt["classify"], image, "--out", str(out)])  # the same model again: fine
    _ok(capsys, ["predict", ckpt["detect"], image, "--out", str(out), "--overwrite"])
    assert not (out / "predictions.csv").exists() and (out / "detections.json").is_file()
    owner = foveal_io.folder_owner(out)
    assert owner is not None and owner["model"] == str(Path(ckpt["detect"]).resolve())
    _ok(capsys, ["predict", ckpt["segment"], image, "--out", str(out), "--overwrite"])  # per-image files go too
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "a_labels.tif",
        "a_overlay.png",
        "predictions.jsonl",
    ]


def test_a_folder_holding_another_commands_outputs_is_refused(capsys, ckpt, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_info.json").write_text(json.dumps({"kind": "train"}))
    (run / "metrics.jsonl").write_text("{}\n")
    before = _snapshot(run)
    image = str(_gray(tmp_path / "a.png"))
    _fail(capsys, ["predict", ckpt["segment"], image, "--out", str(run)], "a training run", "--overwrite")
    assert _snapshot(run) == before and not (run / foveal_io.LOCK_NAME).exists()
    _fail(capsys, ["export", ckpt["segment"], "--out", str(run / "run_info.json")], "not an ONNX model")
    assert _snapshot(run) == before
    _ok(capsys, ["predict", ckpt["segment"], image, "--out", str(run), "--overwrite"])
    assert _snapshot(run).items() >= before.items() and (run / "a_labels.tif").is_file()


def test_resume_of_nothing_makes_no_folder(capsys, ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the detector's default --out is ./predictions
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(image)
    assert main(["predict", ckpt["detect"], str(image), "--resume"]) == 2
    assert "nothing to resume in predictions" in capsys.readouterr().err
    assert not (tmp_path / "predictions").exists()  # neither the folder nor a lock file was made
