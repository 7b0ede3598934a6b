"""Training engine shared by every task: trainer, checkpoints, schedules, distributed helpers, metric logs."""
