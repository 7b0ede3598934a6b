"""What a report needs to know about how a result was made: command line, versions, machine, data, wall time.

Every command that writes results (a training run, an evaluation, an explanation, the demo) leaves ``run_info.json``
in its output folder; :mod:`foveal.report.html` reads it.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from foveal.io import write_json
from foveal.version import __version__

RUN_INFO = "run_info.json"


_command: list[str] | None = None


def set_command(argv: list[str]) -> None:
    """Record ``argv`` as the command that made the results (the CLI passes ``foveal <its arguments>``)."""
    global _command
    _command = list(argv)


def command_line() -> str:
    """The command line of this process as a shell would take it (``foveal …`` for the CLI)."""
    if _command is not None:
        return " ".join(shlex.quote(a) for a in _command)
    argv = list(sys.argv) or ["python"]
    program = Path(argv[0]).name
    if program == "__main__.py":
        program = "python -m foveal"
    return " ".join([program, *(shlex.quote(a) for a in argv[1:])])


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict[str, Any]:
    """Versions and machine: foveal, torch, torchvision, Python, OS, CPU (name, cores, torch threads), GPUs."""
    import torch
    import torchvision

    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "foveal": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
        "os": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpus": gpus,
    }


def write_run_info(folder: str | Path, kind: str, started: float, **data: Any) -> Path:
    """Write ``folder/run_info.json``: ``kind`` ("train", "eval", "explain", "demo"), the command line, the
    environment, start time, wall seconds since ``started`` (a ``time.time()`` value) and ``data`` (e.g. the
    dataset and its size). A run resumed into the same folder keeps the earlier sessions' records under
    "earlier"."""
    path = Path(folder) / RUN_INFO
    record: dict[str, Any] = {
        "kind": kind,
        "command": command_line(),
        "started": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - started, 2),
        "environment": environment(),
        **data,
    }
    if kind == "train" and data.get("resumed") and path.is_file():
        try:
            earlier = json.loads(path.read_text())
            record["earlier"] = [*earlier.pop("earlier", []), earlier]
        except (OSError, json.JSONDecodeError):
            pass
    write_json(path, record)
    return path
