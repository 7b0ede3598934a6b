"""Distributed data-parallel helpers for ``torchrun`` (gloo on CPU, nccl on GPU)."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def is_main_process() -> bool:
    """Whether this process is rank 0 of the ``torchrun`` job that the environment describes (True when alone); the
    only one that writes logs, checkpoints and reports."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


_TRANSPORT_FAILURES = ("Connection closed by peer", "Connection reset by peer", "NCCL error", "ncclRemoteError")


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says that another process of the job died or cannot be reached (gloo raises a plain
    RuntimeError naming its transport; c10d raises ``DistError``), not a fault of this process."""
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _TRANSPORT_FAILURES)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics span every process (synchronized BN that also works on CPU/gloo).

    Outside distributed training it is exactly ``nn.BatchNorm2d``. Inside, per-channel sums are all-reduced with a
    differentiable all-reduce, so N processes of batch b train exactly like one process of batch N·b.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        # Two passes (mean, then squared deviations) avoid the cancellation of E[x²] − E[x]².
        count = float(x.numel() // c * dist.get_world_size())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the differentiable all-reduce is marked deprecated
            mean = dist_fn.all_reduce(x.sum((0, 2, 3))) / count
            centered = x - mean.view(1, c, 1, 1)
            var = dist_fn.all_reduce((centered * centered).sum((0, 2, 3))) / count
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                unbiased = var * count / max(count - 1.0, 1.0)
                self.running_mean.mul_(1 - m).add_(mean, alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
        shape = (1, c, 1, 1)
        y = centered * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace BatchNorm2d layers with synchronized ones (torch's on GPU, :class:`GlobalBatchNorm2d` on CPU)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = GlobalBatchNorm2d(
                child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats
            )
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_batchnorm(child, device)
    return module
