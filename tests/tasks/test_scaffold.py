"""The shared training scaffolding: a library call to ``train`` leaves the caller's process as it found it."""

from pathlib import Path

import pytest
import torch

import foveal
from foveal.config import load_config
from foveal.errors import FovealError
from foveal.tasks import classify, classify_train
from foveal.tasks.scaffold import process_state

RECIPE = Path(foveal.__file__).parent / "configs" / "classify_demo.yaml"
TINY = [
    "data.limit=32",
    "data.val_limit=16",
    "data.batch_size=16",
    "train.progress=false",
    "train.max_steps=1",
    "train.threads=1",
    "train.deterministic=true",
]


@pytest.fixture()
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # differs from the run's train.threads=1
    yield
    torch.set_num_threads(threads)


def _state():
    return (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
        torch.get_rng_state(),
    )


def _same(a, b):
    return a[:4] == b[:4] and torch.equal(a[4], b[4])


def test_train_restores_threads_determinism_and_rng(tmp_path, two_threads):
    torch.manual_seed(123)
    before = _state()
    assert before[:2] == (2, False)
    cfg = load_config(classify.ClassifyConfig, RECIPE, TINY)
    assert classify_train.train(cfg, run_dir=tmp_path / "run")["step"] == 1
    assert _same(_state(), before)


def test_a_failing_train_restores_the_process_too(tmp_path, two_threads):
    before = _state()
    cfg = load_config(classify.ClassifyConfig, RECIPE, [*TINY, "data.limit=8"])
    with pytest.raises(FovealError, match="fewer than one batch"):
        classify_train.train(cfg, run_dir=tmp_path / "run")
    assert _same(_state(), before)


def test_process_state_puts_back_what_the_block_changed(two_threads):
    before = _state()
    with process_state():
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = not torch.backends.cudnn.benchmark
        torch.manual_seed(7)
    assert _same(_state(), before)
    assert not torch.is_deterministic_algorithms_warn_only_enabled()
