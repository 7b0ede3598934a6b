"""U-Net border weight map speed: foveal's windowed transforms against one full-image distance transform per cell.

Run: ``python bench/weightmap_speed.py``. Goal: the weight map of a 512² label image with 100+ instances in ≤ 0.25 s.

Input: a deterministic synthetic 512² instance image (discs of random radius around random seeds, split between
neighbouring seeds by nearest seed, so many touch), and the real nuclei labels ``labels_top.tif`` (256 × 512, 64
nuclei) when present. No library ships the paper's w0 / σ weight map, so the reference is the direct method: one
exact Euclidean distance transform of the whole image per cell, keeping the two smallest distances per pixel (with the
same separation borders and class weights as foveal). Both are exact where the term exceeds 1e-3 · w0; the script
checks that and reports the largest difference. numpy / scipy run single-threaded here for both.

Every setting is warmed up, then measured in interleaved rounds (one call of each per round); we report min / median
/ max seconds and the ratio reference / ours on medians. Writes ``bench/results/weightmap_speed.json``.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy
from scipy import ndimage

from _common import write_result
from foveal.data.weightmap import class_mask, class_weights_of, default_cutoff, separation_borders, weight_map

SIZE = 512
SEEDS = 160
W0, SIGMA = 10.0, 5.0
NUCLEI = Path("/work/shared/data/nuclei/labels_top.tif")


def touching_blobs(size: int = SIZE, count: int = SEEDS, seed: int = 0) -> np.ndarray:
    """Instance labels: a disc of random radius around each random seed, split between seeds by nearest seed."""
    rng = np.random.default_rng(seed)
    seeds = np.zeros((size, size), dtype=bool)
    seeds[tuple(rng.integers(0, size, (2, count)))] = True
    markers, found = ndimage.label(seeds)
    distance, (rows, cols) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    labels = markers[rows, cols]
    radius = rng.uniform(0.6, 1.4, found + 1) * size / math.sqrt(count) * 0.6
    labels[distance > radius[labels]] = 0
    return labels


def full_image_weight_map(instances: np.ndarray, w0: float = W0, sigma: float = SIGMA) -> np.ndarray:
    """The reference: the same weight map with one full-image distance transform per cell."""
    labels = np.asarray(instances, dtype=np.int64)
    mask = class_mask(labels)
    weights = class_weights_of(mask, 2)[mask]
    cells = labels * mask
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for cell in np.unique(cells[cells > 0]):
        distance = ndimage.distance_transform_edt(cells != cell)
        np.minimum(d2, np.maximum(d1, distance), out=d2)
        np.minimum(d1, distance, out=d1)
    outside = (mask == 0) & np.isfinite(d2)
    total = d1[outside] + d2[outside]
    weights[outside] += w0 * np.exp(-(total * total) / (2.0 * sigma * sigma))
    return weights.astype(np.float32)


def _measure(settings: dict[str, Callable[[], Any]], warmup: int, reps: dict[str, int]) -> dict[str, list[float]]:
    """Seconds per call: ``warmup`` calls each, then interleaved rounds until each setting has its ``reps``."""
    for fn in settings.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {name: [] for name in settings}
    for round_index in range(max(reps.values())):
        for name, fn in settings.items():
            if round_index < reps[name]:
                start = time.perf_counter()
                fn()
                out[name].append(time.perf_counter() - start)
    return out


def _agreement(instances: np.ndarray) -> dict[str, float]:
    ours, reference = weight_map(instances), full_image_weight_map(instances)
    bound = W0 * math.exp(-(default_cutoff(SIGMA) ** 2) / (2 * SIGMA**2))
    strong = reference - class_weights_of(class_mask(instances), 2)[class_mask(instances)] > bound
    return {
        "max_abs_diff_where_term_above_bound": float(np.abs(ours - reference)[strong].max(initial=0.0)),
        "max_abs_diff_anywhere": float(np.abs(ours - reference).max()),
        "neglected_term_bound": bound,
    }


def _case(name: str, instances: np.ndarray, reps: int, reference_reps: int) -> dict[str, Any]:
    count = len(np.unique(instances)) - 1
    settings = {
        "foveal": lambda: weight_map(instances),
        "full-image EDT per cell": lambda: full_image_weight_map(instances),
    }
    times = _measure(settings, warmup=1, reps={"foveal": reps, "full-image EDT per cell": reference_reps})
    print(
        f"\n{name}: {instances.shape[0]}×{instances.shape[1]}, {count} instances, "
        f"{int(separation_borders(instances).sum())} separation-border pixels (seconds per weight map)"
    )
    print(f"  {'method':26s} {'min':>8s} {'median':>8s} {'max':>8s} {'reps':>5s}")
    summary: dict[str, Any] = {"shape": list(instances.shape), "instances": count, "methods": {}}
    for method, values in times.items():
        med = statistics.median(values)
        print(f"  {method:26s} {min(values):8.4f} {med:8.4f} {max(values):8.4f} {len(values):5d}")
        summary["methods"][method] = {"min": min(values), "median": med, "max": max(values), "all": values}
    ratio = summary["methods"]["full-image EDT per cell"]["median"] / summary["methods"]["foveal"]["median"]
    summary["ratio_reference_over_ours"] = ratio
    summary["agreement"] = _agreement(instances)
    print(
        f"  foveal is {ratio:.1f}× faster; max |difference| where the term > bound: "
        f"{summary['agreement']['max_abs_diff_where_term_above_bound']:.2e}"
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15, help="measured calls of foveal (median of these)")
    parser.add_argument("--reference-reps", type=int, default=5, help="measured calls of the full-image reference")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "weightmap_speed.json")
    args = parser.parse_args()

    start = time.perf_counter()
    synthetic = touching_blobs()
    cases = {"synthetic": _case("synthetic touching blobs", synthetic, args.reps, args.reference_reps)}
    if NUCLEI.exists():
        import tifffile

        nuclei = tifffile.imread(NUCLEI)
        cases["nuclei"] = _case(f"nuclei {NUCLEI.name}", nuclei, args.reps, args.reference_reps)
    else:
        print(f"\n{NUCLEI} not found; skipping the real labels")
    elapsed = time.perf_counter() - start
    median = cases["synthetic"]["methods"]["foveal"]["median"]
    print(f"\ngoal ≤ 0.25 s for 512² with 100+ instances: {median:.4f} s ({'met' if median <= 0.25 else 'missed'})")
    print(f"bench took {elapsed:.0f} s")

    result = {
        "bench": "weightmap_speed",
        "goal": "weight map of a 512² label image with 100+ instances in ≤ 0.25 s",
        "goal_met": median <= 0.25,
        "parameters": {
            "w0": W0,
            "sigma": SIGMA,
            "class_weights": "balanced",
            "borders": True,
            "cutoff": default_cutoff(SIGMA),
        },
        "synthetic_generator": {"size": SIZE, "seeds": SEEDS, "seed": 0},
        "reference": "one exact full-image Euclidean distance transform per cell (scipy), same borders, class weights",
        "cases": cases,
        "threads": "numpy / scipy single-threaded",
        "note": "taken on a shared 2-core machine with other work running",
        "versions": {"numpy": np.__version__, "scipy": scipy.__version__, "python": platform.python_version()},
        "machine": platform.processor() or platform.machine(),
        "seconds": elapsed,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_result(args.out, result, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
