"""Fixtures shared by the tests (one tiny trained classifier run, a copy of it a test may damage, one torch thread for
modules of tiny networks); tests marked ``cuda`` skip on machines without a CUDA device."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny networks run
    fastest on one thread, and a second OpenMP thread only adds synchronisation, which stalls on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test``): each worker process gets its share of the cores as torch threads, for
    itself and the processes its tests start, so that two workers on two cores do not each run two threads."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Task → a tiny untrained checkpoint made by tests/inference/conftest.py (a classifier of classes class0 …
    class3 and a detector, of grayscale images, and an instance U-Net); read-only. Loaded as a module because pytest
    does not share fixtures across sibling folders and runs with ``--import-mode=importlib``."""
    spec = importlib.util.spec_from_file_location("_inference_kit", Path(__file__).parent / "inference" / "conftest.py")
    assert spec is not None and spec.loader is not None
    kit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kit)
    root = tmp_path_factory.mktemp("tiny-checkpoints")
    return {
        "classify": str(kit.classifier_checkpoint(root / "classify")),
        "segment": str(kit.segmenter_checkpoint(root / "segment")),
        "detect": str(kit.detector_checkpoint(root / "detect")),
    }


@pytest.fixture(scope="session")
def predict_records() -> Any:
    """``predict_records(checkpoint, inputs, out, **options)``: ``foveal predict`` of ``inputs`` into ``out`` (its
    :func:`foveal.tasks.predict.run_predict`, the path the command line and the demo run) → the records of
    ``predictions.jsonl``, in input order."""
    from foveal.inference.batch_predict import PREDICTIONS, iter_records
    from foveal.tasks.predict import PredictRequest, run_predict

    def run(checkpoint: Any, inputs: Any, out: Any, **options: Any) -> list[dict[str, Any]]:
        request = PredictRequest(
            str(checkpoint), tuple(str(i) for i in inputs), out=str(out), progress=False, **options
        )
        run_predict(request)
        return list(iter_records(Path(out) / PREDICTIONS))

    return run
