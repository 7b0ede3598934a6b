"""The HTML report without a browser: what each kind contains, that it is self-contained, and its errors; the
per-image outcomes (TP / FP / FN) its figures are coloured by."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from foveal.cli import main
from foveal.errors import FovealError
from foveal.report.build import build_report, report_kind, write_report
from foveal.report.eval_figures import instance_outcomes, match_detections, pick_shown


def _external_references(text: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["'](?!data:|#)([^"']+)""", text)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("classify-run", "train"),
        ("classify-eval", "eval"),
        ("segment-eval", "eval"),
        ("detect-eval", "eval"),
        ("explain", "explain"),
    ],
)
def test_each_folder_is_recognised_and_its_report_is_self_contained(results, kind, expected):
    folder = results[kind]
    assert report_kind(folder) == expected
    text = (folder / "report.html").read_text()  # written by the command itself
    assert _body(text) == _body(build_report(folder))  # the same report as `foveal report` writes
    assert "<script" not in text and "@import" not in text and "url(" not in text
    assert _external_references(text) == []  # every image embedded, no stylesheet or font from elsewhere
    assert "@media print" in text


def _body(text: str) -> str:
    return text[: text.index("<footer>")]  # the footer holds the time of writing


def test_reports_show_what_each_task_needs(results):
    cls = (results["classify-eval"] / "report.html").read_text()
    metrics = json.loads((results["classify-eval"] / "metrics.json").read_text())
    assert f"{100 * metrics['top1']:.2f} %" in cls and "Confusion matrix" in cls and "Most confident mistakes" in cls
    mistakes = json.loads((results["classify-eval"] / "mistakes.json").read_text())
    confidences = [m["confidence"] for m in mistakes["shown"]]
    assert confidences == sorted(confidences, reverse=True) and len(confidences) <= 16
    assert all(m["true"] != m["predicted"] for m in mistakes["shown"])

    run = (results["classify-run"] / "report.html").read_text()
    assert (
        "learning rate" in run and "checkpoints/best" in run and "classify_demo" in run
    )  # curves, checkpoints, command
    info = json.loads((results["classify-run"] / "run_info.json").read_text())
    assert info["data"]["train_samples"] == 64 and info["environment"]["torch"] and info["wall_s"] > 0

    seg = json.loads((results["segment-eval"] / "per_image.json").read_text())
    assert all({"fg_iou", "f1_50", "merged_pairs"} <= set(r) for r in seg)
    assert any("figure" in r and "weight_map" in r for r in seg)

    det = json.loads((results["detect-eval"] / "per_image.json").read_text())
    boxes = json.loads((results["detect-eval"] / "metrics.json").read_text())["num_boxes"]
    assert sum(r["tp"] + r["fn"] for r in det["images"]) == boxes  # every true box is found or missed
    assert "AP @ IoU 0.50" in (results["detect-eval"] / "report.html").read_text()


def test_a_missing_figure_is_one_clear_error(results, tmp_path, capsys):
    folder = tmp_path / "eval"
    shutil.copytree(results["classify-eval"], folder)
    missing = sorted((folder / "mistakes").glob("*.png"))[0]
    missing.unlink()
    with pytest.raises(FovealError, match=re.escape(str(missing))):
        write_report(folder)
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("foveal: error: report:") and "rerun" in err[0]


def test_a_folder_without_results_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no foveal results" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "nowhere does not exist" in capsys.readouterr().err
    (tmp_path / "file.txt").write_text("x")
    assert main(["report", str(tmp_path / "file.txt")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_instance_outcomes_tp_fp_fn_and_a_merge():
    true = np.zeros((12, 20), np.int32)
    true[1:5, 1:5] = 1  # found
    true[1:5, 8:11], true[1:5, 11:14] = 2, 3  # two touching cells, predicted as one
    true[8:11, 1:4] = 4  # missed
    pred = np.zeros_like(true)
    pred[1:5, 1:5] = 7
    pred[1:5, 7:15] = 9  # IoU 0.375 with each of them
    pred[8:11, 15:19] = 5  # nothing there
    out = instance_outcomes(pred, true)
    assert out["tp_pred"] == [7] and out["tp_true"] == [1]
    assert sorted(out["fp"]) == [5, 9] and sorted(out["fn"]) == [2, 3, 4]
    assert out["merging"] == [9]


def test_match_detections_is_greedy_by_score_within_a_class():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    gt_labels = np.array([0, 1])
    boxes = np.array([[0, 0, 10, 10], [1, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], float)
    labels, scores = np.array([0, 0, 0, 1]), np.array([0.6, 0.9, 0.8, 0.7])
    tp, found = match_detections(boxes, labels, scores, gt, gt_labels)
    # the higher-scoring duplicate takes the box; the other is a FP; a right box with the wrong class is a FP
    assert tp.tolist() == [False, True, False, False] and found.tolist() == [True, False]


def test_pick_shown_bounds_the_figures():
    chosen = pick_shown([0.5, 0.1, 0.9, 0.3, 0.7, 0.2], worst=2, sample=2)
    assert chosen[:2] == [1, 5] and len(chosen) == 4 and len(set(chosen)) == 4
    assert pick_shown([1.0], worst=4, sample=4) == [0]
