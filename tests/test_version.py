"""The package's version: one value, stated in foveal/version.py and in pyproject.toml."""

from __future__ import annotations

import re
from pathlib import Path

import foveal
from foveal.version import __version__

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_states_the_same_version() -> None:
    project = PYPROJECT.read_text().split("[project]", 1)[1].split("\n[", 1)[0]
    found = re.search(r'^version\s*=\s*"([^"]+)"', project, re.MULTILINE)
    assert found is not None, "pyproject.toml's [project] table states no version"
    assert found.group(1) == __version__


def test_package_root_gives_the_same_version() -> None:
    assert foveal.__version__ == __version__
