"""U-Net on the bundled nuclei image: train on the left 384 columns, evaluate on the right 128.

Runs the CPU recipe (configs/segment_cpu.yaml) twice with the same seed and budget: with the paper's border weight
map (w0 = 10) and without it (w0 = 0), and reports for each the instance F1 / AP at IoU 0.5, the foreground IoU, the
Rand error and how many touching ground-truth pairs the prediction merged. The FINAL weights of each run are
evaluated (not the best validation checkpoint, since the validation columns are the evaluation columns), once with
one pass (the recipe's default, reported as the result) and once with test-time averaging over the 8 rotations and
flips (``post.tta=dihedral``, reported beside it under "dihedral").

    python bench/nuclei_unet.py                  # both runs (about 2 x the recipe's max_minutes)
    python bench/nuclei_unet.py --w0 10          # one run
    python bench/nuclei_unet.py --eval-only      # re-evaluate the final weights of earlier runs in --out
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from _common import write_result
from foveal.config import CONFIG_DIR, load_config
from foveal.engine.checkpoint import latest_checkpoint
from foveal.results import SegEvaluation
from foveal.tasks import segment, segment_eval, segment_train

RESULTS = Path(__file__).resolve().parent / "results"


def _scores(result: SegEvaluation) -> dict[str, object]:
    assert result.instances is not None
    s = result.summary()
    return {
        "f1_50": s["f1_50"],
        "ap_50": result.instances.ap_at(0.5),
        "mean_ap_50_95": s["ap"],
        "fg_iou": s["fg_iou"],
        "pixel_error": s["pixel_error"],
        "rand_error": s["rand_error"],
        "merged_pairs": s["merged_pairs"],
        "touching_pairs": s["touching_pairs"],
        "tp_fp_fn_50": [result.instances.tp[0], result.instances.fp[0], result.instances.fn[0]],
    }


def run_once(w0: float, out: Path, extra: list[str], eval_only: bool) -> dict[str, object]:
    cfg = load_config(segment.SegmentConfig, CONFIG_DIR / "segment_cpu.yaml", [f"weights.w0={w0}", *extra])
    run = out / f"w0-{w0:g}"
    minutes = None
    if not eval_only:
        start = time.perf_counter()
        segment_train.train(cfg, run_dir=run)
        minutes = round((time.perf_counter() - start) / 60, 2)
    final = latest_checkpoint(run)
    if final is None:
        raise SystemExit(f"no checkpoint in {run}: train it first (without --eval-only)")
    record = json.loads((final / "checkpoint.json").read_text())
    if eval_only:
        minutes = json.loads((run / "train_time.json").read_text())["minutes"]
    else:
        (run / "train_time.json").write_text(json.dumps({"minutes": minutes}))
    info = run / "run_info.json"  # the precision that ran and why (bf16 autocast only where the CPU has bf16 units)
    precision = json.loads(info.read_text()).get("precision") if info.is_file() else None
    one_pass = segment_eval.evaluate_checkpoint(final, None, run / "final-eval")
    dihedral = segment_eval.evaluate_checkpoint(final, None, run / "final-eval-dihedral", tta="dihedral")
    return {
        "w0": w0,
        "train_minutes": minutes,
        "steps": record["step"],
        "precision": precision,
        **_scores(one_pass),
        "dihedral": _scores(dihedral),
        "config": record["config"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--w0", type=float, action="append", help="border weights to run (default: 10 and 0)")
    parser.add_argument("--out", default="runs/bench-nuclei", help="run directories")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the runs in --out again, no training")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for both runs")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [run_once(w0, Path(args.out), args.overrides, args.eval_only) for w0 in (args.w0 or [10.0, 0.0])]
    path = RESULTS / "nuclei_unet.json"
    if path.is_file():  # keep the other w0 of an earlier invocation with the same config
        same = [r for r in json.loads(path.read_text())["runs"] if r["w0"] not in {x["w0"] for x in rows}]
        rows += [r for r in same if {**r["config"], "weights": None} == {**rows[0]["config"], "weights": None}]
        rows.sort(key=lambda r: -float(r["w0"]))  # type: ignore[arg-type]
    record = {
        "split": "nuclei sample 256x512: train on columns 0-383, evaluate on columns 384-511",
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, 2 threads",
        "runs": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    write_result(path, record, indent=1)
    head = f"{'w0':>4} {'tta':>8} {'minutes':>8} {'steps':>6} {'F1@0.5':>7} {'AP@0.5':>7} {'fg IoU':>7} {'Rand err':>8}"
    print(head, "merged")
    for r in rows:
        for tta, v in (("none", r), ("dihedral", r.get("dihedral"))):
            if isinstance(v, dict):
                print(
                    f"{r['w0']:>4g} {tta:>8} {r['train_minutes']:>8.1f} {r['steps']:>6} {v['f1_50']:>7.3f} "
                    f"{v['ap_50']:>7.3f} {v['fg_iou']:>7.3f} {v['rand_error']:>8.4f} "
                    f"{v['merged_pairs']}/{v['touching_pairs']}"
                )


if __name__ == "__main__":
    main()
