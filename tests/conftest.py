"""Fixtures shared by the CLI tests (one tiny trained classifier run, and a copy of it a test may damage); tests
marked ``cuda`` skip on machines without a CUDA device."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pytest
import torch

from foveal.cli import main

TINY_TRAIN = [
    "train",
    "classify",
    "--config",
    "classify_demo",
    "train.max_steps=1",
    "data.limit=32",
    "data.val_limit=16",
    "data.batch_size=16",
    "train.progress=false",
]


@pytest.fixture(scope="session")
def ckpt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny trained run (10 Fashion-MNIST classes, grayscale, 32 px), shared read-only by the tests."""
    out = tmp_path_factory.mktemp("bad") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*TINY_TRAIN, "--out", str(out)]) == 0
    return out


@pytest.fixture()
def run_copy(ckpt_run: Path, tmp_path: Path) -> Path:
    """A copy of the trained run that a test may point a failing command at."""
    return Path(shutil.copytree(ckpt_run, tmp_path / "run"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
