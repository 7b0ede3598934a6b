"""Multi-node training through torchrun: two "nodes" of one process each on localhost, joined by one c10d rendezvous
(gloo on the CPU), train like one process with the same global batch and write only from rank 0; a node killed
mid-run makes the other one fail with a message, and the job resumes to the weights of an uninterrupted run."""

import contextlib
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
    )


def _both(port: int, run_id: str, a: list[str], b: list[str]) -> None:
    nodes = [_node(port, run_id, *a), _node(port, run_id, *b)]
    for n in nodes:
        _, err = n.communicate(timeout=600)
        assert n.returncode == 0, err.decode()[-3000:]


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / "model.safetensors"))


def _relative_disagreement(one: Path, two: Path, step: int) -> float:
    a0, a, b = _weights(one, step - 1), _weights(one, step), _weights(two, step)
    keys = [k for k in a if a[k].is_floating_point() and "running" not in k]
    update = torch.sqrt(sum(((a[k] - a0[k]) ** 2).sum() for k in keys))
    assert update > 1e-2
    return float(torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in keys)) / update)


STEPS = 6


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Rank 0's run directory of an uninterrupted two-node job of STEPS steps (each node names its own directory:
    the one of the node that gets rank 1 must stay empty, which the first test checks)."""
    root = tmp_path_factory.mktemp("two-nodes")
    cfg = [*CFG, f"train.max_steps={STEPS}"]
    _both(_free_port(), "two-nodes", ["--out", str(root / "a"), *cfg], ["--out", str(root / "b"), *cfg])
    written = [d for d in ("a", "b") if (root / d / "checkpoints").is_dir()]
    assert len(written) == 1, written
    return root / written[0]


@pytest.mark.slow
def test_two_nodes_train_like_one_process_and_only_rank_0_writes(two_nodes, tmp_path):
    single = subprocess.run(
        [sys.executable, "-m", "foveal", "train", "classify", "--out", str(tmp_path / "one"), *CFG]
        + [f"train.max_steps={STEPS}"],
        capture_output=True,
        timeout=600,
        env=ENV,
    )
    assert single.returncode == 0, single.stderr.decode()[-3000:]
    other = two_nodes.parent / ("b" if two_nodes.name == "a" else "a")
    assert not (other / "metrics.jsonl").exists() and not (other / "config.json").exists()
    steps = [line for line in (two_nodes / "metrics.jsonl").read_text().splitlines() if '"train_loss"' in line]
    assert len(steps) == STEPS  # one writer: each step logged once
    # the same global batch of 16 split over two nodes: the same weights up to float rounding (see the DDP test)
    assert _relative_disagreement(tmp_path / "one", two_nodes, 2) < 2e-2


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (torchrun starts its workers in sessions of their own, so a process group does
    not hold a whole node)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def _kill_node(node: subprocess.Popen[bytes]) -> None:
    """SIGKILL a node as a power cut would: its agent and every process it started."""
    for pid in [*_descendants(node.pid), node.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node.communicate(timeout=60)


def _wait_for(paths: list[Path], nodes: list[subprocess.Popen[bytes]], timeout: float = 900) -> None:
    """Wait until one of ``paths`` exists (checkpoints are renamed into place whole); fail if a node ends first."""
    deadline = time.monotonic() + timeout
    while not any(p.exists() for p in paths):
        for n in nodes:
            if n.poll() is not None:
                err = n.stderr.read().decode()[-2000:] if n.stderr else ""
                raise AssertionError(f"a node ended before {paths[0].name} was written: {err}")
        assert time.monotonic() < deadline, f"{paths[0].name} not written in time"
        time.sleep(0.05)


@pytest.mark.slow
def test_a_node_killed_mid_run_fails_the_job_and_resumes_to_the_uninterrupted_weights(two_nodes, tmp_path):
    cfg = [*CFG, f"train.max_steps={STEPS}"]
    port = _free_port()
    nodes = {d: _node(port, "killed", "--out", str(tmp_path / d), *cfg, store_host=d == "ka") for d in ("ka", "kb")}
    step2 = [tmp_path / d / "checkpoints" / "step-00000002" for d in ("ka", "kb")]
    _wait_for(step2, list(nodes.values()))
    rank0 = "ka" if step2[0].exists() else "kb"  # only rank 0 writes
    _kill_node(nodes["kb"])  # never the node holding the rendezvous store; kb may hold rank 0 or rank 1
    last = tmp_path / rank0 / "checkpoints" / f"step-{STEPS:08d}"
    assert not last.exists(), "the run ended before the kill: nothing was tested"
    _, err = nodes["ka"].communicate(timeout=600)
    message = err.decode()
    # the surviving rank says in one line what happened and how to continue, and its node fails
    assert nodes["ka"].returncode != 0, message[-3000:]
    assert "foveal: error: rank " in message and "another process of the job stopped" in message, message[-3000:]
    assert "--resume" in message, message[-3000:]
    assert not last.exists()

    # on restart every node is given rank 0's run directory (on a cluster: a shared file system)
    run = str(tmp_path / rank0)
    _both(_free_port(), "resumed", ["--resume", run], ["--resume", run])
    assert _relative_disagreement(two_nodes, tmp_path / rank0, STEPS) < 1e-4
