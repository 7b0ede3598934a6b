"""COCO box evaluation: golden values, both backends agree, crowd regions, any category ids, results files."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from foveal.data.coco import DetectionData, ImageRecord, open_coco, write_results_json
from foveal.data.detection_set import FASHION_CANVAS_SAMPLE
from foveal.errors import FovealError
from foveal.metrics.detection import coco_evaluate, plot_pr_curve
from foveal.results import STAT_NAMES

Detections = list[dict[str, torch.Tensor]]


def _data(
    targets: list[tuple[list[list[float]], list[int]]],
    category_ids: tuple[int, ...] = (1,),
    crowd: list[tuple[list[list[float]], list[int]]] | None = None,
) -> DetectionData:
    """In-memory ground truth on 100 × 100 images (no files needed for evaluation)."""
    images = [ImageRecord(i + 1, f"{i}.png", Path(f"{i}.png"), 100, 100) for i in range(len(targets))]
    out = []
    for i, (boxes, labels) in enumerate(targets):
        b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        g, gl = crowd[i] if crowd else ([], [])
        out.append(
            {
                "boxes": b,
                "labels": torch.tensor(labels, dtype=torch.int64),
                "areas": ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).double(),
                "ignore": torch.tensor(g, dtype=torch.float32).reshape(-1, 4),
                "ignore_labels": torch.tensor(gl, dtype=torch.int64),
            }
        )
    categories = [{"id": c, "name": f"class {c}"} for c in category_ids]
    return DetectionData(Path("."), images, out, categories, channels=1)


def _det(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "scores": torch.tensor(scores),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def _noisy(data: DetectionData, seed: int = 0) -> Detections:
    """Jittered ground truth, some with a wrong class, plus random false positives; scores continuous (no ties)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in data.targets:
        boxes, labels = t["boxes"], t["labels"]
        n, fp = len(labels), 3
        size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        jittered = boxes + torch.randn(n, 4, generator=g) * 0.06 * size
        wrong = torch.rand(n, generator=g) < 0.15
        labels = torch.where(wrong, torch.randint(0, data.num_classes, (n,), generator=g), labels)
        xy = torch.rand(fp, 2, generator=g) * 100
        random_boxes = torch.cat([xy, xy + 5 + torch.rand(fp, 2, generator=g) * 40], dim=1)
        out.append(
            {
                "boxes": torch.cat([jittered, random_boxes]),
                "scores": torch.rand(n + fp, generator=g),
                "labels": torch.cat([labels, torch.randint(0, data.num_classes, (fp,), generator=g)]),
            }
        )
    return out


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_perfect_detections_score_one(backend: str) -> None:
    data = open_coco("fashion-canvas-sample", split="val")
    perfect = [_det(t["boxes"].tolist(), [1.0] * len(t["labels"]), t["labels"].tolist()) for t in data.targets]
    result = coco_evaluate(data, perfect, backend=backend)
    assert np.allclose([result.ap, result.ap50, result.ap75, result.ap_small, result.ap_medium], 1.0, atol=1e-12)
    assert result.ap_large == -1.0  # no object above 96² on 128² canvases: undefined, as in COCO
    assert result.ar100 == pytest.approx(1.0, abs=1e-12) and np.allclose(result.per_class_ap, 1.0, atol=1e-12)
    assert result.num_images == 48 and result.num_detections == result.num_boxes == data.num_boxes()


def test_hand_made_average_precision() -> None:
    # two objects; by score: a hit (IoU 0.81), a false positive, a hit at IoU 0.62 → P/R = (1, .5), (.5, .5), (2/3, 1)
    data = _data([([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0])])
    dets = [_det([[0, 0, 10, 8.1], [20, 20, 30, 30], [50, 50, 60, 56.2]], [0.9, 0.8, 0.7], [0, 0, 0])]
    for backend in ("faster", "pycocotools"):
        result = coco_evaluate(data, dets, backend=backend)
        # 101 recall points: precision 1 up to recall 0.5 (51 points), then 2/3 (50 points)
        assert result.ap50 == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)
        assert result.ap75 == pytest.approx(51 / 101, abs=1e-12)  # at IoU 0.75 only the first hit counts
        # recall 0.5 from the first hit at the 7 thresholds 0.50 … 0.80, 0.5 more from the second at 0.50 … 0.60
        assert result.stat("AR100") == pytest.approx((0.5 * 7 + 0.5 * 3) / 10, abs=1e-12)


def test_backends_agree_on_all_numbers() -> None:
    data = open_coco("fashion-canvas-sample", split="train")
    dets = _noisy(data)
    fast, ref = coco_evaluate(data, dets, "faster"), coco_evaluate(data, dets, "pycocotools")
    assert np.allclose(fast.stats, ref.stats, rtol=0, atol=1e-9)
    assert np.allclose(fast.per_class_ap, ref.per_class_ap, rtol=0, atol=1e-9)
    assert np.allclose(fast.precision, ref.precision, rtol=0, atol=1e-9)
    assert 0.2 < fast.ap < 0.9  # a non-trivial case


def test_results_file_evaluated_by_pycocotools_gives_the_same_numbers(tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    data = open_coco("fashion-canvas-sample", split="val")
    dets = _noisy(data, seed=1)
    results = write_results_json(dets, data, tmp_path / "results.json")
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(FASHION_CANVAS_SAMPLE / "annotations" / "instances_val.json"))
        evaluator = COCOeval(gt, gt.loadRes(str(results)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert np.allclose(coco_evaluate(data, dets).stats, evaluator.stats, rtol=0, atol=1e-9)


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_crowd_regions_are_ignored(backend: str) -> None:
    truth = [([[0, 0, 20, 20]], [0])]
    hit = [[0, 0, 20, 20]]
    on_crowd = [[50, 50, 80, 80]]
    with_crowd = _data(truth, crowd=[([[40, 40, 90, 90]], [0])])
    without = _data(truth)
    # a higher-scored detection inside the crowd region: ignored with the region, a false positive without it
    dets = [_det(on_crowd + hit, [0.9, 0.8], [0, 0])]
    assert coco_evaluate(with_crowd, dets, backend).ap == pytest.approx(1.0, abs=1e-12)
    # without the region: precision 1/2 at the only recall, 1
    assert coco_evaluate(without, dets, backend).ap == pytest.approx(0.5, abs=1e-12)
    # a crowd region of another class does not excuse the detection
    other_class = _data([([[0, 0, 20, 20]], [0])], (1, 2), crowd=[([[40, 40, 90, 90]], [1])])
    assert coco_evaluate(other_class, dets, backend).ap == pytest.approx(0.5, abs=1e-12)


def test_category_ids_other_than_one_to_k() -> None:
    data = _data([([[0, 0, 10, 10], [30, 30, 60, 50]], [0, 1]), ([[5, 5, 25, 35]], [2])], category_ids=(5, 17, 99))
    # only label 1 (category 17) is found; label 0 is detected as label 2
    dets = [_det([[30, 30, 60, 50], [0, 0, 10, 10]], [0.9, 0.5], [1, 2]), _det([], [], [])]
    result = coco_evaluate(data, dets)
    assert result.per_class_ap.tolist() == [0.0, 1.0, 0.0]
    assert result.classes == ("class 5", "class 17", "class 99")
    assert result.ap == pytest.approx(1 / 3, abs=1e-12)


def test_no_detections_and_bad_input() -> None:
    data = _data([([[0, 0, 10, 10]], [0])])
    for backend in ("faster", "pycocotools"):
        assert coco_evaluate(data, [_det([], [], [])], backend).ap == 0.0
    with pytest.raises(FovealError, match="unknown COCO backend"):
        coco_evaluate(data, [_det([], [], [])], backend="detectron")
    with pytest.raises(FovealError, match="one dict per image"):
        coco_evaluate(data, [])


def test_report_formats_and_pr_curve(tmp_path: Path) -> None:
    data = open_coco("fashion-canvas-sample", split="val")
    result = coco_evaluate(data, _noisy(data))
    summary = result.to_dict()
    assert [k for k in summary if k in STAT_NAMES] == list(STAT_NAMES)
    assert summary["APl"] is None and summary["AP"] == result.ap
    assert summary["per_class"]["Sandal"]["AP"] == pytest.approx(float(result.per_class_ap[5]))
    text = result.format()
    assert "Ankle boot" in text and f"{result.ap:6.3f}" in text and "n/a" in text
    png = plot_pr_curve(result, tmp_path / "plots" / "pr.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
