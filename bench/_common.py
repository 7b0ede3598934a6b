"""What the benchmarks share: timing in interleaved rounds, so that drifting machine load hits every setting alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def measure(settings: dict[str, Callable[[], Any]], warmup: int, reps: int, inner: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each setting: ``warmup`` calls of each, then ``reps`` rounds in which each setting is
    called ``inner`` times in a row (the mean of those is one measurement)."""
    for fn in settings.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(reps):
        for name, fn in settings.items():
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            out[name].append((time.perf_counter() - start) / inner)
    return out


def spread(times: list[float]) -> dict[str, float]:
    """Min, median and max of ``times``."""
    return {"min": min(times), "median": statistics.median(times), "max": max(times)}
