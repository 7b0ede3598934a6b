"""Classification metrics accumulated over batches: top-1, top-5, per-class accuracy, confusion matrix, mean loss.

The meter keeps a K×K confusion matrix and three counters, so its memory is O(K²) however many samples it sees, and its
whole state is one float64 tensor that a distributed trainer sums across processes (:meth:`ClassificationMeter.
all_reduce`). Counts are stored exactly (float64 holds integers up to 2**53).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from foveal.errors import FovealError
from foveal.results import TOP_K, ClassificationResult


class ClassificationMeter:
    """Accumulates classification metrics over batches.

    Example::

        meter = ClassificationMeter(num_classes=10, classes=names)
        for images, targets in loader:
            logits = model(images)
            meter.update(logits, targets, loss=criterion(logits, targets))
        meter.all_reduce()  # in distributed evaluation, on every rank
        result = meter.compute()

    Top-5 uses k = min(5, K): with fewer than 5 classes it is the top-K accuracy, i.e. 1.0. A target counts as within
    the top k when fewer than k classes score *strictly* higher than it, so ties are resolved in the target's favour
    and the result does not depend on how ``torch.topk`` orders equal scores. Top-1 and the confusion matrix use
    ``argmax`` (the first of equal maxima). A NaN target score never counts as correct.

    Note that ``DistributedSampler`` pads the last batch with repeated samples; the meter counts what it is given.

    Args:
        num_classes: K ≥ 1.
        classes: optional class names, length K; carried into the result.
    """

    def __init__(self, num_classes: int, classes: Sequence[str] | None = None) -> None:
        if int(num_classes) < 1:
            raise FovealError(f"a classification meter needs at least one class, got num_classes={num_classes}")
        if classes is not None and len(classes) != num_classes:
            raise FovealError(f"got {len(classes)} class names for num_classes={num_classes}; give one name per class")
        self.num_classes = int(num_classes)
        self.classes = [str(c) for c in classes] if classes is not None else None
        self.k = min(TOP_K, self.num_classes)
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen so far."""
        self._confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self._topk_correct = 0
        self._loss_sum = 0.0
        self._loss_count = 0

    @property
    def count(self) -> int:
        """Number of samples seen."""
        return int(self._confusion.sum())

    @torch.no_grad()
    def update(self, logits: Tensor, targets: Tensor, loss: Tensor | float | None = None) -> None:
        """Add one batch.

        Args:
            logits: (N, K) scores (logits or probabilities; only their order matters), any device.
            targets: (N,) integer class indices in [0, K).
            loss: optional mean loss of this batch (scalar); it is weighted by N in the reported mean loss.
        """
        self._check(logits, targets)
        n = targets.shape[0]
        if n == 0:
            return
        logits = logits.detach()
        targets = targets.detach().to(device=logits.device, dtype=torch.long)
        low, high = int(targets.min()), int(targets.max())
        if low < 0 or high >= self.num_classes:
            bad = low if low < 0 else high
            raise FovealError(
                f"target class {bad} is outside [0, {self.num_classes}); the dataset's labels do not match the "
                f"model's {self.num_classes} classes"
            )
        k = self.num_classes
        predicted = logits.argmax(dim=1)
        confusion = torch.bincount(targets * k + predicted, minlength=k * k).view(k, k)
        target_score = logits.gather(1, targets[:, None])
        higher = (logits > target_score).sum(dim=1)
        in_topk = (higher < self.k) & ~torch.isnan(target_score[:, 0])
        self._confusion += confusion.cpu()
        self._topk_correct += int(in_topk.sum())
        if loss is not None:
            value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
            self._loss_sum += value * n
            self._loss_count += n

    def _check(self, logits: Tensor, targets: Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise FovealError(
                f"logits must have shape (N, {self.num_classes}), got {tuple(logits.shape)}; "
                "does the model's number of classes match the dataset's?"
            )
        if not logits.is_floating_point():
            raise FovealError(f"logits must be floating point, got {logits.dtype}")
        if targets.ndim != 1:
            raise FovealError(
                f"targets must be class indices of shape (N,), got {tuple(targets.shape)}; "
                "for one-hot targets pass targets.argmax(1)"
            )
        if targets.dtype.is_floating_point or targets.dtype.is_complex or targets.dtype == torch.bool:
            raise FovealError(f"targets must be integer class indices, got dtype {targets.dtype}")
        if targets.shape[0] != logits.shape[0]:
            raise FovealError(f"got {logits.shape[0]} rows of logits but {targets.shape[0]} targets")

    def compute(self) -> ClassificationResult:
        """The metrics over every sample seen.

        Returns:
            A :class:`ClassificationResult`.

        Raises:
            FovealError: if no sample was seen (e.g. an empty evaluation set).
        """
        count = self.count
        if count == 0:
            raise FovealError("no samples to compute classification metrics from; is the evaluation dataset empty?")
        confusion = self._confusion.tolist()
        per_class: list[float | None] = [
            (row[i] / sum(row)) if sum(row) > 0 else None for i, row in enumerate(confusion)
        ]
        return ClassificationResult(
            top1=int(self._confusion.diagonal().sum()) / count,
            top5=self._topk_correct / count,
            per_class_accuracy=per_class,
            confusion=confusion,
            count=count,
            loss=self._loss_sum / self._loss_count if self._loss_count else None,
            classes=list(self.classes) if self.classes is not None else None,
            top5_k=self.k,
        )

    # --- state for merging and distributed reduction ---

    def state_tensor(self) -> Tensor:
        """The whole state as one float64 CPU tensor of length K² + 3 that is summed to merge meters.

        Layout: ``[confusion.flatten() (K²), top-k correct, loss sum, loss count]``.
        """
        counters = torch.tensor([self._topk_correct, self._loss_sum, self._loss_count], dtype=torch.float64)
        return torch.cat([self._confusion.flatten().to(torch.float64), counters])

    def load_state_tensor(self, state: Tensor) -> None:
        """Replace this meter's state by ``state`` (as returned by :meth:`state_tensor`, possibly summed)."""
        k = self.num_classes
        if state.ndim != 1 or state.numel() != k * k + 3:
            raise FovealError(f"a state tensor for {k} classes has {k * k + 3} values, got shape {tuple(state.shape)}")
        state = state.detach().to(device="cpu", dtype=torch.float64)
        self._confusion = state[: k * k].round().to(torch.int64).view(k, k).clone()
        self._topk_correct = round(float(state[k * k]))
        self._loss_sum = float(state[k * k + 1])
        self._loss_count = round(float(state[k * k + 2]))

    @classmethod
    def from_state_tensor(
        cls, state: Tensor, num_classes: int, classes: Sequence[str] | None = None
    ) -> ClassificationMeter:
        """A meter holding ``state`` (see :meth:`state_tensor`)."""
        meter = cls(num_classes, classes)
        meter.load_state_tensor(state)
        return meter

    def merge(self, other: ClassificationMeter) -> ClassificationMeter:
        """Add ``other``'s samples to this meter (in place) and return ``self``."""
        if other.num_classes != self.num_classes:
            raise FovealError(f"cannot merge a {other.num_classes}-class meter into a {self.num_classes}-class meter")
        if self.classes is not None and other.classes is not None and self.classes != other.classes:
            raise FovealError("cannot merge meters whose class names differ")
        self.load_state_tensor(self.state_tensor() + other.state_tensor())
        return self

    def all_reduce(self, device: torch.device | str | None = None) -> None:
        """Sum the state over every process of the default process group; a no-op outside distributed runs.

        Every rank must call it (it is a collective). Afterwards every rank holds the global metrics.

        Args:
            device: where the reduction happens; default: the current CUDA device for the nccl backend, else CPU.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        if device is None:
            nccl = dist.get_backend() == "nccl"
            device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        state = self.state_tensor().to(device)
        dist.all_reduce(state, op=dist.ReduceOp.SUM)
        self.load_state_tensor(state)
