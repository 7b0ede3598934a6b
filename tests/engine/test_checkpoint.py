import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from foveal.engine import checkpoint as ck
from foveal.errors import FovealError


def _model():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))


def _trained():
    torch.manual_seed(0)
    model = _model()
    model(torch.randn(2, 1, 6, 6))
    opt = torch.optim.RMSprop(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(2, 1, 6, 6)).sum().backward()
        opt.step()
    return model, opt


def test_round_trip_restores_model_optimizer_and_rng(tmp_path):
    model, opt = _trained()
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    path = ck.save_checkpoint(tmp_path / "step-1", model=model, meta={"task": "t", "step": 7}, optimizer=opt)
    expected = (random.random(), np.random.rand(), torch.rand(1))

    model2, opt2 = _model(), None
    model2(torch.randn(2, 1, 6, 6))
    opt2 = torch.optim.RMSprop(model2.parameters(), lr=0.01, momentum=0.9)
    loaded = ck.load_checkpoint(path, with_state=True)
    assert loaded.step == 7 and loaded.meta["task"] == "t"
    ck.restore_training(loaded, model2, opt2, None)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for k in s1:
        for key in s1[k]:
            assert torch.equal(torch.as_tensor(s1[k][key]), torch.as_tensor(s2[k][key]))
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_files_are_safetensors_and_json(tmp_path):
    model, opt = _trained()
    path = ck.save_checkpoint(tmp_path / "c", model=model, meta={"task": "t"}, optimizer=opt)
    assert sorted(p.name for p in path.iterdir()) == ["checkpoint.json", "model.safetensors", "train_state.safetensors"]
    record = json.loads((path / "checkpoint.json").read_text())
    assert record["format"] == "foveal-checkpoint" and "optimizer" in record and "rng" in record


def test_failed_write_leaves_earlier_checkpoint_intact(tmp_path, monkeypatch):
    model, _ = _trained()
    path = ck.save_checkpoint(tmp_path / "best", model=model, meta={"task": "t", "step": 1})
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        ck.save_checkpoint(tmp_path / "best", model=model, meta={"task": "t", "step": 2})
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["best"]  # no temporary left behind


def test_find_checkpoint_prefers_best_then_latest(tmp_path):
    model, _ = _trained()
    for step in (2, 10):
        ck.save_checkpoint(tmp_path / "checkpoints" / f"step-{step:08d}", model=model, meta={"task": "t", "step": step})
    assert ck.find_checkpoint(tmp_path).name == "step-00000010"
    ck.save_checkpoint(tmp_path / "checkpoints" / "best", model=model, meta={"task": "t", "step": 2})
    assert ck.find_checkpoint(tmp_path).name == "best"
    ck.prune_checkpoints(tmp_path, keep_last=1)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best", "step-00000010"]


def test_damaged_checkpoints_give_clear_errors(tmp_path):
    model, _ = _trained()
    path = ck.save_checkpoint(tmp_path / "c", model=model, meta={"task": "t"})
    with pytest.raises(FovealError, match="missing does not exist"):
        ck.load_checkpoint(tmp_path / "missing")
    with pytest.raises(FovealError, match="no foveal checkpoint"):
        ck.load_checkpoint(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None)
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(FovealError, match="damaged"):
        ck.load_checkpoint(path)
    (path / "checkpoint.json").write_text("{not json")
    with pytest.raises(FovealError, match="damaged"):
        ck.load_checkpoint(path)


def test_load_weights_into_names_the_mismatch():
    a = nn.Linear(4, 3)
    with pytest.raises(FovealError, match=r"'weight' has shape \(5, 4\)"):
        ck.load_weights_into(a, {"weight": torch.zeros(5, 4), "bias": torch.zeros(3)}, "file x")
    with pytest.raises(FovealError, match="missing"):
        ck.load_weights_into(a, {"weight": torch.zeros(3, 4)}, "file x")
