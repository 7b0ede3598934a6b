"""CAM and Grad-CAM: the CAM identity of GAP models, Grad-CAM = ReLU(CAM) up to scale, hooks and modes, errors."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from foveal.errors import FovealError
from foveal.explain.cam import CAM, ClassTarget, GradCAM, MaskTarget, normalize_maps
from foveal.explain.upsample import grid_of, upsample_maps
from foveal.models.efficientnet import efficientnet

pytestmark = pytest.mark.usefixtures("one_thread")


def _efficientnet() -> nn.Module:
    torch.manual_seed(0)
    return efficientnet(phi=-4, num_classes=10, in_channels=1)


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    with torch.no_grad():
        model.fc.bias.uniform_(-0.5, 0.5)  # a non-zero bias, so the identity checks it too
    return model


class _SmallGap(nn.Module):
    """A user model with no conventional names: conv → ReLU → GAP → linear."""

    def __init__(self, channels: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 6, 3, 2, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.pool(self.body(x)).flatten(1))


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


MODELS = {
    "efficientnet": (_efficientnet, 1, "head"),
    "resnet18": (_resnet, 3, "layer4"),
}


@pytest.mark.parametrize("name", MODELS)
def test_cam_identity_spatial_mean_plus_bias_is_the_logit(name: str) -> None:
    build, channels, _ = MODELS[name]
    model = build()
    x = torch.randn(2, channels, 64, 64)
    with CAM(model) as cam:
        result = cam(x, top_k=3, upsample=False)
        given = cam(x, classes=torch.tensor([[0, 9]]), upsample=False)
    assert result.maps.shape == (2, 3, 2, 2)
    bias = model.get_submodule("classifier" if name == "efficientnet" else "fc").bias
    for r in (result, given):
        identity = r.maps.mean((2, 3)) + bias[r.classes]
        torch.testing.assert_close(identity, r.logits.gather(1, r.classes), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(result.logits, model.eval()(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_gradcam_is_relu_cam_up_to_a_positive_scale(name: str) -> None:
    build, channels, layer = MODELS[name]
    model = build()
    x = torch.randn(2, channels, 64, 64)
    with CAM(model) as cam:
        result = cam(x, upsample=False)
    raw = result.maps[:, 0]
    target = ClassTarget(result.classes[:, 0])
    with GradCAM(model, layer) as gradcam:
        coarse = gradcam(x, target, upsample=False)
        fine = gradcam(x, target)
    expected_fine = upsample_maps(raw.clamp_min(0), (64, 64), grid_of(model))
    for got, want in ((coarse, raw.clamp_min(0)), (fine, expected_fine)):
        assert bool((want.amax((1, 2)) > 0).all())  # a non-trivial comparison
        torch.testing.assert_close(normalize_maps(got, "max"), normalize_maps(want, "max"), rtol=0, atol=1e-5)
    # the scale is the pooling's 1 / (h · w)
    torch.testing.assert_close(coarse * 4, raw.clamp_min(0), rtol=1e-4, atol=1e-6)


def test_upsampled_maps_have_input_size_and_topk_is_sorted() -> None:
    model = _resnet()
    x = torch.randn(3, 3, 48, 40)
    result = CAM(model)(x, top_k=5)  # outside a with block: enters and exits around the call
    assert result.maps.shape == (3, 5, 48, 40)
    probs = result.logits.softmax(1)
    top = probs.topk(5, dim=1)
    torch.testing.assert_close(result.scores, top.values)
    torch.testing.assert_close(result.classes, top.indices)
    assert bool((result.scores[:, :-1] >= result.scores[:, 1:]).all())
    coarse = CAM(model)(x, top_k=5, upsample=False).maps
    torch.testing.assert_close(result.maps, upsample_maps(coarse, (48, 40), "stride"))  # a ResNet: symmetric padding
    norm = result.normalized()
    assert float(norm.amin()) == 0.0 and float(norm.amax()) == 1.0
    assert _hooks(model) == 0


def test_classes_forms_and_scores() -> None:
    model = _SmallGap()
    x = torch.randn(2, 3, 16, 16)
    with CAM(model) as cam:
        one = cam(x, classes=2)
        per_image = cam(x, classes=torch.tensor([3, 1]))
        full = cam(x, classes=torch.tensor([[0, 1, 2, 3]]))
    assert one.classes.tolist() == [[2], [2]]
    assert per_image.classes.tolist() == [[3], [1]]
    torch.testing.assert_close(full.scores, full.logits.softmax(1))
    torch.testing.assert_close(full.maps[:, 2:3], one.maps)
    torch.testing.assert_close(torch.stack([full.maps[0, 3], full.maps[1, 1]])[:, None], per_image.maps)


def test_user_model_is_probed_and_named_layers_work() -> None:
    model = _SmallGap()
    x = torch.randn(2, 3, 16, 16)
    auto = CAM(model)(x, top_k=2, upsample=False)
    named = CAM(model, feature_layer="body", classifier="out")(x, top_k=2, upsample=False)
    by_module = CAM(model, feature_layer=model.body[3], classifier=model.out)(x, top_k=2, upsample=False)
    torch.testing.assert_close(auto.maps, named.maps)
    torch.testing.assert_close(auto.maps, by_module.maps)
    torch.testing.assert_close(
        auto.maps.mean((2, 3)) + model.out.bias[auto.classes], auto.logits.gather(1, auto.classes)
    )
    assert _hooks(model) == 0


def test_timm_model_best_effort() -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", num_classes=5, pretrained=False)
    with CAM(model) as cam:
        result = cam(torch.randn(1, 3, 64, 64), top_k=2, upsample=False)
    identity = result.maps.mean((2, 3)) + model.classifier.bias[result.classes]
    torch.testing.assert_close(identity, result.logits.gather(1, result.classes), rtol=1e-4, atol=1e-4)


def test_hooks_removed_modes_restored_and_model_untouched() -> None:
    model = _resnet().train()
    model.layer2.eval()  # mixed modes must come back exactly
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    with CAM(model) as cam:
        assert not model.training and _hooks(model) == 1
        cam(x)
    with GradCAM(model, "layer3") as gradcam:
        assert not model.training
        gradcam(x, 1)
        model(x)  # a plain forward inside the block is not affected by the hook
        assert torch.is_grad_enabled()
    assert _hooks(model) == 0
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())

    for explainer in (CAM(model), GradCAM(model, "layer4")):
        with pytest.raises(ValueError, match="boom"), explainer:
            raise ValueError("boom")
        assert _hooks(model) == 0
        assert {name: m.training for name, m in model.named_modules()} == modes
    with pytest.raises(FovealError), CAM(model) as cam:
        cam(x, classes=10)
    assert _hooks(model) == 0 and model.training


def test_gradcam_keeps_grad_mode() -> None:
    model = _SmallGap()
    x = torch.randn(1, 3, 16, 16)
    with GradCAM(model, "body.2") as gradcam:
        with torch.no_grad():
            maps = gradcam(x, 0)
            assert not torch.is_grad_enabled()
        assert torch.is_grad_enabled()
    assert maps.shape == (1, 16, 16) and float(maps.amin()) >= 0.0


def test_gradcam_with_inplace_op_after_the_layer() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 3),
    )
    x = torch.randn(2, 3, 8, 8)
    maps = GradCAM(model, "1")(x, ClassTarget(torch.tensor([0, 2])))
    assert maps.shape == (2, 8, 8) and bool(torch.isfinite(maps).all())


def test_mask_target_explains_a_segmentation_region() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 3, 1))
    x = torch.randn(2, 1, 12, 12)
    mask = torch.zeros(12, 12, dtype=torch.bool)
    mask[2:6, 3:9] = True
    with GradCAM(model, "1") as gradcam:
        maps = gradcam(x, MaskTarget(2, mask), upsample=False)
    # score = Σ_mask (v · A + b) → ∂score/∂A_k = v_k on the mask → α_k = v_k · mean(mask)
    with torch.no_grad():
        activation = model[1](model[0](x))
        v = model[2].weight[2, :, 0, 0]
        expected = (torch.einsum("c,nchw->nhw", v, activation) * mask.float().mean()).clamp_min(0)
    torch.testing.assert_close(maps, expected, rtol=1e-5, atol=1e-6)
    per_image = MaskTarget(1, torch.stack([mask, ~mask]))(model(x))
    assert per_image.shape == (2,)
    with pytest.raises(FovealError, match="mask"):
        MaskTarget(0, torch.ones(5, 5))(model(x))
    with pytest.raises(FovealError, match="out of range"):
        MaskTarget(3, mask)(model(x))


def test_errors_are_clear() -> None:
    model = _resnet()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(FovealError, match="1 channels.*expects 3"):
        CAM(model)(torch.randn(1, 1, 32, 32))
    with pytest.raises(FovealError, match="1 channels.*expects 3"):
        GradCAM(model, "layer4")(torch.randn(1, 1, 32, 32), 0)
    with pytest.raises(FovealError, match="class index 10 is out of range.*10 classes"):
        CAM(model)(x, classes=10)
    with pytest.raises(FovealError, match="out of range"):
        CAM(model)(x, classes=torch.tensor([[1, -1]]))
    with pytest.raises(FovealError, match="out of range"):
        GradCAM(model, "layer4")(x, ClassTarget(11))
    with pytest.raises(FovealError, match="top_k"):
        CAM(model)(x, top_k=11)
    with pytest.raises(FovealError, match="no such submodule"):
        CAM(model, feature_layer="layer9")
    with pytest.raises(FovealError, match="one score per image"):
        GradCAM(model, "layer4")(x, lambda out: out.sum())
    with pytest.raises(FovealError, match=r"\(N, C, H, W\)"):
        CAM(model)(torch.randn(3, 32, 32))

    flatten = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 5))
    with pytest.raises(FovealError, match="feature_layer="):
        CAM(flatten)(x)
    not_gap = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 8),
        nn.ReLU(),
        nn.Linear(8, 4),
    )
    with pytest.raises(FovealError, match="global average pooling"):
        CAM(not_gap)(x)
    with pytest.raises(FovealError, match="classifier="):
        CAM(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1)))
    with pytest.raises(FovealError, match="not part of the model"):
        GradCAM(model, nn.Conv2d(3, 3, 1))
    assert _hooks(model) == 0 and _hooks(flatten) == 0 and _hooks(not_gap) == 0


def _reference_gradcam(model: nn.Module, layer: str, x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Grad-CAM the textbook way: a full forward with autograd, backward, gradients kept on the layer's output."""
    kept: list[torch.Tensor] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, out: kept.append(out))
    try:
        logits = model.eval()(x)
    finally:
        handle.remove()
    activation = kept[0]
    (grad,) = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), activation)
    with torch.no_grad():
        return torch.einsum("nc,nchw->nhw", grad.mean((2, 3)), activation).clamp_min(0)


@pytest.mark.parametrize(("name", "layer"), [("efficientnet", "stages.3"), ("resnet18", "layer3")])
def test_gradcam_of_an_inner_layer_matches_the_textbook_computation(name: str, layer: str) -> None:
    build, channels, _ = MODELS[name]
    model = build()
    x = torch.randn(2, channels, 64, 64)
    classes = torch.tensor([3, 7])
    expected = _reference_gradcam(model, layer, x, classes)
    got = GradCAM(model, layer)(x, ClassTarget(classes), upsample=False)
    assert float(expected.amax()) > 0
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6 * float(expected.amax()))


def test_detection_target_picks_each_images_anchor_and_class():
    from foveal.explain.cam import DetectionTarget
    from foveal.models.retinanet import RetinaOutput

    logits = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    output = RetinaOutput(logits, torch.zeros(2, 4, 4), torch.zeros(4, 4), [(2, 2)], 1)
    assert DetectionTarget(torch.tensor([1, 3]), torch.tensor([2, 0]))(output).tolist() == [5.0, 21.0]
    assert DetectionTarget(0, 1)(output).tolist() == [1.0, 13.0]
    with pytest.raises(FovealError, match="anchor index 4 is out of range: this output has 4 anchors"):
        DetectionTarget(4, 0)(output)
    with pytest.raises(FovealError, match="class index 3 is out of range"):
        DetectionTarget(0, 3)(output)
    with pytest.raises(FovealError, match="cls_logits"):
        DetectionTarget(0, 0)(logits)


def test_cam_of_the_bundled_localizer_in_bf16_passes_the_identity_check() -> None:
    """The folded channels-last bf16 copy (``--precision bf16``) of a trained CAM model: its logits are bf16-rounded
    sums, so the identity holds only to bf16 precision, which the check must accept."""
    from foveal.demo import LOCALIZER, demo_canvases
    from foveal.inference.fast import inference_model
    from foveal.preprocess import normalize
    from foveal.tasks.classify import load_classifier

    clf = load_classifier(LOCALIZER)
    fast = inference_model(clf.model, dtype=torch.bfloat16)
    canvases = demo_canvases(10)
    x = torch.stack([normalize(image, clf.mean, clf.std) for image in canvases.images]).to(torch.bfloat16)
    with CAM(fast) as cam:
        result = cam(x.contiguous(memory_format=torch.channels_last), top_k=1, upsample=False)
    with CAM(clf.model.eval()) as cam:
        reference = cam(x.float(), top_k=1, upsample=False)
    assert result.maps.shape == reference.maps.shape
    agree = (result.classes == reference.classes).float().mean()
    assert agree >= 0.8, f"bf16 and fp32 agree on the top-1 class of {agree:.0%} of the canvases"
