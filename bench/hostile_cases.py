"""The cases of ``bench/hostile_campaign.py``: tiny trained models of each task, damaged files, and one entry per
hostile input (its kind, verb, what a user is owed). Everything is written under one work folder."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from PIL import Image

import foveal
from foveal.cli import main
from foveal.data.detection_set import build_detection_set
from foveal.data.synthetic import write_cells_folder

KINDS = {
    "false_success": "a command that did nothing or failed on every input must not exit 0 or count failures as done",
    "skip": "skip mode skips: one bad image is listed and the others are predicted, on every path",
    "silent": "no silently wrong result: every input is either predicted as a whole or named as an error",
    "earlier_output": "an output folder belongs to one model and command; a failure leaves earlier outputs intact",
    "clean_error": "an input no check foresaw still gives a one-line error, not 'failed unexpectedly' (exit 1)",
    "api": "every error a caller can cause in the Python API is a FovealError",
    "memory": "memory stays bounded, or a clear error names the cap",
    "message": "the message names the real problem (and the right file) in a newcomer's words",
    "precision": "precision follows what the CPU runs natively; a forced emulated bf16 is warned about",
    "options": "an out-of-range or meaningless option value is refused before work starts",
    "data": "malformed datasets, annotations and configs are refused with the file and the fix",
    "checkpoint": "damaged or foreign checkpoints are refused without touching them",
}

TINY = ["train.max_steps=1", "data.limit=32", "data.val_limit=16", "data.batch_size=16", "train.progress=false"]
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
DETECT_TINY = Path(__file__).resolve().parents[1] / "tests" / "configs" / "detect_tiny.yaml"


def _quiet(argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(argv)
    if code != 0:
        raise SystemExit(f"campaign set-up failed: foveal {' '.join(argv)}: {err.getvalue()}")


def _gray(path: Path, value: int = 100, size: tuple[int, int] = (28, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(path)
    return path


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def _models(work: Path) -> dict[str, Path]:
    """The three tiny runs (trained once; a kept work folder reuses them)."""
    runs = {"cls": work / "runs" / "cls", "seg": work / "runs" / "seg", "det": work / "runs" / "det"}
    torch.set_num_threads(1)
    if not (runs["cls"] / "checkpoints").is_dir():
        _quiet(["train", "classify", "--config", "classify_demo", *TINY, "--out", str(runs["cls"]), "--overwrite"])
    cells = work / "data" / "cells"
    if not (cells / "images").is_dir():
        write_cells_folder(cells, 3, (72, 80))
    if not (runs["seg"] / "checkpoints").is_dir():
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            foveal.train("segment", out=runs["seg"], device="cpu", data__train=str(cells), overwrite=True, **SEGMENT)
    canvas = work / "data" / "canvas"
    if not (canvas / "annotations").is_dir():
        build_detection_set(
            canvas, source="fashion-mnist-sample", n_train=6, n_val=3, size=64, objects=(1, 3), scale=(14, 30)
        )
    if not (runs["det"] / "checkpoints").is_dir():
        _quiet(
            [
                "train",
                "detect",
                f"data.train={canvas}",
                "--config",
                str(DETECT_TINY),
                "data.mean=[0.12]",
                "data.std=[0.26]",
                "inference.score_thresh=0.01",
                "--out",
                str(runs["det"]),
                "--device",
                "cpu",
                "--overwrite",
            ]
        )
    return runs


def _files(work: Path) -> dict[str, Path]:
    """Good and damaged inputs."""
    f: dict[str, Path] = {}
    d = work / "in"
    if d.exists():
        shutil.rmtree(d)
    f["good"] = d / "good"
    for i in range(8):
        _gray(f["good"] / f"g{i}.png", i)
    f["one"] = f["good"] / "g0.png"
    f["corrupt"] = _write(d / "bad" / "corrupt.png", os.urandom(300))
    f["corrupt2"] = _write(d / "bad" / "corrupt2.png", b"\x89PNG\r\n\x1a\n" + os.urandom(100))
    f["empty"] = _write(d / "bad" / "empty.png", b"")
    f["text"] = _write(d / "bad" / "notes.png", "this is text, not an image\n")
    png = io.BytesIO()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(png, format="PNG")
    f["truncated"] = _write(d / "bad" / "truncated.png", png.getvalue()[: len(png.getvalue()) // 2])
    f["bomb"] = d / "bad" / "bomb.tif"
    _bomb_tiff(f["bomb"])
    f["mixed"] = d / "mixed"
    for i in range(8):
        _gray(f["mixed"] / f"m{i}.png", 10 + i)
    for name in ("x1.png", "x2.png", "x3.png"):
        _write(f["mixed"] / name, os.urandom(200))
    f["empty_dir"] = d / "emptydir"
    f["empty_dir"].mkdir(parents=True)
    f["noimg_dir"] = d / "noimg"
    _write(f["noimg_dir"] / "readme.txt", "hello")
    f["links"] = d / "links"
    for i in range(2):
        _gray(f["links"] / f"l{i}.png", 20 + i)
    os.symlink(d / "nowhere.png", f["links"] / "dangling.png")
    f["nan_tif"] = d / "nan.tif"
    tifffile.imwrite(f["nan_tif"], np.full((28, 28), np.nan, np.float32))
    f["inf_tif"] = d / "inf.tif"
    a = np.zeros((28, 28), np.float32)
    a[3, 3] = np.inf
    tifffile.imwrite(f["inf_tif"], a)
    f["pages3"] = d / "pages3.tif"
    with tifffile.TiffWriter(f["pages3"]) as tw:
        for i in range(3):
            tw.write(np.full((40, 40), 40 * i, np.uint8), contiguous=False)
    f["zstack"] = d / "zstack.tif"
    tifffile.imwrite(f["zstack"], np.zeros((5, 40, 40), np.uint8), photometric="minisblack")
    f["rgb_tif"] = d / "rgb.tif"
    tifffile.imwrite(f["rgb_tif"], np.zeros((48, 48, 3), np.uint8), photometric="rgb")
    f["gray_tif"] = d / "gray.tif"
    tifffile.imwrite(f["gray_tif"], (np.arange(48 * 48).reshape(48, 48) % 251).astype(np.uint8))
    f["tiled_trunc"] = d / "tiled_trunc.tif"
    buf = io.BytesIO()
    tifffile.imwrite(
        buf,
        np.random.default_rng(1).integers(0, 255, (512, 512), np.uint8),
        tile=(64, 64),
        bigtiff=True,
        compression="zlib",
    )
    f["tiled_trunc"].write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])
    long_name = "n" * 240 + ".png"
    f["long"] = _gray(d / "long" / long_name, 33)
    f["unicode"] = _gray(d / "uni" / "Zellkern_ä_細胞 1.png", 34)
    f["newline"] = _gray(d / "nl" / "two\nlines.png", 35)
    f["tiny1"] = _gray(d / "tiny1.png", 36, (1, 1))
    arr16 = (np.arange(28 * 30).reshape(28, 30) * 70).astype(np.uint16)
    f["png16"] = d / "sixteen.png"
    Image.fromarray(arr16).save(f["png16"])
    f["rgba"] = d / "rgba.png"
    Image.fromarray(np.zeros((28, 30, 4), np.uint8)).save(f["rgba"])
    f["palette"] = d / "palette.png"
    Image.fromarray(np.zeros((28, 30), np.uint8)).convert("P").save(f["palette"])
    f["cmyk"] = d / "cmyk.jpg"
    Image.new("CMYK", (30, 28)).save(f["cmyk"])
    f["gif"] = d / "anim.gif"
    frames = [Image.fromarray(np.full((28, 30), v, np.uint8)) for v in (0, 128, 255)]
    frames[0].save(f["gif"], save_all=True, append_images=frames[1:])
    f["huge_png"] = d / "hugeheader.png"
    _huge_png(f["huge_png"])
    f["dir_png"] = d / "folder.png"
    f["dir_png"].mkdir()
    _gray(f["dir_png"] / "inside.png", 3)
    f["dev_link"] = d / "devzero.png"
    os.symlink("/dev/zero", f["dev_link"])
    f["fifo"] = d / "pipe.png"
    os.mkfifo(f["fifo"])
    f["list_bom"] = _write(d / "bom.txt", "\ufeff" + "\n".join(str(f["good"] / f"g{i}.png") for i in range(3)) + "\n")
    f["list_crlf"] = _write(d / "crlf.txt", "\r\n".join(str(f["good"] / f"g{i}.png") for i in range(3)) + "\r\n")
    f["list_empty"] = _write(d / "empty.txt", "")
    f["list_missing"] = _write(d / "missing.txt", f"{d / 'gone1.png'}\n{d / 'gone2.png'}\n")
    f["list_binary"] = _write(d / "binary.txt", os.urandom(256))
    f["zarr_str"] = d / "strings.zarr"
    f["zarr_rgb"] = d / "rgb.zarr"
    with contextlib.suppress(ImportError):
        import zarr

        z = zarr.open_array(str(f["zarr_str"]), mode="w", shape=(32, 32), dtype="U4")
        z[:] = "ab"
        z2 = zarr.open_array(str(f["zarr_rgb"]), mode="w", shape=(64, 64, 3), dtype="u1")
        z2[:] = 7
    return f


def _bomb_tiff(path: Path) -> None:
    """A small tiled BigTIFF whose header then claims 200,000 x 200,000 pixels (a decompression bomb)."""
    tifffile.imwrite(path, np.zeros((256, 256), np.uint8), bigtiff=True, tile=(256, 256), compression="zlib")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for tag in ("ImageWidth", "ImageLength"):
            tif.pages[0].tags[tag].overwrite(200_000)


def _huge_png(path: Path) -> None:
    """A valid PNG header that claims 100,000 x 100,000 pixels, then no data."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    )


def _boxes(work: Path, f: dict[str, Path]) -> dict[str, Path]:
    """Box files of the localization evaluation, good and bad, for the images of ``f['good']``."""
    d = work / "boxes"
    if d.exists():
        shutil.rmtree(d)
    names = [f"g{i}.png" for i in range(8)]
    b: dict[str, Path] = {}
    label = "T-shirt/top"  # a class of the Fashion-MNIST classifier: box files must name the true class

    def doc(boxes: dict[str, Any]) -> str:  # a well-formed box file but for the defect under test
        return json.dumps({"box_format": "xyxy", "images": {n: {"boxes": v, "label": label} for n, v in boxes.items()}})

    b["good"] = _write(d / "good.json", doc({n: [[2, 2, 20, 20]] for n in names}))
    deep = "[" * 100_000 + "]" * 100_000
    b["deep"] = _write(d / "deep.json", '{"box_format": "xyxy", "images": {"g0.png": ' + deep + "}}")
    b["null"] = _write(d / "null.json", doc({n: None for n in names}))
    b["string"] = _write(d / "string.json", doc({n: "2 2 20 20" for n in names}))
    b["negative"] = _write(d / "negative.json", doc({n: [[20, 20, 2, 2]] for n in names}))
    b["nan"] = _write(d / "nan.json", doc({"g0.png": [[1, 1, 2, 3]]}).replace("[[1, 1, 2, 3]]", "[[NaN, 1, 2, 3]]"))
    b["outside"] = _write(d / "outside.json", doc({n: [[0, 0, 500, 500]] for n in names}))
    b["unknown_image"] = _write(d / "unknown.json", doc({"nope.png": [[1, 1, 5, 5]]}))
    b["csv_text"] = _write(
        d / "text.csv", "image,x1,y1,x2,y2,label\n" + "".join(f"{n},a,b,c,d,{label}\n" for n in names)
    )
    b["csv_bom"] = _write(
        d / "bom.csv", "\ufeffimage,x1,y1,x2,y2,label\n" + "".join(f"{n},2,2,20,20,{label}\n" for n in names)
    )
    b["binary"] = _write(d / "binary.json", os.urandom(500))
    b["list_top"] = _write(d / "list.json", json.dumps([1, 2, 3]))
    many = {n: [[1 + (k % 7), 1 + (k % 5), 20, 20] for k in range(50_000)] for n in names}
    b["many"] = _write(d / "many.json", doc(many))
    cub = d / "CUB"
    _write(cub / "images.txt", "".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    _write(cub / "bounding_boxes.txt", "".join(f"{i + 1} 2 2 10 10\n" for i in range(8)) + "99 1 1 4 4\n")
    _write(cub / "train_test_split.txt", "".join(f"{i + 1} 0\n" for i in range(8)) + "77 0\n")
    b["cub"] = cub
    xml = d / "xml"
    for i, n in enumerate(names[:3]):
        _write(
            xml / f"a{i}.xml",
            f"<annotation><filename>{n}</filename><object><name>T-shirt/top</name><bndbox><xmin>2</xmin>"
            "<ymin>2</ymin><xmax>20</xmax><ymax>20</ymax></bndbox></object></annotation>",
        )
    _write(
        xml / "a3.xml",
        "<annotation><filename>g3.png</filename><object><name>T-shirt/top</name><bndbox><xmin>two</xmin>"
        "</bndbox></object></annotation>",
    )
    b["xml_bad"] = xml
    return b


def _broken_runs(work: Path, runs: dict[str, Path]) -> dict[str, Path]:
    """Copies of the classifier run, each damaged one way."""
    d = work / "broken"
    if d.exists():
        shutil.rmtree(d)
    out: dict[str, Path] = {}

    def copy(name: str) -> Path:
        out[name] = Path(shutil.copytree(runs["cls"], d / name))
        return out[name]

    for name in (
        "meta_corrupt",
        "meta_binary",
        "meta_task",
        "meta_version",
        "weights_trunc",
        "weights_gone",
        "weights_garbage",
    ):
        copy(name)
    for name, edit in (("meta_corrupt", "{not json"), ("meta_binary", os.urandom(64))):
        for meta in out[name].rglob("checkpoint.json"):
            _write(meta, edit)
    for name, key, value in (("meta_task", "task", "teleport"), ("meta_version", "version", 999)):
        for meta in out[name].rglob("checkpoint.json"):
            doc = json.loads(meta.read_text())
            doc[key] = value
            meta.write_text(json.dumps(doc))
    for w in out["weights_trunc"].rglob("*.safetensors"):
        w.write_bytes(w.read_bytes()[:100])
    for w in out["weights_gone"].rglob("*.safetensors"):
        w.unlink()
    for w in out["weights_garbage"].rglob("*.safetensors"):
        w.write_bytes(os.urandom(4096))
    out["empty"] = d / "empty"
    out["empty"].mkdir()
    out["a_file"] = _write(d / "a_file.txt", "not a run")
    rep = copy("report_binary")
    for m in rep.rglob("metrics.jsonl"):
        m.write_bytes(os.urandom(300))
    rep2 = copy("report_truncated")
    for m in rep2.rglob("metrics.jsonl"):
        m.write_text(m.read_text()[:-7])
    return out


def _data(work: Path) -> dict[str, Path]:
    """Damaged datasets and configs."""
    d = work / "bad_data"
    if d.exists():
        shutil.rmtree(d)
    p: dict[str, Path] = {}
    canvas = work / "data" / "canvas"
    coco = json.loads((canvas / "annotations" / "instances_val.json").read_text())

    def coco_variant(name: str, doc: Any) -> Path:
        root = d / name
        shutil.copytree(canvas / "val", root / "val")
        _write(root / "annotations" / "instances_val.json", doc if isinstance(doc, str) else json.dumps(doc))
        p[name] = root
        return root

    bad_bbox = json.loads(json.dumps(coco))
    bad_bbox["annotations"][0]["bbox"] = [1, 2, 3]
    coco_variant("coco_bbox3", bad_bbox)
    no_images = {k: v for k, v in coco.items() if k != "images"}
    coco_variant("coco_noimages", no_images)
    coco_variant("coco_deep", '{"images": ' + "[" * 100_000 + "]" * 100_000 + "}")
    bad_cat = json.loads(json.dumps(coco))
    bad_cat["annotations"][0]["category_id"] = 12345
    coco_variant("coco_badcat", bad_cat)
    gone = json.loads(json.dumps(coco))
    gone["images"][0]["file_name"] = "does_not_exist.png"
    coco_variant("coco_missing_image", gone)
    coco_variant("coco_binary", os.urandom(200).decode("latin-1"))
    nan_box = json.loads(json.dumps(coco))
    nan_box["annotations"][0]["bbox"] = [1, 2, -5, 3]
    coco_variant("coco_negative", nan_box)
    seg = work / "data" / "cells"
    mism = Path(shutil.copytree(seg, d / "seg_mismatch"))
    m = sorted((mism / "masks").iterdir())[0]
    tifffile.imwrite(m, np.zeros((10, 10), np.uint16))
    p["seg_mismatch"] = mism
    nomask = Path(shutil.copytree(seg, d / "seg_nomasks"))
    shutil.rmtree(nomask / "masks")
    p["seg_nomasks"] = nomask
    p["cls_oneclass"] = d / "oneclass"
    for i in range(3):
        _gray(p["cls_oneclass"] / "only" / f"{i}.png", i)
    p["idx_trunc"] = _write(d / "idx" / "t10k-images-idx3-ubyte", b"\x00\x00\x08\x03" + b"\x00\x00\x00\x05" * 3)
    p["yaml_bad"] = _write(d / "bad.yaml", "model: [unclosed\n  data: {")
    p["yaml_list"] = _write(d / "list.yaml", "- a\n- b\n")
    p["yaml_binary"] = _write(d / "binary.yaml", os.urandom(100))
    p["yaml_unknown"] = _write(d / "unknown.yaml", "modle:\n  depth: 2\n")
    _yolo_sets(d, p)
    return p


def _yolo_sets(d: Path, p: dict[str, Path]) -> None:
    """YOLO folders (images/ + labels/ and a data.yaml), each damaged one way."""
    for name, label in (
        ("yolo_good", "0 0.5 0.5 0.2 0.2\n"),
        ("yolo_badclass", "0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n"),
        ("yolo_outside", "0 1.5 0.5 0.2 0.2\n"),
        ("yolo_short", "0 0.5 0.5\n"),
        ("yolo_text", "zero a b c d\n"),
    ):
        root = d / name
        _gray(root / "images" / "train" / "a.png", 5, (64, 64))
        _write(root / "labels" / "train" / "a.txt", label)
        _write(root / "data.yaml", "path: .\ntrain: images/train\nval: images/train\nnames: [shirt, shoe]\n")
        p[name] = root
    p["yolo_yaml_binary"] = Path(shutil.copytree(p["yolo_good"], d / "yolo_yaml_binary"))
    (p["yolo_yaml_binary"] / "data.yaml").write_bytes(os.urandom(120))
    p["yolo_no_names"] = Path(shutil.copytree(p["yolo_good"], d / "yolo_no_names"))
    _write(p["yolo_no_names"] / "data.yaml", "train: images/train\nval: images/train\n")
    p["labelme_deep"] = _write(d / "labelme" / "a.json", '{"shapes": ' + "[" * 100_000 + "]" * 100_000 + "}")
    _gray(d / "labelme" / "a.png", 6, (64, 64))


def _rss_case(work: Path, runs: dict[str, Path], f: dict[str, Path], b: dict[str, Path]) -> Callable[[], None]:
    """Two subprocesses evaluating 8 images, with one box and with 50,000 boxes per image; fails unless both exit
    cleanly and the second's peak memory stays within 300 MB of the first's (memory bounded whatever the boxes)."""

    def peak_mb(boxes: Path, name: str) -> float:
        cmd = [sys.executable, "-m", "foveal", "eval", str(runs["cls"]), "--data", str(f["good"])]
        log = work / "out" / f"{name}.log"
        with log.open("w") as sink:
            proc = subprocess.Popen(
                [*cmd, "--boxes", str(boxes), "--out", str(work / "out" / name)], stdout=sink, stderr=sink
            )
            _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        text = log.read_text(errors="replace")
        if proc.returncode != 0 or "Traceback" in text:
            raise RuntimeError(f"{name}: exit {proc.returncode}: {text.strip()[-200:]}")
        return usage.ru_maxrss / 1024

    def run() -> None:
        few, many = peak_mb(b["good"], "mem-few"), peak_mb(b["many"], "mem-many")
        if many - few > 300:
            raise RuntimeError(f"peak RSS {many:.0f} MB with 50,000 boxes per image against {few:.0f} MB with one")
        print(f"peak {many:.0f} MB with 50,000 boxes per image, {few:.0f} MB with one", file=sys.stderr)

    return run


def build_cases(work: Path) -> list[dict[str, Any]]:
    """Every case as the keyword arguments of ``hostile_campaign.Case``."""
    runs = _models(work)
    f = _files(work)
    b = _boxes(work, f)
    br = _broken_runs(work, runs)
    data = _data(work)
    out = work / "out"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    cls, seg, det = (str(runs[k]) for k in ("cls", "seg", "det"))
    cases: list[dict[str, Any]] = []

    def fail(kind: str, verb: str, name: str, argv: list[str], *needles: str, intact: tuple[Path, ...] = ()) -> None:
        cases.append(
            dict(kind=kind, verb=verb, name=name, expect="fail", argv=[verb, *argv], needles=needles, intact=intact)
        )

    def partial(
        kind: str,
        verb: str,
        name: str,
        argv: list[str],
        bad: tuple[str, ...],
        check: Callable[[str, str], str | None] | None = None,
    ) -> None:
        cases.append(dict(kind=kind, verb=verb, name=name, expect="partial", argv=[verb, *argv], bad=bad, check=check))

    def ok(
        kind: str,
        verb: str,
        name: str,
        argv: list[str],
        check: Callable[[str, str], str | None] | None = None,
        setup: Callable[[], None] | None = None,
    ) -> None:
        cases.append(dict(kind=kind, verb=verb, name=name, expect="ok", argv=[verb, *argv], check=check, setup=setup))

    def raises(kind: str, name: str, call: Callable[[], Any], *needles: str) -> None:
        cases.append(dict(kind=kind, verb="api", name=name, expect="raises", call=call, needles=needles))

    def o(name: str) -> str:
        return str(out / name)

    def counted(n: int) -> Callable[[str, str], str | None]:
        def check(stdout: str, stderr: str) -> str | None:
            text = stdout + stderr
            m = re.search(r"predicted (\d+)", text)
            if m is None:
                return "no 'predicted N' summary"
            return None if int(m.group(1)) == n else f"summary says predicted {m.group(1)}, {n} were"

        return check

    def named_paths_exist(stdout: str, stderr: str) -> str | None:
        for path in re.findall(r"(/[^\s;,()]*errors\.jsonl)", stdout + stderr):
            if not Path(path).is_file():
                return f"names {path}, which does not exist"
        return None

    _predict_cases(f, o, fail, partial, ok, counted, named_paths_exist, cls, seg, det)
    _output_cases(f, out, o, fail, cls, seg, det, runs)
    _option_cases(f, o, fail, ok, cls, seg, det, runs)
    _data_cases(f, b, data, br, o, fail, ok, cls, seg, det, runs, work)
    _format_cases(data, o, fail, ok)
    _api_cases(f, runs, out, raises)
    cases.append(
        dict(
            kind="memory",
            verb="eval",
            name="8 images x 50,000 boxes: peak memory within 300 MB of one box each",
            expect="ok",
            call=_rss_case(work, runs, f, b),
        )
    )
    _precision_cases(f, o, ok, cls, cases)
    return cases


def _predict_cases(f, o, fail, partial, ok, counted, named_paths_exist, cls, seg, det) -> None:  # noqa: ANN001
    g = str(f["good"])
    bad3 = [str(f["corrupt"]), str(f["corrupt2"]), str(f["text"])]
    fail("false_success", "predict", "classifier, every input corrupt", [cls, *bad3, "--json", o("fs1.json")])
    fail(
        "false_success",
        "predict",
        "classifier, a decompression bomb alone, --json",
        [cls, str(f["bomb"]), "--json", o("fs2.json")],
        "bomb.tif",
    )
    fail("false_success", "predict", "classifier, an empty file alone", [cls, str(f["empty"])], "empty.png")
    fail("false_success", "predict", "classifier, a text file named .png", [cls, str(f["text"])], "notes.png")
    fail("false_success", "predict", "segmenter, every input corrupt", [seg, *bad3, "--out", o("fs5")])
    fail("false_success", "predict", "detector, every input corrupt", [det, *bad3, "--out", o("fs6")])
    fail("false_success", "predict", "detector, a truncated PNG alone", [det, str(f["truncated"]), "--out", o("fs7")])
    fail("false_success", "predict", "segmenter, a truncated PNG alone", [seg, str(f["truncated"]), "--out", o("fs8")])
    fail("false_success", "predict", "an empty folder", [cls, str(f["empty_dir"])], "emptydir")
    fail("false_success", "predict", "a folder with no image", [cls, str(f["noimg_dir"])], "noimg")
    fail("false_success", "predict", "a glob matching nothing", [cls, str(f["good"] / "*.jpeg")], "*.jpeg")
    fail("false_success", "predict", "an empty list file", [cls, str(f["list_empty"])], "empty.txt")
    fail("false_success", "predict", "a list file of missing paths", [cls, str(f["list_missing"])], "gone1.png")
    fail("false_success", "predict", "a binary list file", [cls, str(f["list_binary"])], "binary.txt")
    partial(
        "false_success",
        "predict",
        "8 good + 3 corrupt: counts 8",
        [cls, str(f["mixed"]), "--csv", o("p9.csv")],
        ("x1.png", "x2.png", "x3.png"),
        counted(8),
    )
    partial(
        "false_success",
        "predict",
        "--json without --out names a file that exists",
        [cls, g, str(f["corrupt"]), "--json", o("p10.json")],
        ("corrupt.png",),
        named_paths_exist,
    )
    partial(
        "false_success",
        "predict",
        "--csv without --out, one bad, reason on stderr",
        [cls, str(f["one"]), str(f["bomb"]), "--csv", o("p11.csv")],
        ("bomb.tif",),
        named_paths_exist,
    )
    partial(
        "false_success",
        "predict",
        "detector 8 good + 3 corrupt: counts 8",
        [det, str(f["mixed"]), "--out", o("p12")],
        ("x1.png",),
        counted(8),
    )
    partial(
        "false_success",
        "predict",
        "segmenter good + corrupt: counts 1",
        [seg, str(f["gray_tif"]), str(f["corrupt"]), "--out", o("p13")],
        ("corrupt.png",),
        counted(1),
    )
    # skip mode on every path
    partial(
        "skip",
        "predict",
        "streamed (--format zarr): RGB TIFF for a 1-channel model is skipped",
        [seg, str(f["gray_tif"]), str(f["rgb_tif"]), "--format", "zarr", "--out", o("s1")],
        ("rgb.tif",),
    )
    partial(
        "skip",
        "predict",
        "streamed: a truncated tiled BigTIFF is skipped",
        [seg, str(f["gray_tif"]), str(f["tiled_trunc"]), "--format", "zarr", "--out", o("s2")],
        ("tiled_trunc.tif",),
    )
    partial(
        "skip",
        "predict",
        "streamed: a zarr of strings is skipped",
        [seg, str(f["gray_tif"]), str(f["zarr_str"]), "--out", o("s3")],
        ("strings.zarr",),
    )
    partial(
        "skip",
        "predict",
        "streamed: an RGB zarr for a 1-channel model is skipped",
        [seg, str(f["gray_tif"]), str(f["zarr_rgb"]), "--out", o("s4")],
        ("rgb.zarr",),
    )
    ok(
        "skip",
        "predict",
        "detector: a 244-character file name",
        [det, str(f["long"]), str(f["one"]), "--out", o("s5")],
        counted(2),
    )
    ok("skip", "predict", "segmenter: a 244-character file name", [seg, str(f["long"]), "--out", o("s6")], counted(1))
    ok("skip", "predict", "classifier: a 244-character file name", [cls, str(f["long"]), "--json", o("s7.json")])
    partial(
        "skip",
        "predict",
        "in memory: a truncated PNG among good ones",
        [cls, g, str(f["truncated"])],
        ("truncated.png",),
        counted(8),
    )
    fail(
        "skip",
        "predict",
        "--strict stops at the first bad image",
        [cls, str(f["corrupt"]), g, "--strict"],
        "corrupt.png",
    )
    ok(
        "skip",
        "predict",
        "--resume after a run that skipped an image",
        [seg, str(f["gray_tif"]), str(f["rgb_tif"]), "--format", "zarr", "--out", o("s1"), "--resume"],
    )
    # silent results
    partial(
        "silent", "predict", "a broken link in a folder is named", [cls, str(f["links"])], ("dangling.png",), counted(2)
    )
    partial(
        "silent",
        "predict",
        "a broken link through a glob is named",
        [cls, str(f["links"] / "*.png")],
        ("dangling.png",),
        counted(2),
    )
    cases_worded = [
        ("3-page TIFF to the segmenter", seg, f["pages3"]),
        ("3-page TIFF to the classifier", cls, f["pages3"]),
        ("Z-stack TIFF to the classifier", cls, f["zstack"]),
    ]
    for name, run, path in cases_worded:
        fail(
            "silent",
            "predict",
            name + " is refused, naming the pages",
            [run, str(path), "--out", o("w" + str(abs(hash(name)) % 1000))],
            "page",
        )
    fail("silent", "predict", "an all-NaN float TIFF", [cls, str(f["nan_tif"])], "nan")
    fail(
        "silent",
        "predict",
        "an Inf pixel in a float TIFF to the segmenter",
        [seg, str(f["inf_tif"]), "--out", o("inf")],
    )
    fail("silent", "predict", "a symlink to /dev/zero named .png", [cls, str(f["dev_link"])], "devzero.png")
    fail("silent", "predict", "a FIFO named .png", [cls, str(f["fifo"])], "pipe.png")
    # message quality
    ok("message", "predict", "a list file with a byte-order mark", [cls, str(f["list_bom"])], counted(3))
    ok("message", "predict", "a list file with CRLF line ends", [cls, str(f["list_crlf"])], counted(3))
    ok("message", "predict", "a unicode file name", [cls, str(f["unicode"])], counted(1))
    ok("message", "predict", "a file name with a newline", [cls, str(f["newline"])], counted(1))
    ok("message", "predict", "a folder named x.png is a folder of images", [cls, str(f["dir_png"])], counted(1))
    fail("message", "predict", "a missing path is called missing", [cls, str(f["good"] / "nope.png")], "does not exist")
    fail("message", "predict", "a header claiming 10^10 pixels", [cls, str(f["huge_png"])], "pixels")
    for key in ("tiny1", "png16", "rgba", "palette", "cmyk", "gif"):
        ok("message", "predict", f"a legal odd image ({f[key].name}) to the classifier", [cls, str(f[key])])
    for key in ("tiny1", "png16"):
        cases_kw = [seg, str(f[key]), "--out", o(f"odd-{key}")]
        ok("message", "predict", f"a legal odd image ({f[key].name}) to the segmenter", cases_kw)
    rgba = [seg, str(f["rgba"]), "--out", o("odd-rgba")]  # colour channels are not a microscope's: refused by name
    fail("message", "predict", "an RGBA image to the 1-channel segmenter names its channels", rgba, "channel")


def _output_cases(f, out, o, fail, cls, seg, det, runs) -> None:  # noqa: ANN001
    g = str(f["good"])
    cls_out = out / "cls-owned"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(["predict", cls, g, "--out", str(cls_out)])
        main(["predict", seg, str(f["gray_tif"]), "--out", str(out / "seg-owned")])
        main(["explain", cls, str(f["one"]), "--out", str(out / "explain-owned"), "--top-k", "1"])
        main(["export", cls, "--out", str(out / "model.onnx")])
    fail(
        "earlier_output",
        "predict",
        "a detector into a classifier's finished output",
        [det, str(f["one"]), "--out", str(cls_out)],
        "--overwrite",
        intact=(cls_out,),
    )
    fail(
        "earlier_output",
        "predict",
        "a classifier into a segmenter's output",
        [cls, str(f["one"]), "--out", str(out / "seg-owned")],
        "--overwrite",
        intact=(out / "seg-owned",),
    )
    fail(
        "earlier_output",
        "predict",
        "--resume of another model's output",
        [det, g, "--out", str(cls_out), "--resume"],
        intact=(cls_out,),
    )
    fail(
        "earlier_output",
        "predict",
        "predict into an explanation folder",
        [cls, g, "--out", str(out / "explain-owned")],
        intact=(out / "explain-owned",),
    )
    fail(
        "earlier_output",
        "explain",
        "explain into a predict output",
        [cls, str(f["one"]), "--out", str(cls_out)],
        intact=(cls_out,),
    )
    fail(
        "earlier_output",
        "predict",
        "--json onto an existing folder",
        [cls, g, "--json", str(cls_out)],
        intact=(cls_out,),
    )
    fail(
        "earlier_output",
        "export",
        "export --out onto a run's checkpoint.json",
        [cls, "--out", str(next(runs["cls"].rglob("checkpoint.json")))],
        intact=(runs["cls"],),
    )
    fail(
        "earlier_output",
        "export",
        "export --size 100000 leaves the earlier ONNX",
        [cls, "--out", str(out / "model.onnx"), "--size", "100000"],
        intact=(out / "model.onnx",),
    )
    fail(
        "earlier_output",
        "train",
        "train into a finished run without --overwrite",
        ["classify", "--config", "classify_demo", *TINY, "--out", cls],
        "--overwrite",
        intact=(runs["cls"],),
    )
    fail(
        "earlier_output",
        "predict",
        "predict --out onto the training run's folder",
        [cls, g, "--out", cls],
        intact=(runs["cls"],),
    )
    fail(
        "earlier_output",
        "eval",
        "eval --out onto a predict output",
        [cls, "--data", g, "--out", str(cls_out)],
        intact=(cls_out,),
    )


def _option_cases(f, o, fail, ok, cls, seg, det, runs) -> None:  # noqa: ANN001
    one = str(f["one"])
    for value in ("0", "-1"):
        fail("options", "predict", f"--top-k {value}", [cls, one, "--top-k", value], "top")
        fail("options", "predict", f"--batch-size {value}", [cls, one, "--batch-size", value], "batch")
        fail("options", "explain", f"--top-k {value}", [cls, one, "--top-k", value, "--out", o("e-top")], "top")
    fail("options", "predict", "--workers -1", [cls, one, "--workers", "-1"], "workers")
    fail("options", "predict", "--tile 0 (segmenter)", [seg, one, "--tile", "0", "--out", o("t0")], "tile")
    fail("options", "predict", "--tile -8 (segmenter)", [seg, one, "--tile", "-8", "--out", o("t1")], "tile")
    fail(
        "options", "predict", "--tta dihedral on a detector", [det, one, "--tta", "dihedral", "--out", o("tta")], "tta"
    )
    fail("options", "predict", "--resume without --out", [det, one, "--resume"], "out")
    fail("options", "predict", "--device cuda without a GPU", [cls, one, "--device", "cuda"], "cuda")
    fail("options", "predict", "--device tpu", [cls, one, "--device", "tpu"], "tpu")
    fail("options", "predict", "--device cuda:abc", [cls, one, "--device", "cuda:abc"], "cuda:abc")
    fail(
        "options",
        "predict",
        "--precision fp16 on the CPU",
        [cls, one, "--precision", "fp16", "--device", "cpu"],
        "fp16",
    )
    fail("options", "predict", "--precision fp64", [cls, one, "--precision", "fp64"], "fp64")
    for value in ("0", "nan", "-5", "inf"):
        fail("options", "predict", f"--max-pixels {value}", [cls, one, "--max-pixels", value], "max-pixels")
    fail("options", "predict", "--max-pixels 10 below a 28 x 30 image", [cls, one, "--max-pixels", "10"], "pixels")
    fail("options", "predict", "an unknown option", [cls, one, "--colour", "red"], "--colour")
    for value in ("2", "-0.1", "nan"):
        fail(
            "options",
            "explain",
            f"--threshold {value}",
            [cls, one, "--threshold", value, "--out", o("e-thr")],
            "threshold",
        )
    fail("options", "explain", "--map-stride 0", [cls, one, "--map-stride", "0", "--out", o("e-ms")], "stride")
    fail("options", "explain", "--map-stride -2", [cls, one, "--map-stride", "-2", "--out", o("e-ms2")], "stride")
    fail("options", "explain", "--map-scales 0", [cls, one, "--map-scales", "0", "--out", o("e-sc")], "scale")
    fail("options", "explain", "--map-scales -1 2", [cls, one, "--map-scales", "-1", "2", "--out", o("e-sc2")], "scale")
    fail("options", "explain", "--map-scales nan", [cls, one, "--map-scales", "nan", "--out", o("e-sc3")], "scale")
    fail(
        "options",
        "explain",
        "--score-thresh 2 on a detector",
        [det, one, "--score-thresh", "2", "--out", o("e-st")],
        "score",
    )
    fail(
        "options",
        "explain",
        "--map-scales on a segmenter",
        [seg, one, "--map-scales", "1", "2", "--out", o("e-seg")],
        "classif",
    )
    fail("options", "explain", "--method nope", [cls, one, "--method", "nope"], "nope")
    ok(
        "options",
        "explain",
        "--method gradcam on a classifier",
        [cls, one, "--method", "gradcam", "--out", o("e-gc"), "--top-k", "1"],
    )
    fail(
        "options", "eval", "--tta dihedral on a classifier", [cls, "--data", str(f["good"]), "--tta", "dihedral"], "tta"
    )
    fail("options", "eval", "--boxes on a detector", [det, "--boxes", "x.json"], "box")
    fail("options", "eval", "--map-stride without --boxes", [cls, "--map-stride", "2"], "box")
    fail("options", "eval", "--split nosuch on a detector", [det, "--split", "nosuch"], "nosuch")
    fail("options", "eval", "--data that does not exist", [cls, "--data", str(f["good"] / "nowhere")], "does not exist")
    for size in (["100000"], ["0"], ["-5"], ["1", "2", "3"]):
        fail("options", "export", f"--size {' '.join(size)}", [cls, "--out", o("x.onnx"), "--size", *size], "size")
    ok(
        "options",
        "export",
        "--size 7 (legal for a classifier: pooled to 1x1)",
        [cls, "--out", o("x7.onnx"), "--size", "7"],
    )
    fail("options", "export", "--opset 3", [cls, "--out", o("x3.onnx"), "--opset", "3"], "opset")
    fail("options", "export", "--opset 999", [cls, "--out", o("x4.onnx"), "--opset", "999"], "opset")
    fail(
        "options", "export", "--out into a missing folder's child of a file", [cls, "--out", str(f["one"]) + "/m.onnx"]
    )
    for flag, value in (("--w0", "-1"), ("--sigma", "0"), ("--limit", "0"), ("--limit", "-3"), ("--sigma", "nan")):
        fail(
            "options", "weightmap", f"{flag} {value}", ["nuclei-sample", flag, value, "--out", o("wm")], flag.strip("-")
        )
    fail(
        "options",
        "weightmap",
        "a dataset that does not exist",
        [str(f["good"] / "nowhere"), "--out", o("wm2")],
        "does not exist",
    )
    for phi in ("nan", "inf", "-100", "100"):
        fail("options", "models", f"--phi {phi}", ["--phi", phi], "phi")
    fail("options", "demo", "--device cuda without a GPU", ["--out", o("demo"), "--device", "cuda", "--quick"], "cuda")
    fail("options", "demo", "--out onto a file", ["--out", str(f["one"]), "--quick"], "g0.png")


def _format_cases(data, o, fail, ok) -> None:  # noqa: ANN001
    """``foveal data check / convert`` and training from a YOLO folder."""
    for key, needle in (
        ("yolo_badclass", "a.txt:2"),
        ("yolo_outside", "a.txt:1"),
        ("yolo_short", "a.txt:1"),
        ("yolo_text", "a.txt:1"),
        ("yolo_yaml_binary", "data.yaml"),
        ("yolo_no_names", "names"),
        ("labelme_deep", "a.json"),
    ):
        fail("data", "data", f"check: {key}", ["check", str(data[key])], needle)
    good = str(data["yolo_good"])
    ok("data", "data", "check: a well-formed YOLO folder", ["check", good])
    fail("data", "data", "check: a path that does not exist", ["check", good + "-nowhere"], "does not exist")
    fail(
        "options", "data", "convert --to an unknown format", ["convert", good, "--to", "nope", "--out", o("cv")], "nope"
    )
    fail("options", "data", "convert without --out", ["convert", good, "--to", "coco"], "--out")
    fail("options", "data", "an unknown action", ["frobnicate", good], "frobnicate")
    ok("data", "data", "convert YOLO to COCO", ["convert", good, "--to", "coco", "--out", o("cv-coco")])
    out = Path(o("cv-coco"))
    again = ["convert", good, "--to", "voc", "--out", str(out)]
    fail("earlier_output", "data", "convert into a folder holding a conversion", again, str(out), intact=(out,))
    train = ["detect", "--config", str(DETECT_TINY), f"data.train={data['yolo_badclass']}", "--out", o("yt")]
    fail("data", "train", "detect from a YOLO folder with a bad class id", train, "a.txt:2")


def _data_cases(f, b, data, br, o, fail, ok, cls, seg, det, runs, work) -> None:  # noqa: ANN001
    g = str(f["good"])
    ev = [cls, "--data", g, "--out", o("loc"), "--boxes"]
    fail("clean_error", "eval", "a box JSON nested 100,000 deep", [*ev, str(b["deep"])], "deep.json")
    fail("clean_error", "eval", "a CUB split naming an unknown image id", [*ev, str(b["cub"])], "99")
    fail("clean_error", "report", "a binary metrics.jsonl", [str(br["report_binary"])], "metrics.jsonl")
    fail(
        "clean_error",
        "predict",
        "a truncated tiled BigTIFF alone, streamed",
        [seg, str(f["tiled_trunc"]), "--format", "zarr", "--out", o("tt")],
        "tiled_trunc.tif",
    )
    fail(
        "clean_error", "predict", "a zarr of strings alone", [seg, str(f["zarr_str"]), "--out", o("zs")], "strings.zarr"
    )
    fail("clean_error", "export", "--size 100000", [cls, "--out", o("big.onnx"), "--size", "100000"], "size")
    for key, needle in (
        ("null", "null.json"),
        ("string", "string.json"),
        ("negative", "negative.json"),
        ("nan", "nan.json"),
        ("outside", "outside.json"),
        ("unknown_image", "nope.png"),
        ("csv_text", "text.csv"),
        ("binary", "binary.json"),
        ("list_top", "list.json"),
    ):
        fail("data", "eval", f"boxes: {key}", [*ev, str(b[key])], needle)
    fail("message", "eval", "a VOC XML folder blames the bad file", [*ev, str(b["xml_bad"])], "a3.xml")
    ok("message", "eval", "a box CSV with a byte-order mark", [*ev, str(b["csv_bom"])])
    det_ev = [det, "--split", "val", "--out", o("dev"), "--data"]
    for key, needle in (
        ("coco_bbox3", "bbox"),
        ("coco_noimages", "images"),
        ("coco_deep", "instances_val.json"),
        ("coco_badcat", "12345"),
        ("coco_missing_image", "does_not_exist.png"),
        ("coco_binary", "instances_val.json"),
    ):
        fail("data", "eval", f"COCO: {key}", [*det_ev, str(data[key])], needle)
    ok(  # a degenerate box is dropped as COCO's tools drop it, and counted aloud
        "data",
        "eval",
        "COCO: a box of negative width is dropped with a warning",
        [*det_ev, str(data["coco_negative"])],
        lambda out, err: None if "negative width" in err else "no warning about the dropped box",
    )
    fail(
        "data",
        "eval",
        "segmentation: a mask of another size",
        [seg, "--data", str(data["seg_mismatch"]), "--out", o("sm")],
        "mask",
    )
    fail(
        "data",
        "eval",
        "segmentation: no masks folder",
        [seg, "--data", str(data["seg_nomasks"]), "--out", o("snm")],
        "masks",
    )
    fail(
        "data",
        "eval",
        "classification: a folder of one unknown class",
        [cls, "--data", str(data["cls_oneclass"])],
        "only",
    )
    fail("data", "eval", "classification: a truncated IDX file", [cls, "--data", str(data["idx_trunc"].parent)])
    tr = ["train", "classify", "--out", o("tr"), *TINY]
    for key, needle in (
        ("yaml_bad", "bad.yaml"),
        ("yaml_list", "list.yaml"),
        ("yaml_binary", "binary.yaml"),
        ("yaml_unknown", "modle"),
    ):
        fail("data", "train", f"config: {key}", [*tr[1:], "--config", str(data[key])], needle)
    base = ["classify", "--config", "classify_demo", "--out", o("tr2"), *TINY]
    offline = {"HF_HUB_OFFLINE": "1", "TORCH_HOME": str(work / "torch-home"), "HF_HOME": str(work / "hf-home")}
    os.environ.update(offline)  # hub weights: nothing cached, nothing downloaded
    for spec, needle in (
        ("timm:efficientnet_b0.ra_in1k", "hf-home"),
        ("timm:no_such_model_xyz", "no_such_model_xyz"),
        ("timm:", "timm"),
        ("torchvision:NoSuch_Weights.IMAGENET1K_V1", "NoSuch_Weights"),
        ("torchvision:EfficientNet_B0_Weights.NOPE", "NOPE"),
        ("hub:efficientnet_b0", "hub:efficientnet_b0"),
    ):
        fail("data", "train", f"model.weights={spec} offline, uncached", [*base, f"model.weights={spec}"], needle)
    seg_hub = ["segment", "--config", "segment_demo", "--out", o("tr5"), "train.max_steps=1", "train.progress=false"]
    fail(
        "data", "train", "hub weights on the paper's U-Net", [*seg_hub, "model.weights=timm:resnet18"], "backbone_unet"
    )
    for override, needle in (
        ("optim.lrr=0.1", "optim.lr"),
        ("data.batch_size=0", "batch_size"),
        ("data.batch_size=-1", "batch_size"),
        ("train.max_steps=abc", "max_steps"),
        ("optim.lr=nan", "lr"),
        ("optim.lr=-1", "lr"),
        ("nokey", "key=value"),
        ("data.train=/nonexistent/folder", "does not exist"),
    ):
        fail("data", "train", f"override {override}", [*base, override], needle)
    cases_msg = ["classify", "--config", "classify_demo", "--out", o("tr3"), *TINY, "data.train=/nonexistent/x"]
    fail("message", "train", "a missing training folder names the key, not a flag", cases_msg, "data.train")
    fail("data", "train", "an unknown task", ["teleport", "--out", o("tr4")], "teleport")
    fail("data", "train", "--resume of a folder with no run", ["classify", "--resume", str(br["empty"])], "empty")
    for key in (
        "meta_corrupt",
        "meta_binary",
        "meta_task",
        "meta_version",
        "weights_trunc",
        "weights_gone",
        "weights_garbage",
        "empty",
        "a_file",
    ):
        fail("checkpoint", "predict", f"checkpoint: {key}", [str(br[key]), g], str(br[key].name), intact=(br[key],))
    fail(
        "checkpoint",
        "eval",
        "checkpoint: weights truncated",
        [str(br["weights_trunc"])],
        "weights_trunc",
        intact=(br["weights_trunc"],),
    )
    fail(
        "checkpoint",
        "export",
        "checkpoint: metadata corrupt",
        [str(br["meta_corrupt"]), "--out", o("mc.onnx")],
        "meta_corrupt",
    )
    fail("checkpoint", "explain", "checkpoint: a file", [str(br["a_file"]), g, "--out", o("af")], "a_file")
    fail(
        "checkpoint",
        "train",
        "--resume of a run with corrupt metadata",
        ["classify", "--resume", str(br["meta_corrupt"])],
        "meta_corrupt",
        intact=(br["meta_corrupt"],),
    )
    fail("checkpoint", "eval", "a detector checkpoint on classification data", [det, "--data", g], "COCO")
    fail("checkpoint", "report", "a path that does not exist", [str(br["empty"] / "nope")], "does not exist")
    fail("checkpoint", "report", "an empty folder", [str(br["empty"])], "empty")
    fail("checkpoint", "report", "a plain file", [str(br["a_file"])], "a_file")
    ok("checkpoint", "report", "a run whose metrics.jsonl was cut mid-line", [str(br["report_truncated"])])


def _api_cases(f, runs, out, raises) -> None:  # noqa: ANN001
    cls = runs["cls"]
    m = foveal.load(cls)
    s = foveal.load(runs["seg"])
    d = foveal.load(runs["det"])
    nan = np.full((28, 28), np.nan, np.float32)
    for name, call, needle in (
        ("load(123)", lambda: foveal.load(123), "123"),
        ("load(None)", lambda: foveal.load(None), "None"),
        ("load(a missing path)", lambda: foveal.load(out / "nope"), "does not exist"),
        ("load(an image file)", lambda: foveal.load(f["one"]), "g0.png"),
        ("load(device=['cpu'])", lambda: foveal.load(cls, device=["cpu"]), "device"),
        ("load(device=3)", lambda: foveal.load(cls, device=3), "device"),
        ("load(device='tpu')", lambda: foveal.load(cls, device="tpu"), "tpu"),
        ("load(precision=16)", lambda: foveal.load(cls, precision=16), "precision"),
        ("load(precision=torch.float64)", lambda: foveal.load(cls, precision=torch.float64), "precision"),
        ("load(precision='fp64')", lambda: foveal.load(cls, precision="fp64"), "fp64"),
        ("predict(123)", lambda: m.predict(123), "123"),
        ("predict(None)", lambda: m.predict(None), "None"),
        ("predict([])", lambda: m.predict([]), "input"),
        ("predict([None])", lambda: m.predict([None]), "None"),
        ("predict(all-NaN array)", lambda: m.predict(nan), "nan"),
        ("predict(Inf array)", lambda: m.predict(np.where(np.eye(28) > 0, np.inf, 0).astype(np.float32)), "inf"),
        ("predict(NaN tensor) segmenter", lambda: s.predict(torch.full((1, 40, 40), float("nan"))), "nan"),
        ("predict(NaN PIL 'F' image)", lambda: m.predict(Image.fromarray(nan, mode="F")), "nan"),
        ("predict(NaN array) detector", lambda: d.predict(np.full((64, 64), np.nan, np.float32)), "nan"),
        ("predict(complex array)", lambda: m.predict(np.zeros((28, 28), np.complex64)), "complex"),
        ("predict(object array)", lambda: m.predict(np.array([[object()]])), "object"),
        ("predict(0-size array)", lambda: m.predict(np.zeros((0, 28), np.uint8)), "0"),
        ("predict(5-D array)", lambda: m.predict(np.zeros((1, 1, 1, 28, 28), np.uint8)), "dimension"),
        ("predict(7-channel array)", lambda: m.predict(np.zeros((28, 28, 7), np.uint8)), "channel"),
        ("predict(top_k=0)", lambda: m.predict(f["one"], top_k=0), "top_k"),
        ("predict(top_k='5')", lambda: m.predict(f["one"], top_k="5"), "top_k"),
        ("predict(top_k=True)", lambda: m.predict(f["one"], top_k=True), "top_k"),
        ("predict(batch_size=0)", lambda: m.predict(f["one"], batch_size=0), "batch_size"),
        ("predict(batch_size=1.5)", lambda: m.predict(f["one"], batch_size=1.5), "batch_size"),
        ("predict(every input corrupt)", lambda: m.predict([f["corrupt"], f["text"]]), "corrupt.png"),
        ("explain(NaN array)", lambda: m.explain(nan), "nan"),
        ("explain(threshold=2)", lambda: m.explain(f["one"], threshold=2), "threshold"),
        ("explain(method='nope')", lambda: m.explain(f["one"], method="nope"), "nope"),
        ("explain(top_k=-1)", lambda: m.explain(f["one"], top_k=-1), "top_k"),
        ("evaluate(data=123)", lambda: m.evaluate(data=123), "data"),
        ("evaluate(data=missing)", lambda: m.evaluate(data=out / "nope"), "does not exist"),
        ("export(123)", lambda: m.export(123), "123"),
        ("export(size=100000)", lambda: m.export(out / "api.onnx", size=100000), "size"),
        ("export(size=-1)", lambda: m.export(out / "api2.onnx", size=-1), "size"),
        ("export(opset='a')", lambda: m.export(out / "api3.onnx", opset="a"), "opset"),
        ("train('teleport')", lambda: foveal.train("teleport", out=out / "t1"), "teleport"),
        ("train(123)", lambda: foveal.train(123, out=out / "t2"), "123"),
        ("train(config='nope')", lambda: foveal.train("classify", "nope", out=out / "t3"), "nope"),
        (
            "train(unknown key)",
            lambda: foveal.train("classify", "classify_demo", out=out / "t4", nosuch__key=1),
            "nosuch",
        ),
        (
            "train(bad type)",
            lambda: foveal.train("classify", "classify_demo", out=out / "t5", data__batch_size="x"),
            "batch_size",
        ),
    ):
        raises("api", name, call, needle)


def _expect_precision(model: Any, name: str) -> None:
    if model.precision != name:
        raise RuntimeError(f"asked for {name}, runs {model.precision}")


def _precision_cases(f, o, ok, cls, cases) -> None:  # noqa: ANN001
    from foveal.engine import device as dev

    def fresh() -> None:  # each command line is a new process: its warnings have not been given yet
        getattr(dev, "_warned", set()).clear()

    native = dev.native_bf16(torch.device("cpu"))[0]
    one = str(f["one"])
    if native:
        ok(
            "precision",
            "predict",
            "--precision bf16 on a CPU with bf16 units: no warning",
            [cls, one, "--precision", "bf16"],
            lambda out, err: "warned about a native bf16" if "emulat" in err else None,
        )
    else:
        cases.append(
            dict(
                kind="precision",
                verb="predict",
                name="--precision bf16 on an emulating CPU warns",
                expect="warns",
                argv=["predict", cls, one, "--precision", "bf16"],
                needles=("emulat",),
                setup=fresh,
            )
        )
        cases.append(
            dict(
                kind="precision",
                verb="explain",
                name="explain --precision bf16 on an emulating CPU warns",
                expect="warns",
                argv=["explain", cls, one, "--precision", "bf16", "--out", o("bf"), "--top-k", "1"],
                needles=("emulat",),
                setup=fresh,
            )
        )

    cases.append(
        dict(
            kind="precision",
            verb="api",
            name="load(precision=torch.bfloat16) runs bf16",
            expect="ok",
            call=lambda: _expect_precision(foveal.load(cls, precision=torch.bfloat16), "bf16"),
            setup=fresh,
        )
    )

    def record_says(run: Path) -> Callable[[str, str], str | None]:
        def check(stdout: str, stderr: str) -> str | None:
            texts = " ".join(p.read_text(errors="replace") for p in run.rglob("*.json"))
            want = "bf16" if native else "fp32"
            if "precision" not in texts or want not in texts:
                return f"the run's record does not say precision {want}"
            return None

        return check

    run = Path(o("prec-run"))
    ok(
        "precision",
        "train",
        "segment_cpu-like recipe: the record names the precision that ran",
        ["segment", "--config", "segment_demo", "train.max_steps=1", "train.progress=false", "--out", str(run)],
        record_says(run),
    )
    ok(
        "precision",
        "predict",
        "default precision on this CPU runs without a warning",
        [cls, one],
        lambda out, err: "warned by default" if "emulat" in err else None,
    )
