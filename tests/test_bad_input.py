"""Bad input through the CLI: one ``foveal: error: ...`` line naming the problem and the fix, a non-zero exit code, no
traceback, and earlier outputs (run directories, predictions, ONNX files) left byte-for-byte as they were."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from foveal.cli import main
from foveal.data.idx import write_idx

TINY = ["train.max_steps=1", "data.limit=32", "data.val_limit=16", "data.batch_size=16", "train.progress=false"]
TRAIN = ["train", "classify", "--config", "classify_demo", *TINY]


# ------------------------------------------------------------------------------------------------------- helpers


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or ``path`` itself) → its bytes."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def fail(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str, one_line: bool = True) -> str:
    """Run the CLI in-process; check it fails cleanly with a message holding every needle; return the message."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0, f"{argv} succeeded"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines and lines[0].startswith("foveal: error: "), err
    assert err.count("foveal: error:") == 1, err
    if one_line:
        assert len(lines) == 1, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


def _gray(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12), value, np.uint8)).save(path)
    return path


def _image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 12) -> Path:
    for c in classes:
        for i in range(per_class):
            _gray(root / c / f"{i}.png", 10 * i)
    return root


def _edit_meta(ckpt: Path, edit: Callable[[dict], None]) -> None:
    path = ckpt / "checkpoint.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


# -------------------------------------------------------------------------------------------- config and options


def test_missing_config_file(capsys, run_copy: Path) -> None:
    before = snapshot(run_copy)
    fail(capsys, ["train", "classify", "--config", "nope.yaml", "--out", str(run_copy), "--overwrite"], "nope.yaml")
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("model: [1, 2\n", ("not valid YAML",)),
        ("- 1\n- 2\n", ("mapping",)),
        ("optim:\n  lrr: 0.1\n", ("optim.lrr", "did you mean 'lr'")),
        ("optim: 3\n", ("'optim'", "mapping")),
    ],
    ids=["not-yaml", "not-mapping", "unknown-key", "section-scalar"],
)
def test_bad_config_file(capsys, run_copy: Path, tmp_path: Path, text: str, needles: tuple[str, ...]) -> None:
    cfg = tmp_path / "recipe.yaml"
    cfg.write_text(text)
    before = snapshot(run_copy)
    fail(capsys, ["train", "classify", "--config", str(cfg), "--out", str(run_copy), "--overwrite"], *needles)
    assert snapshot(run_copy) == before


@pytest.mark.parametrize(
    ("arg", "needles"),
    [
        ("optim.lrr=0.1", ("optim.lrr", "did you mean 'lr'")),
        ("optimizer.lr=0.1", ("optimizer", "did you mean 'optim'")),
        ("optim.lr=abc", ("'abc'", "optim.lr", "number")),
        ("data.augment=foo", ("'foo'", "data.augment", "crop-flip")),
        ("optim.lr.x=1", ("optim.lr", "not a section")),
        ("optimlr", ("optimlr", "key=value")),
        ("--bogus", ("--bogus", "foveal train --help")),
        ("data.batch_size=0", ("data.batch_size=0", "≥ 1")),
        ("data.limit=0", ("data.limit=0", "≥ 1")),
        ("model.resolution=-5", ("model.resolution=-5", "from 1 to 8192")),
    ],
)
def test_bad_override_or_option(capsys, run_copy: Path, arg: str, needles: tuple[str, ...]) -> None:
    before = snapshot(run_copy)
    fail(capsys, [*TRAIN, "--out", str(run_copy), "--overwrite", arg], *needles)
    assert snapshot(run_copy) == before


def test_bad_option_values(capsys, ckpt_run: Path, tmp_path: Path) -> None:
    fail(capsys, ["predict", str(ckpt_run), "x.png", "--top-k", "abc"], "--top-k", "'abc'", "foveal predict --help")
    fail(capsys, ["eval", str(ckpt_run), "--bogus"], "--bogus", "foveal eval --help")
    fail(capsys, ["eval", str(ckpt_run), "--tta", "dihedral"], "--tta applies to segmentation", "'classify'")
    fail(capsys, ["predict", str(ckpt_run), "x.png", "--tta", "flips"], "--tta", "'flips'", "foveal predict --help")
    fail(capsys, ["train", "track"], "'track'", "classify")
    fail(capsys, [], "COMMAND", "foveal --help")
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"an earlier export")
    fail(capsys, ["export", str(ckpt_run), "--out", str(onnx), "--opset", "99"], "--opset 99", "choose")
    assert onnx.read_bytes() == b"an earlier export"


def test_explain_options_follow_the_library_rule(capsys, ckpt_run: Path, tmp_path: Path) -> None:
    """The CLI checks explain's options with the library's one rule (threshold in [0, 1]), before loading a model or
    making --out."""
    out = tmp_path / "cams"
    fail(
        capsys, ["explain", str(ckpt_run), "x.png", "--threshold", "1.5", "--out", str(out)], "threshold=1.5", "[0, 1]"
    )
    fail(capsys, ["explain", str(ckpt_run), "x.png", "--top-k", "0", "--out", str(out)], "--top-k", "0 is below 1")
    assert not out.exists()


# ------------------------------------------------------------------------------------------------------ datasets


def test_train_missing_dataset(capsys, tmp_path: Path) -> None:
    fail(
        capsys,
        [*TRAIN, "--out", str(tmp_path / "r"), f"data.train={tmp_path / 'nowhere'}"],
        "does not exist",
        "data.train",
    )
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_train_one_class_folder(capsys, tmp_path: Path) -> None:
    data = _image_folder(tmp_path / "data", classes=("cat",))
    fail(capsys, [*TRAIN, "--out", str(tmp_path / "r"), f"data.train={data}"], "only one class", "at least 2")


def test_train_corrupt_image_fails_before_training(capsys, tmp_path: Path) -> None:
    data = _image_folder(tmp_path / "data")
    broken = data / "dog" / "7.png"
    broken.write_bytes(broken.read_bytes()[:40])  # truncated
    out = tmp_path / "r"
    argv = [*TRAIN, "--out", str(out), f"data.train={data}", "data.limit=null", "data.val_limit=null"]
    # The message lists the broken files, one per line after the summary line.
    fail(capsys, argv, str(broken), "cannot be loaded", one_line=False)
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints").exists()


def test_train_batch_larger_than_data(capsys, tmp_path: Path) -> None:
    # Used to loop forever: the trainer drops the last partial batch, so an epoch had no batch at all.
    fail(capsys, [*TRAIN, "--out", str(tmp_path / "r"), "data.batch_size=64"], "fewer than one batch", "batch_size")


def _idx_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    for prefix, n in (("train", 40), ("t10k", 10)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", np.zeros((n, 8, 8), np.uint8), gzip=False)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8), gzip=False)
    return root


@pytest.mark.parametrize(
    ("payload", "needles"),
    [
        (b"\x12\x34\x08\x03" + bytes(64), ("not an IDX file", "0x12 0x34")),
        (bytes([0, 0, 8, 3]) + np.array([40, 8, 8], ">u4").tobytes() + bytes(100), ("truncated", "2560")),
        (bytes([0, 0, 8, 3]) + np.array([40, 8, 8], ">u4").tobytes() + bytes(2600), ("40 bytes after the data",)),
    ],
    ids=["wrong-magic", "too-short", "too-long"],
)
def test_train_bad_idx(capsys, tmp_path: Path, payload: bytes, needles: tuple[str, ...]) -> None:
    data = _idx_folder(tmp_path / "idx")
    (data / "train-images-idx3-ubyte").write_bytes(payload)
    fail(capsys, [*TRAIN, "--out", str(tmp_path / "r"), f"data.train={data}"], "train-images-idx3-ubyte", *needles)


# --------------------------------------------------------------------------------------------------- checkpoints


def _damage(kind: str, ckpt_run: Path, tmp_path: Path) -> tuple[Path, str]:
    """A broken checkpoint of ``kind`` and a phrase its error message must hold."""
    if kind == "missing":
        return tmp_path / "no-such-run", "no-such-run does not exist"
    if kind == "not-a-checkpoint":
        return _image_folder(tmp_path / "pictures", per_class=1), "holds no foveal checkpoint"
    ckpt = Path(shutil.copytree(ckpt_run / "checkpoints" / "best", tmp_path / "ckpt"))
    if kind == "corrupt-json":
        (ckpt / "checkpoint.json").write_text('{"format": "foveal-checkpoint", ')
        return ckpt, "checkpoint.json is unreadable"
    if kind == "corrupt-weights":
        (ckpt / "model.safetensors").write_bytes(b"\x00" * 64)
        return ckpt, "weights in"
    if kind == "other-task":
        _edit_meta(ckpt, lambda m: m.update(task="track"))
        return ckpt, "'track' checkpoint, which this version of foveal does not know"
    if kind == "weights-do-not-fit":
        _edit_meta(ckpt, lambda m: m["model"]["args"].update(num_classes=5))
        return ckpt, "classifier.weight"
    raise AssertionError(kind)


CHECKPOINT_DAMAGE = [
    "missing",
    "not-a-checkpoint",
    "corrupt-json",
    "corrupt-weights",
    "other-task",
    "weights-do-not-fit",
]


@pytest.mark.parametrize("kind", CHECKPOINT_DAMAGE)
@pytest.mark.parametrize("command", ["predict", "eval", "export"])
def test_bad_checkpoint(capsys, ckpt_run: Path, tmp_path: Path, command: str, kind: str) -> None:
    ckpt, needle = _damage(kind, ckpt_run, tmp_path)
    image = _gray(tmp_path / "x.png")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "preds.json").write_text("[]\n")
    (earlier / "metrics.json").write_text("{}\n")
    (earlier / "model.onnx").write_bytes(b"an earlier export")
    argv = {
        "predict": ["predict", str(ckpt), str(image), "--json", str(earlier / "preds.json")],
        "eval": ["eval", str(ckpt), "--out", str(earlier)],
        "export": ["export", str(ckpt), "--out", str(earlier / "model.onnx")],
    }[command]
    before = snapshot(earlier)
    fail(capsys, argv, needle)
    assert snapshot(earlier) == before


# ------------------------------------------------------------------------------------------------- predict/eval


@pytest.mark.parametrize("kind", ["missing", "corrupt", "empty-folder", "no-match"])
def test_predict_bad_inputs(capsys, ckpt_run: Path, tmp_path: Path, kind: str) -> None:
    good = _gray(tmp_path / "good.png")
    if kind == "missing":
        item, needle = str(tmp_path / "nope.png"), "nope.png does not exist"
    elif kind == "corrupt":
        item, needle = str(tmp_path / "bad.png"), "bad.png"
        (tmp_path / "bad.png").write_bytes(good.read_bytes()[:30])
    elif kind == "empty-folder":
        (tmp_path / "empty").mkdir()
        item, needle = str(tmp_path / "empty"), "holds no images"
    else:
        item, needle = str(tmp_path / "*.jpg"), "matches no image files"
    preds = tmp_path / "preds.json"
    preds.write_text("[]\n")
    strict = ["--strict"] if kind == "corrupt" else []  # an unreadable image is otherwise skipped and listed
    fail(capsys, ["predict", str(ckpt_run), str(good), item, "--json", str(preds), *strict], needle)
    assert preds.read_text() == "[]\n"


def test_predict_rgb_image_on_grayscale_model(capsys, ckpt_run: Path, tmp_path: Path) -> None:
    rgb = tmp_path / "colour.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(rgb)
    assert main(["predict", str(ckpt_run), str(rgb), "--json", str(tmp_path / "p.json")]) == 0
    assert "colour.png" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "p.json").read_text())) == 1


def test_eval_dataset_with_other_classes(capsys, ckpt_run: Path, tmp_path: Path) -> None:
    data = _image_folder(tmp_path / "data", per_class=2)
    fail(capsys, ["eval", str(ckpt_run), "--data", str(data)], "2 classes", "checkpoint has 10")


def test_eval_out_is_a_file(capsys, ckpt_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "metrics"
    out.write_text("keep")
    fail(capsys, ["eval", str(ckpt_run), "--out", str(out)], "is a file")
    assert out.read_text() == "keep"


# ----------------------------------------------------------------------------------------------- initial weights


class _MakesDirOnLoad:
    """Pickles as a call to os.makedirs: loading it would run code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.makedirs, (self.path,)


def test_weights_with_pickled_code_are_refused(capsys, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    weights = tmp_path / "weights.pth"
    torch.save({"state_dict": {}, "payload": _MakesDirOnLoad(marker)}, weights)
    fail(capsys, [*TRAIN, "--out", str(tmp_path / "r"), f"model.weights={weights}"], "weights.pth", "refuses")
    assert not marker.exists()


def test_weights_for_other_classes_suggest_new_classifier(capsys, ckpt_run: Path, tmp_path: Path) -> None:
    data = _image_folder(tmp_path / "data")
    argv = [*TRAIN, "--out", str(tmp_path / "r"), f"data.train={data}", f"model.weights={ckpt_run}"]
    fail(capsys, [*argv, "data.limit=null", "data.val_limit=null"], "10 classes", "model.new_classifier=true")


# -------------------------------------------------------------------------------------------------- run folders


def test_train_into_existing_run_refuses(capsys, run_copy: Path) -> None:
    before = snapshot(run_copy)
    fail(capsys, [*TRAIN, "--out", str(run_copy)], "already holds checkpoints", "--resume", "--overwrite")
    assert snapshot(run_copy) == before


def test_train_out_is_a_file(capsys, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.write_text("keep")
    fail(capsys, [*TRAIN, "--out", str(out)], "is a file")
    assert out.read_text() == "keep"


def test_resume_without_checkpoints(capsys, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    fail(capsys, ["train", "classify", "--resume", str(tmp_path / "empty")], "nothing to resume", "--out")


def test_resume_with_overrides(capsys, run_copy: Path) -> None:
    before = snapshot(run_copy)
    fail(capsys, ["train", "classify", "--resume", str(run_copy), "optim.lr=1"], "stored config")
    assert snapshot(run_copy) == before


# ---------------------------------------------------------------------------------------- as a user runs it


def _foveal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foveal", *args], capture_output=True, text=True, timeout=120)


def test_subprocess_damaged_checkpoint_no_traceback(ckpt_run: Path, tmp_path: Path) -> None:
    ckpt = Path(shutil.copytree(ckpt_run / "checkpoints" / "best", tmp_path / "ckpt"))
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 64)
    result = _foveal("predict", str(ckpt), str(_gray(tmp_path / "x.png")))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("foveal: error: ") and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_subprocess_unknown_option_no_traceback() -> None:
    result = _foveal("train", "classify", "--bogus")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "foveal: error: unrecognized arguments: --bogus (see 'foveal train --help' for the options)"
    ]
