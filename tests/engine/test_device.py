"""--device / --precision resolved in one place: auto, cpu, cuda, cuda:N, and one clear error for a device or a
precision this machine does not have."""

import pytest
import torch

from foveal.engine.device import resolve_device, resolve_precision, to_device, training_device
from foveal.errors import FovealError


def _pretend_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_auto_takes_cuda_when_there_is_one(monkeypatch):
    _pretend_gpus(monkeypatch, 0)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    _pretend_gpus(monkeypatch, 2)
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(" CUDA ") == torch.device("cuda", 0)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_a_device_that_is_not_there_is_one_clear_error(monkeypatch):
    _pretend_gpus(monkeypatch, 0)
    with pytest.raises(FovealError, match=r"device 'cuda': torch sees no CUDA device here; use device cpu"):
        resolve_device("cuda")
    _pretend_gpus(monkeypatch, 1)
    with pytest.raises(FovealError, match=r"device 'cuda:7': this machine has 1 CUDA device \(cuda:0 … cuda:0\)"):
        resolve_device("cuda:7")
    for bad in ("gpu", "mps", "cuda:x", "cuda:-1"):
        with pytest.raises(FovealError, match="use auto, cpu, cuda or cuda:N"):
            resolve_device(bad)


def test_precision_names_and_fp16_only_on_cuda():
    cpu = torch.device("cpu")
    assert resolve_precision(None, cpu).dtype == torch.float32
    assert resolve_precision("bf16", cpu).dtype == torch.bfloat16 and resolve_precision("BF16", cpu).reduced
    assert resolve_precision("fp16", torch.device("cuda", 0)).dtype == torch.float16
    with pytest.raises(FovealError, match="fp16 runs on CUDA only: use precision auto or fp32 on the CPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(FovealError, match="unknown precision 'int8'"):
        resolve_precision("int8", cpu)


def test_precision_autocast_and_scaler():
    x, w = torch.randn(4, 8), torch.randn(8, 3)
    with resolve_precision("bf16", torch.device("cpu")).autocast():
        assert (x @ w).dtype == torch.bfloat16
    with resolve_precision("fp32", torch.device("cpu")).autocast():
        assert (x @ w).dtype == torch.float32
    assert not resolve_precision("bf16", torch.device("cpu")).grad_scaler().is_enabled()


def test_to_device_casts_and_lays_out():
    x = torch.randn(2, 3, 5, 5)
    y = to_device(x, torch.device("cpu"), torch.bfloat16, channels_last=True)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    assert to_device(x, torch.device("cpu")) is x


def test_training_device_under_torchrun_takes_the_local_rank_gpu(monkeypatch):
    _pretend_gpus(monkeypatch, 2)
    chosen: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert training_device("auto") == torch.device("cuda", 1) == chosen[0]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert training_device("cpu") == torch.device("cpu")


def test_checkpoints_record_no_device(tmp_path):
    """safetensors stores dtype, shape and offsets only; save_checkpoint writes CPU copies of every tensor and
    load_checkpoint reads onto the CPU, so a checkpoint written on a GPU loads anywhere (the GPU round trip itself is
    tests/test_cuda.py)."""
    import json
    import struct

    from torch import nn

    from foveal.engine.checkpoint import load_checkpoint, save_checkpoint

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "ck", model=model, meta={"task": "x"}, optimizer=opt)
    for name in ("model.safetensors", "train_state.safetensors"):
        raw = (path / name).read_bytes()
        (length,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + length])
        fields = {key for entry in header.values() if "dtype" in entry for key in entry}
        assert fields == {"dtype", "shape", "data_offsets"}, fields
    ckpt = load_checkpoint(path, with_state=True)
    assert all(t.device.type == "cpu" for t in [*ckpt.weights.values(), *ckpt.state.values()])
