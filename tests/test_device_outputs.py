"""A device or precision this machine lacks is refused before any verb creates its output folder."""

from __future__ import annotations

import pytest
import torch

from foveal.cli import main
from foveal.demo import DETECTOR

TINY = ["train.max_steps=1", "data.limit=32", "data.val_limit=16", "train.progress=false"]
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
IMAGE = min((DETECTOR.parents[1] / "fashion-canvas-sample" / "val").glob("*.png"))


def _verbs(out: str) -> dict[str, list[str]]:
    image = IMAGE
    return {
        "train": ["train", "classify", "--config", "classify_demo", "--out", out, *TINY],
        "eval": ["eval", str(DETECTOR), "--out", out],
        "predict": ["predict", str(DETECTOR), str(image), "--out", out],
        "explain": ["explain", str(DETECTOR), str(image), "--out", out],
        "demo": ["demo", "--quick", "--out", out],
    }


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("foveal: error: ")
    return err


@no_cuda
@pytest.mark.parametrize("verb", ["train", "eval", "predict", "explain", "demo"])
def test_a_missing_cuda_device_creates_no_output_folder(verb, tmp_path, capsys):
    out = tmp_path / "nested" / "out"
    err = _refused(capsys, [*_verbs(str(out))[verb], "--device", "cuda"])
    assert "torch sees no CUDA device here" in err
    assert not (tmp_path / "nested").exists()


@no_cuda
def test_the_config_device_key_and_fp16_are_checked_before_the_folder_too(tmp_path, capsys):
    out = tmp_path / "t"
    err = _refused(capsys, [*_verbs(str(out))["train"], "train.device=cuda:1"])
    assert "device 'cuda:1'" in err and not out.exists()
    for verb in ("eval", "predict", "explain", "demo"):
        err = _refused(capsys, [*_verbs(str(out))[verb], "--precision", "fp16", "--device", "cpu"])
        assert "fp16 runs on CUDA only" in err and not out.exists(), verb
