"""The Python API's ``predict`` against the command line's predictor on the same decoded images, same run, same
threads: ``foveal.load(run).predict(images)`` should cost what ``foveal predict``'s batched inference costs (ratio ≈ 1),
with no allocator or model-preparation call by the user.

An EfficientNet-B0 classifier (224², 1 channel, 10 classes; one training step on the bundled Fashion-MNIST sample, so
its weights are as good as random, which does not change its speed) predicts a batch of 16 in-memory 224² images:

- ``api``: ``foveal.load(run, device="cpu").predict(arrays)`` — decoding the arrays, preparing, forward, top-5;
- ``cli predictor``: :class:`foveal.tasks.classify_predict.ClassifyPredictor` (what ``foveal predict`` runs per
  batch) on the same decoded uint8 tensors, prepared the same way, forward, top-5;
- ``eager``: the checkpoint loaded without ``fast`` (BatchNorm not folded, contiguous memory), forward and soft-max
  on the same prepared batch: what a user gets from the loader alone.

The process keeps freed memory (``foveal.load`` sets it, as the CLI does) for every setting alike. Interleaved rounds,
warm-up first, medians. ``python bench/api_speed.py`` writes ``bench/results/api_speed.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import torch

from _common import measure, spread, write_result

RESULTS = Path(__file__).resolve().parent / "results"
THREADS = 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)

    import foveal
    from foveal.tasks.classify import load_classifier
    from foveal.tasks.classify_predict import ClassifyPredictor

    with tempfile.TemporaryDirectory() as tmp:
        short = {"train__max_steps": 1, "data__limit": 8, "data__val_limit": 8, "data__batch_size": 8}
        with contextlib.redirect_stdout(io.StringIO()):
            foveal.train("classify", out=Path(tmp) / "run", device="cpu", train__progress=False, **short)
        model = foveal.load(Path(tmp) / "run", device="cpu")
        rng = np.random.default_rng(0)
        arrays = [rng.integers(0, 256, (224, 224), dtype=np.uint8) for _ in range(args.batch)]
        predictor = ClassifyPredictor(Path(tmp) / "run", 5, "cpu")
        pixels = [torch.from_numpy(a.copy())[None] for a in arrays]
        eager = load_classifier(Path(tmp) / "run", device="cpu").model
        batch = torch.stack([predictor.prepare.image(p) for p in pixels])

        def eager_forward() -> torch.Tensor:
            with torch.inference_mode():
                return eager(batch).softmax(1)

        settings = {
            "api": lambda: model.predict(arrays, top_k=5),
            "cli predictor": lambda: predictor.predict_batch([predictor.prepare.image(p) for p in pixels]),
            "eager": eager_forward,
        }
        times = measure(settings, warmup=2, reps=args.reps)
    medians = {name: spread(t)["median"] for name, t in times.items()}
    result = {
        "work": f"EfficientNet-B0 classifier, {args.batch} in-memory 224² grayscale images, top-5, CPU fp32",
        "threads": THREADS,
        "seconds": {name: spread(t) for name, t in times.items()},
        "images_per_second": {name: args.batch / m for name, m in medians.items()},
        "ratio_api_over_cli_time": medians["api"] / medians["cli predictor"],
        "speedup_api_over_eager": medians["eager"] / medians["api"],
    }
    for name, m in medians.items():
        print(f"{name:>14}: {m * 1000:8.1f} ms  ({args.batch / m:6.1f} img/s)")
    print(f"api / cli predictor time: {result['ratio_api_over_cli_time']:.3f}")
    print(f"api speed-up over eager:  {result['speedup_api_over_eager']:.2f}×")
    write_result(RESULTS / "api_speed.json", result)


if __name__ == "__main__":
    main()
