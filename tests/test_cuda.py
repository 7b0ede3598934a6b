"""On a CUDA device (skipped without one): training with AMP, every inference path on the GPU against the CPU in
fp32, checkpoints trained on the GPU loaded on the CPU, and the error for a GPU index the machine lacks."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import foveal
from foveal.cli import main
from foveal.data.detection_set import build_detection_set
from foveal.data.synthetic import write_cells_folder
from foveal.engine.device import resolve_device
from foveal.errors import FovealError
from foveal.tasks import classify_eval, detect_eval, explain, segment, segment_eval

pytestmark = pytest.mark.cuda
TINY = ["train.max_steps=3", "data.limit=64", "data.val_limit=32", "data.batch_size=16", "train.progress=false"]


def _train(argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["train", *argv, "--device", "cuda"]) == 0


@pytest.fixture(scope="module", params=["bf16", "fp16"])
def classifier(request, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("cuda") / "clf"
    _train(["classify", "--config", "classify_demo", "--out", str(run), *TINY, f"train.precision={request.param}"])
    return run


def test_a_gpu_index_beyond_the_machine_is_an_error():
    count = torch.cuda.device_count()
    with pytest.raises(FovealError, match=f"this machine has {count} CUDA device"):
        resolve_device(f"cuda:{count}")
    assert resolve_device("auto").type == "cuda"


def test_classifier_trained_with_amp_on_the_gpu_predicts_alike_on_gpu_and_cpu(classifier, tmp_path):
    rng = np.random.default_rng(0)
    files = []
    for i in range(4):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(path)
        files.append(str(path))
    cpu = foveal.load(classifier, device="cpu").predict(files, top_k=3)
    gpu = foveal.load(classifier, device="cuda").predict(files, top_k=3)
    for a, b in zip(cpu, gpu, strict=True):
        assert [s.probability for s in a.topk] == pytest.approx([s.probability for s in b.topk], abs=1e-3)
    r_cpu = classify_eval.evaluate_checkpoint(classifier, None, "test", None, device="cpu")
    r_gpu = classify_eval.evaluate_checkpoint(classifier, None, "test", None, device="cuda")
    assert abs(r_cpu.top1 - r_gpu.top1) <= 1 / 32
    for precision in ("bf16", "fp16"):
        half = foveal.load(classifier, device="cuda", precision=precision).predict(files, top_k=1)
        assert all(abs(a.topk[0].probability - h.topk[0].probability) < 0.05 for a, h in zip(cpu, half, strict=True))
    (rec,) = explain.explain(classifier, files[:1], tmp_path / "x", top_k=2, device="cuda")
    (ref,) = explain.explain(classifier, files[:1], tmp_path / "y", top_k=2, device="cpu")
    assert rec.scores == pytest.approx(ref.scores, abs=1e-3) and rec.boxes == ref.boxes


def test_segmenter_overlap_tile_on_the_gpu_matches_the_cpu(tmp_path):
    data = write_cells_folder(tmp_path / "cells", 3, (72, 80))
    run = tmp_path / "seg"
    _train(
        [
            "segment",
            f"data.train={data}",
            "model.depth=2",
            "model.base_width=8",
            "model.batch_norm=true",
            "data.tile=24",
            "data.eval_tile=28",
            "data.batch_size=2",
            "data.samples_per_epoch=4",
            "train.epochs=1",
            "train.progress=false",
            "train.precision=bf16",
            "--out",
            str(run),
        ]
    )
    image = torch.rand(1, 300, 260)
    cpu = segment.load_segmenter(run, fast=True, device="cpu")
    gpu = segment.load_segmenter(run, fast=True, device="cuda")
    a = segment.predict_logits(cpu.model, image, 28, batch=8)
    b = segment.predict_logits(gpu.model, image, 28, batch=8)
    torch.testing.assert_close(b, a, rtol=1e-3, atol=1e-3)
    r_cpu = segment_eval.evaluate_checkpoint(run, None, None, device="cpu").summary()
    r_gpu = segment_eval.evaluate_checkpoint(run, None, None, device="cuda").summary()
    assert r_cpu.keys() == r_gpu.keys()
    assert all(abs(r_cpu[k] - r_gpu[k]) < 0.01 for k in ("fg_iou", "mean_iou", "pixel_error"))
    (rec,) = explain.explain(run, [str(sorted((data / "images").glob("*"))[0])], tmp_path / "x", device="cuda")
    assert rec.task == "segment" and len(rec.boxes) == 1


def test_detector_on_the_gpu_finds_the_cpu_detections(tmp_path, predict_records):
    canvases = build_detection_set(
        tmp_path / "canvas", source="fashion-mnist-sample", n_train=6, n_val=2, size=64, objects=(1, 3), scale=(14, 30)
    )
    run = tmp_path / "det"
    _train(
        [
            "detect",
            f"data.train={canvases}",
            "--config",
            str(Path(__file__).parent / "configs" / "detect_tiny.yaml"),
            "train.precision=fp16",
            "--out",
            str(run),
        ]
    )
    files = [str(p) for p in sorted((canvases / "val").glob("*.png"))[:2]]
    a = predict_records(run, files, tmp_path / "a", score_thresh=0.0, device="cpu")
    b = predict_records(run, files, tmp_path / "b", score_thresh=0.0, device="cuda")
    for ra, rb in zip(a, b, strict=True):
        best = ra["detections"][0]
        assert any(
            d["label"] == best["label"] and np.abs(np.subtract(d["box"], best["box"])).max() < 0.1
            for d in rb["detections"]
        )
    ap_cpu = detect_eval.evaluate_checkpoint(run, device="cpu").ap
    assert abs(ap_cpu - detect_eval.evaluate_checkpoint(run, device="cuda").ap) < 0.02
    (rec,) = explain.explain(run, files[:1], tmp_path / "x", top_k=1, score_thresh=0.0, device="cuda")
    assert len(rec.boxes) == 1
