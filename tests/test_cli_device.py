"""--device and --precision on every verb: a device or precision this machine lacks is one error line, bf16 runs
the classifier's folded copy in bfloat16 with the fp32 answers wherever they are clear."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import foveal
from foveal.cli import main
from foveal.engine.device import native_bf16
from foveal.tasks import classify

TINY = ["train.max_steps=2", "data.limit=64", "data.val_limit=32", "data.batch_size=16", "train.progress=false"]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")


@pytest.fixture()
def run(ckpt_run: Path) -> Path:
    """The session's tiny classifier run (read-only; 16 validation images)."""
    return ckpt_run


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("foveal: error: ")
    return err


@no_cuda
def test_every_verb_names_a_missing_cuda_device(run, images, tmp_path, capsys):
    verbs = [
        ["eval", str(run)],
        ["predict", str(run), str(images / "img0.png")],
        ["explain", str(run), str(images / "img0.png"), "--out", str(tmp_path / "x")],
        ["export", str(run), "--out", str(tmp_path / "m.onnx")],
        ["demo", "--out", str(tmp_path / "demo"), "--quick"],
        ["train", "classify", "--config", "classify_demo", "--out", str(tmp_path / "t"), *TINY],
    ]
    for argv in verbs:
        assert "device 'cuda': torch sees no CUDA device here; use --device cpu" in _error(
            capsys, [*argv, "--device", "cuda"]
        )
    assert "unknown device 'tpu'" in _error(capsys, ["eval", str(run), "--device", "tpu"])
    assert not (tmp_path / "m.onnx").exists()
    # the config key says the same
    err = _error(
        capsys,
        ["train", "classify", "--config", "classify_demo", "--out", str(tmp_path / "t"), "train.device=cuda:1", *TINY],
    )
    assert "device 'cuda:1'" in err


def test_fp16_is_for_cuda_only(run, images, capsys):
    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed on CUDA")
    err = _error(capsys, ["predict", str(run), str(images / "img0.png"), "--precision", "fp16"])
    assert "fp16 runs on CUDA only: use --precision auto or fp32 on the CPU" in err


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image folder of 20 of the Fashion-MNIST sample's test images, two per class (class folders c0 … c9 in the
    sample's class order): evaluated in emulated bf16 in seconds, where the sample's 1,000 take minutes."""
    from foveal.data.classification import open_dataset

    data = open_dataset("fashion-mnist-sample", "test")
    folder, taken = tmp_path_factory.mktemp("labelled"), dict.fromkeys(range(10), 0)
    for i in range(len(data)):
        image, label = data.get(i)
        if taken[int(label)] < 2:
            (folder / f"c{int(label)}").mkdir(exist_ok=True)
            Image.fromarray(image[0].numpy()).save(folder / f"c{int(label)}" / f"{i}.png")
            taken[int(label)] += 1
        if min(taken.values()) == 2:
            return folder
    raise AssertionError("the sample lacks two test images of some class")


def test_bf16_predict_and_eval_agree_with_fp32_where_fp32_is_clear(run, images, labelled, tmp_path, capsys):
    files = [str(p) for p in sorted(images.glob("*.png"))]
    fp32 = foveal.load(run, device="cpu").predict(files, top_k=2)
    bf16 = foveal.load(run, device="cpu", precision="bf16").predict(files, top_k=2)
    clf = classify.load_classifier(run, device="cpu", precision="bf16")
    assert next(clf.model.parameters()).dtype == torch.bfloat16
    for a, b in zip(fp32, bf16, strict=True):
        assert abs(a.topk[0].probability - b.topk[0].probability) < 0.05
        if a.topk[0].probability - a.topk[1].probability > 0.05:
            assert a.topk[0].class_index == b.topk[0].class_index
    data = ["--data", str(labelled)]
    assert main(["eval", str(run), *data, "--precision", "bf16", "--device", "cpu", "--out", str(tmp_path / "e")]) == 0
    bf16 = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert main(["eval", str(run), *data, "--device", "cpu", "--out", str(tmp_path / "f")]) == 0
    fp32 = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert bf16["count"] == fp32["count"] == 20
    assert abs(bf16["top1"] - fp32["top1"]) <= 2 / 20  # 20 images: at most two near-ties flip
    capsys.readouterr()


def test_explain_in_bf16_and_export_keeps_fp32(run, images, tmp_path, capsys):
    argv = ["explain", str(run), str(images / "img0.png"), "--top-k", "2"]
    assert main([*argv, "--out", str(tmp_path / "a"), "--device", "cpu"]) == 0
    assert main([*argv, "--out", str(tmp_path / "b"), "--device", "cpu", "--precision", "bf16"]) == 0
    (a,) = json.loads((tmp_path / "a" / "explanations.json").read_text())
    (b,) = json.loads((tmp_path / "b" / "explanations.json").read_text())
    assert np.allclose(a["scores"], b["scores"], atol=0.05) and len(b["boxes"]) == 2
    assert main(["export", str(run), "--out", str(tmp_path / "m.onnx"), "--device", "cpu"]) == 0
    assert "max |difference|" in capsys.readouterr().out


def test_training_precision_key(tmp_path, capsys, monkeypatch):
    from foveal.engine import device

    monkeypatch.setattr(device, "_warned", set())  # the warning is given once a process: as if this one were new
    base = ["train", "classify", "--config", "classify_demo", "--device", "cpu", *TINY, "train.max_steps=1"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*base, "--out", str(tmp_path / "bf16"), "train.precision=bf16"]) == 0
    assert (tmp_path / "bf16" / "checkpoints" / "best").is_dir()
    warned = "bf16 is emulated" in capsys.readouterr().err  # said where the CPU has no bf16 units
    assert warned == (not native_bf16("cpu")[0])
    if not torch.cuda.is_available():
        err = _error(capsys, [*base, "--out", str(tmp_path / "fp16"), "train.precision=fp16"])
        assert "fp16 runs on CUDA only" in err
