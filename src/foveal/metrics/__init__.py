"""Metrics accumulated over batches, one module per task."""

from foveal.metrics.classification import ClassificationMeter

__all__ = ["ClassificationMeter"]
