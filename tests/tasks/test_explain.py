"""Explaining checkpoints: CAM / Grad-CAM of a tiny classifier, Grad-CAM of a tiny U-Net, the localization protocol."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from foveal.config import CONFIG_DIR, load_config
from foveal.data.localization_set import build_localization_set
from foveal.data.synthetic import write_cells_folder
from foveal.errors import FovealError
from foveal.explain.boxes import map_to_box
from foveal.explain.cam import CAM
from foveal.explain.upsample import grid_of, upsample_maps
from foveal.preprocess import normalize
from foveal.tasks import (
    classify,
    classify_explain,
    classify_train,
    explain,
    explain_common,
    segment,
    segment_explain,
    segment_train,
)
from foveal.tasks.classify import eval_transform

TINY_CLASSIFY = ["data.limit=null", "data.batch_size=16", "train.progress=false", "train.max_steps=2"]
TINY_SEGMENT = [
    "model.depth=2",
    "model.base_width=4",
    "model.batch_norm=true",
    "data.tile=24",
    "data.eval_tile=28",
    "data.batch_size=2",
    "data.samples_per_epoch=2",
    "optim.name=adamw",
    "optim.lr_batch=2",
    "train.epochs=1",
    "train.progress=false",
]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A classifier trained 2 steps on canvases (IDX folder), and a folder of three PNGs: two canvases and a wide
    grayscale image that the evaluation transform crops."""
    root = tmp_path_factory.mktemp("explain")
    build_localization_set("fashion-mnist-sample", "train", 32, seed=0).write_idx(root / "canvases", "train")
    build_localization_set("fashion-mnist-sample", "train", 16, seed=1).write_idx(root / "canvases", "test")
    cfg = load_config(
        classify.ClassifyConfig, CONFIG_DIR / "classify_demo.yaml", [*TINY_CLASSIFY, f"data.train={root / 'canvases'}"]
    )
    classify_train.train(cfg, run_dir=root / "run")
    images = root / "images"
    images.mkdir()
    test = build_localization_set("fashion-mnist-sample", "test", 2, seed=5)
    for i in range(2):
        Image.fromarray(test.images[i, 0].numpy()).save(images / f"canvas{i}.png")
    wide = np.zeros((40, 70), dtype=np.uint8)
    wide[10:30, 20:45] = 200
    Image.fromarray(wide).save(images / "wide.png")
    return root / "run", images


def test_classifier_explanations_json_figures_and_boxes_in_original_pixels(classifier, tmp_path):
    run, images = classifier
    records = explain.explain(run, [str(images / "canvas0.png"), str(images / "w*.png")], tmp_path / "out", top_k=3)
    assert [r.file for r in records] == [str(images / "canvas0.png"), str(images / "wide.png")]
    stored = json.loads((tmp_path / "out" / explain.RESULTS_FILE).read_text())
    assert stored == [json.loads(json.dumps(r.to_dict())) for r in records]
    for r in records:
        height, width = r.size
        assert r.task == "classify" and r.method == "cam" and len(r.classes) == 3 and len(r.boxes) == 3
        assert r.scores == sorted(r.scores, reverse=True) and 0.0 < sum(r.scores) <= 1.0 + 1e-6
        for x1, y1, x2, y2 in r.boxes:
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert len(r.figures) == 2 and all(Image.open(f).size[0] > 0 for f in r.figures)
    assert records[1].size == (40, 70)
    # a square canvas: the boxes are the library's CAM upsampled straight to the canvas, then thresholded
    clf = classify.load_classifier(run)
    canvas = torch.from_numpy(np.array(Image.open(images / "canvas0.png")))[None]
    x = normalize(eval_transform(clf.resolution)(canvas), clf.mean, clf.std)[None]
    result = CAM(clf.model)(x, top_k=3, upsample=False)
    maps = upsample_maps(result.maps, (64, 64), grid_of(clf.model))[0]
    assert records[0].classes == [clf.classes[int(c)] for c in result.classes[0]]
    assert records[0].boxes == [map_to_box(m).tolist() for m in maps]


def test_crop_region_matches_the_evaluation_transform():
    # 40 × 70 at resolution 32: resized to 32 × 56, centre crop columns 12..44 → original columns 15..55
    assert explain_common.crop_region(40, 70, 32) == (15, 0, 55, 40)
    assert explain_common.crop_region(70, 40, 32) == (0, 15, 40, 55)
    assert explain_common.crop_region(64, 64, 32) == (0, 0, 64, 64)
    ramp = torch.arange(70, dtype=torch.uint8).mul(3).expand(1, 40, 70).contiguous()
    cropped = eval_transform(32)(ramp).float()
    # the crop's first and last columns sample the original around columns 15.1 and 54.4
    assert abs(float(cropped[0, 20, 0]) / 3 - 15.1) < 1.0 and abs(float(cropped[0, 20, -1]) / 3 - 54.4) < 1.0


def test_gradcam_method_explains_the_same_predictions(classifier, tmp_path):
    run, images = classifier
    cam = explain.explain(run, [str(images / "canvas1.png")], tmp_path / "cam", top_k=2)
    grad = explain.explain(run, [str(images / "canvas1.png")], tmp_path / "grad", top_k=2, method="gradcam")
    assert grad[0].method == "gradcam" and grad[0].classes == cam[0].classes
    assert grad[0].scores == pytest.approx(cam[0].scores)
    for x1, y1, x2, y2 in grad[0].boxes:
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
    assert (tmp_path / "grad" / "canvas1_gradcam.png").is_file() and (tmp_path / "grad" / "canvas1_top2.png").is_file()


def test_user_errors_name_what_is_wrong(classifier, tmp_path):
    run, _ = classifier
    rgb = tmp_path / "colour.png"
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(rgb)
    with pytest.raises(FovealError, match=r"colour\.png has 3 channel\(s\) but the model takes 1"):
        explain.explain(run, [str(rgb)], tmp_path / "out")
    with pytest.raises(FovealError, match="unknown method"):
        explain.explain(run, [str(rgb)], tmp_path / "out", method="saliency")
    with pytest.raises(FovealError, match="threshold"):
        explain.explain(run, [str(rgb)], tmp_path / "out", threshold=1.5)
    with pytest.raises(FovealError, match="score_thresh=1.5: use a detection score"):
        explain.explain(run, [str(rgb)], tmp_path / "out", score_thresh=1.5)
    fake = tmp_path / "detector"
    fake.mkdir()
    (fake / "checkpoint.json").write_text(json.dumps({"task": "detect"}))
    with pytest.raises(FovealError, match="detector is not a foveal checkpoint"):
        explain.explain(fake, [str(rgb)], tmp_path / "out")


def test_localization_eval_rates_and_a_perfect_map_source(classifier):
    run, _ = classifier
    data = build_localization_set("fashion-mnist-sample", "test", 8, seed=2)
    for method in ("cam", "gradcam"):
        result = classify_explain.localization_eval(run, data, method=method, batch_size=5)
        assert result.count == 8 and result.top5_loc_error is not None and result.gt_known_loc_error is not None
        for value in (result.top1_loc_error, result.top5_loc_error, result.gt_known_loc_error, result.top1_cls_error):
            assert 0.0 <= value <= 1.0
        assert result.top1_loc_error >= result.top1_cls_error and result.top5_loc_error <= result.top1_loc_error

    def ground_truth_maps(x: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        maps = torch.zeros(len(x), classes.shape[1], 64, 64)
        for i, (x1, y1, x2, y2) in enumerate(data.boxes.long().tolist()):
            maps[i, :, y1:y2, x1:x2] = 1.0
        return maps

    perfect = classify_explain.localization_eval(run, data, method=ground_truth_maps, batch_size=8)
    assert perfect.gt_known_loc_error == 0.0 and perfect.top1_loc_error == pytest.approx(perfect.top1_cls_error)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain-seg")
    write_cells_folder(root / "data", 2)
    cfg = load_config(segment.SegmentConfig, None, [*TINY_SEGMENT, f"data.train={root / 'data'}"])
    segment_train.train(cfg, run_dir=root / "run")
    return root / "run", root / "data" / "images"


def test_segmenter_gradcam_of_the_predicted_foreground(segmenter, tmp_path):
    run, images = segmenter
    records = explain.explain(run, [str(images / "cell0.png")], tmp_path / "out")
    (r,) = records
    assert r.task == "segment" and r.method == "gradcam" and r.size == (72, 80) and r.classes == ["foreground"]
    assert 0.0 <= r.scores[0] <= 1.0
    x1, y1, x2, y2 = r.boxes[0]
    assert 0 <= x1 < x2 <= 80 and 0 <= y1 < y2 <= 72
    assert Image.open(r.figures[0]).size == (80, 72)


def test_segmenter_single_tile_covers_the_image_and_tiles_agree_on_shape(segmenter):
    run, images = segmenter
    seg = segment.load_segmenter(run)
    tile = segment_explain._single_tile(seg.model, 72, 80)
    border = seg.model.border
    assert seg.model.output_size(tile + 2 * border) == tile and tile // seg.model.stride * seg.model.stride >= 80
    image = torch.rand(1, 40, 44)
    whole, predicted = segment_explain.segment_gradcam(seg.model, image)
    tiled, predicted_tiled = segment_explain.segment_gradcam(seg.model, image, tile=28)  # 2 × 2 tiles
    assert whole.shape == tiled.shape == (40, 44) and bool((whole >= 0).all() and (tiled >= 0).all())
    # overlap-tile inference: the same logits for any tile (to float rounding: other tiles, other kernels), so the
    # same prediction wherever the two best classes are not within rounding of each other
    logits = segment.predict_logits(seg.model, image, segment_explain._single_tile(seg.model, 40, 44))
    torch.testing.assert_close(segment.predict_logits(seg.model, image, 28), logits, rtol=1e-4, atol=1e-4)
    top2 = logits.topk(2, dim=0).values
    clear = top2[0] - top2[1] > 1e-3
    assert clear.float().mean() > 0.9 and torch.equal(predicted[clear], predicted_tiled[clear])
    assert segment_explain.bottom_layer(seg.model) == "down.2"


def test_localization_recipe_gives_16x16_maps_on_64_px_canvases():
    cfg = load_config(classify.ClassifyConfig, CONFIG_DIR / "localize_cpu.yaml")
    assert cfg.model.pool == "avg" and classify.resolution_of(cfg.model) == 64
    model = classify.build_classifier(cfg.model, 10, 1).eval()
    with torch.no_grad():
        features = model.forward_head_features(torch.zeros(1, 1, 64, 64))
    assert features.shape[-2:] == (16, 16)


def test_max_pooling_classifier_gets_the_weighted_sum_that_cam_refuses():
    from foveal.models.efficientnet import EfficientNet, from_args

    torch.manual_seed(0)
    model = EfficientNet(width=0.25, depth=0.25, num_classes=4, in_channels=1, stem_stride=1, pool="max", bn_momentum=1)
    assert from_args(model.args).pool == "max"
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        model(x)  # BatchNorm statistics of this batch, so that eval-mode features are not vanishingly small
    model.eval()
    with torch.no_grad():
        features = model.forward_head_features(x)
        torch.testing.assert_close(model(x), model.classifier(features.amax((2, 3))))
    with pytest.raises(FovealError, match="does not give the model's"):
        CAM(model)(x)  # the average-pooling identity does not hold
    classes = torch.tensor([[1, 3], [0, 2]])
    with classify_explain.class_maps(model, "cam") as maps_of:
        maps = maps_of(x, classes)
    expected = torch.einsum("nkc,nchw->nkhw", model.classifier.weight[classes], features)
    torch.testing.assert_close(maps, expected)
    with pytest.raises(FovealError, match="pool must be"):
        EfficientNet(width=0.25, depth=0.25, pool="mean")


def test_map_stride_gives_finer_maps_of_the_same_predictions(classifier, tmp_path):
    run, images = classifier
    clf = classify.load_classifier(run)
    stride = clf.model.feature_info[-1].stride
    x = normalize(eval_transform(clf.resolution)(torch.zeros(2, 1, 64, 64)), clf.mean, clf.std)
    classes = torch.tensor([[0, 1], [2, 3]])
    with (
        classify_explain.class_maps(clf.model, "cam") as own,
        classify_explain.class_maps(clf.model, "cam", stride // 2) as finer,
    ):
        coarse, fine = own(x, classes), finer(x, classes)
    assert fine.shape[-2:] == tuple(2 * s for s in coarse.shape[-2:])
    data = build_localization_set("fashion-mnist-sample", "test", 8, seed=2)
    plain = classify_explain.localization_eval(run, data, batch_size=8)
    dense = classify_explain.localization_eval(run, data, batch_size=8, map_stride=stride // 2)
    assert dense.top1_cls_error == plain.top1_cls_error  # classes come from the network as trained
    (record,) = explain.explain(run, [str(images / "canvas0.png")], tmp_path / "out", top_k=2, map_stride=stride // 2)
    (same,) = explain.explain(run, [str(images / "canvas0.png")], tmp_path / "out2", top_k=2)
    assert record.classes == same.classes and record.scores == same.scores
    with pytest.raises(FovealError, match=r"map stride 3 is not reachable .* use one of"):
        explain.explain(run, [str(images / "canvas0.png")], tmp_path / "out3", map_stride=3)
    with pytest.raises(FovealError, match="map_stride=0: use a stride finer"):
        classify_explain.localization_eval(run, data, map_stride=0)
    with pytest.raises(FovealError, match="not to a map function"):
        classify_explain.localization_eval(
            run, data, method=lambda x, c: torch.zeros(len(x), c.shape[1], 4, 4), map_stride=2
        )


def test_map_stride_is_for_classifiers(segmenter, tmp_path):
    run, images = segmenter
    with pytest.raises(FovealError, match="map_stride, map_scales and flip apply to classifiers .* .segment. ch"):
        explain.explain(run, [str(images / "cell0.png")], tmp_path / "out", map_stride=2)
    with pytest.raises(FovealError, match="flip apply to classifiers"):
        explain.explain(run, [str(images / "cell0.png")], tmp_path / "out", flip=True)


def _peak(m: torch.Tensor) -> torch.Tensor:
    """What :func:`classify_explain.multiscale` divides each map by: its max, or its largest magnitude when none is
    positive."""
    top = m.amax((-2, -1), keepdim=True)
    return torch.where(top > 0, top, m.abs().amax((-2, -1), keepdim=True))


def test_multiscale_maps_average_each_scale_on_the_images_pixels(classifier, tmp_path):
    run, images = classifier
    clf = classify.load_classifier(run)
    grid = grid_of(clf.model)
    torch.manual_seed(0)
    x = normalize(eval_transform(clf.resolution)(torch.rand(2, 1, 64, 64) * 255), clf.mean, clf.std)
    classes = torch.tensor([[0, 1], [2, 3]])
    r = x.shape[-1]  # the classifier's resolution
    with classify_explain.class_maps(clf.model, "cam") as own:
        one = classify_explain.multiscale(own, (1.0,), grid)(x, classes)
        both = classify_explain.multiscale(own, (1.0, 2.0), grid)(x, classes)
        single = upsample_maps(own(x, classes).float(), (r, r), grid, (r, r))
        enlarged = torch.nn.functional.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        double = upsample_maps(own(enlarged, classes).float(), (r, r), grid, (2 * r, 2 * r))
    assert one.shape == both.shape == (2, 2, r, r)

    torch.testing.assert_close(one, single / _peak(single))
    torch.testing.assert_close(both, (single / _peak(single) + double / _peak(double)) / 2)
    assert float(one.amax()) == pytest.approx(1.0) and bool((one.amax((-2, -1)) <= 1 + 1e-6).all())
    data = build_localization_set("fashion-mnist-sample", "test", 8, seed=2)
    plain = classify_explain.localization_eval(run, data, batch_size=8)
    scaled = classify_explain.localization_eval(run, data, batch_size=8, map_scales=(1, 2.5))
    assert scaled.top1_cls_error == plain.top1_cls_error  # classes come from the unscaled canvas
    (record,) = explain.explain(run, [str(images / "canvas0.png")], tmp_path / "out", top_k=2, map_scales=(1, 2))
    assert len(record.boxes) == 2
    with pytest.raises(FovealError, match=r"map_scales=\(\): give one or more image scales > 0"):
        classify_explain.localization_eval(run, data, map_scales=())
    with pytest.raises(FovealError, match=r"map_scales=.*> 0"):
        explain.explain(run, [str(images / "canvas0.png")], tmp_path / "out2", map_scales=(1, -2))


def test_flip_averages_class_scores_and_maps_with_the_mirrored_image(classifier, tmp_path):
    run, images = classifier
    clf = classify.load_classifier(run)
    grid = grid_of(clf.model)
    torch.manual_seed(0)
    x = normalize(eval_transform(clf.resolution)(torch.rand(2, 1, 64, 64) * 255), clf.mean, clf.std)
    classes = torch.tensor([[0, 1], [2, 3]])
    r = x.shape[-1]
    with torch.no_grad():
        plain, mirrored = clf.model(x).softmax(1), clf.model(x.flip(-1)).softmax(1)
    torch.testing.assert_close(classify_explain.class_scores(clf.model, x), plain)
    torch.testing.assert_close(classify_explain.class_scores(clf.model, x, flip=True), (plain + mirrored) / 2)
    with classify_explain.class_maps(clf.model, "cam") as own:
        averaged = classify_explain.multiscale(own, (1.0,), grid, flip=True)(x, classes)
        single = upsample_maps(own(x, classes).float(), (r, r), grid)
        back = upsample_maps(own(x.flip(-1), classes).float(), (r, r), grid).flip(-1)

    torch.testing.assert_close(averaged, (single / _peak(single) + back / _peak(back)) / 2)
    # the averaged maps are mirror-symmetric in the image (the network's own grid is not: its cells sit at 0, S, 2S…)
    with classify_explain.class_maps(clf.model, "cam") as own:
        of_mirror = classify_explain.multiscale(own, (1.0, 2.0), grid, flip=True)(x.flip(-1), classes)
        of_image = classify_explain.multiscale(own, (1.0, 2.0), grid, flip=True)(x, classes)
    torch.testing.assert_close(of_mirror.flip(-1), of_image)
    assert not torch.allclose(back, single, atol=1e-3)  # so mirroring adds information

    data = build_localization_set("fashion-mnist-sample", "test", 16, seed=2)
    result = classify_explain.localization_eval(run, data, batch_size=8, flip=True, map_scales=(1, 2))
    norm = normalize(eval_transform(clf.resolution)(data.images), clf.mean, clf.std)
    scores = classify_explain.class_scores(clf.model, norm, flip=True)
    wrong = scores.argmax(1) != data.labels
    # a barely trained model: where the two best scores are within rounding (batches of 8 against 16: other
    # kernels), either class may come out first
    top2 = scores.topk(2, dim=1).values
    unsure = int((top2[:, 0] - top2[:, 1] < 1e-4).sum())
    assert abs(result.top1_cls_error - float(wrong.float().mean())) <= unsure / len(wrong) + 1e-6
    (record,) = explain.explain(run, [str(images / "canvas0.png")], tmp_path / "out", top_k=2, flip=True)
    image = explain_common.load_with_channels(images / "canvas0.png", clf.channels)
    shown = normalize(eval_transform(clf.resolution)(image), clf.mean, clf.std)[None]
    top = classify_explain.class_scores(clf.model, shown, flip=True)
    assert record.scores == pytest.approx(top[0].topk(2).values.tolist(), abs=1e-5)
    with pytest.raises(FovealError, match="flip='yes': use True"):
        classify_explain.localization_eval(run, data, flip="yes")  # type: ignore[arg-type]
