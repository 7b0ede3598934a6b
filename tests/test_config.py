from dataclasses import dataclass, field
from typing import Literal

import pytest

from foveal.config import apply_overrides, from_dict, load_config, to_dict
from foveal.errors import FovealError
from foveal.tasks.classify import ClassifyConfig


@dataclass(frozen=True)
class Inner:
    lr: float = 0.1
    name: Literal["sgd", "adam"] = "sgd"
    steps: tuple[float, ...] = ()
    clip: float | None = None


@dataclass(frozen=True)
class Outer:
    inner: Inner = field(default_factory=Inner)
    epochs: int = 3
    flag: bool = False


def test_overrides_are_typed_and_nested():
    cfg = load_config(Outer, None, ["inner.lr=0.5", "epochs=7", "flag=true", "inner.steps=[1, 2.5]", "inner.clip=null"])
    assert cfg.inner.lr == 0.5 and isinstance(cfg.inner.lr, float)
    assert cfg.epochs == 7 and cfg.flag is True
    assert cfg.inner.steps == (1.0, 2.5)
    assert cfg.inner.clip is None


def test_configs_are_frozen():
    cfg = Outer()
    with pytest.raises(AttributeError):
        cfg.epochs = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("inner.lrr=0.1", "did you mean 'lr'"),
        ("epoch=3", "did you mean 'epochs'"),
        ("innr.lr=3", "did you mean 'inner'"),
        ("inner.lr=abc", "expected a number"),
        ("epochs=2.5", "expected an integer"),
        ("flag=maybe", "expected true or false"),
        ("inner.name=sgdd", "did you mean 'sgd'"),
        ("epochs", "key=value"),
        ("epochs.x=1", "is a value, not a section"),
    ],
)
def test_bad_overrides_name_the_problem(override, needle):
    with pytest.raises(FovealError, match=needle.replace("(", r"\(")):
        load_config(Outer, None, [override])


def test_yaml_file_and_round_trip(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  lr: 0.25\nepochs: 2\n")
    cfg = load_config(Outer, path, ["epochs=5"])
    assert cfg.inner.lr == 0.25 and cfg.epochs == 5
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_unknown_yaml_key_is_named(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  lrate: 0.25\n")
    with pytest.raises(FovealError, match="inner.lrate"):
        load_config(Outer, path)


def test_bundled_recipes_load():
    from foveal.config import CONFIG_DIR

    names = sorted(p.name for p in CONFIG_DIR.glob("classify_*.yaml"))
    assert {"classify_paper.yaml", "classify_cpu.yaml", "classify_demo.yaml"} <= set(names)
    for name in names:
        load_config(ClassifyConfig, CONFIG_DIR / name)


def test_paper_recipe_has_paper_numbers():
    from foveal.config import CONFIG_DIR

    cfg = load_config(ClassifyConfig, CONFIG_DIR / "classify_paper.yaml")
    assert cfg.optim.name == "rmsprop" and cfg.optim.rmsprop_decay == 0.9 and cfg.optim.momentum == 0.9
    assert cfg.optim.lr == 0.256 and cfg.optim.decay_rate == 0.97 and cfg.optim.decay_epochs == 2.4
    assert cfg.optim.weight_decay == 1e-5
    assert cfg.model.bn_momentum == 0.01  # PyTorch convention for the paper's decay 0.99
    assert cfg.model.drop_path == 0.2  # survival probability 0.8
    assert cfg.data.augment == "autoaugment"


def test_apply_overrides_does_not_mutate_input():
    data = {"inner": {"lr": 1.0}}
    out = apply_overrides(data, ["inner.lr=2"], Outer)
    assert data == {"inner": {"lr": 1.0}} and out["inner"]["lr"] == 2
