"""Prediction tables, JSON and CSV files, metrics summary, atomic writing."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from foveal.errors import FovealError
from foveal.io import atomic_output
from foveal.report import (
    CSV_HEADER,
    Prediction,
    format_metrics,
    format_table,
    predictions_from_logits,
    write_csv,
    write_metrics_json,
    write_predictions_json,
)
from foveal.results import ClassificationResult, ClassScore

_PREDS = [
    Prediction("images/cat_01.png", [(3, "cat", 0.75), (5, "dog", 0.25)]),
    Prediction("b.jpg", [(5, "dog", 1.0), (3, "cat", 0.0)]),
]


def test_prediction_converts_tuples_and_rejects_nan() -> None:
    pred = Prediction(Path("x.png"), [(1, "a", 0.5)])
    assert pred.path == "x.png"
    assert pred.topk == (ClassScore(1, "a", 0.5),)
    assert pred.topk[0].class_index == 1
    with pytest.raises(FovealError, match="non-finite"):
        Prediction("x.png", [(0, "a", float("nan"))])


def test_predictions_from_logits_softmax_and_topk() -> None:
    probs = torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2]])
    preds = predictions_from_logits(["p.png", "q.png"], probs.log(), ["a", "b", "c"], k=2)
    assert [s[:2] for s in preds[0].topk] == [(2, "c"), (1, "b")]
    assert [s.probability for s in preds[0].topk] == pytest.approx([0.7, 0.2])
    assert [s[:2] for s in preds[1].topk] == [(0, "a"), (1, "b")]
    assert len(predictions_from_logits(["p.png"], probs[:1].log(), ["a", "b", "c"], k=5)[0].topk) == 3
    with pytest.raises(FovealError, match="shape"):
        predictions_from_logits(["p.png"], probs.log(), ["a", "b", "c"])


def test_format_table_is_aligned() -> None:
    lines = format_table(_PREDS).splitlines()
    assert lines == [
        "file               rank  class  probability",
        "-----------------  ----  -----  -----------",
        "images/cat_01.png     1  cat         0.7500",
        "                      2  dog         0.2500",
        "b.jpg                 1  dog         1.0000",
        "                      2  cat         0.0000",
    ]
    assert format_table([]) == "no predictions"


def test_write_json_round_trip(tmp_path: Path) -> None:
    path = write_predictions_json(_PREDS, tmp_path / "out" / "preds.json")
    records = json.loads(path.read_text(encoding="utf-8"))
    assert records[0] == {
        "file": "images/cat_01.png",
        "predictions": [
            {"class": "cat", "index": 3, "probability": 0.75},
            {"class": "dog", "index": 5, "probability": 0.25},
        ],
    }
    assert [r["file"] for r in records] == ["images/cat_01.png", "b.jpg"]


def test_write_csv_round_trip(tmp_path: Path) -> None:
    preds = [*_PREDS, Prediction("comma, name.png", [(0, 'say "hi"', 1 / 3)])]
    path = write_csv(preds, tmp_path / "preds.csv")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert tuple(rows[0]) == CSV_HEADER
    assert rows[1] == ["images/cat_01.png", "1", "3", "cat", "0.75"]
    assert rows[4] == ["b.jpg", "2", "3", "cat", "0.0"]
    assert rows[5][:4] == ["comma, name.png", "1", "0", 'say "hi"']
    assert float(rows[5][4]) == 1 / 3  # full precision survives
    assert len(rows) == 6


def test_atomic_output_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "preds.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_output(path) as handle:
        handle.write("half")
        raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.json"]
    write_predictions_json(_PREDS, path)
    assert json.loads(path.read_text())[1]["file"] == "b.jpg"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["preds.json"]


def test_atomic_output_into_a_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FovealError, match="is a directory"):
        write_predictions_json(_PREDS, tmp_path)


def _result() -> ClassificationResult:
    return ClassificationResult(
        top1=2 / 3,
        top5=1.0,
        per_class_accuracy=[1.0, 0.5, None],
        confusion=[[1, 0, 0], [1, 1, 0], [0, 0, 0]],
        count=3,
        loss=0.123456,
        classes=["cat", "dog", "bird"],
        top5_k=3,
    )


def test_format_metrics() -> None:
    lines = format_metrics(_result()).splitlines()
    assert lines == [
        "samples              3",
        "loss                 0.1235",
        "top-1                66.67%",
        "top-3                100.00%",
        "mean class accuracy  75.00%",
        "",
        "class  samples  accuracy",
        "-----  -------  --------",
        "cat          1   100.00%",
        "dog          2    50.00%",
        "bird         0       n/a",
    ]
    assert "0     " in format_metrics(_result(), classes=["0", "1", "2"])
    with pytest.raises(FovealError, match="2 class names"):
        format_metrics(_result(), classes=["a", "b"])


def test_write_metrics_json(tmp_path: Path) -> None:
    path = write_metrics_json(_result(), tmp_path / "metrics.json")
    record = json.loads(path.read_text())
    assert math.isclose(record["mean_class_accuracy"], 0.75)
    assert ClassificationResult.from_dict(record) == _result()
