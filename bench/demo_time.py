"""Time of ``foveal demo`` stage by stage: wall and CPU seconds of each stage (from the demo's run_info.json), the whole
process's user + system CPU seconds, and the wall time the demo would take alone on ``--cores`` cores, estimated as
CPU seconds / cores (an estimate: it assumes the demo keeps every core busy, and CPU seconds on a loaded machine run
somewhat slower than on an idle one). The load average is recorded, since other jobs on the machine lengthen the wall
times.

    python bench/demo_time.py --out /tmp/demo-time --results bench/results/demo_time.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/foveal-demo-time", help="the demo's folder (replaced)")
    parser.add_argument("--cores", type=int, default=2, help="cores of the machine the estimate is for")
    parser.add_argument("--results", default="bench/results/demo_time.json")
    parser.add_argument("--note", default="", help="what else ran on the machine")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    load_before = os.getloadavg()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "foveal", "demo", "--out", args.out], check=True)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    info = json.loads((Path(args.out) / "run_info.json").read_text())
    result = {
        "what": "foveal demo, stage by stage",
        "wall_s": round(wall, 1),
        "user_s": round(usage.ru_utime, 1),
        "sys_s": round(usage.ru_stime, 1),
        "estimated_idle_wall_s": round(cpu / args.cores, 1),
        "estimate": f"(user + sys CPU seconds) / {args.cores} cores",
        "stages": {s["name"]: s["seconds"] for s in info["stages"]},
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
        "cpu": info["environment"].get("cpu") or platform.machine(),
        "torch_threads": info["environment"].get("torch_threads"),
        "note": args.note,
    }
    write_result(Path(args.results), result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
