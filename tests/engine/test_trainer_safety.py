"""The trainer's safety rules on a toy regression: ranges checked, a non-finite loss or weights stop the run with the
last good checkpoint intact, a fresh run over an earlier one replaces it only once it has a checkpoint, ``best`` never
lags the recorded best score after a kill between writes, and stale temporaries of interrupted writes are cleared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from foveal.engine import checkpoint as ckpt_io
from foveal.engine.optim import OptimConfig
from foveal.engine.trainer import TrainConfig, Trainer
from foveal.errors import FovealError


class _Line(Dataset[tuple[Tensor, Tensor]]):
    """16 points of y = 2x − 1, indexed by the trainer's (index, sample_seed)."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, key: tuple[int, int]) -> tuple[Tensor, Tensor]:
        x = torch.tensor([key[0] / 16.0])
        return x, 2 * x - 1


def _trainer(run: Path, loss_hook: Any = None, evaluate: Any = None, **train: Any) -> Trainer:
    torch.manual_seed(0)
    model = nn.Linear(1, 1)

    def loss_fn(net: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        loss = ((net(x) - y) ** 2).mean()
        return loss_hook(loss) if loss_hook is not None else loss

    def score(net: nn.Module) -> dict[str, Any]:
        x = torch.linspace(0, 1, 8)[:, None]
        return {"score": -float(((net(x) - (2 * x - 1)) ** 2).mean())}

    options = {"epochs": 4.0, "eval_every": 0.5, "progress": False, "log_every": 1, "keep_last": 10, **train}
    return Trainer(
        model=model,
        train_set=_Line(),
        collate=default_collate,
        loss_fn=loss_fn,
        evaluate=evaluate or score,
        optim=OptimConfig(name="sgd", lr=0.1, lr_batch=4, momentum=0.0, weight_decay=0.0, schedule="constant"),
        train=TrainConfig(**options),
        batch_size=4,
        run_dir=run,
        meta={"task": "toy", "model": {}},
    )


def _steps(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").glob("step-*"))


def _snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("section", "changes", "needle"),
    [
        ("train", {"epochs": -1.0}, "train.epochs=-1"),
        ("train", {"keep_last": 0}, "train.keep_last=0"),
        ("train", {"eval_every": 0.0}, "train.eval_every=0"),
        ("train", {"checkpoint_every": -1}, "train.checkpoint_every=-1"),
        ("optim", {"lr": float("nan")}, "optim.lr=nan"),
    ],
)
def test_ranges_checked_for_configs_built_in_python(tmp_path: Path, section: str, changes: dict, needle: str) -> None:
    with pytest.raises(FovealError, match=needle.replace(".", r"\.")):
        if section == "train":
            _trainer(tmp_path / "run", **changes)
        else:
            Trainer(
                model=nn.Linear(1, 1),
                train_set=_Line(),
                collate=default_collate,
                loss_fn=lambda net, batch: torch.zeros(()),
                evaluate=lambda net: {},
                optim=OptimConfig(**changes),
                train=TrainConfig(),
                batch_size=4,
                run_dir=tmp_path / "run",
                meta={},
            )
    assert not (tmp_path / "run").exists()


def test_non_finite_loss_stops_with_last_good_checkpoint(tmp_path: Path) -> None:
    calls = {"n": 0}

    def nan_at_step_7(loss: Tensor) -> Tensor:
        calls["n"] += 1
        return loss * float("nan") if calls["n"] == 7 else loss

    run = tmp_path / "run"
    trainer = _trainer(run, loss_hook=nan_at_step_7)
    with pytest.raises(FovealError, match=r"step 6: the training loss \(nan\) became NaN or infinite.*step-00000006"):
        trainer.fit()
    assert _steps(run) == ["step-00000002", "step-00000004", "step-00000006"]
    for name in [*_steps(run), "best"]:
        weights = load_file(str(run / "checkpoints" / name / "model.safetensors"))
        assert all(torch.isfinite(w).all() for w in weights.values()), name


def test_non_finite_weights_are_never_saved(tmp_path: Path) -> None:
    evaluations = {"n": 0}

    def breaks_weights_on_second(net: nn.Module) -> dict[str, Any]:
        evaluations["n"] += 1
        if evaluations["n"] == 2:
            with torch.no_grad():
                net.weight.fill_(float("inf"))
        return {"score": float(evaluations["n"])}

    run = tmp_path / "run"
    with pytest.raises(FovealError, match="the weights became NaN or infinite"):
        _trainer(run, evaluate=breaks_weights_on_second).fit()
    assert _steps(run) == ["step-00000002"]
    assert json.loads((run / "checkpoints" / "best" / "checkpoint.json").read_text())["step"] == 2


def test_fresh_run_replaces_an_earlier_one_only_after_its_first_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _trainer(run, epochs=1.0).fit()
    (run / "notes.txt").write_text("the user's own file")
    earlier = _snapshot(run)

    def fails(net: nn.Module) -> dict[str, Any]:
        raise FovealError("validation data is broken")

    with pytest.raises(FovealError, match="validation data is broken"):
        _trainer(run, evaluate=fails, epochs=2.0).fit()
    assert _snapshot(run) == earlier  # nothing of the failed run, nothing of the earlier one lost
    assert not [p for p in run.iterdir() if p.name.startswith(".")]

    trainer = _trainer(run, epochs=2.0, eval_every=1.0)
    trainer.fit()
    assert trainer.run_dir == run
    assert _steps(run) == ["step-00000004", "step-00000008"]  # the earlier run's step-2 and step-4 are gone
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records) == 8 and min(r["step"] for r in records) == 1
    assert (run / "notes.txt").read_text() == "the user's own file"
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("kill_at", range(1, 9))
def test_best_never_older_than_the_recorded_best_after_a_kill(tmp_path: Path, monkeypatch, kill_at: int) -> None:
    """Killed at any checkpoint write (the score rises at every evaluation, so each evaluation writes best + step)."""
    real = ckpt_io.save_checkpoint
    writes = {"n": 0}

    def save_or_die(*args: Any, **kwargs: Any) -> Path:
        writes["n"] += 1
        if writes["n"] == kill_at:
            raise KeyboardInterrupt  # as a kill between two writes: this write never happens
        return real(*args, **kwargs)

    monkeypatch.setattr(ckpt_io, "save_checkpoint", save_or_die)
    run = tmp_path / "run"
    evaluations = {"n": 0}

    def rising(net: nn.Module) -> dict[str, Any]:
        evaluations["n"] += 1
        return {"score": float(evaluations["n"])}

    with pytest.raises(KeyboardInterrupt):
        _trainer(run, evaluate=rising, epochs=2.0).fit()
    recorded = [
        json.loads((run / "checkpoints" / s / "checkpoint.json").read_text())["best_score"] for s in _steps(run)
    ]
    best = run / "checkpoints" / "best" / "checkpoint.json"
    if recorded:
        assert best.is_file()
        assert json.loads(best.read_text())["metrics"]["score"] >= max(recorded)


def test_interrupted_writes_cleared_at_the_next_start(tmp_path: Path) -> None:
    run = tmp_path / "run"
    _trainer(run, epochs=1.0).fit()
    (run / "checkpoints" / ".step-00000006.tmp-abc").mkdir()
    (run / "checkpoints" / ".step-00000006.tmp-abc" / "model.safetensors").write_bytes(b"half")
    (run / "checkpoints" / ".best.x1y2z3").mkdir()  # the temporary name of earlier versions
    (run / ".metrics.csv.q.tmp").write_text("half")
    trainer = _trainer(run, epochs=2.0)
    trainer.resume(ckpt_io.load_resume_point(run, "test"))
    trainer.fit()
    assert not [p for p in run.rglob(".*")]
    assert _steps(run)[-1] == "step-00000008"


def test_fp16_gradient_scaler_state_is_saved_and_resumed(tmp_path: Path) -> None:
    # fp16 runs on CUDA only; the same scaler on the CPU exercises the save / resume path. Its scale doubles after
    # every 3 finite steps, so a resumed run ends with the uninterrupted run's scale only if the state came back.
    def scaler() -> torch.amp.GradScaler:
        return torch.amp.GradScaler("cpu", init_scale=16.0, growth_interval=3)

    full = _trainer(tmp_path / "full")
    full.scaler = scaler()
    full.fit()
    assert full.scaler.get_scale() == 16.0 * 2 ** (16 // 3)  # 16 steps
    middle = ckpt_io.load_checkpoint(tmp_path / "full" / "checkpoints" / "step-00000008", with_state=True)
    assert middle.meta["grad_scaler"]["scale"] == 16.0 * 2 ** (8 // 3)
    assert middle.meta["grad_scaler"]["_growth_tracker"] == 8 % 3
    resumed = _trainer(tmp_path / "resumed")
    resumed.scaler = scaler()
    resumed.resume(middle)
    assert resumed.scaler.get_scale() == middle.meta["grad_scaler"]["scale"]
    resumed.fit()
    assert resumed.scaler.state_dict() == full.scaler.state_dict()
    assert torch.equal(resumed.model.weight, full.model.weight)
    # a disabled scaler (fp32, bf16) leaves no record
    plain = _trainer(tmp_path / "plain", epochs=0.5)
    plain.fit()
    assert "grad_scaler" not in json.loads(
        (tmp_path / "plain" / "checkpoints" / "step-00000002" / "checkpoint.json").read_text()
    )
