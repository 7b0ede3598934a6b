"""Report pages of each task's results: an evaluation (classification, segmentation, detection, or any other metrics
folder), an explanation folder, and the demo folder that links every stage.

Each page reads only what the commands wrote (``metrics.json``, ``per_image.json``, ``mistakes.json``,
``explanations.json``, ``run_info.json`` and the PNG files they name); the figures are bounded by the writers (the
worst images and a sample), and the tables here are bounded too.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from foveal.errors import FovealError
from foveal.report.html import (
    Page,
    esc,
    gallery,
    image,
    key_values,
    link,
    number,
    paragraph,
    percent,
    read_json,
    table,
)
from foveal.report.sections import provenance_section, run_info

MAX_ROWS = 60
"""Rows shown of a per-image table (the worst first)."""
MAX_FIGURES = 24
"""Figures shown of a folder of PNGs (a generic evaluation or an explanation)."""


def evaluation_page(folder: Path, task: str | None, section: Callable[[Page, Path, Any], None] | None) -> Page:
    """The report of an ``eval --out`` folder: the ``section`` of its ``task`` (its metrics, tables and figures; None:
    the metrics as they are), then the provenance."""
    metrics = read_json(folder / "metrics.json", "the metrics")
    page = Page(f"Evaluation: {folder.name}", f"{task or 'metrics'} evaluation in {folder.resolve()}")
    (section or generic_section)(page, folder, metrics)
    provenance_section(page, folder)
    return page


def localization_page(folder: Path) -> Page:
    """The report of ``foveal eval --boxes --out``: the localization errors and MaxBoxAccV2, then the panels of the
    worst and a sample of the images (map, predicted and true boxes)."""
    metrics = read_json(folder / "localization.json", "the localization metrics")
    page = Page(f"Localization: {folder.name}", f"weakly supervised localization in {folder.resolve()}")
    generic_section(page, folder, metrics)
    provenance_section(page, folder)
    return page


# -- classification --------------------------------------------------------------------------------------------------
def classification_section(page: Page, folder: Path, m: dict[str, Any]) -> None:
    k = m.get("top5_k", 5)
    page.add(
        "Accuracy",
        [
            key_values(
                [
                    ("images", m.get("count")),
                    ("top-1 accuracy", percent(m.get("top1"))),
                    (f"top-{k} accuracy", percent(m.get("top5"))),
                    ("mean class accuracy", percent(m.get("mean_class_accuracy"))),
                    ("loss", number(m.get("loss"))),
                ]
            )
        ],
        "accuracy",
    )
    classes = m.get("classes") or [str(i) for i in range(len(m.get("confusion", [])))]
    confusion = m.get("confusion", [])
    rows = []
    for i, name in enumerate(classes):
        row = confusion[i] if i < len(confusion) else []
        column = sum(r[i] for r in confusion if i < len(r))
        precision = row[i] / column if column and i < len(row) else None
        others = [(c, j) for j, c in enumerate(row) if j != i and c]
        worst = f"{classes[max(others)[1]]} ({max(others)[0]})" if others else "-"
        rows.append((name, sum(row), percent(m["per_class_accuracy"][i]), percent(precision), worst))
    parts = [table(("class", "images", "recall (accuracy)", "precision", "most often taken for"), rows, (1, 2, 3))]
    if (folder / "confusion.png").is_file():
        parts.append(image(folder / "confusion.png", "Confusion matrix (rows: true class, columns: predicted).", 720))
    page.add("Per class", parts, "per-class")
    mistakes_path = folder / "mistakes.json"
    if mistakes_path.is_file():
        mistakes = read_json(mistakes_path, "the list of mistakes")
        shown = [
            image(folder / r["thumbnail"], f"{r['true']} → {r['predicted']} ({r['confidence']:.2f}), #{r['index']}")
            for r in mistakes.get("shown", [])
        ]
        note = f"{mistakes.get('errors')} of {mistakes.get('samples')} images misclassified; the most confident:"
        page.add("Most confident mistakes", [paragraph(note), gallery(shown, small=True)], "mistakes")


# -- segmentation ----------------------------------------------------------------------------------------------------
def segmentation_section(page: Page, folder: Path, m: dict[str, Any]) -> None:
    summary = dict(m.get("summary", {}))
    page.add("Summary", [key_values((k.replace("_", " "), number(v)) for k, v in summary.items())], "summary")
    pixels = dict(m.get("pixels", {}))
    names = pixels.get("class_names") or [str(i) for i in range(len(pixels.get("iou", [])))]
    rows = [
        (n, number(i), number(d)) for n, i, d in zip(names, pixels.get("iou", []), pixels.get("dice", []), strict=False)
    ]
    parts = [table(("class", "IoU", "Dice"), rows, (1, 2))]
    inst = m.get("instances")
    if inst:
        per = inst.get("per_threshold", {})
        thr_rows = [
            (
                t,
                v["tp"],
                v["fp"],
                v["fn"],
                number(v["precision"]),
                number(v["recall"]),
                number(v["f1"]),
                number(v["ap"]),
            )
            for t, v in per.items()
        ]
        parts += [
            "<h3>Instances by IoU threshold</h3>",
            table(("IoU", "TP", "FP", "FN", "precision", "recall", "F1", "AP"), thr_rows, range(1, 8)),
        ]
    page.add("Pixel and instance metrics", parts, "metrics")
    per_image = folder / "per_image.json"
    if per_image.is_file():
        _segmentation_images(page, folder, read_json(per_image, "the per-image metrics", list))


def _segmentation_images(page: Page, folder: Path, rows: list[dict[str, Any]]) -> None:
    ordered = sorted(rows, key=lambda r: (r.get("f1_50", r.get("fg_iou")) or 0.0, r["name"]))[:MAX_ROWS]
    header = ("image", "foreground IoU", "F1 @ 0.5", "instances", "merged / touching pairs")
    body = [
        (
            r["name"],
            number(r.get("fg_iou")),
            number(r.get("f1_50")),
            r.get("instances", "n/a"),
            f"{r['merged_pairs']} / {r['touching_pairs']}" if "merged_pairs" in r else "n/a",
        )
        for r in ordered
    ]
    note = paragraph(f"{len(rows)} images, the worst first (by F1 at IoU 0.5).", "note")
    page.add("Per image", [note, table(header, body, (1, 2, 3))], "per-image")
    figures = []
    for r in rows:
        if "figure" in r:
            counts = (
                f"TP {r.get('tp_pred', 0)}, FP {r.get('fp', 0)}, FN {r.get('fn', 0)}, merging {r.get('merging', 0)}"
            )
            figures.append(image(folder / r["figure"], f"{r['name']}: {counts}", 1100))
    legend = paragraph(
        "Image | prediction | ground truth. Green: instances matched at IoU ≥ 0.5 (TP); red: predicted instances "
        "without a match (FP); orange: true instances nobody found (FN); magenta outline: a predicted instance that "
        "merges touching true instances. The worst images and a sample.",
        "note",
    )
    page.add("Predictions", [legend, *figures], "predictions")
    weights = [
        image(folder / r["weight_map"], f"{r['name']}: border weight map", 760) for r in rows if "weight_map" in r
    ]
    if weights:
        page.add("Border weight maps", weights, "weight-maps")


# -- detection -------------------------------------------------------------------------------------------------------
_COCO = (
    ("AP", "AP @ IoU 0.50:0.95"),
    ("AP50", "AP @ IoU 0.50"),
    ("AP75", "AP @ IoU 0.75"),
    ("APs", "AP small"),
    ("APm", "AP medium"),
    ("APl", "AP large"),
    ("AR1", "AR, 1 detection"),
    ("AR10", "AR, 10 detections"),
    ("AR100", "AR, 100 detections"),
)


def detection_section(page: Page, folder: Path, m: dict[str, Any]) -> None:
    counts = f"{m.get('num_images')} images, {m.get('num_boxes')} boxes, {m.get('num_detections')} detections"
    rows = [(label, number(m.get(key), 3)) for key, label in _COCO if key in m]
    page.add("COCO metrics", [paragraph(counts), table(("metric", "value"), rows, (1,))], "coco")
    per = dict(m.get("per_class", {}))
    class_rows = [(name, number(v.get("AP"), 3), number(v.get("AP50"), 3)) for name, v in per.items()]
    parts = [table(("class", "AP", "AP50"), class_rows, (1, 2))]
    if (folder / "pr_curve.png").is_file():
        parts.append(image(folder / "pr_curve.png", "Precision–recall curves.", 720))
    page.add("Per class", parts, "per-class")
    per_image = folder / "per_image.json"
    if per_image.is_file():
        record = read_json(per_image, "the per-image outcomes")
        _detection_images(page, folder, record)


def _detection_images(page: Page, folder: Path, record: dict[str, Any]) -> None:
    rows = list(record.get("images", []))
    ordered = sorted(rows, key=lambda r: (-(r["fp"] + r["fn"]), r["file"]))[:MAX_ROWS]
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    note = (
        f"At IoU ≥ {record.get('iou')} and score ≥ {record.get('score_thresh')}: {tp} true positives, {fp} false "
        f"positives, {fn} missed boxes over {len(rows)} images (the worst images first)."
    )
    body = [(r["file"], r["tp"], r["fp"], r["fn"]) for r in ordered]
    page.add("Per image", [paragraph(note), table(("image", "TP", "FP", "FN"), body, (1, 2, 3))], "per-image")
    legend = paragraph(
        "Green: detections matching a box of their class (TP); red: detections without one (FP, the label says what "
        "was claimed); orange: boxes nobody found (FN). The worst images and a sample.",
        "note",
    )
    figures = [
        image(folder / r["figure"], f"{r['file']}: TP {r['tp']}, FP {r['fp']}, FN {r['fn']}")
        for r in rows
        if "figure" in r
    ]
    page.add("Detections", [legend, gallery(figures)], "detections")


# -- any other metrics folder (e.g. a localization evaluation) --------------------------------------------------------
def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        out: list[tuple[str, Any]] = []
        for k, v in value.items():
            out += _flatten(v, f"{prefix}{k}" if not prefix else f"{prefix}.{k}")
        return out
    if isinstance(value, (int, float, str, bool)) or value is None:
        return [(prefix, value)]
    return []


def generic_section(page: Page, folder: Path, m: Any) -> None:
    rows = [(k, number(v)) for k, v in _flatten(m)][:200]
    page.add("Metrics", [table(("metric", "value"), rows, (1,))], "metrics")
    pngs = sorted(p for p in folder.rglob("*.png"))[:MAX_FIGURES]
    if pngs:
        page.add("Figures", [gallery(image(p, str(p.relative_to(folder))) for p in pngs)], "figures")


# -- explanations ----------------------------------------------------------------------------------------------------
def explanation_page(folder: Path, explained: Callable[[str], str] = lambda task: "class") -> Page:
    """The report of an ``explain --out`` folder: per image the explained classes (or what ``explained`` of the
    record's task names: "detection") and their figures."""
    records = read_json(folder / "explanations.json", "the explanations", list)
    page = Page(f"Explanations: {folder.name}", f"class activation maps in {folder.resolve()}")
    truth = _ground_truth(folder)
    if truth is not None:
        _localization_summary(page, truth)
    for r in records[:MAX_FIGURES]:
        name = Path(r["file"]).name
        rows = [
            (c, number(s, 3), ", ".join(f"{v:.0f}" for v in b))
            for c, s, b in zip(r["classes"], r["scores"], r["boxes"], strict=True)
        ]
        parts = [table((explained(str(r["task"])), "score", "map box (x1, y1, x2, y2)"), rows, (1,))]
        if truth is not None and name in truth:
            t = truth[name]
            parts.append(
                paragraph(f"Ground truth: {t['class']} at ({', '.join(f'{v:.0f}' for v in t['box'])}).", "note")
            )
        wide = [f for f in r["figures"] if "_top" in Path(f).stem]  # the paper's Fig. 4 row of top-k maps
        figures = [image(_figure_path(folder, f), Path(f).name) for f in wide]
        figures.append(gallery(image(_figure_path(folder, f), Path(f).name) for f in r["figures"] if f not in wide))
        page.add(f"{name} ({r['method']})", [*parts, *figures])
    if len(records) > MAX_FIGURES:
        page.add("More", [paragraph(f"{len(records) - MAX_FIGURES} more images in explanations.json.", "note")])
    provenance_section(page, folder)
    return page


def _figure_path(folder: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() or p.exists() else folder / p.name


def _ground_truth(folder: Path) -> dict[str, dict[str, Any]] | None:
    """``localization_check.json`` (image → true class and box, and whether the map found it), which the demo writes
    beside explanations of canvases with known boxes (``foveal eval``'s ``localization.json`` holds metrics)."""
    path = folder / "localization_check.json"
    if not path.is_file():
        return None
    return {r["image"]: r for r in read_json(path, "the ground-truth boxes")["images"]}


def _localization_summary(page: Page, truth: dict[str, dict[str, Any]]) -> None:
    rows = [
        (name, t["class"], t["predicted"], "yes" if t["peak_inside"] else "no", number(t["iou"], 2))
        for name, t in truth.items()
    ]
    inside = sum(t["peak_inside"] for t in truth.values())
    overlap = sum(t["iou"] > 0 for t in truth.values())
    note = (
        f"The top-1 map's peak lies inside the object in {inside} of {len(truth)} images; its box overlaps the "
        f"object in {overlap}. Boxes: the largest region above 20 % of the map's maximum (the paper's)."
    )
    header = ("image", "true class", "top-1 class", "peak inside the object", "IoU of map box and true box")
    page.add("Localization", [paragraph(note), table(header, rows, (4,))], "localization")


# -- demo ------------------------------------------------------------------------------------------------------------
def demo_page(folder: Path) -> Page:
    """The demo's report: what each stage showed, with links to the stage reports."""
    info = run_info(folder)
    page = Page("foveal demo", f"everything the demo wrote is in {folder.resolve()}")
    stages = info.get("stages", [])
    if not stages:
        raise FovealError(f"report: {folder / 'run_info.json'} lists no demo stages: rerun foveal demo")
    for stage in stages:
        parts = [paragraph(stage.get("summary", ""))]
        links = [link(rep, label) for label, rep in stage.get("reports", {}).items()]
        for rep in stage.get("reports", {}).values():
            if not (folder / rep).is_file():
                raise FovealError(f"report: the stage report {folder / rep} is missing: rerun foveal demo")
        if links:
            parts.append(f"<p>Reports: {' · '.join(links)}</p>")
        if stage.get("numbers"):
            parts.append(key_values((k, v) for k, v in stage["numbers"].items()))
        figures = [image(folder / f, caption) for caption, f in stage.get("figures", {}).items()]
        if figures:
            parts.append(gallery(figures))
        page.add(str(stage["title"]), parts, str(stage["name"]))
    provenance_section(page, folder)
    return page


__all__ = ["demo_page", "esc", "evaluation_page", "explanation_page"]
