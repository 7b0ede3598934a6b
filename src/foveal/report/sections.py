"""Report sections every report has (how the result was made) and the training run's page.

A section builder takes the folder a command wrote and returns HTML fragments (:mod:`foveal.report.html`); a file the
section needs and cannot find is a FovealError naming it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from foveal.errors import FovealError
from foveal.report.html import (
    Page,
    esc,
    image,
    key_values,
    number,
    paragraph,
    preformatted,
    read_json,
    table,
)

_NOT_RECORDED = (
    "Not recorded: this folder has no run_info.json (written by foveal train / eval / explain / demo since the HTML "
    "report exists)."
)


def run_info(folder: Path) -> dict[str, Any]:
    """``folder/run_info.json``, or {} when the folder predates it."""
    from foveal.engine.runinfo import RUN_INFO

    path = folder / RUN_INFO
    return dict(read_json(path, "the run record")) if path.is_file() else {}


def _wall(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "n/a"
    minutes, s = divmod(float(seconds), 60)
    return f"{int(minutes)} min {s:.1f} s" if minutes else f"{s:.1f} s"


def _data_rows(data: Any) -> list[tuple[str, Any]]:
    if not isinstance(data, dict):
        return []
    return [(f"data: {k.replace('_', ' ')}", v) for k, v in data.items() if v is not None]


def _placement_rows(info: dict[str, Any]) -> list[tuple[str, Any]]:
    """The device and the number format the network ran in, and why that format (``auto``'s choice or asked for)."""
    rows: list[tuple[str, Any]] = []
    if info.get("device"):
        rows.append(("device", info["device"]))
    precision = info.get("precision")
    if isinstance(precision, dict) and precision.get("name"):
        reason = precision.get("reason")
        rows.append(("precision", f"{precision['name']} ({reason})" if reason else precision["name"]))
    elif isinstance(precision, str):  # records written before the reason was kept
        rows.append(("precision", precision))
    return rows


def provenance_section(page: Page, folder: Path, config: Any = None) -> None:
    """How the result was made: command line, config, versions, CPU / GPU, device and precision (and why that
    precision), data source and size, wall time."""
    info = run_info(folder)
    if not info:
        page.add("How this was made", [paragraph(_NOT_RECORDED, "note")], "provenance")
        return
    env = dict(info.get("environment", {}))
    gpus = env.get("gpus") or []
    rows: list[tuple[str, Any]] = [
        ("command", info.get("command", "n/a")),
        ("started (UTC)", info.get("started", "n/a")),
        ("wall time", _wall(info.get("wall_s"))),
        ("foveal / torch / torchvision", f"{env.get('foveal')} / {env.get('torch')} / {env.get('torchvision')}"),
        ("Python, OS", f"{env.get('python')}, {env.get('os')}"),
        ("CPU", f"{env.get('cpu')} ({env.get('cpu_cores')} cores, {env.get('torch_threads')} torch threads)"),
        ("GPU", ", ".join(gpus) if gpus else "none (CPU)"),
    ]
    rows += _placement_rows(info)
    if info.get("checkpoint"):
        rows.append(("checkpoint", info["checkpoint"]))
    rows += _data_rows(info.get("data"))
    for key in ("batch_size", "steps", "steps_per_epoch", "processes", "resumed"):
        if key in info:
            rows.append((key.replace("_", " "), info[key]))
    if info.get("options"):
        rows.append(("options", json.dumps(info["options"])))
    parts = [key_values(rows)]
    for earlier in info.get("earlier", []):
        parts.append(paragraph(f"Earlier session: {earlier.get('command')} ({_wall(earlier.get('wall_s'))})", "note"))
    if config is not None:
        parts += ["<h3>Config</h3>", preformatted(json.dumps(config, indent=1))]
    page.add("How this was made", parts, "provenance")


# -- training --------------------------------------------------------------------------------------------------------
def _records(run: Path) -> list[dict[str, Any]]:
    """The records of the run's metric log; a line cut short by a kill is skipped, a log without one readable
    record is a FovealError."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise FovealError(f"report: cannot read the metric log {path} ({exc.strerror or exc})") from None
    records = [r for r in map(_record, lines) if r is not None]
    if not records and any(line.strip() for line in lines):
        raise FovealError(
            f"report: the metric log {path} holds no JSON records (is it binary or damaged?): restore it, or move it "
            "away to draw the report without training curves"
        )
    return records


def _record(line: bytes) -> dict[str, Any] | None:
    """One line of the metric log as a record; None for a line that is not a JSON object (cut short, damaged)."""
    try:
        record = json.loads(line.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _curves(records: list[dict[str, Any]]) -> str:
    """Loss, each validation metric and the learning rate against the step, drawn from the metric log."""
    from foveal.report.plots import plot_curves

    val_keys = sorted({k for r in records for k in r if k.startswith("val_") and k not in ("val_loss", "val_score")})
    panels: dict[str, tuple[str, ...]] = {"loss": ("train_loss", "val_loss")}
    panels.update({k.removeprefix("val_"): (k,) for k in val_keys[:4]})
    panels["learning rate"] = ("lr",)
    with tempfile.TemporaryDirectory() as tmp:
        path = plot_curves(records, Path(tmp) / "curves.png", keys=panels, x_key="step")
        return image(path, "Training loss (per logged step), validation metrics and learning rate against the step.")


def _checkpoint_row(path: Path, name: str) -> tuple[Any, ...]:
    meta = read_json(path / "checkpoint.json", "the checkpoint record")
    metrics = {k: v for k, v in dict(meta.get("metrics") or {}).items() if k != "score"}
    shown = ", ".join(f"{k} {number(v)}" for k, v in metrics.items() if isinstance(v, (int, float)))
    return name, str(path), meta.get("step"), number(meta.get("epoch"), 2), shown or "n/a"


def checkpoint_table(run: Path) -> str:
    """Best and final checkpoints with their step, epoch and validation metrics."""
    from foveal.engine.checkpoint import latest_checkpoint

    rows = []
    best = run / "checkpoints" / "best"
    if (best / "checkpoint.json").is_file():
        rows.append(_checkpoint_row(best, "best"))
    final = latest_checkpoint(run)
    if final is not None:
        rows.append(_checkpoint_row(final, "final"))
    if not rows:
        return paragraph("No checkpoint yet (the run stopped before its first evaluation).", "note")
    return table(("", "folder", "step", "epoch", "validation metrics"), rows, numeric=(2, 3))


def training_page(run: Path) -> Page:
    """The report of a run directory: provenance, config, curves, checkpoints, the last evaluation."""
    records = _records(run)
    info = run_info(run)
    task = info.get("task") or _checkpoint_task(run)
    page = Page(f"Training run: {run.name}", f"{task or 'unknown'} run in {run.resolve()}")
    evals = [r for r in records if any(k.startswith("val_") for k in r)]
    summary: list[str] = []
    if evals:
        last = evals[-1]
        shown = [
            (k.removeprefix("val_"), number(v)) for k, v in last.items() if k.startswith("val_") and k != "val_score"
        ]
        summary.append(paragraph(f"Last evaluation at step {last.get('step')} (epoch {last.get('epoch')}):", "big"))
        summary.append(table([k for k, _ in shown], [[v for _, v in shown]], numeric=range(len(shown))))
    summary.append(checkpoint_table(run))
    page.add("Result", summary, "result")
    curves = [_curves(records)] if records else [paragraph("No metric log (metrics.jsonl) in this run.", "note")]
    rates = [r["images_per_s"] for r in records if isinstance(r.get("images_per_s"), (int, float))][1:]
    if rates:
        curves.append(paragraph(f"Throughput: median {sorted(rates)[len(rates) // 2]:.1f} images/s.", "note"))
    page.add("Curves", curves, "curves")
    config_path = run / "config.json"
    config = read_json(config_path, "the run's config") if config_path.is_file() else None
    provenance_section(page, run, config)
    return page


def _checkpoint_task(run: Path) -> str | None:
    from foveal.engine.checkpoint import latest_checkpoint

    final = latest_checkpoint(run)
    if final is None:
        return None
    return str(read_json(final / "checkpoint.json", "the checkpoint record").get("task"))


def file_list(folder: Path, names: list[str]) -> str:
    """A short list of the files a command wrote (relative links)."""
    items = "".join(f'<li><a href="{esc(n)}">{esc(n)}</a></li>' for n in names if (folder / n).exists())
    return f"<ul>{items}</ul>" if items else ""
