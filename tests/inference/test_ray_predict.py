"""``foveal predict --ray`` and the Python entry on a local Ray instance give the records and files of the
single-process run (skipped where Ray is not installed)."""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from foveal.cli import main
from foveal.tasks.predict import PredictRequest, run_predict

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray instance of 2 CPUs for the module (the predict calls find it connected and use it)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def _records(out: Path) -> dict[str, dict[str, Any]]:
    """Image path → its record, with the output folder's own path taken out of file names."""
    lines = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["file"]: r for r in (json.loads(line.replace(str(out), "OUT")) for line in lines)}


def _close(a: Any, b: Any) -> bool:
    """Equal JSON values, floats up to noise (Ray's actors run on one thread, this process on several)."""
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, (int, float))
            and isinstance(b, (int, float))
            and math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _same_classes(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Classifier records: the same probability per class (the order of near-tied classes may differ)."""
    pa, pb = ({p["class"]: p["probability"] for p in r["predictions"]} for r in (a, b))
    return a["file"] == b["file"] and _close(pa, pb)


def _run(argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0


def test_python_entry_on_ray_equals_one_process(local_ray, kit, tiny_checkpoints, tmp_path, monkeypatch):
    from foveal.inference import ray_predict

    monkeypatch.setattr(ray_predict, "CHUNK_ROWS", 4)  # three Ray datasets in a row, as a long stream makes
    images = tmp_path / "images"
    kit.gray_images(images, 10)
    kit.truncate(images / "img004.png")  # listed in errors.jsonl by either path
    ckpt = str(tiny_checkpoints["classify"])
    base = PredictRequest(ckpt, (str(images),), batch_size=3, progress=False)
    alone = run_predict(PredictRequest(**{**base.__dict__, "out": str(tmp_path / "alone"), "workers": 0}))
    on_ray = run_predict(PredictRequest(**{**base.__dict__, "out": str(tmp_path / "ray"), "ray": "local"}))
    assert (on_ray.summary.total, on_ray.summary.failed) == (alone.summary.total, alone.summary.failed) == (10, 1)
    ours, theirs = _records(tmp_path / "ray"), _records(tmp_path / "alone")
    assert ours.keys() == theirs.keys() and len(ours) == 9
    assert all(_same_classes(ours[f], theirs[f]) for f in ours)
    errors = [(tmp_path / d / "errors.jsonl").read_text() for d in ("ray", "alone")]
    assert errors[0] == errors[1] and "img004.png" in errors[0]
    lines = [(tmp_path / d / "predictions.jsonl").read_text().splitlines() for d in ("ray", "alone")]
    assert [json.loads(x)["file"] for x in lines[0]] == [json.loads(x)["file"] for x in lines[1]], "stream order"


def test_cli_ray_detect_and_segment_equal_one_process(local_ray, kit, tiny_checkpoints, tmp_path):
    for task in ("detect", "segment"):
        images = tmp_path / task
        kit.gray_images(images, 4, size=(64, 64))
        ckpt = str(tiny_checkpoints[task])
        alone, on_ray = tmp_path / f"{task}-alone", tmp_path / f"{task}-ray"
        _run(["predict", ckpt, str(images), "--out", str(alone), "--batch-size", "4", "--workers", "0"])
        _run(["predict", ckpt, str(images), "--out", str(on_ray), "--batch-size", "4", "--ray"])
        ours, theirs = _records(on_ray), _records(alone)
        assert ours.keys() == theirs.keys() and len(ours) == 4
        assert all(_close(ours[f], theirs[f]) for f in ours), task
        assert sorted(kit.snapshot(on_ray)) == sorted(kit.snapshot(alone)), task
    labels = sorted((tmp_path / "segment-ray").glob("*_labels.tif"))
    assert len(labels) == 4
    import tifffile

    for path in labels:
        np.testing.assert_array_equal(tifffile.imread(path), tifffile.imread(tmp_path / "segment-alone" / path.name))


def test_ray_resume_continues_a_single_process_run(local_ray, kit, tiny_checkpoints, tmp_path):
    """The records file is shared: a run stopped in this process is finished on Ray, the outputs those of one run."""
    images = tmp_path / "images"
    kit.gray_images(images, 8)
    ckpt = str(tiny_checkpoints["classify"])
    out, whole = tmp_path / "out", tmp_path / "whole"
    _run(["predict", ckpt, str(images), "--out", str(whole), "--batch-size", "2", "--workers", "0"])
    good = (images / "img005.png").read_bytes()
    kit.truncate(images / "img005.png")  # --strict stops the run at the batch of image 5, after two batches
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert (
            main(["predict", ckpt, str(images), "--out", str(out), "--batch-size", "2", "--workers", "0", "--strict"])
            == 2
        )
    assert (out / ".foveal-staging" / ".records.jsonl").read_text().count("\n") == 4
    (images / "img005.png").write_bytes(good)
    _run(["predict", ckpt, str(images), "--out", str(out), "--batch-size", "2", "--ray", "--resume"])
    ours, theirs = _records(out), _records(whole)
    assert ours.keys() == theirs.keys() and len(ours) == 8
    assert all(_same_classes(ours[f], theirs[f]) for f in ours)
