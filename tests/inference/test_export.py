"""ONNX export: onnxruntime agrees with PyTorch, the batch axis is dynamic, failures never damage an existing file."""

from __future__ import annotations

import math
import os
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from foveal.errors import FovealError
from foveal.inference import check_onnx, export_onnx
from foveal.models.efficientnet import EfficientNet, efficientnet


def _small_model(padding: str = "symmetric", in_channels: int = 3) -> EfficientNet:
    """φ = −3 EfficientNet with random weights and BN statistics (so folding BN into the convs is exercised)."""
    torch.manual_seed(0)
    model = efficientnet(-3, num_classes=10, padding=padding, in_channels=in_channels)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0.0, math.sqrt(2.0 / m.weight[0].numel()), generator=g)
            elif isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
    return model


@pytest.mark.parametrize(("padding", "in_channels"), [("symmetric", 3), ("same", 1)])
def test_onnxruntime_matches_torch(tmp_path: Path, padding: str, in_channels: int) -> None:
    model = _small_model(padding, in_channels).train()
    path = export_onnx(model, tmp_path / "m.onnx", in_channels=in_channels, resolution=64)
    assert path == tmp_path / "m.onnx" and path.is_file()
    # the caller's model is untouched: still training, BatchNorms not folded
    assert model.training
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())

    graph = onnx.load(str(path)).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert graph.input[0].name == "images" and graph.output[0].name == "logits"
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [in_channels, 64, 64]

    x = torch.randn(3, in_channels, 64, 64)  # batch 3 ≠ the export batch: the axis is dynamic
    with torch.no_grad():
        scale = model.eval()(x).abs().max().item()
    model.train()
    assert scale > 0.1  # a meaningful signal, not vanishing activations
    assert check_onnx(model, path, x) < 1e-4
    assert model.training  # check_onnx restores the mode


def test_export_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"old")
    export_onnx(_small_model(), path, in_channels=3, resolution=32)
    onnx.checker.check_model(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual permissions of a new file


def test_failed_export_leaves_existing_file_intact(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"keep me")
    with pytest.raises(FovealError, match="cannot run on a"):
        export_onnx(_small_model(), path, in_channels=5, resolution=32)  # the model takes 3 channels
    assert path.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_bad_targets(tmp_path: Path) -> None:
    model = _small_model()
    with pytest.raises(FovealError, match="does not exist; create it first"):
        export_onnx(model, tmp_path / "missing" / "m.onnx", in_channels=3, resolution=32)
    with pytest.raises(FovealError, match="is a folder"):
        export_onnx(model, tmp_path, in_channels=3, resolution=32)
    with pytest.raises(FovealError, match="must be positive"):
        export_onnx(model, tmp_path / "m.onnx", in_channels=3, resolution=0)
    with pytest.raises(FovealError, match="does not exist; export it first"):
        check_onnx(model, tmp_path / "none.onnx", torch.zeros(1, 3, 32, 32))
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(FovealError, match="onnxruntime cannot load"):
        check_onnx(model, tmp_path / "junk.onnx", torch.zeros(1, 3, 32, 32))


def test_unet_exports_with_batchnorm_folded_and_a_dynamic_batch(tmp_path: Path) -> None:
    from foveal.models.unet import UNet

    torch.manual_seed(0)
    net = UNet(1, 3, depth=2, base_width=4, batch_norm=True)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    edge = (net.input_size(20), net.input_size(28))
    path = export_onnx(net, tmp_path / "unet.onnx", in_channels=1, resolution=edge)
    dims = onnx.load(str(path)).graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 20, 28]
    assert check_onnx(net, path, torch.randn(3, 1, *edge)) < 1e-4


def test_detector_exports_logits_deltas_and_its_anchors(tmp_path: Path) -> None:
    from foveal.inference.export import DETECTOR_OUTPUTS, DetectorGraph
    from foveal.models.retinanet import RetinaNet

    torch.manual_seed(0)
    detector = RetinaNet("resnet18", num_classes=3, in_channels=1, fpn_channels=32).eval()
    graph = DetectorGraph(detector)
    path = export_onnx(graph, tmp_path / "det.onnx", 1, (64, 96), output_names=DETECTOR_OUTPUTS, unbatched=("anchors",))
    outputs = onnx.load(str(path)).graph.output
    assert [o.name for o in outputs] == list(DETECTOR_OUTPUTS)
    anchors_dims = [d.dim_value for d in outputs[2].type.tensor_type.shape.dim]
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        out = detector(x)
    assert anchors_dims == list(out.anchors.shape)  # no batch axis: one set of anchors for every image
    assert out.cls_logits.shape[1] == out.anchors.shape[0] == 9 * (8 * 12 + 4 * 6 + 2 * 3 + 1 * 2 + 1 * 1)
    assert check_onnx(graph, path, x) < 1e-4


def test_the_opsets_offered_are_those_of_this_torch() -> None:
    from torch.onnx import _constants

    from foveal.inference.export import ONNX_OPSETS

    assert (ONNX_OPSETS[0], ONNX_OPSETS[-1]) == (_constants.ONNX_MIN_OPSET, _constants.ONNX_MAX_OPSET)


def test_export_options_are_checked_before_anything_is_loaded() -> None:
    from foveal.inference.export import check_export_options

    assert check_export_options(17, None) is None
    assert check_export_options(17, [64]) == (64, 64) and check_export_options(11, [64, 96]) == (64, 96)
    with pytest.raises(FovealError, match="opset 6 is not supported by this torch: choose 7 to"):
        check_export_options(6, None)
    for size in ([0], [64, 64, 64]):
        with pytest.raises(FovealError, match="give the input's H"):
            check_export_options(17, size)


def test_a_failed_check_leaves_the_earlier_export_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from foveal.inference import export

    def disagrees(*args: object) -> float:
        raise FovealError("onnxruntime and PyTorch disagree")

    path = tmp_path / "m.onnx"
    path.write_bytes(b"the earlier export")
    monkeypatch.setattr(export, "check_onnx", disagrees)
    spec = export.ExportSpec(_small_model(), 3, (32, 32))
    with pytest.raises(FovealError, match="disagree"):
        export.export_checked(spec, path)
    assert path.read_bytes() == b"the earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # the checked copy is gone too
    monkeypatch.undo()
    report = export.export_checked(spec, path)
    assert report.path == path and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    onnx.checker.check_model(str(path))
