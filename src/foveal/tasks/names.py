"""The tasks' names and nouns: the light part of the task table (:mod:`foveal.tasks.table`), which the command line's
help and the checkpoint checks read without importing any task."""

from __future__ import annotations

#: The tasks, in the order the command line lists them.
TASK_NAMES = ("classify", "segment", "detect")

#: What a model of each task is called in messages.
NOUNS = dict(zip(TASK_NAMES, ("classifier", "segmentation model", "detector"), strict=True))
