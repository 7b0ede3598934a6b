"""One command's outputs change an ``--out`` folder as one unit: a failing predict or explain leaves the files of an
earlier run byte-identical, and a second process writing to the same folder is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from foveal import io
from foveal.cli import main


def _snapshot(folder: Path) -> dict[str, bytes]:
    """The files a user sees in ``folder`` (not the staging folder a failed predict keeps for ``--resume``)."""
    files = (p for p in sorted(folder.rglob("*")) if p.is_file())
    return {str(p.relative_to(folder)): p.read_bytes() for p in files if io.STAGING_NAME not in p.parts}


def _images(tmp_path: Path) -> tuple[Path, Path, Path]:
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    Image.fromarray(np.full((28, 28), 40, np.uint8)).save(first)
    Image.fromarray((np.arange(28 * 28) % 251).astype(np.uint8).reshape(28, 28)).save(second)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(second.read_bytes()[:60])
    return first, second, truncated


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("foveal: error: ") and needle in err, err


@pytest.mark.parametrize("verb", ["predict", "explain"])
def test_failing_command_leaves_earlier_outputs_intact(
    capsys: pytest.CaptureFixture[str], ckpt_run: Path, tmp_path: Path, verb: str
) -> None:
    first, second, truncated = _images(tmp_path)
    out = tmp_path / "out"
    strict = ["--strict"] if verb == "predict" else []
    assert main([verb, str(ckpt_run), str(first), "--out", str(out)]) == 0
    capsys.readouterr()
    before = _snapshot(out)
    assert any(name.endswith((".jsonl", ".json")) for name in before)
    # the second image would replace files of the first run; the truncated one makes the command fail
    _fails(capsys, [verb, str(ckpt_run), str(second), str(first), str(truncated), "--out", str(out), *strict], "trunc")
    assert _snapshot(out) == before
    # explain discards its staging folder; predict keeps it for --resume, holding none of the published names
    staged = out / io.STAGING_NAME
    assert verb == "predict" or not staged.exists()
    staged_names = {str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file()} if staged.exists() else set()
    assert not {n for n in staged_names if not n.startswith(".")} & set(before)


@pytest.mark.parametrize("verb", ["predict", "explain"])
def test_second_writer_to_one_folder_is_refused(
    capsys: pytest.CaptureFixture[str], ckpt_run: Path, tmp_path: Path, verb: str
) -> None:
    first, _, _ = _images(tmp_path)
    out = tmp_path / "out"
    with io.locked_folder(out):  # another process holds the folder (flock conflicts across open files)
        _fails(capsys, [verb, str(ckpt_run), str(first), "--out", str(out)], "another foveal process is writing")
    assert _snapshot(out) == {io.LOCK_NAME: b""}
    assert main([verb, str(ckpt_run), str(first), "--out", str(out)]) == 0  # free again once released
