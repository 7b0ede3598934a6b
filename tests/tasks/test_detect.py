"""The detection task end to end on tiny canvases: train, checkpoint, resume, eval, predict, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from foveal.config import load_config
from foveal.data.box_transforms import DetectionTransform
from foveal.data.detection_set import build_detection_set
from foveal.engine.checkpoint import save_checkpoint
from foveal.errors import FovealError
from foveal.explain.upsample import upsample_maps
from foveal.models.retinanet import RetinaNet, postprocess
from foveal.preprocess import batch_images, boxes_to_original
from foveal.tasks import detect, detect_eval, detect_train, explain
from foveal.tasks.detect_explain import detection_gradcam

# tests/configs/detect_tiny.yaml (resnet18-FPN with 16 channels, one conv per subnet, anchors for 64-px canvases)
TINY_RECIPE = Path(__file__).resolve().parents[1] / "configs" / "detect_tiny.yaml"
TINY = [
    "data.mean=[0.12]",
    "data.std=[0.26]",
    "data.eval_batch_size=4",
    "optim.lr=0.01",
    "optim.lr_batch=2",
    "train.eval_every=1",
    "train.checkpoint_every=1",
    "train.keep_last=5",
    "train.channels_last=false",
    "train.log_every=1",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _empty_first_images(root, split, n):
    """Remove every annotation of the first ``n`` images of a split (they become background-only images)."""
    path = root / "annotations" / f"instances_{split}.json"
    doc = json.loads(path.read_text())
    ids = {im["id"] for im in doc["images"][:n]}
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] not in ids]
    path.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def canvases(tmp_path_factory):
    root = build_detection_set(
        tmp_path_factory.mktemp("det") / "canvas",
        source="fashion-mnist-sample",
        n_train=6,
        n_val=3,
        size=64,
        objects=(1, 3),
        scale=(14, 30),
        clutter=1,
    )
    _empty_first_images(root, "train", 2)  # two of the six training images hold no object
    return root


@pytest.fixture(scope="module")
def trained(canvases, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "run"
    cfg = load_config(detect.DetectConfig, TINY_RECIPE, [f"data.train={canvases}", *TINY])
    metrics = detect_train.train(cfg, run_dir=run)
    return run, metrics


def test_train_writes_checkpoint_meta_and_metrics(trained):
    run, metrics = trained
    assert metrics["step"] == 3  # 6 images, batch 2, one epoch
    record = json.loads((run / "checkpoints" / "best" / "checkpoint.json").read_text())
    assert record["task"] == "detect" and record["model"]["arch"] == "retinanet"
    args = record["model"]["args"]
    assert args["backbone"] == "resnet18" and args["in_channels"] == 1 and args["num_classes"] == 10
    assert args["anchor_sizes"] == [8, 16, 32, 64, 128] and args["p6_from"] == "c5"
    assert record["classes"][0] == "T-shirt/top" and record["categories"][9] == {"id": 10, "name": "Ankle boot"}
    assert record["input"] == {"channels": 1, "min_size": 64, "max_size": 64, "mean": [0.12], "std": [0.26]}
    assert record["config"]["loss"]["alpha"] == 0.25 and record["config"]["inference"]["max_detections"] == 100
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in logs if "train_loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))  # images without objects train as negatives
    evals = [r for r in logs if "val_AP" in r]
    assert evals and 0.0 <= evals[-1]["val_AP"] <= 1.0 and 0.0 <= metrics["AP50"] <= 1.0


def test_resume_reaches_the_uninterrupted_weights(trained, tmp_path):
    run, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints" / "step-00000003")  # as if killed after step 2
    marker = copy / "checkpoints" / "step-00000001" / "marker"
    marker.touch()  # a fresh start would clear the checkpoints
    metrics = detect_train.train(detect.DetectConfig(), resume=copy)
    assert metrics["step"] == 3 and marker.is_file()
    want = load_file(str(run / "checkpoints" / "step-00000003" / "model.safetensors"))
    got = load_file(str(copy / "checkpoints" / "step-00000003" / "model.safetensors"))
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_evaluate_checkpoint_writes_metrics_results_and_curve(trained, canvases, tmp_path):
    run, _ = trained
    result = detect_eval.evaluate_checkpoint(run, str(canvases), "val", tmp_path / "eval")
    assert 0.0 <= result.ap <= 1.0 and 0.0 <= result.ap50 <= 1.0 and result.num_images == 3
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_images"] == 3 and set(metrics) >= {"AP", "AP50", "AP75", "per_class"}
    results = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert len(results) == result.num_detections
    assert all(1 <= r["category_id"] <= 10 and 1 <= r["image_id"] <= 3 for r in results)
    assert Image.open(tmp_path / "eval" / "pr_curve.png").size[0] > 200
    # the default data are the checkpoint's own validation split
    assert detect_eval.evaluate_checkpoint(run).stats == result.stats


def _assert_same_detections(got, want, score_tol=1e-4, box_tol=1e-3):
    """The same detections as sets: equal scores may come out in any order (another CPU kind, another kernel).

    Detections scoring within ``score_tol`` of the lowest kept score are left out: ties at the cut of
    ``max_detections`` may keep a different one of them. Each other detection must have a partner with the same
    label, a score within ``score_tol`` and every box coordinate within ``box_tol`` px.
    """
    cut = min(d["score"] for d in got + want) + score_tol
    got = [d for d in got if d["score"] > cut]
    want = [d for d in want if d["score"] > cut]
    assert len(got) >= 5 and len(got) == len(want)
    free = list(want)
    for d in got:
        near = [
            w
            for w in free
            if w["label"] == d["label"]
            and abs(w["score"] - d["score"]) <= score_tol
            and np.abs(np.subtract(w["box"], d["box"])).max() <= box_tol
        ]
        assert near, f"no partner for {d}"
        free.remove(near[0])


def test_predict_maps_boxes_to_the_original_image(trained, canvases, tmp_path, predict_records):
    run, _ = trained
    val = canvases / "val" / "000000.png"
    odd = tmp_path / "odd.png"  # another size: resized to a shorter side of 64 and mapped back
    Image.open(val).resize((80, 100)).save(odd)
    records = predict_records(run, [str(val), str(odd)], tmp_path / "pred", score_thresh=0.0, show_thresh=0.0)
    assert [r["image_id"] for r in records] == [1, 2]
    assert (records[1]["width"], records[1]["height"]) == (80, 100)
    for r in records:
        boxes = np.array([d["box"] for d in r["detections"]])
        assert 0 < len(boxes) <= 100
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= r["width"]).all() and (boxes[:, [1, 3]] <= r["height"]).all()
        assert Image.open(r["figure"]).size[0] >= 384
    # the same as running the model by hand on the resized image (zero-padded to a multiple of 32, as in a batch)
    det = detect.load_detector(run)
    image = torch.from_numpy(np.array(Image.open(odd)))[None]
    sample = DetectionTransform(min_size=64, max_size=64, mean=(0.12,), std=(0.26,))(
        image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64)
    )
    assert sample.image.shape == (1, 64, 51) and sample.scale == pytest.approx(0.64)
    padded, sizes = batch_images([sample.image])
    with torch.no_grad():
        output = det.model(padded.contiguous(memory_format=torch.channels_last))
        (ref,) = postprocess(output, sizes, score_thresh=0.0)
    expected = boxes_to_original(ref["boxes"], sample.scale).clamp(min=0)
    expected = torch.minimum(expected, torch.tensor([80.0, 100.0, 80.0, 100.0]))
    got = records[1]["detections"]
    want = [
        {"label": det.classes[int(k)], "score": float(s), "box": b.tolist()}
        for k, s, b in zip(ref["labels"], ref["scores"], expected, strict=True)
    ]
    _assert_same_detections(got, want)
    results = json.loads((tmp_path / "pred" / "detections.json").read_text())
    assert len(results) == sum(len(r["detections"]) for r in records)
    first = records[0]["detections"][0]
    x1, y1, x2, y2 = first["box"]
    assert results[0]["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
    images = json.loads((tmp_path / "pred" / "images.json").read_text())
    assert images[1] == {"id": 2, "file_name": str(odd), "width": 80, "height": 100}


def test_fast_inference_model_matches_the_trained_one(trained):
    run, _ = trained
    slow, fast = detect.load_detector(run, fast=False).model, detect.load_detector(run).model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        a, b = slow(x), fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(b.cls_logits, a.cls_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b.box_deltas, a.box_deltas, rtol=1e-4, atol=1e-4)
    half = detect.load_detector(run, bf16=True)
    assert next(half.model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        c = half.model(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(c.cls_logits.float(), a.cls_logits, rtol=0.0, atol=0.1)
    # detections of the bf16 model are decoded in fp32 from fp32 anchors: not rounded to bf16's 8-bit mantissa
    (d16,) = detect.detect_batch(
        half.model, x[:1], [(64, 64)], [0.5], [(128, 128)], detect.DetectInferenceConfig(0.0, max_detections=20)
    )
    assert d16["boxes"].dtype == torch.float32 and len(d16["boxes"]) == 20
    assert (d16["boxes"] != d16["boxes"].bfloat16().float()).float().mean() > 0.5


def test_training_set_without_boxes_is_an_error_and_keeps_the_run(trained, canvases, tmp_path):
    run, _ = trained
    empty = tmp_path / "empty"
    shutil.copytree(canvases, empty)
    _empty_first_images(empty, "train", 6)
    before = (run / "checkpoints" / "best" / "model.safetensors").read_bytes()
    cfg = load_config(detect.DetectConfig, TINY_RECIPE, [f"data.train={empty}", *TINY])
    with pytest.raises(FovealError, match="holds no boxes"):
        detect_train.train(cfg, run_dir=run)
    assert (run / "checkpoints" / "best" / "model.safetensors").read_bytes() == before


def _rgb_copy(canvases, root):
    shutil.copytree(canvases, root)
    for png in (root / "val").glob("*.png"):
        Image.open(png).convert("RGB").save(png)
    return root


def test_other_channel_count_and_other_task_are_errors(trained, canvases, tmp_path, predict_records):
    run, _ = trained
    rgb = _rgb_copy(canvases, tmp_path / "rgb")
    with pytest.raises(FovealError, match="3-channel images but the model takes 1"):
        detect_eval.evaluate_checkpoint(run, str(rgb), "val")
    cfg = load_config(detect.DetectConfig, TINY_RECIPE, [f"data.train={rgb}", *TINY])
    with pytest.raises(FovealError, match="data.channels"):
        detect_train.train(cfg, run_dir=tmp_path / "r")
    other = save_checkpoint(
        tmp_path / "seg", model=torch.nn.Linear(1, 1), meta={"task": "segment", "model": {}}, with_rng=False
    )
    with pytest.raises(FovealError, match="not a detector"):
        detect.load_detector(other)
    with pytest.raises(FovealError, match="is a file"):
        predict_records(run, [str(canvases / "val")], canvases / "val" / "000000.png")


def test_weights_from_a_detect_checkpoint_and_a_mismatch(trained, canvases, tmp_path):
    run, _ = trained
    cfg = load_config(detect.DetectConfig, TINY_RECIPE, [f"data.train={canvases}", *TINY, f"model.weights={run}"])
    model = detect.build_detector(cfg.model, 10, 1)
    detect.init_weights(model, cfg.model)
    trained_model = detect.load_detector(run, fast=False).model
    for (name, a), b in zip(model.state_dict().items(), trained_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    fewer = detect.build_detector(cfg.model, 3, 1)  # another class count: the class layer stays new
    detect.init_weights(fewer, cfg.model)
    assert torch.equal(fewer.fpn.p6.weight, trained_model.fpn.p6.weight)
    with pytest.raises(FovealError, match="1-channel images but this data has 3"):
        detect.init_weights(detect.build_detector(cfg.model, 10, 3), cfg.model)
    wide = load_config(detect.DetectConfig, TINY_RECIPE, [*TINY, f"model.weights={run}", "model.fpn_channels=8"])
    with pytest.raises(FovealError, match="does not fit this model"):
        detect.init_weights(detect.build_detector(wide.model, 10, 1), wide.model)


def test_weights_from_torchvision_files(tmp_path):
    import torchvision

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18()
    resnet.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    cfg = load_config(detect.DetectConfig, TINY_RECIPE, [*TINY, f"model.weights={tmp_path / 'resnet18.pth'}"])
    model = detect.build_detector(cfg.model, 10, 1)
    head = model.cls_head.out.weight.clone()
    detect.init_weights(model, cfg.model)
    assert torch.equal(model.backbone.stem[0].weight, resnet.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, resnet.layer4[1].bn2.running_var)
    assert torch.equal(model.cls_head.out.weight, head)  # a backbone file leaves the rest as it was
    fake = {"head.classification_head.cls_logits.weight": torch.zeros(9, 256, 3, 3)}
    torch.save(fake, tmp_path / "tv.pth")
    tv = load_config(detect.DetectConfig, TINY_RECIPE, [*TINY, f"model.weights={tmp_path / 'tv.pth'}"])
    with pytest.raises(FovealError, match="model.p6_from=p5"):
        detect.init_weights(model, tv.model)
    with pytest.raises(FovealError, match="not found"):
        detect.init_weights(model, load_config(detect.DetectConfig, None, ["model.weights=/nonexistent.pth"]).model)


def test_freeze_bn_keeps_statistics(tmp_path):
    model = RetinaNet("resnet18", num_classes=2, in_channels=1, fpn_channels=8, head_convs=1)
    detect.freeze_batchnorm(model)
    bn = model.backbone.stem[1]
    before = bn.running_mean.clone()
    model.train()
    detect.freeze_batchnorm(model)  # what the training loss does before every forward pass
    model(torch.randn(2, 1, 64, 64))
    assert torch.equal(bn.running_mean, before) and not bn.weight.requires_grad and not bn.training


def test_cli_eval_and_predict_dispatch_to_detection(trained, canvases, tmp_path, capsys):
    from foveal.cli import main

    run, _ = trained
    assert main(["eval", str(run), "--split", "val", "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "metrics.json").is_file()
    images = sorted((canvases / "val").glob("*.png"))[:2]
    rc = main(["predict", str(run), *map(str, images), "--out", str(tmp_path / "pred")])
    assert rc == 0 and (tmp_path / "pred" / "detections.json").is_file()
    assert "detections" in capsys.readouterr().out


def _gradcam_by_hand(model, x, anchor, label, level):
    """Grad-CAM of one detection written out: d logit / d P_level, channel means as weights, ReLU of the sum,
    upsampled with the backbone's grid."""
    seen = {}
    handle = model.pyramid_layer(level).register_forward_hook(lambda m, i, o: seen.__setitem__("a", o))
    try:
        with torch.enable_grad():
            out = model(x)
            (grad,) = torch.autograd.grad(out.cls_logits[0, anchor, label], seen["a"])
    finally:
        handle.remove()
    cam = (grad.mean((2, 3))[:, :, None, None] * seen["a"]).sum(1).clamp_min(0)
    return upsample_maps(cam, x.shape[-2:], "stride")[0].detach()  # a ResNet backbone: cell i on pixel S·i


def test_detection_gradcam_equals_the_hand_written_one(trained, canvases):
    run, _ = trained
    det = detect.load_detector(run, fast=False)
    image = torch.from_numpy(np.array(Image.open(canvases / "val" / "000001.png")))[None]
    sample = det.transform()(image, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))
    x, sizes = batch_images([sample.image])
    with torch.no_grad():
        output = det.model(x)
    (found,) = postprocess(output, sizes, score_thresh=0.0, max_detections=1000)
    levels = det.model.anchor_level(found["anchors"], output.level_sizes)
    # the best detection and one from each other level that has one: several levels, one pass per level
    picks = [0] + [int((levels == lv).nonzero()[0]) for lv in levels.unique().tolist() if lv != int(levels[0])]
    assert len(picks) >= 2
    anchors, labels = found["anchors"][picks], found["labels"][picks]
    maps = detection_gradcam(det.model, x, output, anchors, labels)
    assert maps.shape == (len(picks), *x.shape[-2:])
    for row, (anchor, label, level) in enumerate(zip(anchors, labels, levels[picks], strict=True)):
        expected = _gradcam_by_hand(det.model, x, int(anchor), int(label), int(level))
        torch.testing.assert_close(maps[row], expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()) + 1e-12)


def test_explain_a_detector_matches_predict(trained, canvases, tmp_path, predict_records):
    run, _ = trained
    val = canvases / "val" / "000000.png"
    # a detector trained for one epoch scores below the default 0.05: no detection, an empty record
    (empty,) = explain.explain(run, [str(val)], tmp_path / "none", top_k=3)
    assert (empty.classes, empty.boxes, empty.figures) == ([], [], [])
    (record,) = explain.explain(run, [str(val)], tmp_path / "explain", top_k=3, score_thresh=0.0)
    (pred,) = predict_records(run, [str(val)], tmp_path / "pred", score_thresh=0.0)
    best = pred["detections"][:3]
    assert record.task == "detect" and record.method == "gradcam" and len(record.classes) == len(best) > 0
    assert record.classes == [d["label"] for d in best]
    assert record.scores == pytest.approx([d["score"] for d in best], rel=1e-4)
    np.testing.assert_allclose(record.detections, [d["box"] for d in best], atol=1e-3)
    for x1, y1, x2, y2 in record.boxes:
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
    assert all(Path(f).is_file() for f in record.figures) and len(record.figures) == 2
    saved = json.loads((tmp_path / "explain" / "explanations.json").read_text())
    assert saved[0]["detections"] == record.detections


def test_export_cli_writes_the_detector_network(trained, tmp_path, capsys):
    from foveal.cli import main

    run, _ = trained
    assert main(["export", str(run), "--out", str(tmp_path / "det.onnx"), "--size", "64", "96"]) == 0
    text = capsys.readouterr().out
    assert "input N×1×64×96, outputs cls_logits, box_deltas, anchors" in text
    assert (tmp_path / "det.onnx").stat().st_size > 0


def test_bf16_predict_and_eval_from_the_command_line_decode_in_fp32(trained, canvases, tmp_path, predict_records):
    run, _ = trained
    val = str(canvases / "val" / "000000.png")
    fp32 = predict_records(run, [val], tmp_path / "a", score_thresh=0.0, device="cpu")
    bf16 = predict_records(run, [val], tmp_path / "b", score_thresh=0.0, device="cpu", precision="bf16")
    a, b = fp32[0]["detections"], bf16[0]["detections"]
    assert len(b) == len(a) > 0
    # the best fp32 detection is found by the bf16 network too: same class, a box within a pixel, a close score
    best = a[0]
    near = [d for d in b if d["label"] == best["label"] and np.abs(np.subtract(d["box"], best["box"])).max() < 1.0]
    assert near and abs(near[0]["score"] - best["score"]) < 0.02
    boxes = torch.tensor([d["box"] for d in b])
    assert (boxes != boxes.bfloat16().float()).any()  # decoded from fp32 anchors, not rounded to bf16
    e32 = detect_eval.evaluate_checkpoint(run, device="cpu")
    e16 = detect_eval.evaluate_checkpoint(run, device="cpu", precision="bf16")
    assert abs(e32.ap - e16.ap) < 0.05
    with pytest.raises(FovealError, match="fp16 runs on CUDA only"):
        detect.load_detector(run, device="cpu", precision="fp16")


def test_detector_gradcam_in_bf16_explains_the_same_best_detection(trained, canvases, tmp_path):
    run, _ = trained
    val = str(canvases / "val" / "000000.png")
    (a,) = explain.explain(run, [val], tmp_path / "a", top_k=1, score_thresh=0.0, device="cpu")
    (b,) = explain.explain(run, [val], tmp_path / "b", top_k=1, score_thresh=0.0, device="cpu", precision="bf16")
    assert len(b.boxes) == 1 and b.classes == a.classes
    assert np.abs(np.subtract(b.detections[0], a.detections[0])).max() < 1.0
