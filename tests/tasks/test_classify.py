"""The classification task end to end on tiny data: engine options, image folders, prediction, the demo."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import foveal
from foveal.config import CONFIG_DIR, load_config
from foveal.tasks import classify, classify_eval, classify_train

TINY = ["data.limit=64", "data.val_limit=32", "data.batch_size=16", "train.progress=false", "train.max_steps=3"]


def _cfg(*overrides: str) -> classify.ClassifyConfig:
    return load_config(classify.ClassifyConfig, CONFIG_DIR / "classify_demo.yaml", [*TINY, *overrides])


def test_ema_bf16_and_clipping_train_and_store_ema_weights(tmp_path):
    cfg = _cfg("train.ema_decay=0.9", "train.bf16=true", "optim.grad_clip=0.5", "train.eval_every=100")
    out = classify_train.train(cfg, run_dir=tmp_path)
    assert out["step"] == 3 and 0.0 <= out["top1"] <= 1.0
    ckpt = tmp_path / "checkpoints" / "step-00000003"
    meta = json.loads((ckpt / "checkpoint.json").read_text())
    assert meta["ema"] is True and meta["ema_updates"] == 3
    ema = load_file(str(ckpt / "model.safetensors"))
    raw = {k[4:]: v for k, v in load_file(str(ckpt / "train_state.safetensors")).items() if k.startswith("raw.")}
    assert ema.keys() == raw.keys()
    assert any(not torch.equal(ema[k], raw[k]) for k in ema if ema[k].is_floating_point())


def test_lr_follows_the_schedule_in_the_log(tmp_path):
    cfg = _cfg("optim.schedule=constant", "optim.lr=0.05", "optim.lr_batch=32", "optim.warmup_epochs=0")
    classify_train.train(cfg, run_dir=tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records if "lr" in r]
    assert lrs and all(lr == pytest.approx(0.05 * 16 / 32) for lr in lrs)


def _image_folder(root, classes=("cat", "dog"), per_class=12, size=20, mode="RGB"):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            arr[:, : size // 2 if c == 0 else size, c] = 250  # a class-dependent colour block
            Image.fromarray(arr).convert(mode).save(root / name / f"{i}.png")
    return root


def test_image_folder_train_predict_and_eval(tmp_path):
    data = _image_folder(tmp_path / "imgs")
    cfg = _cfg(f"data.train={data}", "data.limit=null", "data.val_limit=null", "data.batch_size=8", "data.mean=[0.5]")
    out = classify_train.train(cfg, run_dir=tmp_path / "run")
    assert out["step"] == 3
    clf = classify.load_classifier(tmp_path / "run")
    assert clf.classes == ["cat", "dog"] and clf.channels == 3 and clf.resolution == 32
    preds = foveal.load(tmp_path / "run").predict([str(data / "dog")], top_k=5)
    assert len(preds) == 12
    for p in preds:
        assert len(p.topk) == 2  # top-k is capped at the number of classes
        assert sum(s.probability for s in p.topk) == pytest.approx(1.0, abs=1e-5)
        assert p.topk[0].probability >= p.topk[1].probability
    result = classify_eval.evaluate_checkpoint(tmp_path / "run", str(data), "val", tmp_path / "eval")
    assert result.count == 24  # no val/ sub-folder: the whole folder is evaluated
    assert (tmp_path / "eval" / "confusion.png").stat().st_size > 0


def test_held_out_split_of_a_plain_image_folder_is_disjoint(tmp_path):
    data = _image_folder(tmp_path / "imgs", per_class=20)
    cfg = _cfg(f"data.train={data}", "data.limit=null", "data.val_limit=null")
    train, val = classify.open_data(cfg.data)
    assert len(train) + len(val) == 40 and len(val) == 4
    assert not set(map(str, train.images)) & set(map(str, val.images))


def test_fused_model_predicts_like_the_trained_one(tmp_path):
    classify_train.train(_cfg(), run_dir=tmp_path)
    plain = classify.load_classifier(tmp_path)
    fused = classify.load_classifier(tmp_path, fast=True)
    x = torch.randn(4, plain.channels, plain.resolution, plain.resolution)
    with torch.no_grad():
        torch.testing.assert_close(
            fused.model(x.contiguous(memory_format=torch.channels_last)), plain.model(x), rtol=1e-4, atol=1e-4
        )


@pytest.mark.slow
def test_demo_quick_writes_every_output(tmp_path):
    from foveal.demo import run_demo

    out = run_demo(tmp_path / "demo", quick=True, stages=("classify",))
    stage = out / "classify"
    for name in (
        "run/curves.png",
        "run/metrics.csv",
        "eval/metrics.json",
        "eval/confusion.png",
        "eval/metrics.txt",
        "predictions.json",
        "predictions.csv",
        "model.onnx",
    ):
        assert (stage / name).is_file(), name
    preds = json.loads((stage / "predictions.json").read_text())
    assert len(preds) == 8 and all(len(p["predictions"]) == 3 for p in preds)
