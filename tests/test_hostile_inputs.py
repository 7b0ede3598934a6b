"""Inputs that looked fine but gave silently wrong results or misleading messages: broken links inside folders and
patterns, multi-page TIFFs, NaN pixels, byte-order marks and invisible characters in paths, and Python API arguments
of the wrong type. Each is met where a user meets it: the command line, or the Python API."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import foveal
from foveal.cli import main
from foveal.data.synthetic import write_cells_folder
from foveal.errors import FovealError
from foveal.results import Detections

pytestmark = pytest.mark.usefixtures("one_thread")

# The tiny U-Net of tests/test_api.py: depth 2, width 4, one epoch on three synthetic cell images.
SEGMENT: dict[str, Any] = {
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


def fail(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    """Run the CLI in-process; check it fails with one line, no traceback, holding every needle; return the line."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0, f"{argv} succeeded"
    assert err.startswith("foveal: error: ") and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


def _gray(path: Path, value: int = 100, size: tuple[int, int] = (28, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(value).integers(0, 256, size, dtype=np.uint8)).save(path)
    return path


def _errors(out: Path) -> dict[str, str]:
    """file name → reason, from a predict run's errors.jsonl."""
    lines = (out / "errors.jsonl").read_text().splitlines()
    return {Path(r["file"]).name: r["error"] for r in map(json.loads, lines)}


def _predicted(out: Path) -> list[str]:
    return [Path(json.loads(line)["file"]).name for line in (out / "predictions.jsonl").read_text().splitlines()]


def _pages_one_by_one(path: Path, pages: int = 3) -> Path:
    """A TIFF of ``pages`` pages saved one call at a time (tifffile makes each its own series)."""
    with tifffile.TiffWriter(path) as tw:
        for i in range(pages):
            tw.write(np.full((40, 40), 40 * i, np.uint8), contiguous=False)
    return path


@pytest.fixture(scope="module")
def links(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of two good images, a broken link, a pipe and a link to /dev/zero, all named like images."""
    folder = tmp_path_factory.mktemp("links")
    _gray(folder / "a.png", 1)
    _gray(folder / "b.png", 2)
    (folder / "dangling.png").symlink_to(folder / "gone.png")
    os.mkfifo(folder / "pipe.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    return folder


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run directory of a tiny U-Net."""
    root = tmp_path_factory.mktemp("seg")
    data = write_cells_folder(root / "data", 3, (72, 80))
    with contextlib.redirect_stdout(io.StringIO()):
        foveal.train("segment", out=root / "run", device="cpu", data__train=str(data), **SEGMENT)
    return root / "run"


# ---------------------------------------------------------------------------------------------------- links


@pytest.mark.parametrize("pattern", [False, True], ids=["folder", "glob"])
def test_broken_links_pipes_and_devices_in_a_folder_are_listed(
    capsys: pytest.CaptureFixture[str], ckpt_run: Path, links: Path, tmp_path: Path, pattern: bool
) -> None:
    item = str(links / "*.png") if pattern else str(links)
    assert main(["predict", str(ckpt_run), item, "--out", str(tmp_path / "out")]) == 0
    assert "2 of 5 images; 3 failed" in capsys.readouterr().out
    assert _predicted(tmp_path / "out") == ["a.png", "b.png"]
    errors = _errors(tmp_path / "out")
    assert "broken symbolic link (to " in errors["dangling.png"]
    assert "gone.png, which does not exist" in errors["dangling.png"]
    assert "not a regular file" in errors["pipe.png"]  # refused, not opened (a pipe would wait for a writer)
    assert "/dev/zero" in errors["zero.png"]


def test_a_broken_link_named_directly_is_one_error(
    capsys: pytest.CaptureFixture[str], ckpt_run: Path, links: Path
) -> None:
    fail(capsys, ["predict", str(ckpt_run), str(links / "dangling.png")], "broken symbolic link", "gone.png")


def test_the_api_names_a_broken_link_in_a_folder(ckpt_run: Path, links: Path) -> None:
    with pytest.raises(FovealError, match="dangling.png is a broken symbolic link"):
        foveal.load(ckpt_run, device="cpu").predict(links)


# ---------------------------------------------------------------------------------------------------- TIFF pages


def test_multi_page_tiffs_are_refused_by_the_classifier(
    capsys: pytest.CaptureFixture[str], ckpt_run: Path, tmp_path: Path
) -> None:
    pages = _pages_one_by_one(tmp_path / "pages.tif")
    fail(capsys, ["predict", str(ckpt_run), str(pages)], "pages.tif is a stack of 3 pages", "save each page")
    stack = tmp_path / "zstack.tif"
    tifffile.imwrite(stack, np.zeros((5, 40, 40), np.uint8), photometric="minisblack")
    fail(capsys, ["predict", str(ckpt_run), str(stack)], "zstack.tif is a stack of 5 pages")
    # a thumbnail (a reduced-resolution page) is not a page of the image
    thumb = tmp_path / "thumb.tif"
    with tifffile.TiffWriter(thumb) as tw:
        tw.write(np.zeros((40, 40), np.uint8))
        tw.write(np.zeros((10, 10), np.uint8), subfiletype=1)
    assert main(["predict", str(ckpt_run), str(thumb), "--out", str(tmp_path / "out")]) == 0
    assert _predicted(tmp_path / "out") == ["thumb.tif"]


@pytest.mark.parametrize("fmt", ["tif", "zarr"])
def test_pages_in_separate_series_are_refused_by_the_segmenter(
    capsys: pytest.CaptureFixture[str], segmenter: Path, tmp_path: Path, fmt: str
) -> None:
    if fmt == "zarr":
        pytest.importorskip("zarr")
    pages = _pages_one_by_one(tmp_path / "pages.tif")
    argv = ["predict", str(segmenter), str(pages), "--format", fmt, "--out", str(tmp_path / "out")]
    fail(capsys, argv, "pages.tif holds 3 pages in 3 separate TIFF series", "save each page as its own file")


# ---------------------------------------------------------------------------------------------------- NaN pixels


def test_a_nan_float_tiff_is_refused_by_the_classifier(
    capsys: pytest.CaptureFixture[str], ckpt_run: Path, tmp_path: Path
) -> None:
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, np.full((28, 28), np.nan, np.float32))
    fail(capsys, ["predict", str(ckpt_run), str(path)], "nan.tif holds NaN or infinite values")


def _inf() -> np.ndarray:
    a = np.zeros((28, 28), np.float32)
    a[3, 3] = np.inf
    return a


@pytest.mark.parametrize(
    "image",
    [
        np.full((28, 28), np.nan, np.float32),
        _inf(),
        np.full((28, 28, 3), np.nan, np.float32),
        Image.fromarray(np.full((28, 28), np.nan, np.float32)),
        torch.full((1, 28, 28), float("nan")),
    ],
    ids=["nan-array", "inf-array", "nan-rgb", "nan-pil", "nan-tensor"],
)
def test_the_api_refuses_non_finite_pixels_as_the_cli_does(ckpt_run: Path, image: Any) -> None:
    model = foveal.load(ckpt_run, device="cpu")
    with pytest.raises(FovealError, match=r"<image 0> holds NaN or infinite values"):
        model.predict(image)
    with pytest.raises(FovealError, match=r"<image 0> holds NaN or infinite values"):
        model.explain(image)


def test_the_segmenter_api_refuses_nan_pixels(segmenter: Path) -> None:
    with pytest.raises(FovealError, match=r"<image 0> holds NaN or infinite values"):
        foveal.load(segmenter, device="cpu").predict(torch.full((1, 40, 40), float("nan")))


def test_stacks_are_not_called_only_channels(
    capsys: pytest.CaptureFixture[str], ckpt_run: Path, segmenter: Path, tmp_path: Path
) -> None:
    with pytest.raises(FovealError, match=r"5 leading planes are a stack .* pass one plane at a time"):
        foveal.load(ckpt_run, device="cpu").predict(np.zeros((5, 40, 40), np.float32))
    zarr = pytest.importorskip("zarr")
    z = zarr.open_array(str(tmp_path / "planes.zarr"), mode="w", shape=(3, 64, 64), dtype="u1")
    z[:] = 7
    assert main(["predict", str(segmenter), str(tmp_path / "planes.zarr"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "has 3 channel(s) but the model takes 1" in err and "planes of a stack" in err


# ---------------------------------------------------------------------------------------------------- paths


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_list_files_with_a_byte_order_mark(
    capsys: pytest.CaptureFixture[str], ckpt_run: Path, tmp_path: Path, encoding: str
) -> None:
    for i in range(3):
        _gray(tmp_path / "imgs" / f"g{i}.png", i)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"imgs/g{i}.png\n" for i in range(3)), encoding=encoding)  # both write a BOM
    assert main(["predict", str(ckpt_run), str(listing), "--out", str(tmp_path / "out")]) == 0
    assert _predicted(tmp_path / "out") == ["g0.png", "g1.png", "g2.png"]


def test_a_list_file_without_paths_says_so(capsys: pytest.CaptureFixture[str], ckpt_run: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("\ufeff# just a comment\n\n", encoding="utf-8")
    fail(capsys, ["predict", str(ckpt_run), str(listing)], "list.txt holds no image paths")
    with pytest.raises(FovealError, match="list.txt holds no image paths"):
        foveal.load(ckpt_run, device="cpu").predict(listing)


def test_a_missing_path_says_it_does_not_exist_and_names_invisible_characters(
    capsys: pytest.CaptureFixture[str], ckpt_run: Path, tmp_path: Path
) -> None:
    good = _gray(tmp_path / "g.png")
    fail(capsys, ["predict", str(ckpt_run), str(tmp_path / "nope.png")], "nope.png does not exist")
    fail(capsys, ["predict", str(ckpt_run), str(tmp_path / "nodir") + "/"], "nodir does not exist")
    err = fail(capsys, ["predict", str(ckpt_run), "\ufeff" + str(good)], "invisible character U+FEFF", "position 1")
    assert "byte-order mark" in err
    fail(capsys, ["predict", str(ckpt_run), str(tmp_path / "g\u200b.png")], "U+200B (ZERO WIDTH SPACE)")
    fail(capsys, ["predict", str(ckpt_run), f'"{good}"'], "wrapped in quotes")
    fail(capsys, ["predict", str(ckpt_run), ""], "empty path")
    # inside a list file, the image is listed as failed with the same words
    listing = tmp_path / "list.txt"
    listing.write_text("g.png\ng\u200b.png\n", encoding="utf-8")
    assert main(["predict", str(ckpt_run), str(listing), "--out", str(tmp_path / "out")]) == 0
    assert "U+200B" in _errors(tmp_path / "out")["g\u200b.png"]
    with pytest.raises(FovealError, match="checkpoint .* does not exist; the path contains an invisible character"):
        foveal.load("\ufeff" + str(ckpt_run))


# ---------------------------------------------------------------------------------------------------- API arguments

api: Any = foveal  # the calls below pass wrong types on purpose


def loose(value: object) -> Any:
    return value


_CALLS: dict[str, tuple[Callable[[Any, Path, Path], Any], str]] = {
    "load(123)": (lambda m, run, img: api.load(123), "path=123 is not a path"),
    "load(None)": (lambda m, run, img: api.load(None), "path=None is not a path"),
    "load([path])": (lambda m, run, img: api.load([run]), "is not a path"),
    "load(missing)": (lambda m, run, img: api.load(run / "nope"), "nope does not exist"),
    "load(device=['cpu'])": (lambda m, run, img: api.load(run, device=["cpu"]), "device=.* is not a device"),
    "load(device=3)": (lambda m, run, img: api.load(run, device=3), "device=3 is not a device"),
    "Classifier(123)": (lambda m, run, img: api.Classifier(123), "path=123"),
    "predict(None)": (lambda m, run, img: m.predict(None), "from None"),
    "predict([img, None])": (lambda m, run, img: m.predict([img, None]), r"from None \(type NoneType, item 2 of 2"),
    "predict(bytes)": (lambda m, run, img: m.predict(str(img).encode()), "type bytes"),
    "predict(complex)": (lambda m, run, img: m.predict(np.zeros((28, 28), np.complex64)), "complex64 values"),
    "predict(object)": (lambda m, run, img: m.predict(np.array([[object()]])), "object values"),
    "predict(strings)": (lambda m, run, img: m.predict(np.full((28, 28), "a")), "<U1 values"),
    "predict(empty PIL)": (lambda m, run, img: m.predict(Image.new("L", (0, 0))), "empty PIL image"),
    "predict(5-D)": (lambda m, run, img: m.predict(np.zeros((1, 1, 1, 28, 28), np.uint8)), "5 dimensions"),
    "predict([])": (lambda m, run, img: m.predict([]), "no input images given"),
    "predict(top_k='5')": (lambda m, run, img: m.predict(img, top_k="5"), "top_k='5' is not an integer"),
    "predict(top_k=True)": (lambda m, run, img: m.predict(img, top_k=True), "top_k=True is not an integer"),
    "predict(top_k=0)": (lambda m, run, img: m.predict(img, top_k=0), "top_k=0 is too small"),
    "predict(batch_size=0)": (lambda m, run, img: m.predict(img, batch_size=0), "batch_size=0 is too small"),
    "predict(batch_size=1.5)": (lambda m, run, img: m.predict(img, batch_size=1.5), "batch_size=1.5 is not"),
    "explain(threshold='a')": (lambda m, run, img: m.explain(img, threshold="a"), "threshold='a' is not a number"),
    "explain(method=3)": (lambda m, run, img: m.explain(img, method=3), "method=3 is not text"),
    "explain(out=123)": (lambda m, run, img: m.explain(img, out=123), "out=123 is not a path"),
    "explain(map_scales='12')": (lambda m, run, img: m.explain(img, map_scales="12"), "map_scales='12' is not a list"),
    "explain(flip='no')": (lambda m, run, img: m.explain(img, flip="no"), "flip='no' is not True or False"),
    "evaluate(data=123)": (lambda m, run, img: m.evaluate(data=123), "data=123 is not a path"),
    "evaluate(data=missing)": (lambda m, run, img: m.evaluate(data=run / "nope"), "data .*nope does not exist"),
    "evaluate(split=3)": (lambda m, run, img: m.evaluate(split=3), "split=3 is not text"),
    "evaluate(out=1)": (lambda m, run, img: m.evaluate(out=1), "out=1 is not a path"),
    "export(123)": (lambda m, run, img: m.export(123), "path=123 is not a path"),
    "export(size='a')": (lambda m, run, img: m.export(run / "x.onnx", size="a"), "size='a' is not a list"),
    "export(size=2.5)": (lambda m, run, img: m.export(run / "x.onnx", size=2.5), "whole pixels"),
    "export(opset='17')": (lambda m, run, img: m.export(run / "x.onnx", opset="17"), "opset='17' is not an integer"),
    "train(123)": (lambda m, run, img: api.train(123), "task=123 is not text"),
    "train(['classify'])": (lambda m, run, img: api.train(["classify"]), "is not text"),
    "train(out=123)": (lambda m, run, img: api.train("classify", out=123), "out=123 is not a path"),
    "train(device=['cpu'])": (lambda m, run, img: api.train("classify", device=["cpu"]), "not a device"),
    "train(overwrite='no')": (lambda m, run, img: api.train("classify", overwrite="no"), "overwrite='no'"),
    "train(lr=object())": (lambda m, run, img: api.train("classify", optim__lr=object()), "optim__lr=<object"),
    "above('0.5')": (
        lambda m, run, img: loose(Detections("x", (1, 1), np.zeros((0, 4)), np.zeros(0), np.zeros(0), ())).above("0.5"),
        "score='0.5' is not a number",
    ),
}


@pytest.fixture(scope="module")
def classifier(ckpt_run: Path) -> foveal.Classifier:
    model = foveal.load(ckpt_run, device="cpu")
    assert isinstance(model, foveal.Classifier)
    return model


@pytest.mark.parametrize("name", list(_CALLS))
def test_every_wrong_argument_is_a_foveal_error(
    name: str, classifier: foveal.Classifier, ckpt_run: Path, tmp_path: Path
) -> None:
    call, needle = _CALLS[name]
    with pytest.raises(FovealError, match=needle):
        call(classifier, ckpt_run, _gray(tmp_path / "g.png"))
    assert not (ckpt_run / "x.onnx").exists()


def test_right_arguments_in_other_types_still_work(classifier: foveal.Classifier, tmp_path: Path) -> None:
    first, second = _gray(tmp_path / "g.png"), _gray(tmp_path / "h.png", 7)
    results = classifier.predict([str(first), second], top_k=loose(np.int64(2)), batch_size=1)
    assert [len(r.topk) for r in results] == [2, 2]
    assert classifier.predict(torch.rand(1, 28, 28, dtype=torch.bfloat16))[0].label in classifier.classes
