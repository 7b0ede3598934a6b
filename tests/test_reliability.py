"""Reliability through the CLI: bad values refused at load time, hostile image sizes refused from the header, no
traceback for any input (one ``foveal: error:`` line, exit 2; an unexpected failure exit 1), earlier runs left intact
by a failed ``train --overwrite``, Ctrl-C hints, warnings held back, atomic writes with the umask's permissions."""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from foveal import io
from foveal.cli import main
from foveal.config import check_ranges, load_config
from foveal.data.coco import open_coco
from foveal.data.detection_set import FASHION_CANVAS_SAMPLE
from foveal.errors import FovealError

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "foveal" / "configs"
TRAIN = ["train", "classify", "--config", "classify_demo", "train.max_steps=1", "data.limit=32", "data.val_limit=16"]
TRAIN += ["data.batch_size=16", "train.progress=false"]


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` → its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def fail(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    """Run the CLI in-process; check it fails with exit 2 and one error line holding every needle; return it."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, f"{argv}: exit {code}: {err}"
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("foveal: error: "), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


def _gray(path: Path, value: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((12, 12), value, np.uint8)).save(path)
    return path


def _edit_meta(ckpt: Path, edit: Callable[[dict], None]) -> None:
    path = ckpt / "checkpoint.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _foveal(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "foveal", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def _one_error_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("foveal: error: "), result.stderr
    return lines[0]


# ----------------------------------------------------------------------------------------- kind 2: bad values refused

BAD_VALUES = [
    ("train.epochs=-1", "> 0"),
    ("train.epochs=inf", "NaN and infinity"),
    ("train.epochs=1e400", "NaN and infinity"),
    ("optim.lr=nan", "NaN and infinity"),
    ("optim.lr=-0.1", "> 0"),
    ("train.keep_last=0", "≥ 1"),
    ("train.eval_every=0", "> 0"),
    ("train.checkpoint_every=-1", "≥ 1"),
    ("train.max_steps=0", "≥ 1"),
    ("train.threads=-3", "from 1 to 1024"),
    ("train.threads=99999999999", "from 1 to 1024"),
    ("train.seed=-1", "from 0 to"),
    ("optim.momentum=1.5", "from 0 to 1"),
    ("model.phi=nan", "from -10 to 12"),
    ("model.dropout=1", "from 0 to 1"),
    ("data.mean=[nan]", "NaN and infinity"),
    ("data.std=[0]", "> 0"),
    ("data.val_fraction=2", "from 0 to 1"),
]


@pytest.mark.parametrize(("arg", "needle"), BAD_VALUES, ids=[a for a, _ in BAD_VALUES])
def test_bad_value_refused_before_anything_runs(capsys, run_copy: Path, arg: str, needle: str) -> None:
    before = snapshot(run_copy)
    fail(capsys, [*TRAIN, "--out", str(run_copy), "--overwrite", arg], arg.split("=")[0], needle)
    assert snapshot(run_copy) == before


def test_every_bundled_recipe_is_in_range() -> None:
    from foveal.tasks.classify import ClassifyConfig
    from foveal.tasks.detect import DetectConfig
    from foveal.tasks.segment import SegmentConfig

    classes = {"classify": ClassifyConfig, "localize": ClassifyConfig, "segment": SegmentConfig, "detect": DetectConfig}
    recipes = sorted(CONFIGS.glob("*.yaml"))
    assert len(recipes) >= 9
    for recipe in recipes:
        cls = classes[recipe.stem.split("_")[0]]
        check_ranges(load_config(cls, recipe))
        check_ranges(cls())


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["models", "--phi", "nan"], "--phi nan"),
        (["models", "--phi", "1e6"], "--phi 1e+06"),
        (["models", "--phi=-inf"], "--phi -inf"),
        (["weightmap", "nuclei-sample", "--limit", "-1"], "--limit: -1 is below 1"),
        (["weightmap", "nuclei-sample", "--limit", "0"], "--limit: 0 is below 1"),
        (["weightmap", "nuclei-sample", "--sigma", "nan"], "--sigma nan"),
        (["weightmap", "nuclei-sample", "--w0=-inf"], "--w0 -inf"),
        (["weightmap", "nuclei-sample", "--max-pixels", "0"], "--max-pixels 0"),
        (["weightmap", "nuclei-sample", "--max-pixels", "nan"], "--max-pixels nan"),
    ],
)
def test_bad_option_value(capsys, tmp_path: Path, argv: list[str], needle: str) -> None:
    fail(capsys, [*argv, *(["--out", str(tmp_path / "w")] if argv[0] == "weightmap" else [])], needle)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("scales", [["1e6"], ["1", "nan"], ["inf"]])
def test_explain_map_scales_bounded(capsys, ckpt_run: Path, tmp_path: Path, scales: list[str]) -> None:
    image = _gray(tmp_path / "x.png")
    fail(capsys, ["explain", str(ckpt_run), str(image), "--out", str(tmp_path / "e"), "--map-scales", *scales], "≤ 16")


# ------------------------------------------------------------------------------------ kind 3: specific messages


@pytest.mark.parametrize(
    ("key", "value"),
    [("resolution", 10**9), ("resolution", -1), ("resolution", "big"), ("channels", 7)],
)
@pytest.mark.parametrize("command", ["predict", "eval", "export"])
def test_checkpoint_record_with_impossible_input(
    capsys, ckpt_run: Path, tmp_path: Path, command: str, key: str, value: object
) -> None:
    ckpt = Path(shutil.copytree(ckpt_run / "checkpoints" / "best", tmp_path / "ckpt"))
    _edit_meta(ckpt, lambda m: m["input"].update({key: value}))
    argv = {
        "predict": ["predict", str(ckpt), str(_gray(tmp_path / "x.png"))],
        "eval": ["eval", str(ckpt)],
        "export": ["export", str(ckpt), "--out", str(tmp_path / "m.onnx")],
    }[command]
    fail(capsys, argv, "damaged", key if key == "channels" else "resolution")
    assert not (tmp_path / "m.onnx").exists()


def test_weights_of_another_task(capsys, ckpt_run: Path, tmp_path: Path) -> None:
    other = Path(shutil.copytree(ckpt_run / "checkpoints" / "best", tmp_path / "seg"))
    _edit_meta(other, lambda m: m.update(task="segment"))
    fail(capsys, [*TRAIN, "--out", str(tmp_path / "r"), f"model.weights={other}"], "'segment' checkpoint", "classify")
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_unwritable_out_for_train_and_demo(capsys, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("keep")
    fail(capsys, [*TRAIN, "--out", str(blocker / "run")], "cannot be created", "file is in the way")
    fail(capsys, ["demo", "--quick", "--out", str(blocker / "demo")], "demo folder", "file is in the way")
    assert blocker.read_text() == "keep"
    if Path("/proc/self").is_dir():  # a file system nobody can write to, also as root
        fail(capsys, [*TRAIN, "--out", "/proc/foveal-run"], "/proc/foveal-run", "not writable")
        fail(capsys, ["demo", "--quick", "--out", "/proc/foveal-demo"], "/proc/foveal-demo", "not writable")


def test_symlink_loops_are_named(capsys, ckpt_run: Path, tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    broken = tmp_path / "broken.png"
    broken.symlink_to(tmp_path / "gone.png")
    fail(capsys, ["predict", str(ckpt_run), str(loop)], "symbolic link that loops")
    fail(capsys, ["predict", str(ckpt_run), str(broken)], "broken symbolic link", "gone.png")
    fail(capsys, ["predict", str(loop), str(_gray(tmp_path / "x.png"))], "checkpoint", "symbolic link that loops")
    fail(capsys, [*TRAIN, "--out", str(loop / "run")], "symbolic link that loops")
    fail(capsys, [*TRAIN, "--out", str(loop)], "symbolic link that loops")


def test_non_utf8_file_name_with_json(ckpt_run: Path, tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    _gray(tmp_path / name)
    out = tmp_path / "p.json"
    result = _foveal(
        "predict", str(ckpt_run), str(tmp_path / name), "--json", str(out), "--csv", str(tmp_path / "p.csv")
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(out.read_text(encoding="utf-8"))
    assert os.fsencode(records[0]["file"]) == os.fsencode(str(tmp_path / name))  # the name round-trips
    assert "caf\\udce9.png" in result.stdout


@pytest.mark.parametrize(
    ("field", "where"),
    [("bbox", "annotation"), ("area", None), ("width", "image"), ("image_id", "image"), ("category_id", "category")],
)
def test_coco_numbers_too_large(capsys, tmp_path: Path, field: str, where: str | None) -> None:
    huge = 10**400
    _gray(tmp_path / "a.png")
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": 12, "height": 12}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    if field == "bbox":
        doc["annotations"][0]["bbox"] = [huge, 1, 4, 4]
    elif field == "area":
        doc["annotations"][0]["area"] = huge
    elif field == "width":
        doc["images"][0]["width"] = huge
    elif field == "image_id":
        doc["images"][0]["id"] = huge
    else:
        doc["categories"][0]["id"] = huge
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(doc))
    if where is None:  # an absurd area is recomputed from the box
        assert float(open_coco(path).targets[0]["areas"][0]) == 16.0
        return
    with pytest.raises(FovealError, match=f"{where} entry 0 is malformed"):
        open_coco(path)
    fail(capsys, ["train", "detect", "--config", "detect_demo", f"data.train={path}", "--out", str(tmp_path / "r")])


# ---------------------------------------------------------------------------------------- kind 4: hostile sizes


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that is a valid header claiming width × height pixels (8-bit gray) and a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")
    )
    return path


def _tiff_header(path: Path, width: int, height: int) -> Path:
    """A 150-byte little-endian TIFF whose one IFD claims width × height 8-bit pixels in one deflate strip."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 8), (262, 3, 1), (273, 4, 8), (277, 3, 1)]
    tags += [(278, 4, height), (279, 4, 16)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags)
    path.write_bytes(b"II*\0" + struct.pack("<I", 24) + bytes(16) + ifd + struct.pack("<I", 0))
    return path


@pytest.mark.parametrize("kind", ["png", "tif"])
def test_bomb_refused_from_header_through_predict(ckpt_run: Path, tmp_path: Path, kind: str) -> None:
    craft = _png_header if kind == "png" else _tiff_header
    bomb = craft(tmp_path / f"bomb.{kind}", 100_000, 100_000)
    assert bomb.stat().st_size < 200
    line = _one_error_line(_foveal("predict", str(ckpt_run), str(bomb), "--strict"))
    assert "too large" in line and "100000 × 100000" in line and "--max-pixels 10000000000" in line
    assert "corrupt" not in line and "truncated" not in line
    # without --strict the stream goes on: the bomb is skipped and listed as too large, not as corrupt (alone it would
    # leave nothing predicted, which is an error)
    out = tmp_path / "out"
    result = _foveal("predict", str(ckpt_run), str(bomb), str(_gray(tmp_path / "good.png")), "--out", str(out))
    assert result.returncode == 0, result.stderr
    (error,) = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert "too large" in error["error"] and "corrupt" not in error["error"]


@pytest.mark.parametrize("kind", ["png", "tif"])
def test_bomb_refused_from_header_through_segmentation_reader(capsys, tmp_path: Path, kind: str) -> None:
    craft = _png_header if kind == "png" else _tiff_header
    data = tmp_path / "seg"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    craft(data / "images" / f"a.{kind}", 100_000, 100_000)
    craft(data / "masks" / f"a.{kind}", 100_000, 100_000)
    err = fail(capsys, ["weightmap", str(data), "--out", str(tmp_path / "w")], "too large", "--max-pixels")
    assert "corrupt" not in err


def test_max_pixels_is_our_limit_not_pillows(capsys, monkeypatch, ckpt_run: Path, tmp_path: Path) -> None:
    image = tmp_path / "big.png"
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(image)
    # Pillow's own bomb check would refuse (and warn about) this image: foveal's limit replaces it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["predict", str(ckpt_run), str(image)]) == 0
    captured = capsys.readouterr()
    assert "big.png" in captured.out and captured.err == ""
    assert Image.MAX_IMAGE_PIXELS == 1000  # put back as it was
    fail(
        capsys,
        ["predict", str(ckpt_run), str(image), "--max-pixels", "4095", "--strict"],
        "64 × 64 = 4,096",
        "too large",
    )


# ------------------------------------------------------------------------ kind 1: train --overwrite keeps the old run


def test_failed_overwrite_leaves_the_earlier_run(run_copy: Path, tmp_path: Path) -> None:
    """A detection set whose validation images disagree with their JSON fails at the first evaluation."""
    data = Path(shutil.copytree(FASHION_CANVAS_SAMPLE, tmp_path / "canvas"))
    val = data / "annotations" / "instances_val.json"
    doc = json.loads(val.read_text())
    for image in doc["images"]:
        image["width"] += 8
    val.write_text(json.dumps(doc))
    before = snapshot(run_copy)
    argv = ["train", "detect", "--config", "detect_demo", f"data.train={data}", "data.val_limit=2", "data.batch_size=4"]
    argv += [
        "data.min_size=64",
        "data.max_size=64",
        "model.fpn_channels=16",
        "train.max_steps=1",
        "train.progress=false",
    ]
    result = _foveal(*argv, "--out", str(run_copy), "--overwrite")
    line = _one_error_line(result)
    assert "but" in line and "says" in line  # the size mismatch, named
    assert snapshot(run_copy) == before
    assert not [p for p in run_copy.iterdir() if p.name.startswith(".")]  # no staging folder left


# ---------------------------------------------------------------------- last resort, warnings, Ctrl-C, exit codes


def test_unexpected_exception_is_one_line_exit_1(capsys, monkeypatch, ckpt_run: Path) -> None:
    import foveal.engine.checkpoint as ckpt_io

    def boom(path: object) -> str:
        raise RuntimeError("something nobody foresaw\nsecond line")

    monkeypatch.setattr(ckpt_io, "checkpoint_task", boom)
    monkeypatch.delenv("FOVEAL_DEBUG", raising=False)
    assert main(["eval", str(ckpt_run)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "'foveal eval' on " + str(ckpt_run) in err and "RuntimeError: something nobody foresaw" in err
    assert "FOVEAL_DEBUG=1" in err
    monkeypatch.setenv("FOVEAL_DEBUG", "1")
    assert main(["eval", str(ckpt_run)]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_warnings_held_back_on_error_shown_once_on_success(capsys, monkeypatch) -> None:
    import foveal.cli as cli

    def warns_then(fails: bool):  # noqa: ANN202
        def command(args: object) -> int:
            for _ in range(3):
                warnings.warn("a raw library warning", UserWarning, stacklevel=1)
            logging.getLogger("tifffile").warning("a library log line")
            if fails:
                raise FovealError("the one line")
            return 0

        return command

    monkeypatch.setattr(cli, "cmd_models", warns_then(True))
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), "models", cli.cmd_models))
    assert main(["models"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["foveal: error: the one line"]
    monkeypatch.setattr(cli, "cmd_models", warns_then(False))
    assert main(["models"]) == 0
    assert capsys.readouterr().err.strip().splitlines() == [
        "foveal: warning: a raw library warning",
        "foveal: warning: a library log line",
    ]


def _with_func(parser, name: str, func):  # noqa: ANN001, ANN202
    parser._subparsers._group_actions[0].choices[name].set_defaults(func=func)
    return parser


def test_ctrl_c_hints_resume_only_when_this_run_has_a_checkpoint(capsys, monkeypatch, tmp_path: Path) -> None:
    from foveal.engine import trainer

    original = trainer.Trainer._evaluate_and_save

    def save_then_interrupt(self, log, train_time):  # noqa: ANN001, ANN202
        original(self, log, train_time)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Trainer, "_evaluate_and_save", save_then_interrupt)
    out = tmp_path / "run"
    assert main([*TRAIN, "--out", str(out)]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"foveal: interrupted; continue from its latest checkpoint (step-00000001) with: foveal train "
        f"classify --resume {out}"
    ]

    def interrupt(self, log, train_time):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.Trainer, "_evaluate_and_save", interrupt)
    assert main([*TRAIN, "--out", str(out), "--overwrite"]) == 130
    err = capsys.readouterr().err
    assert "no checkpoint of this run was written" in err and "--resume" not in err
    assert (out / "checkpoints" / "step-00000001").is_dir()  # the earlier run is kept


# ------------------------------------------------------------------------------------ kind 5 and 7: atomic writes


def test_atomic_writes_respect_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        io.atomic_write_text(tmp_path / "a.txt", "x")
        with io.atomic_dir(tmp_path / "d") as folder:
            (folder / "f").write_text("y")
        io.write_json(tmp_path / "b.json", {"k": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o750
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    with io.atomic_dir(target) as folder:
        (folder / "one").write_text("1")
    with pytest.raises(RuntimeError), io.atomic_dir(target) as folder:
        (folder / "two").write_text("2")
        raise RuntimeError("killed half way")
    assert sorted(p.name for p in target.iterdir()) == ["one"]
    with io.atomic_dir(target) as folder:
        (folder / "two").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["two"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_stale_temporaries_removed(tmp_path: Path) -> None:
    (tmp_path / ".metrics.jsonl.abc.tmp").write_text("half")
    (tmp_path / ".step-00000002.tmp-xyz").mkdir()
    (tmp_path / ".hidden-user-file").write_text("keep")
    (tmp_path / "metrics.jsonl").write_text("keep")
    removed = io.remove_stale_temporaries(tmp_path)
    assert len(removed) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden-user-file", "metrics.jsonl"]
