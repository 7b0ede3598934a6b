"""Metric records: appended to JSONL as training goes, mirrored to CSV, kept for the curves."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from foveal import io
from foveal.io import atomic_output


class MetricLog:
    """Append-only metric records in ``metrics.jsonl`` with a ``metrics.csv`` mirror.

    On resume, records written after the checkpoint's step are dropped so the log matches the restored run.
    """

    def __init__(self, run_dir: str | Path, resume_step: int | None = None) -> None:
        self.jsonl = Path(run_dir) / "metrics.jsonl"
        self.csv = Path(run_dir) / "metrics.csv"
        self.records: list[dict[str, Any]] = []
        if resume_step is not None and self.jsonl.is_file():
            for line in self.jsonl.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if rec.get("step", 0) <= resume_step:
                    self.records.append(rec)
        self._rewrite_jsonl()

    def _rewrite_jsonl(self) -> None:
        self.jsonl.parent.mkdir(parents=True, exist_ok=True)
        io.atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self.records))

    def append(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def write_csv(self) -> None:
        keys: list[str] = []
        for r in self.records:
            keys.extend(k for k in r if k not in keys)
        with atomic_output(self.csv) as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            for r in self.records:
                w.writerow({k: r.get(k, "") for k in keys})
