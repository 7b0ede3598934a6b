"""Importing timm / torchvision / foveal EfficientNet weights: same logits as the source model, safe file reading."""

from __future__ import annotations

import collections
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from foveal.errors import FovealError
from foveal.models.convert import detect_layout, import_efficientnet, load_state_file
from foveal.models.efficientnet import efficientnet

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters, so a wrong eps, order or mapping changes the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
    return model.eval()


def _same_logits(source: nn.Module, ours: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        want, got = source(x), ours(x)
    assert want.abs().max() > 1e-2  # a meaningful signal
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def _save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


def test_timm_b0(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = _randomize_bn(timm.create_model("efficientnet_b0"))
    path = _save(source.state_dict(), tmp_path / "w.pth")
    model = import_efficientnet(path)
    assert model.args["bn_eps"] == 1e-5 and model.args["padding"] == "symmetric"
    assert (model.args["width"], model.args["depth"], model.args["num_classes"]) == (1.0, 1.0, 1000)
    assert not model.training
    x = torch.randn(2, 3, 64, 64)
    _same_logits(source, model, x)
    with torch.no_grad():  # the comparison is strict enough to see the paper's eps instead of timm's
        assert (import_efficientnet(path, bn_eps=1e-3)(x) - source(x)).abs().max() > 1e-4


def test_timm_small_grayscale_from_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = _randomize_bn(timm.create_model("efficientnet_b0", num_classes=10, in_chans=1), seed=1)
    model = import_efficientnet(_save(source.state_dict(), tmp_path / "w.safetensors"))
    assert (model.args["in_channels"], model.args["num_classes"]) == (1, 10)
    _same_logits(source, model, torch.randn(2, 1, 64, 64))


def test_timm_tf_port_uses_same_padding_and_eps_1e3(tmp_path: Path) -> None:
    torch.manual_seed(2)
    source = _randomize_bn(timm.create_model("tf_efficientnet_b0"), seed=2)
    x = torch.randn(2, 3, 64, 64)  # even size: "same" padding is asymmetric here
    by_path = import_efficientnet(_save(source.state_dict(), tmp_path / "tf_efficientnet_b0.pth"))
    assert by_path.args["padding"] == "same" and by_path.args["bn_eps"] == 1e-3
    _same_logits(source, by_path, x)
    plain = _save(source.state_dict(), tmp_path / "weights.pth")
    _same_logits(source, import_efficientnet(plain, variant="tf_efficientnet_b0.in1k"), x)
    # without the hint the importer cannot know: it builds timm's own convention, which gives other logits
    with torch.no_grad():
        assert (import_efficientnet(plain)(x) - source(x)).abs().max() > 1e-3


def test_torchvision_b0_nested_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(3)
    source = _randomize_bn(torchvision.models.efficientnet_b0(), seed=3)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": source.state_dict(), "epoch": 7, "args": {"lr": 0.1}}, path)
    model = import_efficientnet(path)
    assert model.args["bn_eps"] == 1e-5
    _same_logits(source, model, torch.randn(2, 3, 64, 64))


def test_torchvision_b2_infers_the_variant(tmp_path: Path) -> None:
    torch.manual_seed(4)
    source = _randomize_bn(torchvision.models.efficientnet_b2(num_classes=7), seed=4)
    model = import_efficientnet(_save(source.state_dict(), tmp_path / "b2.pth"))
    assert (model.args["width"], model.args["depth"], model.args["dropout"]) == (1.1, 1.2, 0.3)
    _same_logits(source, model, torch.randn(1, 3, 64, 64))


def test_foveal_checkpoint_with_args_and_plain_state_dict(tmp_path: Path) -> None:
    torch.manual_seed(5)
    source = _randomize_bn(efficientnet(-2, num_classes=4, padding="same", bn_eps=1e-4), seed=5)
    x = torch.randn(2, 3, 64, 64)
    path = tmp_path / "fov.pt"
    torch.save({"args": source.args, "state_dict": source.state_dict()}, path)
    model = import_efficientnet(path)
    assert model.args == source.args
    _same_logits(source, model, x)
    # a bare state dict: shapes give width and depth; eps and padding are the caller's to say
    bare = _save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "bare.pt")
    _same_logits(source, import_efficientnet(bare, padding="same", bn_eps=1e-4), x)


def test_load_state_file_unwraps_and_strips_prefixes(tmp_path: Path) -> None:
    state = {"module.a.weight": torch.ones(2), "module.b": torch.zeros(1)}
    torch.save({"state_dict": state, "step": 3}, tmp_path / "c.pth")
    loaded = load_state_file(tmp_path / "c.pth")
    assert sorted(loaded) == ["a.weight", "b"]
    assert torch.equal(loaded["a.weight"], torch.ones(2))


def test_detect_layout() -> None:
    assert detect_layout(timm.create_model("efficientnet_b0").state_dict()) == "timm"
    assert detect_layout(torchvision.models.efficientnet_b0().state_dict()) == "torchvision"
    with pytest.raises(FovealError, match="do not look like an EfficientNet"):
        detect_layout(torchvision.models.resnet18().state_dict())


# -- mismatches ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timm_b0_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("w") / "b0.pth"
    torch.save(timm.create_model("efficientnet_b0").state_dict(), path)
    return path


def test_wrong_variant_names_the_mismatch(timm_b0_file: Path) -> None:
    with pytest.raises(FovealError, match=r"\[1, 2, 2, 3, 3, 4, 1\] blocks per stage.*\[2, 3, 3, 4, 4, 5, 2\]"):
        import_efficientnet(timm_b0_file, variant="b1")  # deeper
    with pytest.raises(FovealError, match=r"shape mismatch at 'stem\.conv\.weight'.*\(32, 3, 3, 3\).*\(40, 3, 3, 3\)"):
        import_efficientnet(timm_b0_file, variant="b0", width=1.2)  # wider
    with pytest.raises(FovealError, match="unknown EfficientNet variant 'b9'"):
        import_efficientnet(timm_b0_file, variant="b9")


def test_conflicting_override_names_the_tensor(timm_b0_file: Path) -> None:
    with pytest.raises(FovealError, match=r"classifier\.weight.*\(1000, 1280\)"):
        import_efficientnet(timm_b0_file, num_classes=10)
    with pytest.raises(FovealError, match="cannot build EfficientNet"):
        import_efficientnet(timm_b0_file, no_such_argument=1)
    model = import_efficientnet(timm_b0_file, num_classes=None, dropout=0.5)  # None keeps the inferred value
    assert model.args["num_classes"] == 1000 and model.args["dropout"] == 0.5


def test_foreign_network_is_refused(tmp_path: Path) -> None:
    path = _save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(FovealError, match="do not look like an EfficientNet"):
        import_efficientnet(path)
    state = timm.create_model("efficientnet_b0").state_dict()
    state["blocks.0.0.extra.weight"] = torch.zeros(3)
    with pytest.raises(FovealError, match=r"no counterpart.*blocks\.0\.0\.extra\.weight"):
        import_efficientnet(_save(state, tmp_path / "extra.pth"))
    del state["blocks.0.0.extra.weight"]
    del state["blocks.6.0.se.conv_reduce.weight"]
    with pytest.raises(FovealError, match=r"lack 1 tensor.*stages\.6\.0\.se\.reduce\.weight"):
        import_efficientnet(_save(state, tmp_path / "missing.pth"))


# -- unsafe and broken files -----------------------------------------------------------------------------------------


class _OpenOnLoad:
    """Unpickling this would call ``open(marker, "w")``: code execution that must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


class _StateDict(collections.OrderedDict):  # type: ignore[type-arg]
    pass


def test_pickled_code_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(1), "payload": _OpenOnLoad(marker)}, path)
    with pytest.raises(FovealError, match="refuses to execute code") as info:
        import_efficientnet(path)
    assert "safetensors" in str(info.value)  # says how to fix it
    assert not marker.exists()


def test_custom_class_is_refused(tmp_path: Path) -> None:
    state = _StateDict(a=torch.ones(2))
    torch.save(state, tmp_path / "custom.pth")
    with pytest.raises(FovealError, match=r"_StateDict.*refuses to execute code"):
        load_state_file(tmp_path / "custom.pth")


@pytest.mark.parametrize("suffix", [".pth", ".bin", ".safetensors"])
def test_corrupt_file(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(b"\x00this is not a weight file" * 40)
    with pytest.raises(FovealError, match="corrupt"):
        load_state_file(path)


def test_truncated_and_odd_files(tmp_path: Path) -> None:
    good = _save({"a": torch.arange(1000.0)}, tmp_path / "good.pt")
    data = good.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    assert zipfile.is_zipfile(good)
    with pytest.raises(FovealError, match="corrupt or truncated"):
        load_state_file(tmp_path / "cut.pt")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(FovealError, match="corrupt or truncated"):
        load_state_file(tmp_path / "empty.pth")
    with pytest.raises(FovealError, match="does not exist"):
        load_state_file(tmp_path / "nope.pth")
    (tmp_path / "w.npz").write_bytes(b"x")
    with pytest.raises(FovealError, match="unsupported weight file type '.npz'"):
        load_state_file(tmp_path / "w.npz")
    with pytest.raises(FovealError, match="is a directory"):
        load_state_file(tmp_path)
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(FovealError, match="holds a list, not a state dict"):
        load_state_file(tmp_path / "list.pth")
    torch.save({"a": torch.ones(1), "b": 3}, tmp_path / "mixed.pth")
    with pytest.raises(FovealError, match="entry 'b' is a int, not a tensor"):
        load_state_file(tmp_path / "mixed.pth")
