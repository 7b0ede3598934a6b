"""``foveal predict`` killed with SIGKILL mid-run and continued with ``--resume`` ends with the outputs of an
uninterrupted run (records of every image, the task's files), for each task."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from foveal.cli import main
from foveal.io import STAGING_NAME

#: (task, images, --batch-size, --workers): small batches make many appends, so the kill lands mid-stream; the
#: classifier decodes in a DataLoader worker (killed with its parent's process group), the others in the process.
CASES = [("classify", 48, 2, 1), ("detect", 24, 2, 0), ("segment", 16, 1, 0)]


def _lines(path: Path) -> int:
    """Complete lines of ``path`` (0 while it does not exist)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_after_first_records(argv: list[str], records: Path, timeout: float = 240) -> int:
    """Start ``python -m foveal ARGV`` in its own process group, wait until ``records`` holds a complete line, then
    SIGKILL the group (the CLI and its decoding workers). Returns the lines recorded at the kill."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "foveal", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while _lines(records) == 0:
            assert proc.poll() is None, f"predict ended before a record was written: {proc.stderr.read()!r}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "no record written in time"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return _lines(records)


def _run(argv: list[str]) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0


def _records(out: Path) -> dict[str, dict[str, Any]]:
    """Image path → its record, with the output folder's own path taken out of file names."""
    lines = (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line.replace(str(out), "OUT")) for line in lines]
    by_file = {r["file"]: r for r in records}
    assert len(by_file) == len(records), "an image recorded twice"
    return by_file


def _same_detections(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Equal as sets of (label, score, box), up to float noise."""

    def match(d: dict[str, Any], e: dict[str, Any]) -> bool:
        close = math.isclose(d["score"], e["score"], rel_tol=1e-4, abs_tol=1e-6)
        return d["label"] == e["label"] and close and np.allclose(d["box"], e["box"], rtol=1e-4, atol=1e-3)

    left = list(b)
    for d in a:
        hit = next((e for e in left if match(d, e)), None)
        if hit is None:
            return False
        left.remove(hit)
    return not left


def _same_record(task: str, a: dict[str, Any], b: dict[str, Any]) -> bool:
    if task == "classify":
        pa, pb = ({p["class"]: p["probability"] for p in r["predictions"]} for r in (a, b))
        return pa.keys() == pb.keys() and all(math.isclose(pa[k], pb[k], rel_tol=1e-4, abs_tol=1e-6) for k in pa)
    if task == "detect":
        rest = ("detections",)
        return _same_detections(a["detections"], b["detections"]) and _strip(a, rest) == _strip(b, rest)
    return a == b


def _strip(record: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in keys}


@pytest.mark.parametrize(("task", "n", "batch", "workers"), CASES)
def test_sigkill_then_resume_equals_an_uninterrupted_run(kit, tiny_checkpoints, tmp_path, task, n, batch, workers):
    images = tmp_path / "images"
    kit.gray_images(images, n, size=(64, 64) if task == "detect" else (40, 36))
    ckpt = str(tiny_checkpoints[task])
    opts = ["--batch-size", str(batch), "--workers", str(workers)]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _run(["predict", ckpt, str(images), "--out", str(whole), *opts])

    at_kill = _kill_after_first_records(
        ["predict", ckpt, str(images), "--out", str(killed), *opts], killed / STAGING_NAME / ".records.jsonl"
    )
    assert 0 < at_kill < n
    assert not (killed / "predictions.jsonl").exists(), "a killed run published outputs"
    _run(["predict", ckpt, str(images), "--out", str(killed), *opts, "--resume"])

    ours, reference = _records(killed), _records(whole)
    assert ours.keys() == reference.keys() and len(ours) == n
    different = [f for f in ours if not _same_record(task, ours[f], reference[f])]
    assert not different, f"records differ after the resume: {different[:3]}"
    assert sorted(kit.snapshot(killed)) == sorted(kit.snapshot(whole)), "other files than the uninterrupted run's"
    assert not (killed / STAGING_NAME).exists()
    if task == "segment":
        for name in (p.name for p in whole.glob("*_labels.tif")):
            np.testing.assert_array_equal(tifffile.imread(killed / name), tifffile.imread(whole / name), name)
    if task == "detect":
        coco = [json.loads((folder / "detections.json").read_text()) for folder in (killed, whole)]
        by_image = [{img: [d for d in c if d["image_id"] == img] for img in range(1, n + 1)} for c in coco]
        for img in range(1, n + 1):
            assert _same_detections(
                [{"label": d["category_id"], **d, "box": d["bbox"]} for d in by_image[0][img]],
                [{"label": d["category_id"], **d, "box": d["bbox"]} for d in by_image[1][img]],
            ), f"detections.json differs for image {img}"
