"""Metrics accumulated over batches, one module per task."""

from foveal.metrics.classification import ClassificationMeter, ClassificationResult

__all__ = ["ClassificationMeter", "ClassificationResult"]
