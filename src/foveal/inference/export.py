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
from pathlib import Path

import torch
from torch import Tensor, nn

from foveal.errors import FovealError
from foveal.inference.fast import fold_batchnorm

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DETECTOR_OUTPUTS = ("cls_logits", "box_deltas", "anchors")


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
    if in_channels < 1 or height < 1 or width < 1:
        raise FovealError(
            f"in_channels and resolution must be positive, got {in_channels} and {resolution}; pass the input size "
            "the model is meant for"
        )
    if not path.parent.is_dir():
        raise FovealError(f"cannot write '{path}': folder '{path.parent}' does not exist; create it first")
    if path.is_dir():
        raise FovealError(f"cannot write '{path}': it is a folder; pass a file name such as '{path / 'model.onnx'}'")
    if not os.access(path.parent, os.W_OK):
        raise FovealError(f"cannot write '{path}': no permission to write in '{path.parent}'; choose another folder")

    export_model = fold_batchnorm(copy.deepcopy(model).eval()).to("cpu")
    dummy = torch.zeros(1, in_channels, height, width)
    try:
        with torch.inference_mode():
            export_model(dummy)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise FovealError(
            f"the model cannot run on a (1, {in_channels}, {height}, {width}) input ({first}); pass the "
            "in_channels and resolution it was built for"
        ) from None

    # a unique name beside the target (same file system, so os.replace is atomic); created by the exporter itself so
    # the file gets the usual permissions
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
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
