"""Keeping freed memory: page faults of a forward pass with and without foveal's malloc settings."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from foveal.engine import allocator

_FAULTS = """
import resource, torch
from foveal.engine.allocator import keep_freed_memory
from foveal.models.efficientnet import efficientnet
torch.set_num_threads(1)
tuned = keep_freed_memory()
model, x = efficientnet(-3, num_classes=10).eval(), torch.randn(4, 3, 128, 128)
with torch.inference_mode():
    for _ in range(2):  # warm-up: the heap grows to the pass's peak
        model(x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        model(x)
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _forward_page_faults(malloc: str) -> tuple[bool, int]:
    env = {**os.environ, "FOVEAL_MALLOC": malloc}
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True)
    tuned, faults = out.stdout.split()
    return tuned == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_forward_passes_reuse_freed_memory_instead_of_faulting_pages() -> None:
    tuned, faults = _forward_page_faults("keep")
    untouched, default_faults = _forward_page_faults("default")
    assert tuned and not untouched
    assert default_faults > 1000  # glibc unmaps every large freed tensor, so the next one faults its pages in
    assert faults < default_faults / 4


def test_the_environment_can_leave_malloc_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.setenv("FOVEAL_MALLOC", "default")
    assert allocator.keep_freed_memory() is False
    assert allocator._done is False
