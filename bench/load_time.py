"""Start-up costs a user pays before the first result, each in a fresh process (interleaved rounds, medians):

- ``import torch`` alone (the floor every PyTorch tool pays);
- ``import foveal`` and ``foveal --help`` (neither should import torch);
- ``foveal.load`` of the demo's bundled classifier (``data/samples/demo-weights/localize``, an EfficientNet of 64²
  grayscale inputs) and its first ``predict`` of one 28 × 28 image in memory, each timed inside the process after
  ``import torch``: the figure the API promises is load + first predict beyond the torch import.

``python bench/load_time.py`` writes ``bench/results/load_time.json``; ``--src OTHER/src --out FILE`` times another
checkout's foveal with this machine's packages (a before / after comparison).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _common import spread, write_result

RESULTS = Path(__file__).resolve().parent / "results"
CHECKPOINT = Path(__file__).resolve().parents[1] / "src" / "foveal" / "data" / "samples" / "demo-weights" / "localize"

_PROBE = f"""
import json, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import numpy as np
import foveal
model = foveal.load({str(CHECKPOINT)!r}, device="cpu")
_ = model.model
t2 = time.perf_counter()
result = model.predict(np.zeros((28, 28), np.uint8))
t3 = time.perf_counter()
print(json.dumps({{"torch": t1 - t0, "load": t2 - t1, "first_predict": t3 - t2, "label": result[0].label}}))
"""

_LIGHT = """
import json, sys, time
t0 = time.perf_counter()
import foveal
t1 = time.perf_counter()
print(json.dumps({"import_foveal": t1 - t0, "torch_imported": "torch" in sys.modules}))
"""


def _env(src: Path | None) -> dict[str, str]:
    """The probes' environment: with ``src``, that tree's foveal is imported (e.g. an older commit's checkout)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}"
    return env


def _run(code: str, src: Path | None = None) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env(src))
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _help_seconds(src: Path | None = None) -> float:
    code = (
        "import time, runpy, sys, io, contextlib\nt0 = time.perf_counter()\nsys.argv = ['foveal', '--help']\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n    try:\n        runpy.run_module('foveal', "
        "run_name='__main__')\n    except SystemExit:\n        pass\nprint(time.perf_counter() - t0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env(src))
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS / "load_time.json")
    parser.add_argument("--src", type=Path, default=None, help="import foveal from this src/ folder (another checkout)")
    args = parser.parse_args()
    rows: dict[str, list[float]] = {k: [] for k in ("torch", "load", "first_predict", "import_foveal", "help")}
    torch_free = True
    for _ in range(args.reps):
        probe = _run(_PROBE, args.src)
        light = _run(_LIGHT, args.src)
        torch_free &= not light["torch_imported"]
        for key in ("torch", "load", "first_predict"):
            rows[key].append(probe[key])
        rows["import_foveal"].append(light["import_foveal"])
        rows["help"].append(_help_seconds(args.src))
    summary = {k: spread(v) for k, v in rows.items()}
    beyond = [a + b for a, b in zip(rows["load"], rows["first_predict"], strict=True)]
    result = {
        "checkpoint": str(CHECKPOINT.relative_to(CHECKPOINT.parents[4])),
        "seconds": summary,
        "load_plus_first_predict_beyond_torch": spread(beyond),
        "import_foveal_imports_torch": not torch_free,
        "reps": args.reps,
        "src": str(args.src) if args.src else "this checkout",
    }
    write_result(args.out, result)
    for key, s in summary.items():
        print(f"{key:<16} median {s['median']:.2f} s (min {s['min']:.2f}, max {s['max']:.2f})")
    print(f"load + first predict beyond the torch import: median {spread(beyond)['median']:.2f} s")


if __name__ == "__main__":
    main()
