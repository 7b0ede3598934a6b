"""Explain a trained model's predictions: class activation maps, Grad-CAM, map-derived boxes and their figures.

References:
    Zhou, Khosla, Lapedriza, Oliva, Torralba, "Learning Deep Features for Discriminative Localization", CVPR 2016: the
    map ``M_c = Σ_k w_k^c f_k`` of a global-average-pooling classifier, the top-5 maps of an image (Fig. 4), the box
    of the largest region above 20 % of the map's maximum, and the top-1 / top-5 localization error.
    Selvaraju et al., "Grad-CAM", ICCV 2017: maps of any differentiable score, used here for segmenters and detectors.

:func:`explain` runs the explainer of the checkpoint's task (:attr:`foveal.tasks.table.TaskSpec.explain`):

- classify (:mod:`foveal.tasks.classify_explain`): CAM (default) or Grad-CAM of the classifier's last conv map (the map
  global pooling sees), for the top-k classes of each image. Images are resized as the classifier's evaluation
  transform does (shorter side to the model's resolution, centre square crop); each map is upsampled from the feature
  grid straight onto the pixels of the original image that the crop covers, so boxes are in ORIGINAL image pixels.
  Figures: the paper's Fig. 4 layout (``<stem>_top<k>.png``) and the top-1 map over the image with its box
  (``<stem>_<method>.png``).
- segment: Grad-CAM of the foreground score summed over the predicted foreground, at the U-Net's bottom
  (:mod:`foveal.tasks.segment_explain`); ``method`` does not apply (CAM needs a pooled classifier).
- detect: Grad-CAM of each of the ``top_k`` best detections' class logit at the pyramid level its anchor sits on
  (:mod:`foveal.tasks.detect_explain`); ``method`` does not apply.

Boxes are (x1, y1, x2, y2), x2 and y2 exclusive (see :mod:`foveal.explain.boxes`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from foveal.data.images import expand_inputs
from foveal.engine.device import placement, resolve_device, resolve_precision
from foveal.engine.runinfo import write_run_info
from foveal.errors import FovealError
from foveal.explain.boxes import PAPER_THRESHOLD
from foveal.io import staged_output, write_json
from foveal.results import Explanation
from foveal.tasks.explain_common import RESULTS_FILE, ExplainOptions, check_options
from foveal.tasks.table import TaskSpec, all_specs, checkpoint_spec

Explainer = Callable[[Path, list[Path], Path, ExplainOptions], list[Explanation]]
"""One task's explanation: (checkpoint, image files, output folder, options) → one record per image."""


def explain(
    checkpoint: str | Path,
    inputs: list[str],
    out: str | Path,
    options: ExplainOptions | None = None,
    **keywords: Any,
) -> list[Explanation]:
    """Explain a checkpoint's predictions on images; write figures and ``explanations.json`` to ``out``.

    Args:
        checkpoint: a checkpoint directory or a run directory (its best, else latest, checkpoint).
        inputs: image files, folders and glob patterns (see :func:`foveal.data.images.expand_inputs`).
        out: output folder (created).
        options: what to explain, checked (:func:`explain_options`); or leave it out and give the options as
            keywords, which :func:`explain_options` checks.

    Returns:
        One :class:`~foveal.results.Explanation` per image, in input order (also written to
        ``out/explanations.json``).
    """
    if options is None:
        options = explain_options(**keywords)
    elif keywords:
        raise FovealError(f"give the options as one ExplainOptions or as keywords, not both ({', '.join(keywords)})")
    spec = checkpoint_spec(checkpoint)
    _check_applies(spec, options, checkpoint)
    started = time.time()
    files = expand_inputs(list(inputs))
    _check_out(out)
    return _run(spec.explain, Path(checkpoint), spec.name, files, out, options, started)


def explain_options(
    *,
    top_k: int = 5,
    method: str = "cam",
    threshold: float = PAPER_THRESHOLD,
    relative_to: str = "max",
    score_thresh: float | None = None,
    map_stride: int | None = None,
    map_scales: Sequence[float] | None = None,
    flip: bool = False,
    true_boxes: Mapping[str, Sequence[Sequence[float]]] | None = None,
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> ExplainOptions:
    """The options of an explanation, checked, with the device and precision resolved.

    Args:
        top_k: classes explained per image (capped at the number of classes) for classifiers; detections explained
            per image (the best ones) for detectors.
        method: "cam" (class activation map, the paper's) or "gradcam"; classifiers only (segmenters and detectors
            are explained by Grad-CAM).
        threshold: a box keeps the largest region above ``threshold`` of the map (0.2 in the paper).
        relative_to: "max" (the paper: ``threshold · max``) or "range" (of the min–max normalised map).
        score_thresh: detectors only: the lowest detection score explained (default: the checkpoint's, 0.05).
        map_stride: EfficientNet classifiers only: compute the maps at this finer stride from the same weights
            (:func:`~foveal.models.efficientnet.dilated_copy`); ``None`` keeps the network's own grid.
        map_scales: classifiers only: average the maps of the image resized by these scales
            (:func:`~foveal.tasks.classify_explain.multiscale`, e.g. ``(1, 2.5)``); ``None``: the paper's single scale.
        flip: classifiers only: also explain the mirrored image; class scores and maps are the averages of both
            (test-time mirroring, a deviation from the paper; the paper's path is ``False``).
        true_boxes: classifiers only: image file name → its objects' boxes (x1, y1, x2, y2), drawn in green on the
            figures of that image (the paper's Fig. 6).
        device: where the network runs: ``auto`` (CUDA when there is one), ``cpu``, ``cuda``, ``cuda:N``.
        precision: ``auto`` (fp32 for inference), ``fp32``, ``bf16`` or ``fp16`` (CUDA) for the network (its
            BatchNorm-folded copy); maps, boxes and scores are computed in fp32.
    """
    options = check_options(top_k, method, threshold, relative_to, score_thresh, map_stride, map_scales, flip)
    return _placed(options, true_boxes, device, precision)


def _run(
    explainer: Explainer,
    checkpoint: Path,
    task: str,
    files: list[Path],
    out: str | Path,
    options: ExplainOptions,
    started: float,
) -> list[Explanation]:
    """Explain ``files`` into ``out`` with ``explainer``: figures, ``explanations.json`` and the run record."""
    with staged_output(out) as staged:  # the figures of one command appear together, or not at all
        records = explainer(checkpoint, files, staged.staging, options)
        records = [replace(r, figures=[staged.published_path(f) for f in r.figures]) for r in records]
        write_json(staged.staged(RESULTS_FILE), [r.to_dict() for r in records])
        shown = {k: v for k, v in asdict(options).items() if v is not None and k != "true_boxes"}
        write_run_info(
            staged.staging,
            "explain",
            started,
            task=task,
            checkpoint=str(checkpoint),
            data={"images": len(files)},
            options=shown,
            **placement(options.device, options.precision),
        )
    return records


def _placed(
    options: ExplainOptions,
    true_boxes: Mapping[str, Sequence[Sequence[float]]] | None,
    device: str | torch.device,
    precision: str,
) -> ExplainOptions:
    """``options`` with the true boxes as plain lists of floats and the resolved device and precision."""
    if true_boxes is not None:
        truth = {str(k): [[float(v) for v in b] for b in boxes] for k, boxes in true_boxes.items()}
        options = replace(options, true_boxes=truth)
    where = resolve_device(device)
    return replace(options, device=str(where), precision=resolve_precision(precision, where).requested)


#: The options only some tasks' explainers take (:attr:`~foveal.tasks.table.TaskSpec.explain_options`).
TASK_OPTIONS = ("map_stride", "map_scales", "flip")


def _check_applies(spec: TaskSpec, options: ExplainOptions, checkpoint: str | Path) -> None:
    """Refuse an option the task's explainer does not take, naming the tasks that do."""
    given = [name for name in TASK_OPTIONS if getattr(options, name) not in (None, False)]
    if any(name not in spec.explain_options for name in given):
        nouns = " and ".join(f"{s.noun}s" for s in all_specs() if set(given) <= set(s.explain_options))
        raise FovealError(
            f"{', '.join(TASK_OPTIONS[:-1])} and {TASK_OPTIONS[-1]} apply to {nouns} (finer CAMs); {checkpoint} is a "
            f"'{spec.name}' checkpoint",
            options=tuple(given),
        )


def _check_out(out: str | Path) -> None:
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise FovealError(f"output folder {path} is a file: pass a folder for the figures and {RESULTS_FILE}")


def format_records(records: list[Explanation]) -> str:
    """A short table: one line per image and explained class, with its score and box."""
    lines = [f"{'image':<28} {'class':<16} {'score':>6}  box (x1, y1, x2, y2)"]
    for r in records:
        name = Path(r.file).name
        name = name if len(name) <= 28 else name[:27] + "…"
        for cls, score, box in zip(r.classes, r.scores, r.boxes, strict=True):
            lines.append(f"{name:<28} {cls[:16]:<16} {score:>6.3f}  ({', '.join(f'{v:g}' for v in box)})")
            name = ""
    return "\n".join(lines)


# -- classifiers -----------------------------------------------------------------------------------------------------
