"""Tiny results of every kind for the report tests: a training run and its evaluation per task, and explanations.

Built once per session through the command line, as a user makes them (a few training steps each)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from foveal.cli import main
from foveal.data.detection_set import build_detection_set
from foveal.data.synthetic import write_cells_folder

CLASSIFY = ["data.limit=64", "data.val_limit=32", "data.batch_size=16", "train.progress=false", "train.max_steps=3"]
SEGMENT = [
    "model.depth=2",
    "model.base_width=4",
    "model.batch_norm=true",
    "data.tile=24",
    "data.eval_tile=28",
    "data.batch_size=2",
    "data.samples_per_epoch=4",
    "train.epochs=1",
    "train.progress=false",
]
DETECT = [
    "--config",
    str(Path(__file__).resolve().parents[1] / "configs" / "detect_tiny.yaml"),
    "data.eval_batch_size=4",
    # an untrained detector's scores sit at the prior (0.01): keep them so that the figures show boxes
    "inference.score_thresh=0.0",
]


@pytest.fixture(scope="session")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Folders keyed by kind: classify / segment / detect run and eval, and explain."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("results")
    out: dict[str, Path] = {}
    try:
        out["classify-run"], out["classify-eval"] = root / "cls", root / "cls-eval"
        assert (
            main(["train", "classify", "--config", "classify_demo", *CLASSIFY, "--out", str(out["classify-run"])]) == 0
        )
        assert main(["eval", str(out["classify-run"]), "--out", str(out["classify-eval"])]) == 0
        images = sorted(out["classify-eval"].glob("mistakes/*.png"))[:2]
        out["explain"] = root / "explain"
        assert main(["explain", str(out["classify-run"]), *map(str, images), "--out", str(out["explain"])]) == 0

        cells = write_cells_folder(root / "cells", 3, (72, 80))
        out["segment-run"], out["segment-eval"] = root / "seg", root / "seg-eval"
        assert main(["train", "segment", f"data.train={cells}", *SEGMENT, "--out", str(out["segment-run"])]) == 0
        assert main(["eval", str(out["segment-run"]), "--out", str(out["segment-eval"])]) == 0

        canvases = build_detection_set(
            root / "canvas", source="fashion-mnist-sample", n_train=4, n_val=3, size=64, objects=(1, 3), scale=(14, 30)
        )
        out["detect-run"], out["detect-eval"] = root / "det", root / "det-eval"
        assert main(["train", "detect", f"data.train={canvases}", *DETECT, "--out", str(out["detect-run"])]) == 0
        assert main(["eval", str(out["detect-run"]), "--split", "val", "--out", str(out["detect-eval"])]) == 0
    finally:
        torch.set_num_threads(threads)
    return out
