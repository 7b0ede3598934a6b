"""The ``foveal`` command line: train, eval, predict, explain, export, models, weightmap, demo.

Every error a user can cause is printed as one line ``foveal: error: ...`` with exit code 2, no traceback. An
unexpected failure (a bug) is one line too, naming the command and its input, with exit code 1; ``FOVEAL_DEBUG=1``
shows its traceback. Ctrl-C exits with 130. Python warnings raised while a command runs are printed after it as
``foveal: warning: ...`` lines (once each), and not at all when it fails: the error line is the one thing said.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, NoReturn

from foveal.engine.allocator import keep_freed_memory
from foveal.engine.runinfo import set_command
from foveal.errors import FovealError


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one FovealError line (no usage dump), like every other error."""

    def error(self, message: str) -> NoReturn:
        raise FovealError(f"{message} (see '{self.prog} --help')")


def _task_module(task: str) -> Any:
    if task == "classify":
        from foveal.tasks import classify

        return classify
    if task == "detect":
        from foveal.tasks import detect

        return detect
    from foveal.tasks import segment

    return segment


_CONFIGS = {"classify": "ClassifyConfig", "segment": "SegmentConfig", "detect": "DetectConfig"}


def cmd_train(args: argparse.Namespace) -> int:
    from foveal.config import load_config, recipe_path
    from foveal.io import writable_dir

    module = _task_module(args.task)
    config_cls = getattr(module, _CONFIGS[args.task])
    if args.resume:
        if args.overrides or args.config:
            raise FovealError("--resume continues a run with its stored config: drop --config and key=value overrides")
        args.run_dir = Path(args.resume)
        result = module.train(config_cls(), resume=args.resume, device=args.device)
    else:
        cfg = load_config(config_cls, recipe_path(args.config, args.task), args.overrides)
        out = Path(args.out or cfg.out)
        if args.device is None:  # the config's train.device, checked before the run directory is made
            from foveal.engine.device import resolve_device

            resolve_device(cfg.train.device)
        if out.exists() and not out.is_dir():
            raise FovealError(f"run directory {out} is a file: pass a folder with --out (it is created if missing)")
        writable_dir(out, "run directory")
        args.run_dir = out
        if out.exists() and any((out / "checkpoints").glob("step-*")) and not args.overwrite:
            raise FovealError(
                f"run directory {out} already holds checkpoints: continue it with --resume {out}, choose another "
                "--out, or pass --overwrite to train over it"
            )
        result = module.train(cfg, run_dir=out, device=args.device)
    from foveal.engine.distributed import is_main_process  # deferred: it imports torch, which `foveal --help` need not

    if not is_main_process():
        return 0  # under torchrun only rank 0 prints the metrics and writes the report
    _print_metrics(result)
    print(f"run directory: {result['run_dir']}")
    _write_report(result["run_dir"])
    return 0


def _write_report(folder: str | Path) -> None:
    """Write the folder's report.html and print its path (the last step of train, eval, explain and demo)."""
    from foveal.report.build import write_report

    print(f"report: {write_report(folder)}")


def _check_placement(args: argparse.Namespace) -> None:
    """A ``--device`` / ``--precision`` this machine lacks is an error before any verb creates a folder."""
    if getattr(args, "device", None) is None:
        return
    from foveal.engine.device import resolve_device, resolve_precision

    resolve_precision(getattr(args, "precision", None), resolve_device(args.device))


def _placement(args: argparse.Namespace) -> dict[str, Any]:
    """``device`` and ``precision`` keywords of the inference verbs (``--device``, ``--precision``)."""
    return {"device": args.device or "auto", "precision": args.precision}


def _add_device(p: argparse.ArgumentParser, precision: bool = False, default: str | None = "auto") -> None:
    p.add_argument(
        "--device",
        default=default,
        help="auto (CUDA when there is one), cpu, cuda or cuda:N"
        + (" (default: the config's train.device, auto)" if default is None else " (default: auto)"),
    )
    if precision:
        p.add_argument(
            "--precision",
            choices=["fp32", "bf16", "fp16"],
            default="fp32",
            help="number format of the network: fp32 (default), bf16 (fast on CPUs with AVX512-BF16 / AMX and on "
            "GPUs), fp16 (CUDA only); inputs, boxes and metrics stay fp32",
        )


def _print_metrics(metrics: dict[str, object]) -> None:
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))


def _tta_only_for_segmentation(args: argparse.Namespace, task: str) -> None:
    if args.tta is not None and task != "segment":
        raise FovealError(f"--tta applies to segmentation checkpoints; {args.checkpoint} is a '{task}' checkpoint")


def cmd_eval(args: argparse.Namespace) -> int:
    from foveal.engine.checkpoint import checkpoint_task

    task = checkpoint_task(args.checkpoint)
    _tta_only_for_segmentation(args, task)
    _boxes_only_for_classifiers(args, task)
    if task == "segment":
        from foveal.tasks import segment_eval

        seg = segment_eval.evaluate_checkpoint(args.checkpoint, args.data, args.out, tta=args.tta, **_placement(args))
        print(seg.format())
    elif task == "detect":
        from foveal.tasks import detect_eval

        det = detect_eval.evaluate_checkpoint(args.checkpoint, args.data, args.split, args.out, **_placement(args))
        print(det.format())
    elif args.boxes is not None:
        _localization_eval(args)
    else:
        from foveal.report.tables import format_metrics
        from foveal.tasks import classify

        result = classify.evaluate_checkpoint(
            args.checkpoint, args.data, args.split or "test", args.out, **_placement(args)
        )
        print(format_metrics(result))
    if args.out:
        print(f"metrics written to {args.out}")
        _write_report(args.out)
    return 0


def _boxes_only_for_classifiers(args: argparse.Namespace, task: str) -> None:
    maps = [
        f for f, v in (("--map-stride", args.map_stride), ("--map-scales", args.map_scales), ("--flip", args.flip)) if v
    ]
    if args.boxes is None and (maps or args.box_format):
        raise FovealError(f"{' and '.join(maps or ['--box-format'])} apply to localization: add --boxes FILE")
    if args.boxes is not None and task != "classify":
        raise FovealError(f"--boxes evaluates a classifier's localization; {args.checkpoint} is a '{task}' checkpoint")
    if args.boxes is not None and args.data is None:
        raise FovealError("--boxes needs --data FOLDER: the folder that holds the box file's images")


def _localization_eval(args: argparse.Namespace) -> None:
    from foveal.tasks.localize_eval import localization_eval_folder

    report = localization_eval_folder(
        args.checkpoint,
        args.data,
        args.boxes,
        box_format=args.box_format,
        split=args.split or "test",
        map_stride=args.map_stride,
        map_scales=args.map_scales,
        flip=args.flip,
        out=args.out,
    )
    print(report.format())


def cmd_predict(args: argparse.Namespace) -> int:
    from foveal.tasks.predict import PredictRequest, run_predict

    request = PredictRequest(
        checkpoint=args.checkpoint,
        inputs=tuple(args.inputs),
        out=args.out,
        top_k=args.top_k,
        tile=args.tile,
        fmt="tif" if args.format == "tiff" else args.format,
        probabilities=args.probabilities,
        tta=args.tta,
        batch_size=args.batch_size,
        workers=args.workers,
        resume=args.resume,
        strict=args.strict,
        json=args.json,
        csv=args.csv,
        ray=args.ray,
        **_placement(args),
    )
    done = run_predict(request)
    if done.table:
        print(done.table)
    print(done.summary.format())
    if done.out is not None:
        what = {"classify": "predictions", "segment": "label images and overlays", "detect": "detections"}[done.task]
        print(f"{what} written to {done.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from foveal.engine.checkpoint import checkpoint_task
    from foveal.engine.device import resolve_device
    from foveal.inference.export import DETECTOR_OUTPUTS, DetectorGraph, check_onnx, export_onnx

    low, high = _onnx_opsets()
    if not low <= args.opset <= high:
        raise FovealError(f"--opset {args.opset} is not supported by this torch: choose {low} to {high} (default 17)")
    if args.size is not None and (len(args.size) > 2 or min(args.size) < 1):
        raise FovealError(
            f"--size {' '.join(map(str, args.size))}: give the input's H (and W) in pixels, e.g. --size 512"
        )
    task = checkpoint_task(args.checkpoint)
    device = resolve_device(args.device)  # the graph is traced from an fp32 CPU copy; the check runs on the device
    model: torch.nn.Module
    names: tuple[str, ...] = ("logits",)
    unbatched: tuple[str, ...] = ()
    note, border = "", 0
    if task == "classify":
        from foveal.tasks import classify

        clf = classify.load_classifier(args.checkpoint, device=device)
        model, channels, default = clf.model, clf.channels, (clf.resolution, clf.resolution)
    elif task == "segment":
        from foveal.tasks.segment import load_segmenter, tile_input

        seg = load_segmenter(args.checkpoint, device=device)
        model, channels = seg.model, seg.channels
        edge = tile_input(seg.model, seg.config.data.eval_tile)
        default = (edge, edge)
        border = int(getattr(seg.model, "border", 0))
    elif task == "detect":
        from foveal.tasks.detect_eval import load_detector

        det = load_detector(args.checkpoint, fast=False, device=device)
        model, channels = DetectorGraph(det.model), det.channels
        edge = -(-det.min_size // 32) * 32
        default = (edge, edge)
        names, unbatched = DETECTOR_OUTPUTS, ("anchors",)
        note = (
            "; resize and normalise outside the graph, post-process its outputs (foveal.models.retinanet.postprocess)"
        )
    else:
        raise FovealError(
            f"checkpoint {args.checkpoint} is a '{task}' checkpoint, not a classifier, U-Net or detector: export one "
            "of those"
        )
    size = default if args.size is None else (args.size[0], args.size[-1])
    if task == "segment":
        for edge in set(size):
            _check_segment_input(model, edge)
        h, w = size[0] - 2 * border, size[1] - 2 * border
        note = f"; a {size[0]}×{size[1]} input gives a {h}×{w} output tile (overlap-tile larger images)"
    path = export_onnx(model, args.out, channels, size, opset=args.opset, output_names=names, unbatched=unbatched)
    x = torch.randn(2, channels, *size, device=device)
    diff = check_onnx(model, path, x)
    shape = f"N×{channels}×{size[0]}×{size[1]}"
    print(
        f"wrote {path} (input {shape}, outputs {', '.join(names)}); onnxruntime vs torch: max |difference| = "
        f"{diff:.2e}{note}"
    )
    return 0


def _check_segment_input(model: Any, edge: int) -> None:
    """FovealError naming the nearest input edges a U-Net takes when it cannot take ``edge``."""
    up = int(model.valid_input_size(edge, round="up"))
    if up == edge:
        return
    try:
        down = int(model.valid_input_size(edge, round="down"))
    except FovealError:
        down = None
    options = " or ".join(str(v) for v in (down, up) if v)
    raise FovealError(f"--size {edge}: this U-Net cannot take a {edge}-px input; use {options}")


def _onnx_opsets() -> tuple[int, int]:
    """The ONNX opsets this torch can export (torch.onnx keeps the range in a private module)."""
    try:
        from torch.onnx import _constants

        return int(_constants.ONNX_MIN_OPSET), int(_constants.ONNX_MAX_OPSET)
    except (ImportError, AttributeError):
        return 7, 20


def cmd_models(args: argparse.Namespace) -> int:
    from foveal.models.catalog import format_models
    from foveal.tasks.classify import PHI_RANGE

    for phi in args.phi:
        if not (math.isfinite(phi) and phi in PHI_RANGE):
            raise FovealError(f"--phi {phi:g}: use a compound coefficient {PHI_RANGE.describe()} (B0 … B7: 0 … 7)")
    print(format_models(extra_phis=args.phi))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from foveal.demo import run_demo
    from foveal.io import writable_dir

    writable_dir(args.out, "demo folder")
    out = run_demo(Path(args.out), quick=args.quick, **_placement(args))
    print(f"demo finished: everything is in {out}; open {out / 'report.html'}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from foveal.tasks.explain import explain, format_records

    if args.top_k < 1:
        raise FovealError(f"--top-k {args.top_k}: use a positive number of classes, e.g. --top-k 5")
    if not 0.0 < args.threshold < 1.0:
        raise FovealError(f"--threshold {args.threshold}: use a fraction between 0 and 1, e.g. 0.2 (the paper's)")
    records = explain(
        args.checkpoint,
        args.inputs,
        args.out,
        top_k=args.top_k,
        method=args.method,
        threshold=args.threshold,
        relative_to=args.relative_to,
        score_thresh=args.score_thresh,
        map_stride=args.map_stride,
        map_scales=args.map_scales,
        flip=args.flip,
        **_placement(args),
    )
    print(format_records(records))
    print(f"maps, boxes and figures written to {args.out}")
    _write_report(args.out)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    _write_report(args.path)
    return 0


def cmd_weightmap(args: argparse.Namespace) -> int:
    from foveal.tasks.segment_eval import weightmap_figures

    if args.limit < 1:
        raise FovealError(f"--limit {args.limit}: draw at least one image, e.g. --limit 4")
    if not (math.isfinite(args.w0) and args.w0 >= 0):
        raise FovealError(f"--w0 {args.w0:g}: use a finite border weight ≥ 0 (the paper's: 10)")
    if not (math.isfinite(args.sigma) and args.sigma > 0):
        raise FovealError(f"--sigma {args.sigma:g}: use a finite border width > 0 in pixels (the paper's: 5)")
    paths = weightmap_figures(args.data, args.out, w0=args.w0, sigma=args.sigma, limit=args.limit)
    for p in paths:
        print(f"wrote {p}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="foveal", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (task: classify, segment or detect)")
    p.add_argument("task", choices=["classify", "segment", "detect"], help="what to train")
    p.add_argument("--config", help="YAML recipe (path, or bundled name such as classify_cpu or segment_cpu)")
    p.add_argument("--out", help="run directory (default: the config's 'out')")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="train into a run directory that already has checkpoints")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.05")
    _add_device(p, default=None)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint on a dataset")
    p.add_argument("checkpoint", help="checkpoint directory or run directory")
    p.add_argument("--data", help="dataset spec (default: the checkpoint's validation data)")
    p.add_argument("--split", help="split: test (classification default), or a COCO split such as val (detection)")
    p.add_argument("--out", help="folder for metrics.json (and confusion.png for classifiers)")
    p.add_argument(
        "--tta", choices=["none", "dihedral"], help="segmentation: average over the 8 rotations / flips (dihedral)"
    )
    p.add_argument(
        "--boxes",
        help="classifiers: weakly supervised localization against these boxes (JSON, CSV, CUB folder, VOC/ImageNet "
        "XML folder) of the images in --data; writes localization.json and panels to --out",
    )
    p.add_argument(
        "--box-format", choices=["xyxy", "xywh"], help="with --boxes: how a JSON / header-less CSV writes boxes"
    )
    p.add_argument("--map-stride", type=int, help="with --boxes: maps on this finer stride (as in foveal explain)")
    p.add_argument("--map-scales", type=float, nargs="+", help="with --boxes: average the maps of these image scales")
    p.add_argument("--flip", action="store_true", help="with --boxes: average with the mirrored image's maps")
    _add_device(p, precision=True)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="classify (top-k), segment (labels + overlays) or detect (boxes) in images")
    p.add_argument("checkpoint", help="checkpoint directory or run directory")
    p.add_argument("inputs", nargs="+", help="image files, folders, glob patterns or list files (.txt, a path a line)")
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--json", help="also write the predictions as JSON here")
    p.add_argument("--csv", help="also write the predictions as CSV here (classification)")
    p.add_argument("--out", help="output folder (default: predictions; classify: none, only --json / --csv)")
    p.add_argument("--tile", type=int, help="segmentation: output tile edge (default: the checkpoint's eval tile)")
    p.add_argument(
        "--format",
        choices=["tif", "tiff", "png", "zarr"],
        default="tif",
        help="segmentation: label image format (large TIFF / zarr inputs stream to a tiled BigTIFF, or to zarr)",
    )
    p.add_argument(
        "--probabilities", action="store_true", help="segmentation: also write the soft-max probabilities (H, W, K)"
    )
    p.add_argument(
        "--tta", choices=["none", "dihedral"], help="segmentation: average over the 8 rotations / flips (dihedral)"
    )
    p.add_argument("--batch-size", type=int, help="images per forward pass (default: classify 32, detect 4, segment 1)")
    p.add_argument("--workers", type=int, help="processes decoding images ahead of the model (default: spare cores)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in --out (skips what is done)")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image (default: skip, list)")
    p.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="run on Ray Data: alone, a local instance; or a cluster address (auto, ray://host:10001)",
    )
    _add_device(p, precision=True)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a classifier, U-Net or detector to ONNX (checked against onnxruntime)")
    p.add_argument("checkpoint", help="checkpoint directory or run directory")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument(
        "--size",
        type=int,
        nargs="+",
        default=None,
        help="input H [W] (default: a classifier's resolution, a U-Net's evaluation tile, a detector's min_size)",
    )
    _add_device(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("models", help="list EfficientNet variants with parameters, FLOPs and resolution")
    p.add_argument("--phi", type=float, action="append", default=[], help="also list the model for this φ")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("explain", help="CAM / Grad-CAM maps with boxes for classifiers, U-Nets and detectors")
    p.add_argument("checkpoint", help="checkpoint directory or run directory")
    p.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--out", default="explanations", help="output folder (default: explanations)")
    p.add_argument("--top-k", type=int, default=5, help="classes or best detections per image (default 5)")
    p.add_argument("--method", choices=["cam", "gradcam"], default="cam", help="cam (one forward pass) or gradcam")
    p.add_argument("--threshold", type=float, default=0.2, help="box threshold as a fraction (default 0.2)")
    p.add_argument(
        "--relative-to", choices=["max", "range"], default="max", help="threshold of the map's max (paper) or range"
    )
    p.add_argument(
        "--score-thresh", type=float, default=None, help="detectors: lowest score explained (default: checkpoint's)"
    )
    p.add_argument(
        "--map-stride",
        type=int,
        default=None,
        help="EfficientNet classifiers: maps on this finer stride from the same weights (e.g. 2; default: its own)",
    )
    p.add_argument(
        "--map-scales",
        type=float,
        nargs="+",
        default=None,
        help="classifiers: average the maps of the image resized by these scales (e.g. 1 2.5; default: one scale)",
    )
    p.add_argument(
        "--flip",
        action="store_true",
        help="classifiers: average class scores and maps with those of the mirrored image (default: the image only)",
    )
    _add_device(p, precision=True)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("weightmap", help="the U-Net border weight map of instance masks, drawn like the paper's Fig. 3")
    p.add_argument("data", help="dataset with instance masks (nuclei-sample, a folder with images/ and masks/)")
    p.add_argument("--out", default="weightmaps", help="output folder (default: weightmaps)")
    p.add_argument("--w0", type=float, default=10.0, help="border weight w0 (default 10)")
    p.add_argument("--sigma", type=float, default=5.0, help="border width σ in pixels (default 5)")
    p.add_argument("--limit", type=int, default=4, help="images to draw (default 4)")
    p.set_defaults(func=cmd_weightmap)

    p = sub.add_parser("report", help="write report.html for a run, an eval / explain --out folder or the demo folder")
    p.add_argument("path", help="run directory, evaluation or explanation folder, or the demo's folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="train, evaluate and predict on the bundled sample; write everything to one folder")
    p.add_argument("--out", default="foveal-demo", help="output folder (default: foveal-demo)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for smoke tests)")
    _add_device(p, precision=True)
    p.set_defaults(func=cmd_demo)
    for name in ("train", "eval", "predict", "explain", "weightmap", "demo"):
        sub.choices[name].add_argument(
            "--max-pixels",
            type=float,
            default=None,
            metavar="N",
            help="largest image read, in pixels (default 2^30 ≈ 1.07 billion; checked from the header before decoding)",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code: 0, 2 (an error you can fix), 1 (unexpected), 130 (interrupted)."""
    for stream in (sys.stdout, sys.stderr):  # a file name of another encoding must not stop the output
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
    args = argparse.Namespace(command=None)
    started = time.time()
    library_log = logging.getLogger("tifffile")  # logs damage it works around: held back like a warning
    handler = _AsWarning()
    library_log.addHandler(handler)
    propagate, library_log.propagate = library_log.propagate, False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            code = _run(argv, args, started)
    finally:
        library_log.removeHandler(handler)
        library_log.propagate = propagate
    if code == 0 or os.environ.get("FOVEAL_DEBUG") == "1":
        for text in dict.fromkeys(str(w.message).splitlines()[0] for w in caught if str(w.message).strip()):
            print(f"foveal: warning: {text}", file=sys.stderr)
    return code


class _AsWarning(logging.Handler):
    """A library's log records of level WARNING and above, turned into Python warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        warnings.warn(record.getMessage(), UserWarning, stacklevel=2)


def _run(argv: list[str] | None, args: argparse.Namespace, started: float) -> int:
    parser = build_parser()
    try:
        parsed, extra = parser.parse_known_args(argv)
        vars(args).update(vars(parsed))
        # Overrides may come before or after options (the config checks each one); anything else unknown is an error.
        unknown = [e for e in extra if e.startswith("-") or args.command != "train"]
        if unknown:
            raise FovealError(
                f"unrecognized arguments: {' '.join(unknown)} (see 'foveal {args.command} --help' for the options)"
            )
        if args.command == "train":
            args.overrides = list(args.overrides) + extra
        set_command(["foveal", *(sys.argv[1:] if argv is None else argv)])
        keep_freed_memory()  # the command owns the process: reuse freed tensor memory (FOVEAL_MALLOC=default: off)
        from foveal.data.images import pixel_limit

        with pixel_limit(getattr(args, "max_pixels", None)):
            _check_placement(args)
            return int(args.func(args))
    except FovealError as exc:
        print(f"foveal: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"foveal: interrupted{_resume_hint(args, started)}", file=sys.stderr)
        return 130
    except MemoryError:
        print(
            f"foveal: error: {_what(args)} ran out of memory: use smaller inputs or batches (data.batch_size, "
            "--max-pixels)",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:  # the last resort: a bug, or an input no check foresaw
        if os.environ.get("FOVEAL_DEBUG") == "1":
            traceback.print_exc()
        message = str(exc).splitlines()[0] if str(exc).strip() else "no message"
        print(
            f"foveal: error: {_what(args)} failed unexpectedly ({type(exc).__name__}: {message}); check that input, "
            "rerun with FOVEAL_DEBUG=1 for the traceback and report it if the input is valid",
            file=sys.stderr,
        )
        return 1


def _what(args: argparse.Namespace) -> str:
    """'foveal predict' on its input, for the last-resort message."""
    command = f"'foveal {args.command}'" if getattr(args, "command", None) else "foveal"
    for key in ("checkpoint", "data", "resume", "config"):
        value = getattr(args, key, None)
        if value:
            return f"{command} on {value}"
    inputs = getattr(args, "inputs", None)
    return f"{command} on {', '.join(inputs[:3])}" if inputs else command


def _resume_hint(args: argparse.Namespace, started: float) -> str:
    """After Ctrl-C in training: how to continue, when this run wrote a checkpoint."""
    run_dir = getattr(args, "run_dir", None)
    if getattr(args, "command", None) != "train" or run_dir is None:
        return ""
    from foveal.engine.checkpoint import latest_checkpoint

    latest = latest_checkpoint(run_dir)
    if latest is None or latest.stat().st_mtime < started:
        return "; no checkpoint of this run was written yet, so start it again (an earlier run there is unchanged)"
    return f"; continue from its latest checkpoint ({latest.name}) with: foveal train {args.task} --resume {run_dir}"


if __name__ == "__main__":
    raise SystemExit(main())
