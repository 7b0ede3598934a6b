"""Hub weights (``torchvision:<WeightsEnum>``, ``timm:<name>``) from seeded local caches: foveal's models give the
outputs of the torchvision / timm models whose weights they load; an uncached name is one line naming the cache path."""

from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from foveal.cli import main
from foveal.engine import checkpoint as ckpt_io
from foveal.errors import FovealError
from foveal.models.hub import resolve_weights, weights_record
from foveal.tasks import classify, detect, segment

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_TRAIN = [  # one step on 32 Fashion-MNIST images, as the shared fixtures train
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


@pytest.fixture()
def caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty torch and Hugging Face caches under ``tmp_path``, offline: nothing is downloaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_download(url: str, *args: object, **kwargs: object) -> None:
        raise URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine values, so a wrong mapping or epsilon changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
    return model.eval()


def _seed_torchvision(name: str, model: nn.Module) -> Path:
    """Write ``model``'s state dict where torchvision caches the weights ``name``."""
    weights = torchvision.models.get_weight(name)
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


def _seed_timm(name: str, model: nn.Module, revision: str = "0" * 40) -> Path:
    """Lay out ``model``'s weights as huggingface_hub caches the timm weights ``name``."""
    repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    root = Path(os.environ["HF_HOME"]) / "hub" / f"models--{repo.replace('/', '--')}"
    path = root / "snapshots" / revision / "model.safetensors"
    path.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(revision)
    return path


def _close(want: torch.Tensor, got: torch.Tensor) -> None:
    assert want.abs().max() > 1e-2  # a meaningful signal
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("hub", ["torchvision", "timm"])
def test_classifier_gives_the_hub_models_logits(caches: Path, hub: str) -> None:
    torch.manual_seed(0)
    if hub == "torchvision":
        spec = "torchvision:EfficientNet_B0_Weights.IMAGENET1K_V1"
        source = _randomize_bn(torchvision.models.efficientnet_b0())
        _seed_torchvision(spec.partition(":")[2], source)
    else:
        spec = "timm:efficientnet_b0.ra_in1k"
        source = _randomize_bn(timm.create_model("efficientnet_b0"))
        _seed_timm(spec.partition(":")[2], source)
    cfg = classify.ModelConfig(name="efficientnet_b0", weights=spec)
    model = classify.init_weights(classify.build_classifier(cfg, 1000, 3), cfg).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        _close(source(x), model(x))


def test_other_class_count_gets_a_fresh_classifier(caches: Path) -> None:
    source = _randomize_bn(timm.create_model("efficientnet_b0"))
    _seed_timm("efficientnet_b0.ra_in1k", source)
    cfg = classify.ModelConfig(name="efficientnet_b0", weights="timm:efficientnet_b0.ra_in1k")
    model = classify.init_weights(classify.build_classifier(cfg, 10, 3), cfg)
    assert model.classifier.weight.shape == (10, 1280)
    torch.testing.assert_close(model.state_dict()["stem.conv.weight"], source.state_dict()["conv_stem.weight"])


def test_detector_backbone_gives_the_resnets_features_and_the_head_keeps_its_prior(caches: Path) -> None:
    torch.manual_seed(0)
    source = _randomize_bn(torchvision.models.resnet18())
    _seed_torchvision("ResNet18_Weights.IMAGENET1K_V1", source)
    cfg = detect.DetectModelConfig(backbone="resnet18", weights="torchvision:ResNet18_Weights.IMAGENET1K_V1")
    model = detect.build_detector(cfg, num_classes=3, in_channels=3)
    detect.init_weights(model, cfg)
    x = torch.randn(1, 3, 64, 64)
    body = nn.Sequential(*list(source.children())[:-2])  # conv1 … layer4
    with torch.no_grad():
        _close(body(x), model.eval().backbone.forward_features(x)[-1])
    bias = model.state_dict()["cls_head.out.bias"]
    torch.testing.assert_close(bias, torch.full_like(bias, -math.log((1 - cfg.prior) / cfg.prior)))


def test_efficientnet_backbones_give_the_hub_models_features(caches: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    timm_net = _randomize_bn(timm.create_model("efficientnet_b0"))
    _seed_timm("efficientnet_b0.ra_in1k", timm_net)
    cfg = detect.DetectModelConfig(backbone="efficientnet_b0", weights="timm:efficientnet_b0.ra_in1k")
    detector = detect.build_detector(cfg, num_classes=3, in_channels=3)
    detect.init_weights(detector, cfg)
    tv_net = _randomize_bn(torchvision.models.efficientnet_b0(), seed=1)
    _seed_torchvision("EfficientNet_B0_Weights.IMAGENET1K_V1", tv_net)
    seg = segment.SegModelConfig(
        name="backbone_unet", encoder="efficientnet_b0", weights="torchvision:EfficientNet_B0_Weights.IMAGENET1K_V1"
    )
    unet = segment.build_segmenter(seg, in_channels=3, num_classes=2)
    segment.init_encoder(unet, seg)
    with torch.no_grad():
        want = timm_net.blocks(timm_net.bn1(timm_net.conv_stem(x)))  # the last stage, before the 1x1 head conv
        _close(want, detector.eval().backbone.forward_features(x)[-1])
        _close(tv_net.features[:-1](x), unet.eval().encoder.forward_features(x)[-1])


def test_whole_torchvision_retinanet_loads_but_a_new_class_layer(caches: Path) -> None:
    from foveal.models.retinanet import import_torchvision_retinanet

    torch.manual_seed(0)
    source = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None)
    _seed_torchvision("RetinaNet_ResNet50_FPN_Weights.COCO_V1", source)
    cfg = detect.DetectModelConfig(p6_from="p5", weights="torchvision:RetinaNet_ResNet50_FPN_Weights.COCO_V1")
    model = detect.build_detector(cfg, num_classes=3, in_channels=3)
    detect.init_weights(model, cfg)
    want = import_torchvision_retinanet(source.state_dict()).state_dict()
    got = model.state_dict()
    shared = [k for k in got if k in want and not k.startswith("cls_head.out.")]
    assert {"backbone.layer4.2.conv3.weight", "box_head.out.weight", "cls_head.trunk.0.weight"} <= set(shared)
    assert len(shared) > 100 and all(torch.equal(got[k], want[k]) for k in shared)
    assert got["cls_head.out.weight"].shape[0] == 9 * 3


@pytest.mark.parametrize("channels", [3, 1])
def test_unet_encoder_gives_the_timm_resnets_features(caches: Path, channels: int) -> None:
    torch.manual_seed(0)
    source = _randomize_bn(timm.create_model("resnet18"))
    _seed_timm("resnet18.a1_in1k", source)
    cfg = segment.SegModelConfig(name="backbone_unet", encoder="resnet18", weights="timm:resnet18.a1_in1k")
    model = segment.build_segmenter(cfg, in_channels=channels, num_classes=2)
    segment.init_encoder(model, cfg)
    x = torch.randn(1, channels, 64, 64)  # grayscale: the RGB model's output on the image in all three channels
    with torch.no_grad():
        _close(source.forward_features(x.expand(1, 3, 64, 64)), model.eval().encoder.forward_features(x)[-1])


def test_record_names_spec_file_and_preprocessing(caches: Path) -> None:
    path = _seed_timm("efficientnet_b0.ra_in1k", timm.create_model("efficientnet_b0"))
    record = weights_record("timm:efficientnet_b0.ra_in1k")["weights"]
    assert record["file"] == str(path)
    assert record["preprocessing"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "resolution": 224}
    tv = weights_record("torchvision:ResNet50_Weights.IMAGENET1K_V2")["weights"]
    assert tv["file"].endswith(os.path.join("hub", "checkpoints", "resnet50-11ad3fa6.pth"))
    assert tv["preprocessing"]["resolution"] == 224
    assert weights_record("runs/x/best") == {} and weights_record(None) == {}


@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        ("timm:nope", ("models--timm--nope", "HF_HUB_OFFLINE", "HF_HOME")),
        ("timm:efficientnet_b0.ra_in1k", ("models--timm--efficientnet_b0.ra_in1k", "model.safetensors")),
        ("torchvision:ResNet18_Weights.IMAGENET1K_V1", ("checkpoints", "resnet18-f37072fd.pth", "TORCH_HOME")),
        ("torchvision:Nope_Weights.X", ("no weights 'Nope_Weights.X'",)),
        ("timm:vit_huge_patch16_gap_448.in1k_ijepa", ("outside the Hugging Face hub", "pass its path")),
    ],
)
def test_uncached_weights_are_one_line_naming_the_cache(caches: Path, spec: str, needles: tuple[str, ...]) -> None:
    with pytest.raises(FovealError) as info:
        resolve_weights(spec)
    message = str(info.value)
    assert "\n" not in message
    for needle in (*needles, *((str(caches),) if "Nope_" not in spec and "ijepa" not in spec else ())):
        assert needle in message, message


def test_cli_uncached_weights_exit_2_with_the_cache_path(
    caches: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([*TINY_TRAIN, "--out", str(tmp_path / "run"), "model.weights=timm:nope"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(tmp_path / "hf" / "hub" / "models--timm--nope") in err


def test_cli_fine_tunes_from_hub_weights_and_records_them(caches: Path, tmp_path: Path) -> None:
    _seed_timm("efficientnet_b0.ra_in1k", _randomize_bn(timm.create_model("efficientnet_b0")))
    argv = [
        *TINY_TRAIN,
        "--out",
        str(tmp_path / "run"),
        "model.name=efficientnet_b0",
        "model.resolution=32",
        "data.channels=3",
        "model.weights=timm:efficientnet_b0.ra_in1k",
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    meta = ckpt_io.load_checkpoint(tmp_path / "run").meta
    assert meta["weights"]["spec"] == "timm:efficientnet_b0.ra_in1k"
    assert meta["weights"]["preprocessing"]["resolution"] == 224


def test_grayscale_data_with_rgb_weights_names_data_channels(caches: Path) -> None:
    _seed_timm("efficientnet_b0.ra_in1k", timm.create_model("efficientnet_b0"))
    cfg = classify.ModelConfig(name="efficientnet_b0", weights="timm:efficientnet_b0.ra_in1k")
    with pytest.raises(FovealError, match=r"3-channel images but this data has 1: set data.channels=3"):
        classify.init_weights(classify.build_classifier(cfg, 10, 1), cfg)
    _seed_torchvision("ResNet18_Weights.IMAGENET1K_V1", torchvision.models.resnet18())
    seg = segment.SegModelConfig(
        name="backbone_unet", encoder="resnet18", weights="torchvision:ResNet18_Weights.IMAGENET1K_V1"
    )
    with pytest.raises(FovealError, match=r"convert the images to 3 channels"):
        segment.init_encoder(segment.build_segmenter(seg, in_channels=2, num_classes=2), seg)
    plain = segment.SegModelConfig(name="unet", weights=seg.weights)
    with pytest.raises(FovealError, match=r"model.name=backbone_unet"):
        segment.init_encoder(segment.build_segmenter(plain, 1, 2), plain)


@pytest.mark.parametrize("task", ["classify", "detect", "segment"])
def test_finetune_recipes_name_hub_weights_that_exist(task: str) -> None:
    from foveal.config import CONFIG_DIR, load_config

    config = {"classify": classify.ClassifyConfig, "detect": detect.DetectConfig, "segment": segment.SegmentConfig}
    spec = load_config(config[task], CONFIG_DIR / f"{task}_finetune.yaml").model.weights
    assert spec is not None
    kind, _, name = spec.partition(":")
    if kind == "torchvision":
        assert torchvision.models.get_weight(name) is not None
    else:
        assert timm.models.get_pretrained_cfg(name) is not None


def test_segment_finetune_recipe_trains_one_step_from_hub_weights(caches: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    _seed_torchvision("ResNet34_Weights.IMAGENET1K_V1", torchvision.models.resnet34())
    argv = ["train", "segment", "--config", "segment_finetune", "--out", str(tmp_path / "run")]
    argv += ["train.max_steps=1", "train.epochs=1", "data.batch_size=1", "data.samples_per_epoch=1"]
    argv += ["data.tile=64", "data.eval_tile=128", "train.progress=false"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    meta = ckpt_io.load_checkpoint(tmp_path / "run").meta
    assert meta["weights"]["spec"] == "torchvision:ResNet34_Weights.IMAGENET1K_V1"
    assert meta["weights"]["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
