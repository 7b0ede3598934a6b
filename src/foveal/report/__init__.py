"""Reports: PNG figures (confusion matrix, training curves) and text/JSON/CSV tables, all written atomically."""

from foveal.report.plots import DEFAULT_CURVE_KEYS, plot_confusion, plot_curves
from foveal.report.tables import (
    CSV_HEADER,
    Prediction,
    format_metrics,
    format_table,
    predictions_from_logits,
    predictions_to_records,
    write_csv,
    write_metrics_json,
    write_predictions_json,
)

__all__ = [
    "CSV_HEADER",
    "DEFAULT_CURVE_KEYS",
    "Prediction",
    "format_metrics",
    "format_table",
    "plot_confusion",
    "plot_curves",
    "predictions_from_logits",
    "predictions_to_records",
    "write_csv",
    "write_predictions_json",
    "write_metrics_json",
]
