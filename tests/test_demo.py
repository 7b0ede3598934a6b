"""The demo's claims, checked on the weights it ships: CAM peaks inside the garment, the detector's AP50, and the
demo's own report linking its stages."""

from __future__ import annotations

import json

import pytest
import torch

from foveal.demo import DETECTOR, LOCALIZER, demo_canvases, localization_outcomes, run_demo


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bundled_localizer_maps_peak_inside_the_garment(tmp_path):
    """≥ 90 % of the maps peak inside the garment and every map box overlaps it, on 30 canvases of test images (the
    demo explains the first 10 of these)."""
    from PIL import Image

    from foveal.tasks.explain import explain

    data = demo_canvases(30)
    paths = []
    for i in range(len(data)):
        paths.append(tmp_path / f"canvas{i:02d}.png")
        Image.fromarray(data.images[i, 0].numpy()).save(paths[-1])
    records = explain(LOCALIZER, [str(p) for p in paths], tmp_path / "out", top_k=1)
    rows = localization_outcomes(records, data.labels.tolist(), data.boxes.tolist(), data.classes)
    assert sum(r["peak_inside"] for r in rows) >= 0.9 * len(rows)
    assert sum(r["iou"] > 0 for r in rows) >= 0.9 * len(rows)
    assert sum(r["class"] == r["predicted"] for r in rows) >= 0.6 * len(rows)  # mostly right classes too


def test_bundled_detector_ap50_on_the_demo_validation_canvases():
    """The figure PROVENANCE.md states (AP50 0.462 on the 48 canvases of test images; the goal, 0.5, is not
    reached): a regression here means the weights or the evaluation changed."""
    from foveal.tasks.detect_eval import evaluate_checkpoint

    result = evaluate_checkpoint(DETECTOR, "fashion-canvas-sample", "val")
    assert result.ap50 >= 0.45


@pytest.mark.slow
def test_demo_quick_writes_a_report_linking_every_stage(tmp_path, capsys):
    out = run_demo(tmp_path / "demo", quick=True, stages=("explain", "detect"))
    info = json.loads((out / "run_info.json").read_text())
    assert [s["name"] for s in info["stages"]] == ["explain", "detect"]
    html = (out / "report.html").read_text()
    for stage in info["stages"]:
        for report in stage["reports"].values():
            assert (out / report).is_file() and f'href="{report}"' in html
    localization = json.loads((out / "explain" / "localization_check.json").read_text())
    assert len(localization["images"]) == 4
    assert capsys.readouterr().out.rstrip().endswith(str(out / "report.html"))
