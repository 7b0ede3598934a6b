"""Precision ``auto``: bf16 only where the device computes it natively (AMX / AVX512-BF16 that torch and oneDNN may
use), fp32 elsewhere; a bf16 asked for where it is emulated runs with a warning that names the fix; the run record and
the report say which precision ran and why; a precision that is not a name is a FovealError."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import foveal
from foveal.engine import device
from foveal.engine.device import EmulatedBF16Warning, native_bf16, placement, precision_name, resolve_precision
from foveal.engine.optim import OptimConfig
from foveal.engine.trainer import TrainConfig, Trainer
from foveal.errors import FovealError

CPU = torch.device("cpu")
AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})  # AMD EPYC Zen 3: no AVX-512, no bf16 units
AMX = AVX2 | {"avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"}  # a Xeon with AMX
AVX512_BF16 = AVX2 | {"avx512f", "avx512_bf16"}  # AVX512-BF16 without AMX


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test sees its own warnings and no ISA limit from the environment, on an x86 CPU."""
    monkeypatch.setattr(device, "_warned", set())
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(device.platform, "machine", lambda: "x86_64")


def _cpu(monkeypatch: pytest.MonkeyPatch, flags: frozenset[str], capability: str) -> None:
    """Mock the probe: the CPU's flags (``/proc/cpuinfo``) and the capability torch's kernels run at."""
    monkeypatch.setattr(device, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(device, "_cpu_capability", lambda: capability)


@contextlib.contextmanager
def _no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_auto_is_fp32_on_an_avx2_cpu(monkeypatch):
    _cpu(monkeypatch, AVX2, "AVX2")
    assert native_bf16(CPU) == (False, "emulated on this CPU (AVX2, no AMX or AVX512-BF16)")
    with _no_warning():
        for training in (True, False):
            p = resolve_precision("auto", CPU, training=training)
            assert (p.name, p.requested, p.dtype) == ("fp32", "auto", torch.float32)
            assert p.reason == "auto: bf16 is emulated on this CPU (AVX2, no AMX or AVX512-BF16)"
        assert resolve_precision(None, CPU, training=True).name == "fp32"  # None is auto


@pytest.mark.parametrize(("flags", "unit"), [(AMX, "AMX"), (AVX512_BF16, "AVX512-BF16")])
def test_auto_trains_in_bf16_where_the_cpu_has_bf16_units(monkeypatch, flags, unit):
    _cpu(monkeypatch, flags, "AVX512")
    with _no_warning():
        p = resolve_precision("auto", CPU, training=True)
        assert (p.name, p.requested, p.reason) == ("bf16", "auto", f"auto: bf16 is native on this CPU ({unit})")
        inference = resolve_precision("auto", CPU)  # predictions do not depend on the machine: fp32
        assert inference.name == "fp32" and "--precision bf16 is faster" in inference.reason
        assert resolve_precision("bf16", CPU).reason == f"asked for; bf16 is native on this CPU ({unit})"


def test_onednn_isa_limit_makes_auto_fp32(monkeypatch):
    _cpu(monkeypatch, AMX, "AVX512")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    p = resolve_precision("auto", CPU, training=True)
    assert p.name == "fp32" and "ONEDNN_MAX_CPU_ISA=AVX2 keeps oneDNN below this CPU's AMX" in p.reason
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_amx")  # at or above bf16: native again
    assert resolve_precision("auto", CPU, training=True).name == "bf16"


def test_aten_capability_below_avx512_makes_auto_fp32(monkeypatch):
    """torch reads ATEN_CPU_CAPABILITY once, at import: the probe is mocked to what it then reports."""
    _cpu(monkeypatch, AMX, "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    p = resolve_precision("auto", CPU, training=True)
    assert p.name == "fp32"
    assert p.reason == "auto: bf16 is emulated: torch runs this AMX CPU's kernels at AVX2 (ATEN_CPU_CAPABILITY=avx2)"


def test_aten_cpu_capability_avx2_in_a_fresh_process_gives_fp32():
    """The real probe, in a process whose torch was imported under ATEN_CPU_CAPABILITY=avx2 (on any x86 CPU)."""
    code = (
        "import torch; from foveal.engine.device import resolve_precision as r; "
        "print(torch.backends.cpu.get_cpu_capability()); print(r('auto', torch.device('cpu'), training=True).name)"
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    capability, name = done.stdout.split()
    assert name == "fp32" and capability in ("AVX2", "DEFAULT")


def test_bf16_asked_for_on_an_emulating_cpu_warns_once_with_the_fix(monkeypatch):
    _cpu(monkeypatch, AVX2, "AVX2")
    with pytest.warns(EmulatedBF16Warning, match=r"bf16 is emulated on this CPU \(AVX2.*use --precision fp32"):
        p = resolve_precision("bf16", CPU)
    assert (p.name, p.requested) == ("bf16", "bf16") and "emulated" in p.reason
    with _no_warning():
        resolve_precision("BF16", CPU)  # said once per process
    with pytest.warns(EmulatedBF16Warning, match=r"use train.precision=fp32 or auto \(and train.bf16=false\)"):
        resolve_precision("bf16", CPU, training=True)


def test_bf16_asked_for_on_a_native_cpu_does_not_warn(monkeypatch):
    _cpu(monkeypatch, AMX, "AVX512")
    with _no_warning():
        assert resolve_precision("bf16", CPU, training=True).name == "bf16"


@pytest.mark.parametrize(
    ("given", "name"),
    [(torch.float32, "fp32"), (torch.bfloat16, "bf16"), (torch.float16, "fp16"), (" FP32 ", "fp32"), (None, "auto")],
)
def test_precision_given_as_a_torch_dtype_or_a_name(given, name):
    assert precision_name(given) == name


@pytest.mark.parametrize("bad", [16, 16.0, True, ["cpu"], {"name": "fp32"}, b"fp32", torch.float64, "fp64", ""])
def test_precision_that_is_no_name_is_a_foveal_error(bad):
    with pytest.raises(FovealError, match="precision"):
        resolve_precision(bad, CPU)


@pytest.mark.parametrize("bad", [16, ["cpu"], torch.float64, "fp64"])
def test_api_load_refuses_a_bad_precision_with_a_foveal_error(ckpt_run, bad):
    with pytest.raises(FovealError, match="precision"):
        foveal.load(ckpt_run, device="cpu", precision=bad)


def test_api_load_takes_a_torch_dtype_and_says_why(ckpt_run, monkeypatch):
    _cpu(monkeypatch, AVX2, "AVX2")
    model = foveal.load(ckpt_run, device="cpu", precision=torch.float32)
    assert model.precision == "fp32" and model.precision_reason == "asked for"
    auto = foveal.load(ckpt_run, device="cpu")
    assert auto.precision == "fp32" and "emulated" in auto.precision_reason


def test_train_records_and_reports_the_precision_and_why(ckpt_run):
    """The session's tiny run (``foveal train``, precision left at auto) on this machine's own CPU."""
    native, why = native_bf16("cpu")
    info = json.loads((ckpt_run / "run_info.json").read_text())
    assert info["device"] == "cpu"
    assert info["precision"] == {
        "name": "bf16" if native else "fp32",
        "requested": "auto",
        "reason": f"auto: bf16 is {why}",
    }
    html = (ckpt_run / "report.html").read_text()
    assert "precision" in html and f"auto: bf16 is {why}" in html


def test_training_precision_defaults_to_auto_and_reads_the_legacy_bf16_key():
    assert TrainConfig().precision_name == "auto"
    assert TrainConfig(bf16=True).precision_name == "bf16"  # segment_cpu's former `bf16: true`: bf16 asked for
    # an older checkpoint's config says `bf16: true, precision: fp32` for bf16: a resumed run keeps bf16
    assert TrainConfig(bf16=True, precision="fp32").precision_name == "bf16"
    assert TrainConfig(bf16=False, precision="fp32").precision_name == "fp32"


def test_legacy_bf16_true_on_an_emulating_cpu_warns_and_is_recorded(monkeypatch, tmp_path):
    _cpu(monkeypatch, AVX2, "AVX2")
    with pytest.warns(EmulatedBF16Warning, match=r"emulated on this CPU.*train.precision=fp32"):
        trainer = Trainer(
            model=nn.Linear(2, 1),
            train_set=[0, 1, 2, 3],  # type: ignore[arg-type]
            collate=list,
            loss_fn=lambda model, batch: torch.zeros(()),
            evaluate=lambda model: {"score": 0.0},
            optim=OptimConfig(),
            train=TrainConfig(bf16=True, progress=False),
            batch_size=2,
            run_dir=tmp_path,
            meta={"task": "classify"},
            device=CPU,
        )
    trainer._write_run_info(time.time(), 0)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["device"] == "cpu" and info["precision"] == {
        "name": "bf16",
        "requested": "bf16",
        "reason": "asked for; bf16 is emulated on this CPU (AVX2, no AMX or AVX512-BF16)",
    }
    assert placement("cpu", "auto", training=True)["precision"]["name"] == "fp32"


def test_cli_precision_defaults_to_auto():
    from foveal.cli import build_parser

    args = build_parser().parse_args(["predict", "run", "x.png"])
    assert args.precision == "auto"


def test_report_shows_a_record_written_before_the_reason_was_kept(tmp_path: Path):
    from foveal.report.sections import _placement_rows

    assert _placement_rows({"device": "cpu", "precision": "bf16"}) == [("device", "cpu"), ("precision", "bf16")]
    assert _placement_rows({}) == []
