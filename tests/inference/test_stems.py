"""The stems of a stream: unique names (``name``, ``name_2``, …) held compactly, the same in every process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from foveal.inference.batch_predict import StemSet, unique_stems


def test_stem_set_agrees_with_a_python_set_through_growth():
    rng = np.random.default_rng(0)
    words = [f"img{int(k)}" for k in rng.integers(0, 3000, 5000)] + ["caf\udce9", "", "x" * 300]
    ours, reference = StemSet(), set()
    for w in words:
        assert (w in ours) == (w in reference), w
        ours.add(w)
        reference.add(w)
    assert len(ours) == len(reference) and all(w in ours for w in reference)
    assert "never-added" not in ours


def test_unique_stems_number_repeated_names_across_folders():
    paths = [Path("a/x.png"), Path("b/x.png"), Path("c/x.jpg"), Path("x_2.png"), Path("d/y.png")]
    assert [it.stem for it in unique_stems(iter(paths))] == ["x", "x_2", "x_3", "x_2_2", "y"]
    assert [it.index for it in unique_stems(iter(paths))] == [0, 1, 2, 3, 4]


def test_digests_are_the_same_in_another_process():
    """A resumed run (another process, another ``PYTHONHASHSEED``) must see the same stems as taken."""
    code = "from foveal.inference.batch_predict import StemSet; print(StemSet._digest('img001'))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(other.stdout) == StemSet._digest("img001")
