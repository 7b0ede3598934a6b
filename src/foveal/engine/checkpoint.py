"""Checkpoints: weights in safetensors, everything else in JSON, written atomically.

A checkpoint is a directory::

    step-00001200/
        model.safetensors        weights used for inference (the EMA weights when EMA is on)
        train_state.safetensors  raw weights (with EMA), optimizer tensors, torch RNG state — only for resuming
        checkpoint.json          task, model spec (arch + args), config, step, epoch, optimizer scalars, RNG states,
                                 metrics, class names

It is written into a temporary directory beside its final place, flushed to the disk and renamed, so a crash (or a
power loss) never leaves a half-written checkpoint and never damages an earlier one; :func:`remove_interrupted` clears
what an interrupted write left. Loading never executes code from the file.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from foveal.errors import FovealError, missing_message
from foveal.io import atomic_dir, missing_reason, remove_stale_temporaries

FORMAT = "foveal-checkpoint"
VERSION = 1
_MODEL = "model.safetensors"
_STATE = "train_state.safetensors"
_META = "checkpoint.json"


@dataclass
class Checkpoint:
    """A loaded checkpoint: ``meta`` (the JSON record), inference weights, and resume state when present."""

    path: Path
    meta: dict[str, Any]
    weights: dict[str, Tensor]
    state: dict[str, Tensor] = field(default_factory=dict)

    @property
    def step(self) -> int:
        return int(self.meta.get("step", 0))


def _contiguous(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def _optimizer_split(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able scalars."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_join(tensors: dict[str, Tensor], record: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for pid, st in record.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(st)
    return {"state": state, "param_groups": record["param_groups"]}


def rng_state() -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The process's RNG states: JSON-able (python, numpy) and tensors (torch)."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    record = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [name, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return record, {"rng.torch": torch.get_rng_state()}


def restore_rng(record: dict[str, Any], tensors: dict[str, Tensor]) -> None:
    if "python" in record:
        v, state, gauss = record["python"]
        random.setstate((v, tuple(state), gauss))
    if "numpy" in record:
        name, keys, pos, has_gauss, cached = record["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])


def save_checkpoint(
    directory: str | Path,
    *,
    model: nn.Module,
    meta: dict[str, Any],
    ema: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    with_rng: bool = True,
    grad_scaler: torch.amp.GradScaler | None = None,
) -> Path:
    """Write a checkpoint directory atomically and return its path.

    Args:
        directory: final path of the checkpoint directory (replaced atomically if it exists).
        model: the trained model; its state dict is stored.
        meta: JSON-able record (task, model spec, config, step, epoch, metrics, classes...).
        ema: EMA copy of the model; when given, its weights become the inference weights.
        optimizer: stored for resuming.
        with_rng: store python / numpy / torch RNG states for exact resumption.
        grad_scaler: fp16 training's gradient scaler; its state (scale, growth tracker: numbers only) goes into the
            record when it is enabled.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    raw = _contiguous(model.state_dict())
    state: dict[str, Tensor] = {}
    record = {"format": FORMAT, "version": VERSION, **meta}
    if ema is not None:
        state.update({f"raw.{k}": v for k, v in raw.items()})
        weights = _contiguous(ema.state_dict())
        record["ema"] = True
    else:
        weights = raw
    if optimizer is not None:
        opt_tensors, opt_record = _optimizer_split(optimizer)
        state.update(_contiguous(opt_tensors))
        record["optimizer"] = opt_record
    if grad_scaler is not None and grad_scaler.is_enabled():
        record["grad_scaler"] = grad_scaler.state_dict()
    if with_rng:
        rng_record, rng_tensors = rng_state()
        state.update(rng_tensors)
        record["rng"] = rng_record
    with atomic_dir(directory) as tmp:
        save_file(weights, str(tmp / _MODEL))
        if state:
            save_file(state, str(tmp / _STATE))
        (tmp / _META).write_text(json.dumps(record, indent=1, default=_json_default))
    return directory


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(f"not JSON-serializable: {type(o).__name__}")


def find_checkpoint(path: str | Path) -> Path:
    """Resolve a checkpoint directory from itself, a run directory (best, else latest) or its checkpoints folder."""
    p = Path(path)
    if not p.exists():
        fix = "pass a checkpoint folder or the run directory of a training"
        raise FovealError(missing_message("checkpoint", p, missing_reason(p), fix))
    if (p / _META).is_file():
        return p
    for base in (p / "checkpoints", p):
        if (base / "best" / _META).is_file():
            return base / "best"
        steps = sorted(d for d in base.glob("step-*") if (d / _META).is_file())
        if steps:
            return steps[-1]
    raise FovealError(f"{p} holds no foveal checkpoint (expected {_META} and {_MODEL}, or a run directory)")


def checkpoint_task(path: str | Path) -> str:
    """The task ("classify", "segment", ...) of the checkpoint at ``path``, read from its record only."""
    p = find_checkpoint(path)
    try:
        meta = json.loads((p / _META).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FovealError(f"checkpoint record {p / _META} is unreadable ({exc}); the checkpoint is damaged") from None
    task = meta.get("task") if isinstance(meta, dict) else None
    if not isinstance(task, str):
        raise FovealError(f"{p} is not a foveal checkpoint (its {_META} names no task)")
    return task


def load_resume_point(run_dir: str | Path, command: str) -> Checkpoint:
    """The latest step checkpoint of ``run_dir`` with its training state, for ``--resume``.

    ``command`` ("foveal train segment", ...) names the command that writes such runs in the error message.
    """
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise FovealError(
            f"nothing to resume in {run_dir}: it holds no checkpoints/step-* directory; pass the out folder of an "
            f"earlier '{command}' run, or start a new run there without resume",
            options=("out", "resume"),
        )
    return load_checkpoint(latest, with_state=True)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    steps = sorted(d for d in (Path(run_dir) / "checkpoints").glob("step-*") if (d / _META).is_file())
    return steps[-1] if steps else None


def load_checkpoint(path: str | Path, with_state: bool = False) -> Checkpoint:
    """Load a checkpoint (directory, or a run directory) without executing any code from it."""
    p = find_checkpoint(path)
    try:
        meta = json.loads((p / _META).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FovealError(f"checkpoint record {p / _META} is unreadable ({exc}); the checkpoint is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FovealError(f"{p} is not a foveal checkpoint (its {_META} lacks format '{FORMAT}')")
    if int(meta.get("version", 0)) > VERSION:
        raise FovealError(f"checkpoint {p} has format version {meta['version']}; upgrade foveal to read it")
    try:
        weights = load_file(str(p / _MODEL))
        state = load_file(str(p / _STATE)) if with_state and (p / _STATE).is_file() else {}
    except (OSError, SafetensorError) as exc:
        raise FovealError(f"checkpoint weights in {p} are unreadable ({exc}); the checkpoint is damaged") from None
    _check_input_record(p, meta.get("input"))
    return Checkpoint(path=p, meta=meta, weights=weights, state=state)


#: The largest input edge a checkpoint record may name (pixels); larger values can only come from a damaged record.
MAX_INPUT_EDGE = 65536


def _check_input_record(path: Path, record: Any) -> None:
    """Refuse an input record whose sizes or channels no trained model can have (a damaged or edited record)."""
    if record is None:
        return
    if not isinstance(record, dict):
        raise FovealError(f"checkpoint {path}: its input record is not a mapping; the checkpoint is damaged")
    for key in ("resolution", "min_size", "max_size"):
        value = record.get(key)
        if value is not None and not (_is_int(value) and 1 <= value <= MAX_INPUT_EDGE):
            raise FovealError(
                f"checkpoint {path} records an impossible input {key} {value!r} (expected 1 … {MAX_INPUT_EDGE} "
                "pixels); the checkpoint is damaged: use an intact copy"
            )
    channels = record.get("channels")
    if channels is not None and channels not in (1, 3):
        raise FovealError(
            f"checkpoint {path} records {channels!r} input channels (expected 1 or 3); the checkpoint is damaged"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def require_task(ckpt: Checkpoint, tasks: tuple[str, ...], role: str) -> None:
    """Refuse a checkpoint of another task where ``role`` (e.g. "model.weights=…") needs one of ``tasks``."""
    task = ckpt.meta.get("task")
    if task not in tasks:
        raise FovealError(
            f"{role} is a '{task}' checkpoint ({ckpt.path}); this needs the checkpoint of a {' or '.join(tasks)} run"
        )


@contextmanager
def reading_record(ckpt: Checkpoint) -> Iterator[None]:
    """Around the reading of a checkpoint's model record: a missing or malformed field becomes one message."""
    try:
        yield
    except (KeyError, TypeError, ValueError) as exc:
        raise FovealError(f"checkpoint {ckpt.path} lacks its model record ({exc}); it is damaged or too old") from None


def load_checkpoint_weights(model: nn.Module, ckpt: Checkpoint) -> None:
    """Load a checkpoint's weights into the model rebuilt from its own record; a mismatch means a damaged checkpoint."""
    try:
        load_weights_into(model, ckpt.weights, f"checkpoint {ckpt.path}")
    except FovealError as exc:
        raise FovealError(
            f"{exc}; its model record and its weights disagree, so the checkpoint is damaged: use an intact copy"
        ) from None


def load_weights_into(model: nn.Module, weights: dict[str, Tensor], source: str) -> None:
    """Load ``weights`` into ``model`` strictly, turning any mismatch into a message that names it."""
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(f"'{k}' has shape {tuple(weights[k].shape)} there but {tuple(own[k].shape)} here")
        if missing:
            parts.append(f"{len(missing)} weights missing (e.g. '{missing[0]}')")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected weights (e.g. '{unexpected[0]}')")
        raise FovealError(f"{source} does not fit this model: {'; '.join(parts)}")
    model.load_state_dict(weights)


def restore_training(
    ckpt: Checkpoint,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: nn.Module | None,
    grad_scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Put model, EMA, optimizer, gradient scaler (fp16) and RNG states back as they were when ``ckpt`` was written."""
    raw = {k[4:]: v for k, v in ckpt.state.items() if k.startswith("raw.")}
    if ckpt.meta.get("ema"):
        load_weights_into(model, raw, f"checkpoint {ckpt.path}")
        if ema is not None:
            load_weights_into(ema, ckpt.weights, f"checkpoint {ckpt.path}")
    else:
        load_weights_into(model, ckpt.weights, f"checkpoint {ckpt.path}")
    if "optimizer" in ckpt.meta:
        optimizer.load_state_dict(_optimizer_join(ckpt.state, ckpt.meta["optimizer"]))
    if grad_scaler is not None and grad_scaler.is_enabled() and ckpt.meta.get("grad_scaler"):
        grad_scaler.load_state_dict(ckpt.meta["grad_scaler"])
    restore_rng(ckpt.meta.get("rng", {}), ckpt.state)


def remove_interrupted(run_dir: str | Path) -> list[Path]:
    """Remove the temporary folders and files that interrupted writes left in a run directory and its checkpoints."""
    folder = Path(run_dir) / "checkpoints"
    removed = remove_stale_temporaries(run_dir)
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.startswith(".") and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)  # also the ".step-….XXXX" folders of earlier versions
                removed.append(entry)
    return removed


def prune_checkpoints(run_dir: str | Path, keep_last: int) -> None:
    """Keep the newest ``keep_last`` step checkpoints (``best`` is separate and always kept)."""
    steps = sorted(d for d in (Path(run_dir) / "checkpoints").glob("step-*") if d.is_dir())
    for d in steps[: max(0, len(steps) - keep_last)]:
        shutil.rmtree(d, ignore_errors=True)
