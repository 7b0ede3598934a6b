import pytest

from foveal.errors import FovealError
from foveal.models.efficientnet import count_parameters
from foveal.models.registry import build_model, model_names, rebuild


def test_names_build_and_rebuild():
    assert {f"efficientnet_b{i}" for i in range(8)} | {"efficientnet"} <= set(model_names())
    model = build_model("efficientnet", phi=-3, num_classes=7, in_channels=1)
    again = rebuild({"arch": "efficientnet", "args": model.args})
    assert count_parameters(again) == count_parameters(model)
    assert again.args == model.args


def test_unknown_names_are_clear():
    with pytest.raises(FovealError, match="did you mean 'efficientnet_b3'"):
        build_model("eficientnet_b3")
    with pytest.raises(FovealError, match="unknown architecture"):
        rebuild({"arch": "vit", "args": {}})
    with pytest.raises(FovealError, match="bad arguments"):
        build_model("efficientnet_b0", wdth=2)
