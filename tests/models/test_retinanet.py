"""RetinaNet: shapes, gradients, loss cases, post-processing, prior, backbones, torchvision weight import."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torchvision.models.detection.image_list import ImageList

from foveal.errors import FovealError
from foveal.models.anchors import AnchorGenerator, BoxCoder
from foveal.models.retinanet import (
    RetinaNet,
    RetinaOutput,
    from_args,
    import_torchvision_retinanet,
    postprocess,
    retinanet_loss,
)
from foveal.preprocess import batch_images, boxes_to_original, resize_for_detection

K = 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small() -> RetinaNet:
    torch.manual_seed(0)
    return RetinaNet("resnet18", num_classes=K, fpn_channels=32)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0], [50.0, 40.0, 120.0, 110.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]


@pytest.mark.parametrize("size", [(128, 128), (96, 160), (100, 75)])
def test_output_shapes(small, size):
    small.eval()
    with torch.no_grad():
        out = small(torch.randn(2, 3, *size))
    grids = [(math.ceil(size[0] / s), math.ceil(size[1] / s)) for s in (8, 16, 32, 64, 128)]
    total = sum(h * w for h, w in grids) * 9
    assert out.level_sizes == grids and out.num_anchors == 9
    assert out.cls_logits.shape == (2, total, K)
    assert out.box_deltas.shape == (2, total, 4)
    torch.testing.assert_close(out.anchors, torch.cat(AnchorGenerator()(grids)))


def test_every_parameter_gets_a_gradient(small):
    small.train()
    small.zero_grad(set_to_none=True)
    out = small(torch.randn(2, 3, 128, 128))
    losses = retinanet_loss(out, _targets())
    (losses["cls"] + losses["box"]).backward()
    missing = [n for n, p in small.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, missing


def test_loss_normalisation_and_empty_images(small):
    small.eval()
    with torch.no_grad():
        out = small(torch.randn(2, 3, 128, 128))
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    losses = retinanet_loss(out, empty)
    assert losses["box"].item() == 0.0
    assert torch.isfinite(losses["cls"]) and losses["cls"] > 0
    # no foreground: normaliser 1, every anchor is a negative
    targets = torch.zeros_like(out.cls_logits)
    expected = torchvision.ops.sigmoid_focal_loss(out.cls_logits, targets, reduction="sum")
    torch.testing.assert_close(losses["cls"], expected)

    # a box equal to one anchor: that anchor (IoU 1) and any other ≥ 0.5 are foreground; the loss is per fg anchor
    anchor = out.anchors[100]
    one = [{"boxes": anchor[None], "labels": torch.tensor([1])}, empty[0]]
    losses = retinanet_loss(out, one, smooth_l1_beta=0.0)
    iou = torchvision.ops.box_iou(anchor[None], out.anchors)[0]
    fg = iou >= 0.5
    keep = torch.ones(2, len(iou), dtype=torch.bool)
    keep[0] = (iou >= 0.5) | (iou < 0.4)
    cls_t = torch.zeros_like(out.cls_logits)
    cls_t[0, fg, 1] = 1
    ref_cls = torchvision.ops.sigmoid_focal_loss(out.cls_logits[keep], cls_t[keep], reduction="sum") / fg.sum()
    deltas = BoxCoder().encode(anchor[None], out.anchors[fg])
    ref_box = (out.box_deltas[0, fg] - deltas).abs().sum() / fg.sum()
    torch.testing.assert_close(losses["cls"], ref_cls)
    torch.testing.assert_close(losses["box"], ref_box)


def test_loss_ignores_anchors_covered_by_crowd_regions():
    anchors = torch.tensor(
        [[0, 0, 20, 20], [30, 0, 50, 20], [0, 30, 20, 50], [40, 40, 70, 70],
         [1, 1, 21, 21], [25, 25, 35, 35], [5, 30, 15, 40], [30, 5, 40, 15]],
        dtype=torch.float32,
    )  # fmt: skip
    torch.manual_seed(0)
    logits, deltas = torch.randn(1, 8, K), torch.randn(1, 8, 4)
    out = RetinaOutput(logits, deltas, anchors, [(2, 2), (1, 1), (1, 1), (1, 1), (1, 1)], 1)
    box = {"boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0]]), "labels": torch.tensor([2])}
    # region 1 holds anchors 0 (foreground: stays), 1 and 7 (whole: ignored); region 2 covers exactly half of
    # anchor 2 (ignored: the threshold is inclusive), 45 % of anchor 3 (kept) and only the edge of anchor 6 (kept)
    crowd = torch.tensor([[0.0, 0.0, 50.0, 20.0], [0.0, 40.0, 70.0, 53.5]])
    losses = retinanet_loss(out, [{**box, "ignore": crowd}])
    keep = torch.tensor([True, False, False, True, True, True, True, False])
    fg = torch.tensor([0, 4])  # IoU 1 and 0.82 with the box
    cls_t = torch.zeros(8, K)
    cls_t[fg, 2] = 1
    ref_cls = torchvision.ops.sigmoid_focal_loss(logits[0, keep], cls_t[keep], reduction="sum") / 2
    torch.testing.assert_close(losses["cls"], ref_cls)
    plain = retinanet_loss(out, [box])
    torch.testing.assert_close(losses["box"], plain["box"])  # the foreground is untouched
    torch.testing.assert_close(plain["cls"], torchvision.ops.sigmoid_focal_loss(logits[0], cls_t, reduction="sum") / 2)
    off = retinanet_loss(out, [{**box, "ignore": crowd}], ignore_coverage=1.1)
    torch.testing.assert_close(off["cls"], plain["cls"])


def test_loss_rejects_bad_targets():
    anchors = AnchorGenerator().grid_anchors(0, 4, 4)
    out = RetinaOutput(torch.zeros(1, len(anchors), K), torch.zeros(1, len(anchors), 4), anchors, [(4, 4)], 9)
    with pytest.raises(FovealError, match="labels must be in"):
        retinanet_loss(out, [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([K])}])
    with pytest.raises(FovealError, match="x2 > x1"):
        retinanet_loss(out, [{"boxes": torch.tensor([[10.0, 0, 10, 10]]), "labels": torch.tensor([0])}])
    with pytest.raises(FovealError, match="targets for a batch"):
        retinanet_loss(out, [])


def test_prior_gives_initial_probability_one_percent(small):
    assert torch.allclose(small.cls_head.out.bias, torch.tensor(-math.log(99.0)))
    std = small.box_head.trunk[0].weight.std().item()
    assert 0.009 < std < 0.011
    small.eval()
    with torch.no_grad():
        probs = small(torch.randn(1, 3, 128, 128)).cls_logits.sigmoid()
    assert abs(probs.mean().item() - 0.01) < 1e-3 and probs.max() < 0.02


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_postprocess_thresholds_topk_nms_and_clipping():
    # one anchor per location, P3 of 2 × 2 and 1 × 1 elsewhere: 8 anchors; zero deltas decode to the anchors
    anchors = torch.tensor(
        [[0, 0, 20, 20], [30, 0, 50, 20], [0, 30, 20, 50], [40, 40, 70, 70],  # P3 (the last one leaves the image)
         [1, 1, 21, 21], [25, 25, 35, 35], [5, 30, 15, 40], [30, 5, 40, 15]],
        dtype=torch.float32,
    )  # fmt: skip
    logits = torch.full((1, 8, K), -10.0)
    logits[0, 0, 1] = _logit(0.9)
    logits[0, 1, 1] = _logit(0.04)  # below the 0.05 threshold
    logits[0, 2, 0] = _logit(0.06)
    logits[0, 3, 2] = _logit(0.8)
    logits[0, 4, 1] = _logit(0.7)  # IoU 0.82 with anchor 0, same class: suppressed
    logits[0, 4, 0] = _logit(0.5)  # same box, other class: kept (class-aware NMS)
    out = RetinaOutput(logits, torch.zeros(1, 8, 4), anchors, [(2, 2), (1, 1), (1, 1), (1, 1), (1, 1)], 1)

    (det,) = postprocess(out, [(50, 60)])
    torch.testing.assert_close(det["scores"], torch.tensor([0.9, 0.8, 0.5, 0.06]))
    assert det["labels"].tolist() == [1, 2, 0, 0]
    assert det["anchors"].tolist() == [0, 3, 4, 2]  # the anchor each detection came from
    torch.testing.assert_close(
        det["boxes"], torch.tensor([[0, 0, 20, 20], [40, 40, 60, 50], [1, 1, 21, 21], [0, 30, 20, 50]]).float()
    )
    # one candidate per level: P4's best is the 0.7 box, which NMS then removes
    (det,) = postprocess(out, [(50, 60)], topk_per_level=1)
    assert det["scores"].tolist() == pytest.approx([0.9])
    (det,) = postprocess(out, [(50, 60)], max_detections=2)
    assert det["scores"].tolist() == pytest.approx([0.9, 0.8])
    (det,) = postprocess(out, [(50, 60)], nms_thresh=0.9, score_thresh=0.55)
    assert det["scores"].tolist() == pytest.approx([0.9, 0.8, 0.7])
    with pytest.raises(FovealError, match="image sizes"):
        postprocess(out, [])


def test_efficientnet_backbone():
    torch.manual_seed(0)
    model = RetinaNet(
        "efficientnet_b0", num_classes=2, fpn_channels=16, head_convs=1, backbone_kwargs={"drop_path": 0.0}
    )
    assert model.fpn.lateral[0].in_channels == 40 and model.fpn.lateral[2].in_channels == 320
    out = model(torch.randn(2, 3, 64, 96))
    assert out.cls_logits.shape == (2, 9 * (8 * 12 + 4 * 6 + 2 * 3 + 1 * 2 + 1), 2)
    target = {"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([1])}
    losses = retinanet_loss(out, [target, target])
    (losses["cls"] + losses["box"]).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing, missing


def test_args_rebuild_and_options(small):
    rebuilt = from_args(small.args)
    rebuilt.load_state_dict(small.state_dict())
    small.eval()
    rebuilt.eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x).cls_logits, small(x).cls_logits)
    gray = RetinaNet("resnet18", num_classes=1, in_channels=1, fpn_channels=8, head_convs=0, anchor_scales=(1.0,))
    assert gray(torch.zeros(1, 1, 64, 64)).cls_logits.shape == (1, 3 * (64 + 16 + 4 + 1 + 1), 1)
    with pytest.raises(FovealError, match="unknown backbone"):
        RetinaNet("vgg16", num_classes=2)
    with pytest.raises(FovealError, match="strides 8, 16 and 32"):
        RetinaNet("efficientnet_b0", num_classes=2, backbone_kwargs={"stem_stride": 1})
    with pytest.raises(FovealError, match="bad backbone arguments"):
        RetinaNet("resnet18", num_classes=2, backbone_kwargs={"width": 2})
    with pytest.raises(FovealError, match="prior"):
        RetinaNet("resnet18", num_classes=2, prior=0.0)


def test_resize_and_map_back():
    image = torch.rand(3, 300, 400)
    resized, scale = resize_for_detection(image)
    assert resized.shape == (3, 800, 1067) and scale == pytest.approx(800 / 300)
    long, scale = resize_for_detection(torch.rand(1, 3, 100, 1000))
    assert long.shape == (1, 3, 133, 1333) and scale == pytest.approx(1.333)
    boxes = torch.tensor([[13.33, 26.66, 1333.0, 133.0]])
    torch.testing.assert_close(boxes_to_original(boxes, scale), boxes / 1.333)
    batch, sizes = batch_images([torch.ones(3, 50, 70), torch.ones(3, 64, 30)])
    assert batch.shape == (2, 3, 64, 96) and sizes == [(50, 70), (64, 30)]
    assert batch[0, :, 50:].abs().sum() == 0 and batch[1, :, :, 30:].abs().sum() == 0
    with pytest.raises(FovealError, match="float"):
        resize_for_detection(torch.zeros(300, 400, dtype=torch.uint8))


def _randomise(model: torch.nn.Module) -> None:
    """Weights that make every layer matter (not the near-constant outputs of the σ = 0.01 head init)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            elif isinstance(m, torch.nn.Conv2d) and m.out_channels <= 256 and m.kernel_size == (3, 3):
                fan_in = m.in_channels * 9
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * math.sqrt(1.0 / fan_in))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def test_import_torchvision_retinanet_matches(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None, num_classes=5)
    _randomise(tv)
    tv.eval()
    path = tmp_path / "tv_retinanet.pth"
    torch.save(tv.state_dict(), path)
    ours = import_torchvision_retinanet(path, num_classes=5)
    assert not ours.training and ours.args["p6_from"] == "p5"

    # 128 × 128: every level's grid divides the image, so torchvision's anchor strides (image // grid) are nominal
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        features = list(tv.backbone(x).values())
        head = tv.head(features)
        ref_anchors = tv.anchor_generator(ImageList(x, [(128, 128)]), features)[0]
        out = ours(x)
    assert head["cls_logits"].std() > 0.1 and head["bbox_regression"].std() > 0.1  # outputs that can disagree
    torch.testing.assert_close(out.cls_logits, head["cls_logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.box_deltas, head["bbox_regression"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.anchors, ref_anchors)

    with pytest.raises(FovealError, match="classes"):
        import_torchvision_retinanet(tv.state_dict(), num_classes=7)
    with pytest.raises(FovealError, match="not a torchvision"):
        import_torchvision_retinanet({"x": torch.zeros(1)})


def _all_above_threshold(logits: torch.Tensor, score_thresh: float, topk: int) -> torch.Tensor:
    """The straightforward selection: every pair above the threshold, then the ``topk`` best of them."""
    idx = (logits.sigmoid() > score_thresh).nonzero().squeeze(1)
    scores = logits[idx].sigmoid()
    if len(idx) > topk:
        idx = idx[scores.topk(topk).indices]
    return idx


@pytest.mark.parametrize(
    ("anchors", "classes", "shift", "score_thresh", "topk"),
    [
        (2000, 12, 2.0, 0.05, 100),  # busy: most pairs pass, the per-anchor bound prunes
        (2000, 12, -6.0, 0.05, 100),  # quiet: few pass, the threshold decides
        (50, 12, 2.0, 0.05, 100),  # fewer anchors than topk: no bound
        (2000, 3, 0.0, 0.0, 100),  # score threshold 0 (no logit threshold)
        (500, 7, 1.0, 0.5, 499),
    ],
)
def test_candidate_pairs_hold_exactly_the_topk_best_above_the_threshold(anchors, classes, shift, score_thresh, topk):
    from foveal.models.retinanet import _candidates

    torch.manual_seed(0)
    logits = (torch.randn(anchors, classes) * 2 + shift).reshape(-1)
    logit_thresh = math.log(score_thresh / (1 - score_thresh)) if 0 < score_thresh < 1 else None
    idx = _candidates(logits, classes, logit_thresh, score_thresh, topk)
    assert bool((logits[idx].sigmoid() > score_thresh).all())
    chosen = idx[logits[idx].topk(min(topk, len(idx))).indices] if len(idx) > topk else idx
    expected = _all_above_threshold(logits, score_thresh, topk)
    assert sorted(chosen.tolist()) == sorted(expected.tolist())
    if shift == 2.0 and anchors >= topk:
        assert len(idx) < 0.1 * int((logits.sigmoid() > score_thresh).sum())  # the bound did prune
