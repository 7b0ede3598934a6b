import math

import pytest
import torch
from torch import nn

from foveal.engine.optim import ModelEMA, OptimConfig, build_optimizer, build_schedule
from foveal.engine.schedules import Schedule


def test_paper_schedule_decays_097_every_24_epochs():
    s = Schedule(base_lr=0.256, kind="step_exponential", steps_per_epoch=10, total_steps=1000)
    assert s(0) == 0.256
    assert s(23) == 0.256  # epoch 2.3
    assert s(24) == pytest.approx(0.256 * 0.97)  # epoch 2.4
    assert s(48) == pytest.approx(0.256 * 0.97**2)


def test_warmup_then_cosine():
    s = Schedule(base_lr=1.0, kind="cosine", steps_per_epoch=10, total_steps=110, warmup_steps=10)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.5)
    assert s(110) == pytest.approx(0.0, abs=1e-12)


def test_multistep():
    s = Schedule(base_lr=0.01, kind="multistep", steps_per_epoch=1, total_steps=90, decay_rate=0.1, milestones=(60, 80))
    assert [s(59), s(60), s(80)] == pytest.approx([0.01, 0.001, 0.0001])


def test_lr_scales_with_batch_and_decay_skips_norm_and_bias():
    cfg = OptimConfig()
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    opt = build_optimizer(model, cfg, global_batch=256)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.256 * 256 / 4096)
    assert isinstance(opt, torch.optim.RMSprop)
    assert opt.param_groups[0]["alpha"] == 0.9 and opt.param_groups[0]["momentum"] == 0.9
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert decayed == {id(model[0].weight)}
    assert opt.param_groups[1]["weight_decay"] == 0.0
    sched = build_schedule(cfg, 256, steps_per_epoch=5, total_steps=50)
    assert sched(12) == pytest.approx(0.016 * 0.97)


def test_ema_follows_weights_with_warmup():
    model = nn.Linear(2, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = ModelEMA(model, decay=0.9999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    d = min(0.9999, 2 / 11)
    assert ema.module.weight.flatten().tolist() == pytest.approx([1 - d, 1 - d])
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert math.isclose(ema.decay, 0.9999)


def test_seeded_is_repeatable_and_restores_the_global_rng():
    from foveal.engine.trainer import seeded

    torch.manual_seed(1)
    expected_next = torch.rand(3)
    torch.manual_seed(1)
    with seeded(42):
        a = torch.rand(3)
    with seeded(42):
        b = torch.rand(3)
    assert torch.equal(a, b)
    assert torch.equal(torch.rand(3), expected_next)
