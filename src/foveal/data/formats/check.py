"""``foveal data check SRC``: read a detection set as training would, and say what is in it.

Reading is the check: every error training would meet (a malformed file, a class id beyond the names, a box without
area, a missing image) is raised here, naming the file and line. What passes is summed up per split: images, boxes,
ignore regions, images without objects, boxes clipped to or dropped outside their image, and boxes per class.
"""

from __future__ import annotations

import os
from collections import Counter

from foveal.data.coco import DetectionData


def check(
    src: str | os.PathLike[str], *, source_format: str = "auto", splits: tuple[str, ...] = ("train",)
) -> list[str]:
    """Read the ``splits`` of ``src`` and return lines describing each (see the module docstring)."""
    from foveal.data.formats import open_detection

    lines = []
    for split in dict.fromkeys(splits):
        data = open_detection(src, split=split, format=source_format)
        lines.append(f"{split}: {data.summary or 'read a COCO dataset: ' + data.source}")
        lines.extend(f"  {line}" for line in _figures(data))
    return lines


def _figures(data: DetectionData) -> list[str]:
    ignored = sum(int(t["ignore_labels"].numel()) for t in data.targets)
    empty = sum(1 for t in data.targets if t["labels"].numel() == 0)
    per_class = Counter(data.classes[int(k)] for t in data.targets for k in t["labels"])
    repairs = data.repairs
    return [
        f"{len(data)} images ({empty} without objects), {data.num_boxes()} boxes, {ignored} ignore regions",
        f"{repairs.get('clipped', 0)} boxes clipped to their image, {repairs.get('outside', 0)} dropped outside it",
        "boxes per class: " + ", ".join(f"{name} {per_class.get(name, 0)}" for name in data.classes),
    ]
