"""Fashion-MNIST (full 60k / 10k from the Debian package) with the CPU-budget recipe: test top-1 and training time.

Usage: python bench/fashion_mnist.py [--out runs/bench-fashion] [key=value ...]
Writes bench/results/fashion_mnist.json and bench/results/fashion_mnist_curves.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from _common import write_result
from foveal.config import CONFIG_DIR, load_config
from foveal.tasks import classify, classify_eval, classify_train

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/bench-fashion")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        print("needs the Debian package dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)")
        return 1
    cfg = load_config(classify.ClassifyConfig, CONFIG_DIR / "classify_cpu.yaml", args.overrides)
    started = time.perf_counter()
    metrics = classify_train.train(cfg, run_dir=args.out)
    wall = time.perf_counter() - started
    run = Path(args.out)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_top1" in r]
    # The final weights, not the "best" checkpoint: validation here is the test split, so picking by it would leak.
    from foveal.engine.checkpoint import latest_checkpoint

    final = latest_checkpoint(run)
    assert final is not None
    result = classify_eval.evaluate_checkpoint(final, "fashion-mnist", "test", None)
    out = {
        "benchmark": "Fashion-MNIST 60k train / 10k test, recipe configs/classify_cpu.yaml",
        "command": "python bench/fashion_mnist.py " + " ".join(args.overrides),
        "test_top1": result.top1,
        "test_top5": result.top5,
        "final_step": metrics.get("step"),
        "training_minutes_incl_evals": evals[-1]["time_s"] / 60 if evals else None,
        "wall_minutes_total": wall / 60,
        "epochs_done": evals[-1]["epoch"] if evals else None,
        "per_epoch_val_top1": [(r["epoch"], r["val_top1"]) for r in evals],
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "overrides": args.overrides,
    }
    RESULTS.mkdir(exist_ok=True)
    write_result(RESULTS / "fashion_mnist.json", out, indent=1)
    shutil.copyfile(run / "curves.png", RESULTS / "fashion_mnist_curves.png")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
