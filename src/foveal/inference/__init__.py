"""Inference helpers: ONNX export and its check against PyTorch."""

from foveal.inference.export import check_onnx, export_onnx

__all__ = ["check_onnx", "export_onnx"]
