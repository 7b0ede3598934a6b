"""ONNX export with a dynamic batch axis, and a check of the exported graph against PyTorch.

The model is exported from a copy in eval mode with its BatchNorms folded into the convolutions
(:func:`foveal.models.layers.fuse_conv_bn`), so the caller's model is left as it was. The file is written next to its
target and moved into place only once complete, so an existing file is never left half-overwritten.
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
from foveal.models.layers import fuse_conv_bn

INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def export_onnx(model: nn.Module, path: str | Path, in_channels: int, resolution: int, opset: int = 17) -> Path:
    """Write ``model`` as an ONNX graph taking (batch, in_channels, resolution, resolution) images.

    The batch axis is dynamic; height and width are fixed at ``resolution`` (TensorFlow "same" padding is computed
    from the input size at export time). The graph's input is named "images" and its output "logits".

    Args:
        model: any module whose forward takes one (N, C, H, W) tensor and returns one tensor.
        path: the ``.onnx`` file to write; its folder must exist.
        in_channels: C of the input (3 for RGB, 1 for grayscale).
        resolution: H = W of the input.
        opset: ONNX operator set version.

    Returns:
        The path written.
    """
    path = Path(path)
    if in_channels < 1 or resolution < 1:
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

    export_model = fuse_conv_bn(copy.deepcopy(model).eval()).to("cpu")
    dummy = torch.zeros(1, in_channels, resolution, resolution)
    try:
        with torch.inference_mode():
            export_model(dummy)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise FovealError(
            f"the model cannot run on a (1, {in_channels}, {resolution}, {resolution}) input ({first}); pass the "
            "in_channels and resolution it was built for"
        ) from None

    # a unique name beside the target (same file system, so os.replace is atomic); created by the exporter itself so
    # the file gets the usual permissions
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        _export(export_model, dummy, tmp, opset)
        import onnx

        onnx.checker.check_model(str(tmp))
        os.replace(tmp, path)
    except OSError as exc:
        raise FovealError(f"cannot write '{path}': {exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path


def _export(model: nn.Module, dummy: Tensor, path: Path, opset: int) -> None:
    """TorchScript exporter (fast, exact opset, dynamic batch); the torch.export-based one if it is unavailable."""
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
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
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
            output_names=[OUTPUT_NAME],
        )


def check_onnx(model: nn.Module, path: str | Path, x: Tensor) -> float:
    """Largest absolute difference between onnxruntime's output for ``x`` and the model's own in eval mode.

    The model's train/eval mode is restored afterwards.

    Args:
        model: the PyTorch model that was exported.
        path: the ``.onnx`` file.
        x: (N, C, H, W) input of the size the graph was exported for.

    Returns:
        max |onnx(x) − model(x)| over all outputs.
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
        got = session.run(None, {inp.name: x.detach().cpu().float().numpy()})[0]
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
    return float((torch.from_numpy(got) - want.detach().cpu().float()).abs().max())
