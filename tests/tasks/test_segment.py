"""The segmentation task end to end on tiny data: train, checkpoint, eval, predict, weight-map figure, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from foveal.cli import main
from foveal.config import load_config
from foveal.data.synthetic import write_cells_folder
from foveal.errors import FovealError
from foveal.tasks import segment, segment_train

# A depth-2 valid U-Net of width 4: output tile 24 needs 64-px inputs (border 20).
TINY = [
    "model.depth=2",
    "model.base_width=4",
    "model.batch_norm=true",
    "data.tile=24",
    "data.eval_tile=28",
    "data.batch_size=2",
    "data.samples_per_epoch=4",
    "optim.name=adamw",
    "optim.lr=0.001",
    "optim.lr_batch=2",
    "train.epochs=1",
    "train.progress=false",
    "augment.rotate=10",
]


def _cells_folder(root, n=3, size=(72, 80)):
    return write_cells_folder(root, n, size)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    data = _cells_folder(root / "data")
    run = root / "run"
    rc = main(["train", "segment", f"data.train={data}", *TINY, "--out", str(run)])
    assert rc == 0
    return data, run


def test_train_writes_checkpoint_and_metrics(trained):
    _, run = trained
    record = json.loads((run / "checkpoints" / "best" / "checkpoint.json").read_text())
    assert record["task"] == "segment" and record["model"]["arch"] == "unet"
    assert record["input"]["masks"] == "instances" and record["classes"] == ["background", "foreground"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "val_fg_iou" in m]
    assert evals and 0.0 <= evals[-1]["val_fg_iou"] <= 1.0 and "val_f1_50" in evals[-1]


def test_loaded_model_matches_training_geometry(trained):
    _, run = trained
    seg = segment.load_segmenter(run)
    assert seg.channels == 1 and seg.masks == "instances"
    x = torch.rand(1, 1, 64, 64)
    assert seg.model(x).shape == (1, 2, 24, 24)


def test_eval_and_predict_cli(trained, tmp_path, capsys):
    data, run = trained
    assert main(["eval", str(run), "--data", str(data), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["summary"]) >= {"fg_iou", "f1_50", "ap", "rand_error", "merged_pairs", "pixel_error"}
    assert metrics["instances"] is not None

    out = tmp_path / "pred"
    rc = main(["predict", str(run), str(data / "images"), "--out", str(out), "--json", str(tmp_path / "p.json")])
    assert rc == 0
    rows = json.loads((tmp_path / "p.json").read_text())
    assert len(rows) == 3
    labels = tifffile.imread(out / "cell0_labels.tif")
    assert labels.shape == (72, 80) and labels.max() == rows[0]["instances"]
    assert Image.open(out / "cell0_overlay.png").size == (80, 72)


def test_predict_png_labels(trained, tmp_path, predict_records):
    data, run = trained
    rows = predict_records(run, [str(data / "images" / "cell1.png")], tmp_path, fmt="png")
    labels = np.asarray(Image.open(rows[0]["labels"]))
    assert labels.shape == (72, 80)


def test_weightmap_cli_draws_figure(trained, tmp_path):
    data, _ = trained
    assert main(["weightmap", str(data), "--out", str(tmp_path), "--limit", "2"]) == 0
    figures = sorted(tmp_path.glob("*_weightmap.png"))
    assert len(figures) == 2 and Image.open(figures[0]).size[0] > 200


def test_bad_tile_names_valid_sizes(tmp_path):
    data = _cells_folder(tmp_path / "d", n=2)
    cfg = load_config(segment.SegmentConfig, None, [f"data.train={data}", *TINY, "data.tile=26"])
    with pytest.raises(FovealError, match=r"24 or 28"):
        segment_train.train(cfg, run_dir=tmp_path / "run")


def test_image_smaller_than_tile(tmp_path):
    data = _cells_folder(tmp_path / "d", n=2, size=(40, 40))
    cfg = load_config(segment.SegmentConfig, None, [f"data.train={data}", *TINY, "data.tile=44"])
    with pytest.raises(FovealError, match=r"smaller than one training tile"):
        segment_train.train(cfg, run_dir=tmp_path / "run")


def test_cli_bad_input_keeps_earlier_outputs(trained, tmp_path, capsys):
    data, run = trained
    before = (run / "checkpoints" / "best" / "model.safetensors").read_bytes()
    bad = tmp_path / "bad"
    _cells_folder(bad, n=2)
    # A mask of another size than its image.
    tifffile.imwrite(bad / "masks" / "cell1.tif", np.zeros((10, 10), np.uint16))
    rc = main(["train", "segment", f"data.train={bad}", *TINY, "--out", str(run), "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "cell1" in err
    assert (run / "checkpoints" / "best" / "model.safetensors").read_bytes() == before


def test_eval_rejects_classifier_data_mismatch(trained, tmp_path, capsys):
    _, run = trained
    rgb = tmp_path / "rgb"
    (rgb / "images").mkdir(parents=True)
    (rgb / "masks").mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(rgb / "images" / "a.png")
    labels = np.zeros((64, 64), np.uint16)
    labels[10:20, 10:20] = 1
    tifffile.imwrite(rgb / "masks" / "a.tif", labels)
    rc = main(["eval", str(run), "--data", str(rgb)])
    err = capsys.readouterr().err
    assert rc == 2 and "channel" in err and "Traceback" not in err


@pytest.mark.slow
def test_demo_segment_stage(tmp_path):
    from foveal.demo import run_demo

    out = run_demo(tmp_path / "demo", quick=True, stages=("segment",))
    stage = out / "segment"
    for name in ("run/curves.png", "eval/metrics.json", "eval/metrics.txt", "predictions.json"):
        assert (stage / name).is_file(), name
    assert list((stage / "weightmap").glob("*.png"))
    labels = tifffile.imread(stage / "predictions" / "image_top_labels.tif")
    assert labels.shape == (256, 512)


@pytest.mark.parametrize(
    "options",
    [
        ["model.name=backbone_unet", "model.encoder=resnet18", "data.tile=64", "data.eval_tile=32", "loss=dice"],
        ["model.padding=same", "data.tile=32", "data.eval_tile=32", "loss=focal"],
    ],
)
def test_other_networks_and_losses_train_and_predict(tmp_path, options, predict_records):
    data = _cells_folder(tmp_path / "d", n=2, size=(64, 72))
    cfg = load_config(segment.SegmentConfig, None, [f"data.train={data}", *TINY, *options])
    metrics = segment_train.train(cfg, run_dir=tmp_path / "run")
    assert 0.0 <= metrics["fg_iou"] <= 1.0
    rows = predict_records(tmp_path / "run", [str(data / "images" / "cell0.png")], tmp_path / "pred")
    assert tuple(rows[0]["size"]) == (64, 72)


def test_dihedral_test_time_averaging_is_invariant_to_rotations_and_flips():
    from foveal.models.unet import UNet

    torch.manual_seed(0)
    model = UNet(1, 3, depth=2, base_width=4).eval()
    image = torch.rand(1, 37, 53)  # not square, not a tile multiple
    plain = segment.predict_logits(model, image, 28)
    averaged = segment.predict_logits(model, image, 28, tta="dihedral")
    assert averaged.shape == plain.shape == (3, 37, 53)
    torch.testing.assert_close(averaged.exp().sum(0), torch.ones(37, 53))  # log of averaged probabilities
    assert not torch.allclose(averaged, plain.log_softmax(0), atol=1e-3)  # a valid U-Net is not rotation invariant
    # the average over the whole dihedral group does not change when the input is turned or mirrored first
    turned = segment.predict_logits(model, torch.rot90(image, 1, (-2, -1)), 28, tta="dihedral")
    torch.testing.assert_close(torch.rot90(turned, -1, (-2, -1)), averaged, rtol=1e-4, atol=1e-5)
    mirrored = segment.predict_logits(model, image.flip(-2), 28, tta="dihedral")
    torch.testing.assert_close(mirrored.flip(-2), averaged, rtol=1e-4, atol=1e-5)
    with pytest.raises(FovealError, match="unknown test-time augmentation 'flips'"):
        segment.predict_logits(model, image, 28, tta="flips")


def test_export_cli_writes_the_unet_at_its_evaluation_tile_or_a_valid_size(trained, tmp_path, capsys):
    _, run = trained
    assert main(["export", str(run), "--out", str(tmp_path / "unet.onnx")]) == 0
    text = capsys.readouterr().out
    assert "outputs logits" in text and "output tile" in text and (tmp_path / "unet.onnx").stat().st_size > 0
    seg = segment.load_segmenter(run)
    edge = seg.model.valid_input_size(seg.model.input_size(8))
    assert main(["export", str(run), "--out", str(tmp_path / "small.onnx"), "--size", str(edge)]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "bad.onnx"), "--size", str(edge + 1)]) == 2
    err = capsys.readouterr().err
    assert f"--size {edge + 1}: this U-Net cannot take" in err and not (tmp_path / "bad.onnx").exists()


def test_bf16_overlap_tile_labels_agree_with_fp32(trained, tmp_path):
    data, run = trained
    fp32 = segment.load_segmenter(run, fast=True, device="cpu")
    bf16 = segment.load_segmenter(run, device="cpu", precision="bf16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    image = torch.rand(1, 72, 80)
    a = segment.predict_logits(fp32.model, image, 28)
    b = segment.predict_logits(bf16.model, image, 28)
    assert b.dtype == torch.float32 and b.device.type == "cpu" and b.shape == a.shape
    torch.testing.assert_close(b, a, rtol=0.0, atol=0.05 * float(a.abs().max()))
    top2 = a.topk(2, dim=0).values
    clear = top2[0] - top2[1] > 0.1 * float(a.abs().max())
    assert torch.equal(a.argmax(0)[clear], b.argmax(0)[clear])
    images = sorted((data / "images").glob("*"))[:1]
    assert main(["predict", str(run), str(images[0]), "--out", str(tmp_path / "p"), "--precision", "bf16"]) == 0
    assert main(["eval", str(run), "--precision", "bf16", "--device", "cpu"]) == 0
