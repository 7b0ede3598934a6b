"""Multi-node training through torchrun: two "nodes" of one process each on localhost, joined by one c10d rendezvous
(gloo on the CPU), train like one process with the same global batch and write only from rank 0."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

CFG = [
    "--config",
    "classify_demo",
    "data.limit=128",
    "data.val_limit=32",
    "data.batch_size=16",
    "data.augment=none",
    "model.dropout=0",
    "model.drop_path=0",
    "train.progress=false",
    "train.deterministic=true",
    "train.threads=1",
    "train.log_every=1",
    "train.checkpoint_every=1",
    "train.keep_last=10",
    "train.epochs=1",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _node(port: int, run_id: str, *args: str, store_host: bool | None = None) -> subprocess.Popen[bytes]:
    """One node of a two-node job: torchrun with a c10d rendezvous on localhost, one process; ``store_host`` says
    whether this node's agent holds the rendezvous store (None: the first to bind the port)."""
    host = [] if store_host is None else [f"--rdzv-conf=is_host={str(store_host).lower()}"]
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc-per-node=1",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=localhost:{port}",
            f"--rdzv-id={run_id}",
            *host,
            "--max-restarts=0",
            "-m",
            "foveal",
            "train",
            "classify",
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=ENV,
        start_new_session=True,  # a process group per node, so that a node can be killed as a whole
    )


def _both(port: int, run_id: str, a: list[str], b: list[str]) -> None:
    nodes = [_node(port, run_id, *a), _node(port, run_id, *b)]
    for n in nodes:
        _, err = n.communicate(timeout=600)
        assert n.returncode == 0, err.decode()[-3000:]


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))


def _relative_disagreement(one: Path, two: Path, step: int) -> float:
    """|weights of ``two`` − weights of ``one``| at ``step``, relative to the size of ``one``'s last update."""
    a0, a, b = _weights(one, step - 1), _weights(one, step), _weights(two, step)
    keys = [k for k in a if a[k].is_floating_point() and "running" not in k]
    update = torch.sqrt(sum(((a[k] - a0[k]) ** 2).sum() for k in keys))
    assert update > 1e-2
    return float(torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in keys)) / update)


@pytest.mark.slow
def test_two_nodes_train_like_one_process_and_only_rank_0_writes(tmp_path):
    cfg = [*CFG, "train.max_steps=2"]
    single = subprocess.run(
        [sys.executable, "-m", "foveal", "train", "classify", "--out", str(tmp_path / "one"), *cfg],
        capture_output=True,
        timeout=600,
        env=ENV,
    )
    assert single.returncode == 0, single.stderr.decode()[-3000:]
    # each node names its own run directory: the one of the node that gets rank 1 must stay empty
    port = _free_port()
    _both(port, "two-nodes", ["--out", str(tmp_path / "a"), *cfg], ["--out", str(tmp_path / "b"), *cfg])
    written = [d for d in ("a", "b") if (tmp_path / d / "checkpoints").is_dir()]
    assert len(written) == 1, written
    rank0 = tmp_path / written[0]
    other = tmp_path / ("b" if written == ["a"] else "a")
    assert not (other / "metrics.jsonl").exists() and not (other / "config.json").exists()
    steps = [line for line in (rank0 / "metrics.jsonl").read_text().splitlines() if '"train_loss"' in line]
    assert len(steps) == 2  # one writer: each step logged once
    # the same global batch of 16 split over two nodes: the same weights up to float rounding (see the DDP test)
    assert _relative_disagreement(tmp_path / "one", rank0, 2) < 2e-2


def _wait_for(paths: list[Path], nodes: list[subprocess.Popen[bytes]], timeout: float = 900) -> None:
    """Wait until one of ``paths`` exists (checkpoints appear whole: they are renamed into place); fail if a node
    ends first."""
    deadline = time.monotonic() + timeout
    while not any(p.exists() for p in paths):
        for n in nodes:
            if n.poll() is not None:
                err = n.stderr.read().decode()[-2000:] if n.stderr else ""
                raise AssertionError(f"a node ended before {paths[0].name} was written: {err}")
        assert time.monotonic() < deadline, f"{paths[0].name} not written in time"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_node_killed_mid_run_resumes_to_the_uninterrupted_weights(tmp_path):
    cfg = [*CFG, "train.max_steps=5"]
    _both(_free_port(), "whole", ["--out", str(tmp_path / "wa"), *cfg], ["--out", str(tmp_path / "wb"), *cfg])
    whole = next(tmp_path / d for d in ("wa", "wb") if (tmp_path / d / "checkpoints").is_dir())

    port = _free_port()
    nodes = {d: _node(port, "killed", "--out", str(tmp_path / d), *cfg, store_host=d == "ka") for d in ("ka", "kb")}
    step2 = [tmp_path / d / "checkpoints" / "step-00000002" for d in ("ka", "kb")]
    _wait_for(step2, list(nodes.values()))
    rank0 = "ka" if step2[0].exists() else "kb"  # only rank 0 writes
    assert not (tmp_path / rank0 / "checkpoints" / "step-00000005").exists(), "the run ended before the kill"
    # kill node kb as a whole (agent and worker; it may hold rank 0 or rank 1), never the one holding the store
    os.killpg(nodes["kb"].pid, signal.SIGKILL)
    nodes["kb"].wait(timeout=60)
    _, err = nodes["ka"].communicate(timeout=600)
    # the surviving rank reports its failure in one line, and its node exits with an error
    assert nodes["ka"].returncode != 0
    assert "foveal: error:" in err.decode(), err.decode()[-3000:]

    # on restart every node is given the run directory (on a cluster: a shared file system); rank 0 may change
    run = str(tmp_path / rank0)
    _both(_free_port(), "resumed", ["--resume", run], ["--resume", run])
    assert _relative_disagreement(whole, tmp_path / rank0, 5) < 1e-4
