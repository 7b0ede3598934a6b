"""ONNX export with a dynamic batch axis, and a check of the exported graph against PyTorch.

Classifiers and U-Nets export as they are (one output, "logits"); a RetinaNet exports its network through
:class:`DetectorGraph` (outputs "cls_logits", "box_deltas" and the constant "anchors"; post-processing stays outside
the graph, as resizing and normalisation do). The model is exported from a copy in eval mode with its BatchNorms
folded into the convolutions (:func:`foveal.inference.fast.fold_batchnorm`), so the caller's model is left as it
was. The file is written next to its target and moved into place only once complete, so an existing file is never
left half-overwritten.
"""

from __future__ import annotations

import contextlib
import copy
import os
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from foveal.errors import FovealError
from foveal.inference.fast import fold_batchnorm

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DETECTOR_OUTPUTS = ("cls_logits", "box_deltas", "anchors")
DEFAULT_OPSET = 17
#: The opsets the exporter of the pinned torch writes (its ``torch.onnx._constants.ONNX_MIN_OPSET`` … ``MAX``; a test
#: checks the two agree, so a torch upgrade that changes them is noticed).
ONNX_OPSETS = range(7, 24)
MAX_SIDE = 8192
"""The largest input edge exported, in pixels: a classifier's largest ``model.resolution``. Every network foveal builds
pads its convolutions, so any edge from 1 up runs (a valid U-Net takes only some, checked by ``ExportSpec.check_size``);
the graph is traced and checked on fixed-size inputs held in memory, so the edge is bounded above."""


class DetectorGraph(nn.Module):
    """A RetinaNet's network as a graph of tensors: (N, C, H, W) resized, normalised images → cls_logits
    (N, A, K), box_deltas (N, A, 4) and anchors (A, 4) xyxy in input pixels, the inputs of
    :func:`foveal.models.retinanet.postprocess` (anchors are fixed by H and W)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.detector(images)
        return out.cls_logits, out.box_deltas, out.anchors


def export_onnx(
    model: nn.Module,
    path: str | Path,
    in_channels: int,
    resolution: int | tuple[int, int],
    opset: int = 17,
    output_names: tuple[str, ...] = (OUTPUT_NAME,),
    unbatched: tuple[str, ...] = (),
) -> Path:
    """Write ``model`` as an ONNX graph taking (batch, in_channels, H, W) images.

    The batch axis is dynamic; height and width are fixed at ``resolution`` (TensorFlow "same" padding is computed
    from the input size at export time). The graph's input is named "images" and its outputs ``output_names``.

    Args:
        model: any module whose forward takes one (N, C, H, W) tensor and returns one tensor or a tuple of them.
        path: the ``.onnx`` file to write; its folder must exist.
        in_channels: C of the input (3 for RGB, 1 for grayscale).
        resolution: H = W of the input, or (H, W).
        opset: ONNX operator set version.
        output_names: one name per output ("logits" for one output).
        unbatched: outputs without a batch axis (e.g. a detector's anchors).

    Returns:
        The path written.
    """
    path = Path(path)
    height, width = (resolution, resolution) if isinstance(resolution, int) else resolution
    check_target(path, in_channels, height, width, resolution)
    export_model = fold_batchnorm(copy.deepcopy(model).eval()).to("cpu")
    with _memory_named(in_channels, height, width):
        dummy = torch.zeros(1, in_channels, height, width)
        _dry_run(export_model, dummy)
    # a unique name beside the target (same file system, so os.replace is atomic); created by the exporter itself so
    # the file gets the usual permissions
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with _memory_named(in_channels, height, width):
            _export(export_model, dummy, tmp, opset, output_names, unbatched)
        import onnx

        onnx.checker.check_model(str(tmp))
        os.replace(tmp, path)
    except OSError as exc:
        raise FovealError(f"cannot write '{path}': {exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def check_target(path: Path, in_channels: int, height: int, width: int, resolution: object = None) -> None:
    """FovealError unless ``path`` can be written and the input (in_channels, height, width) is positive and at most
    :data:`MAX_SIDE` a side."""
    if in_channels < 1 or height < 1 or width < 1:
        raise FovealError(
            f"in_channels and resolution must be positive, got {in_channels} and {resolution or (height, width)}; "
            "pass the input size the model is meant for"
        )
    if max(height, width) > MAX_SIDE:
        raise FovealError(
            f"resolution {resolution or (height, width)} is larger than an export takes (at most {MAX_SIDE} px a "
            "side): export at the size the model runs at, and resize or tile larger images"
        )
    if not path.parent.is_dir():
        raise FovealError(f"cannot write '{path}': folder '{path.parent}' does not exist; create it first")
    if path.is_dir():
        raise FovealError(f"cannot write '{path}': it is a folder; pass a file name such as '{path / 'model.onnx'}'")
    if not os.access(path.parent, os.W_OK):
        raise FovealError(f"cannot write '{path}': no permission to write in '{path.parent}'; choose another folder")


@contextlib.contextmanager
def _memory_named(channels: int, height: int, width: int) -> Iterator[None]:
    """Turn running out of memory on a (1, channels, height, width) input into a FovealError naming the input."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if not (isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(exc)):
            raise
        raise FovealError(
            f"not enough memory to export at {height}×{width} px ({channels} channel(s)): pass a smaller size, "
            "such as the one the model runs at (the default)",
            options=("size",),
        ) from None


def _dry_run(model: nn.Module, dummy: Tensor) -> None:
    """Run ``model`` once on ``dummy``; a shape mismatch is a FovealError naming the input."""
    try:
        with torch.inference_mode():
            model(dummy)
    except RuntimeError as exc:
        if isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc):
            raise
        first = str(exc).strip().splitlines()[0]
        raise FovealError(
            f"the model cannot run on a {tuple(dummy.shape)} input ({first}); pass the in_channels and resolution "
            "it was built for"
        ) from None


def _export(
    model: nn.Module, dummy: Tensor, path: Path, opset: int, output_names: tuple[str, ...], unbatched: tuple[str, ...]
) -> None:
    """TorchScript exporter (fast, exact opset, dynamic batch); the torch.export-based one if it is unavailable."""
    batched = [name for name in output_names if name not in unbatched]
    with warnings.catch_warnings():
        # The legacy exporter warns that it is deprecated, and tracing warns that "same" padding becomes a constant
        # (intended: H and W are fixed at export).
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                model,
                (dummy,),
                str(path),
                dynamo=False,
                opset_version=opset,
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *batched)},
                input_names=[INPUT_NAME],
                output_names=list(output_names),
            )
            return
        except (TypeError, NotImplementedError, AttributeError):
            pass  # this torch no longer has the TorchScript exporter
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(
            model,
            (dummy,),
            str(path),
            dynamo=True,
            opset_version=opset,
            dynamic_shapes=({0: batch},),
            input_names=[INPUT_NAME],
            output_names=list(output_names),
        )


def check_onnx(model: nn.Module, path: str | Path, x: Tensor) -> float:
    """Largest absolute difference between onnxruntime's output for ``x`` and the model's own in eval mode.

    The model's train/eval mode is restored afterwards.

    Args:
        model: the PyTorch model that was exported.
        path: the ``.onnx`` file.
        x: (N, C, H, W) input of the size the graph was exported for.

    Returns:
        max |onnx(x) − model(x)| over all outputs (a model may return one tensor or a tuple of them).
    """
    path = Path(path)
    if not path.is_file():
        raise FovealError(f"ONNX file '{path}' does not exist; export it first with export_onnx")
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise FovealError(f"onnxruntime cannot load '{path}' ({exc}); re-export it") from None
    inp = session.get_inputs()[0]
    try:
        got = session.run(None, {inp.name: x.detach().cpu().float().numpy()})
    except Exception as exc:
        raise FovealError(
            f"onnxruntime rejects an input of shape {tuple(x.shape)} (graph input {inp.shape}): {exc}"
        ) from None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            want = model(x)
    finally:
        model.train(was_training)
    wants = list(want) if isinstance(want, (tuple, list)) else [want]
    if len(wants) != len(got):
        raise FovealError(f"'{path}' has {len(got)} outputs but the model returns {len(wants)}: re-export it")
    return max(
        float((torch.from_numpy(g) - w.detach().cpu().float()).abs().max()) for g, w in zip(got, wants, strict=True)
    )


@dataclass(frozen=True)
class ExportSpec:
    """What a checkpoint exports (built by the task's model in :mod:`foveal.api`).

    Attributes:
        model: the fp32 network as loaded (eval mode); it is copied with its BatchNorms folded for the export.
        channels: C of the (N, C, H, W) input.
        size: the default input (H, W): a classifier's resolution, a U-Net's evaluation tile, a detector's min_size.
        output_names: one per output ("logits" for one output).
        unbatched: outputs without a batch axis (a detector's anchors).
        note: said after the export's report line.
        check_size: for a model that takes only some input sizes (a valid U-Net): raises FovealError for an (H, W)
            it cannot take and returns what to say about one it can (its output tile).
    """

    model: nn.Module
    channels: int
    size: tuple[int, int]
    output_names: tuple[str, ...] = (OUTPUT_NAME,)
    unbatched: tuple[str, ...] = ()
    note: str = ""
    check_size: Callable[[tuple[int, int]], str] | None = None


@dataclass(frozen=True)
class ExportReport:
    """An export done: the file, its input, its outputs and how far onnxruntime's outputs are from PyTorch's."""

    path: Path
    channels: int
    size: tuple[int, int]
    output_names: tuple[str, ...]
    max_difference: float
    note: str = ""

    def format(self) -> str:
        shape = f"N×{self.channels}×{self.size[0]}×{self.size[1]}"
        return (
            f"wrote {self.path} (input {shape}, outputs {', '.join(self.output_names)}); onnxruntime vs torch: "
            f"max |difference| = {self.max_difference:.2e}{self.note}"
        )


def check_export_options(opset: int, size: Sequence[int] | None) -> tuple[int, int] | None:
    """The input (H, W) asked for (None: the model's default), after checking ``opset`` and ``size`` (H or H W)."""
    if opset not in ONNX_OPSETS:
        low, high = ONNX_OPSETS[0], ONNX_OPSETS[-1]
        raise FovealError(
            f"opset {opset} is not supported by this torch: choose {low} to {high} (default {DEFAULT_OPSET})",
            options=("opset",),
        )
    if size is None:
        return None
    shown = " ".join(map(str, size))
    if not 1 <= len(size) <= 2 or min(size) < 1:
        raise FovealError(f"size {shown}: give the input's H (and W) in pixels, e.g. size 512", options=("size",))
    if max(size) > MAX_SIDE:
        raise FovealError(
            f"size {shown} is larger than an export takes (at most {MAX_SIDE} px a side): export at the model's own "
            "input (leave out size), and resize or tile larger images before running the graph",
            options=("size",),
        )
    return int(size[0]), int(size[-1])


def export_checked(
    spec: ExportSpec,
    path: str | Path,
    size: Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
) -> ExportReport:
    """Export ``spec``'s network to ONNX at ``path`` and check the graph against PyTorch with onnxruntime.

    Args:
        spec: the network and its input (see :class:`ExportSpec`).
        path: the ``.onnx`` file; written whole or not at all.
        size: input H, or H and W (default: ``spec.size``); the batch axis stays dynamic.
        opset: ONNX operator set (:data:`ONNX_OPSETS`).

    The graph is traced from an fp32 CPU copy; the check runs the model on a random (2, C, H, W) batch where the
    model is (its device).
    """
    asked = check_export_options(opset, size)
    hw = spec.size if asked is None else asked
    note = spec.note if spec.check_size is None else spec.check_size(hw) + spec.note
    target = Path(path)
    # checked under a name of its own, then moved over the target: a failed check leaves an earlier file as it was
    staged = target.with_name(f".{target.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.checking.onnx")
    try:
        export_onnx(
            spec.model, staged, spec.channels, hw, opset=opset, output_names=spec.output_names, unbatched=spec.unbatched
        )
        with _memory_named(spec.channels, *hw):
            x = torch.randn(2, spec.channels, *hw, device=next(spec.model.parameters()).device)
            diff = check_onnx(spec.model, staged, x)
        try:
            os.replace(staged, target)
        except OSError as exc:
            raise FovealError(f"cannot write '{target}': {exc}") from None
    finally:
        with contextlib.suppress(OSError):  # gone, or never made (its folder is not one)
            staged.unlink()
    return ExportReport(target, spec.channels, hw, spec.output_names, diff, note)
