"""Shared fixtures. For the prediction-output tests: tiny untrained checkpoints of every task and folders of tiny
images (what is written, when and how, not what a trained model predicts); helpers through the ``kit`` fixture."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from foveal.config import load_config, to_dict
from foveal.engine.checkpoint import save_checkpoint


def classifier_checkpoint(path: Path, classes: int = 4) -> Path:
    """An EfficientNet (φ = −4, 32 px, grayscale) with seeded random weights."""
    from foveal.tasks import classify

    torch.manual_seed(0)
    cfg = load_config(classify.ClassifyConfig, None, ["model.name=efficientnet", "model.phi=-4", "model.stem_stride=1"])
    model = classify.build_classifier(cfg.model, classes, 1).eval()
    meta = {
        "task": "classify",
        "model": {"arch": "efficientnet", "args": model.args},
        "config": to_dict(cfg),
        "classes": [f"class{i}" for i in range(classes)],
        "input": {"resolution": 32, "channels": 1, "mean": [0.5], "std": [0.5]},
    }
    return save_checkpoint(path, model=model, meta=meta, with_rng=False)


def segmenter_checkpoint(path: Path) -> Path:
    """A depth-2 valid U-Net of width 4 (output tile 28 from 68-px inputs), seeded random weights."""
    from foveal.tasks import segment

    torch.manual_seed(0)
    overrides = ["model.depth=2", "model.base_width=4", "model.batch_norm=true", "data.tile=24", "data.eval_tile=28"]
    cfg = load_config(segment.SegmentConfig, None, overrides)
    model = segment.build_segmenter(cfg.model, 1, 2).eval()
    meta = {
        "task": "segment",
        "model": {"arch": "unet", "args": model.args},
        "config": to_dict(cfg),
        "classes": ["background", "foreground"],
        "input": {"channels": 1, "normalize": "percentile", "masks": "instances"},
    }
    return save_checkpoint(path, model=model, meta=meta, with_rng=False)


def detector_checkpoint(path: Path) -> Path:
    """A resnet18-FPN RetinaNet with 16 channels for 64-px images; the score threshold is lowered to 0.005 so that
    the untrained prior (0.01) gives detections."""
    from foveal.tasks import detect

    torch.manual_seed(0)
    overrides = [
        "model.backbone=resnet18",
        "model.fpn_channels=16",
        "model.head_convs=1",
        "model.anchor_sizes=[8,16,32,64,128]",
        "data.min_size=64",
        "data.max_size=64",
        "inference.score_thresh=0.005",
        "inference.max_detections=10",
    ]
    cfg = load_config(detect.DetectConfig, None, overrides)
    model = detect.build_detector(cfg.model, 3, 1).eval()
    meta = {
        "task": "detect",
        "model": {"arch": "retinanet", "args": model.args},
        "config": to_dict(cfg),
        "classes": ["a", "b", "c"],
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate("abc")],
        "input": {"channels": 1, "min_size": 64, "max_size": 64, "mean": [0.5], "std": [0.25]},
    }
    return save_checkpoint(path, model=model, meta=meta, with_rng=False)


def gray_images(folder: Path, n: int, size: tuple[int, int] = (40, 36), seed: int = 0) -> list[Path]:
    """``n`` random grayscale PNGs ``img000.png`` … in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        paths.append(folder / f"img{i:03d}.png")
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(paths[-1])
    return paths


def truncate(path: Path) -> Path:
    """Cut an image file to 40 bytes: a header that opens, pixels that do not decode."""
    path.write_bytes(path.read_bytes()[:40])
    return path


def foveal(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python -m foveal ARGS`` in a subprocess (the user's view: exit code, stdout, stderr)."""
    return subprocess.run([sys.executable, "-m", "foveal", *args], capture_output=True, text=True, timeout=timeout)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every visible file under ``folder`` → its bytes (the outputs a user sees)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    }


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """The helpers of this file (tests cannot import it: pytest runs with ``--import-mode=importlib``)."""
    return SimpleNamespace(gray_images=gray_images, truncate=truncate, foveal=foveal, snapshot=snapshot)


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Task → a tiny untrained checkpoint of it (read-only for the tests)."""
    root = tmp_path_factory.mktemp("tiny-checkpoints")
    return {
        "classify": classifier_checkpoint(root / "classify"),
        "segment": segmenter_checkpoint(root / "segment"),
        "detect": detector_checkpoint(root / "detect"),
    }
