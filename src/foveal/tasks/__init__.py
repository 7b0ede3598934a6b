"""Tasks: per task, the model, loss, metrics and post-processing on top of the shared engine."""
