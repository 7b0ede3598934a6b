"""The ``foveal`` command line: train, eval, predict, explain, export, models, weightmap, data, demo.

Every error a user can cause is printed as one line ``foveal: error: ...`` with exit code 2, no traceback. An
unexpected failure (a bug) is one line too, naming the command and its input, with exit code 1; ``FOVEAL_DEBUG=1``
shows its traceback. Ctrl-C exits with 130. Python warnings raised while a command runs are printed after it as
``foveal: warning: ...`` lines (once each), and not at all when it fails: the error line is the one thing said.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import math
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from foveal.engine.allocator import keep_freed_memory
from foveal.engine.runinfo import set_command
from foveal.errors import FovealError, rank_prefix
from foveal.tasks.table import TASK_NAMES


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as one FovealError line (no usage dump), like every other error."""

    def error(self, message: str) -> NoReturn:
        raise FovealError(f"{message} (see '{self.prog} --help')")


#: The flag of an API parameter whose name differs from its flag's (else ``--`` and the name with dashes).
_FLAGS = {"fmt": "--format", "inputs": "INPUTS", "checkpoint": "CHECKPOINT"}


def as_flags(exc: FovealError) -> str:
    """The message of ``exc`` with the API parameters it names (``exc.options``) written as this command line's flags:
    "tta applies to …" → "--tta applies to …"."""
    return _flagged(str(exc), exc.options)


def _flagged(text: str, options: tuple[str, ...]) -> str:
    """``text`` with each of ``options`` written as its flag where it stands as a word of its own (not inside a path,
    a ``key=value`` or a dotted key such as ``data.train``, a quoted name such as a file's "box_format" key, a quoted
    command such as 'ray start', a noun after an upper-case word: "CUDA device", or a verb after "to": "nothing to
    resume")."""
    for name in options:
        flag = _FLAGS.get(name, "--" + name.replace("_", "-"))
        text = re.sub(rf"(?<![\w.=/\-'\"\[])(?<![A-Z] )(?<!\bto ){re.escape(name)}(?![\w/\-'\"\[\]]|\.\w)", flag, text)
    return text


def _load(args: argparse.Namespace) -> Any:
    """The API model of ``args.checkpoint`` on ``--device`` in ``--precision``."""
    from foveal.api import load

    return load(args.checkpoint, **_placement(args))


def cmd_train(args: argparse.Namespace) -> int:
    from foveal.tasks.training_plan import plan_training, run_training

    plan = plan_training(
        args.task,
        args.config,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        overrides=args.overrides,
        device=args.device,
    )
    args.run_dir = plan.run_dir
    result = run_training(plan, device=args.device)
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


def _placement(args: argparse.Namespace) -> dict[str, Any]:
    """``device`` and ``precision`` keywords of the inference verbs (``--device``, ``--precision``)."""
    return {"device": args.device or "auto", "precision": getattr(args, "precision", None) or "auto"}


def _check_placement(args: argparse.Namespace) -> None:
    """A ``--device`` / ``--precision`` this machine lacks is an error before any verb creates a folder."""
    if getattr(args, "device", None) is None:
        return
    from foveal.engine.device import resolve_device, resolve_precision

    resolve_precision(getattr(args, "precision", None), resolve_device(args.device))


def _print_metrics(metrics: dict[str, object]) -> None:
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    print("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()))


#: ``foveal eval``'s options that go to the model's ``evaluate`` when its task takes them.
EVAL_OPTIONS = ("data", "split", "out", "tta", "boxes", "box_format", "map_stride", "map_scales", "flip")


def eval_options(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    """The keywords of ``model.evaluate`` from ``foveal eval``'s options: those given that its task takes; one given
    that it does not take is an error naming the tasks that do."""
    from foveal.api import MODELS
    from foveal.tasks.table import task_spec

    takes = inspect.signature(model.evaluate).parameters
    given = {k: getattr(args, k) for k in EVAL_OPTIONS if getattr(args, k) not in (None, False)}
    for name in given.keys() - takes.keys():
        nouns = [task_spec(k).noun for k, cls in MODELS.items() if name in inspect.signature(cls.evaluate).parameters]
        raise FovealError(
            f"{name} applies to {' and '.join(nouns)} checkpoints; {args.checkpoint} is a '{model.task}' checkpoint",
            options=(name,),
        )
    if given.get("boxes") is None and given.keys() & {"box_format", "map_stride", "map_scales", "flip"}:
        shown = sorted(given.keys() & {"box_format", "map_stride", "map_scales", "flip"})
        raise FovealError(f"{' and '.join(shown)} apply to localization: add boxes FILE", options=(*shown, "boxes"))
    return given


def cmd_eval(args: argparse.Namespace) -> int:
    model = _load(args)
    options = eval_options(args, model)
    if args.out:
        from foveal.io import check_unmixed

        check_unmixed(args.out, "eval")  # metrics beside a run's or predictions' files would replace some of them
    result = model.evaluate(**options)
    if hasattr(result, "format"):
        print(result.format())
    else:
        from foveal.report.tables import format_metrics

        print(format_metrics(result))
    if args.out:
        print(f"metrics written to {args.out}")
        _write_report(args.out)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from foveal.data.images import IMAGE_OPTIONS
    from foveal.tasks.predict import PredictRequest, run_predict

    options = {k: getattr(args, k) for k in ("top_k", "tile", "probabilities", "tta", "batch_size", "workers")}
    options |= {"score_thresh": args.score_thresh, "show_thresh": args.show_thresh}
    options |= {k: getattr(args, k) for k in ("resume", "strict", "overwrite", "json", "csv", "ray", "out")}
    fmt = "tif" if args.format == "tiff" else args.format
    request = PredictRequest(args.checkpoint, tuple(args.inputs), fmt=fmt, **options, **_placement(args))
    done = run_predict(request)
    if done.finished_before:
        print(f"nothing to resume in {done.out}: its run had finished; its outputs are unchanged")
    if done.table:
        print(done.table)
    for reason in done.reasons:  # an image's own message, naming the pixel limit as the API does
        print(f"foveal: skipped: {_flagged(reason, IMAGE_OPTIONS)}", file=sys.stderr)
    if done.summary.failed > len(done.reasons) and not done.finished_before:
        print(f"foveal: skipped {done.summary.failed - len(done.reasons)} more (see errors.jsonl)", file=sys.stderr)
    print(done.summary.format(lasting=done.out is not None))
    if done.out is not None and not done.finished_before:
        from foveal.tasks.table import task_spec

        print(f"{task_spec(done.task).writes} written to {done.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from foveal.inference.export import check_export_options

    check_export_options(args.opset, args.size)  # before the checkpoint is read
    if Path(args.out).is_file() and Path(args.out).suffix.lower() != ".onnx":  # e.g. a run's checkpoint.json
        raise FovealError(f"--out {args.out} is a file that is not an ONNX model: choose a new path ending in .onnx")
    print(_load(args).export(args.out, args.size, args.opset).format())
    return 0


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
    from foveal.tasks.explain import format_records
    from foveal.tasks.explain_common import check_options

    options = ("top_k", "method", "threshold", "relative_to", "score_thresh", "map_stride", "map_scales", "flip")
    check_options(**{k: getattr(args, k) for k in options})  # the library's one rule, before any model is loaded
    from foveal.io import check_unmixed

    check_unmixed(args.out, "explain")  # figures beside predictions or a run's files would mix two outputs
    records = _load(args).explain(args.inputs, args.out, **{k: getattr(args, k) for k in options})
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


def cmd_data(args: argparse.Namespace) -> int:
    splits = tuple(args.splits)
    if args.action == "check":
        from foveal.data.formats.check import check

        print("\n".join(check(args.src, source_format=args.format, splits=splits)))
        return 0
    from foveal.data.formats.write import convert

    if args.to is None or args.out is None:
        raise FovealError("data convert needs --to coco|yolo|voc and --out FOLDER")
    for line in convert(args.src, args.to, args.out, source_format=args.format, splits=splits):
        print(line)
    print(f"written as {args.to} to {args.out}")
    return 0


# -- the command line as a table: verb → help, function, arguments -----------------------------------------------------
Option = tuple[tuple[str, ...], dict[str, Any]]


def _count(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number ≥ ``low`` (a batch size of 0 or a tile of -1 is refused before work starts)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}: pass a whole number ≥ {low}")
        return value

    parse.__name__ = f"a whole number ≥ {low}"
    return parse


def _opt(*names: str, **kwargs: Any) -> Option:
    return names, kwargs


_CHECKPOINT = _opt("checkpoint", help="checkpoint directory or run directory")
_TTA = _opt("--tta", choices=["none", "dihedral"], help="segmentation: average over the 8 rotations / flips (dihedral)")
_DEVICE = "auto (CUDA when there is one), cpu, cuda or cuda:N"
_PRECISION = _opt(
    "--precision",
    choices=["auto", "fp32", "bf16", "fp16"],
    default="auto",
    help="number format of the network: auto (default: fp32, so results do not depend on the machine), fp32, bf16 "
    "(faster on CPUs with AMX / AVX512-BF16 and on GPUs; emulated, and several times slower, elsewhere, which is "
    "warned about), fp16 (CUDA only); inputs, boxes and metrics stay fp32. The run record says which ran and why",
)
_MAX_PIXELS = _opt(
    "--max-pixels",
    type=float,
    default=None,
    metavar="N",
    help="largest image read, in pixels (default 2^30 ≈ 1.07 billion; checked from the header before decoding)",
)
_INFER = (_opt("--device", default="auto", help=f"{_DEVICE} (default: auto)"), _PRECISION, _MAX_PIXELS)


@dataclass(frozen=True)
class Verb:
    help: str
    func: Callable[[argparse.Namespace], int]
    options: tuple[Option, ...]


VERBS: dict[str, Verb] = {
    "train": Verb(
        "train a model (task: classify, segment or detect)",
        cmd_train,
        (
            _opt("task", choices=list(TASK_NAMES), help="what to train"),
            _opt("--config", help="YAML recipe (path, or bundled name such as classify_cpu or segment_cpu)"),
            _opt("--out", help="run directory (default: the config's 'out')"),
            _opt("--resume", metavar="RUN_DIR", help="continue an interrupted run from its latest checkpoint"),
            _opt("--overwrite", action="store_true", help="train into a run directory that already has checkpoints"),
            _opt("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=0.05"),
            _opt("--device", default=None, help=f"{_DEVICE} (default: the config's train.device, auto)"),
            _MAX_PIXELS,
        ),
    ),
    "eval": Verb(
        "evaluate a checkpoint on a dataset",
        cmd_eval,
        (
            _CHECKPOINT,
            _opt("--data", help="dataset spec (default: the checkpoint's validation data)"),
            _opt("--split", help="split: test (classification default), or a COCO split such as val (detection)"),
            _opt("--out", help="folder for metrics.json (and confusion.png for classifiers)"),
            _TTA,
            _opt(
                "--boxes",
                help="classifiers: weakly supervised localization against these boxes (JSON, CSV, CUB folder, "
                "VOC/ImageNet XML folder) of the images in --data; writes localization.json and panels to --out",
            ),
            _opt(
                "--box-format", choices=["xyxy", "xywh"], help="with --boxes: how a JSON / header-less CSV writes boxes"
            ),
            _opt("--map-stride", type=_count(1), help="with --boxes: maps on this finer stride (as in foveal explain)"),
            _opt("--map-scales", type=float, nargs="+", help="with --boxes: average the maps of these image scales"),
            _opt("--flip", action="store_true", help="with --boxes: average with the mirrored image's maps"),
            *_INFER,
        ),
    ),
    "predict": Verb(
        "classify (top-k), segment (labels + overlays) or detect (boxes) in images",
        cmd_predict,
        (
            _CHECKPOINT,
            _opt("inputs", nargs="+", help="image files, folders, glob patterns or list files (.txt, a path a line)"),
            _opt("--top-k", type=_count(1), default=5, help="classes to show per image (default 5)"),
            _opt("--json", help="also write the predictions as JSON here"),
            _opt("--csv", help="also write the predictions as CSV here (classification)"),
            _opt("--out", help="output folder (default: predictions; classify: none, only --json / --csv)"),
            _opt("--tile", type=_count(1), help="segmentation: output tile edge (default: the checkpoint's eval tile)"),
            _opt(
                "--format",
                choices=["tif", "tiff", "png", "zarr"],
                default="tif",
                help="segmentation: label image format (large TIFF / zarr inputs stream to a tiled BigTIFF, or to "
                "zarr)",
            ),
            _opt(
                "--probabilities",
                action="store_true",
                help="segmentation: also write the soft-max probabilities (H, W, K)",
            ),
            _TTA,
            _opt(
                "--score-thresh",
                type=float,
                default=None,
                help="detection: lowest score kept (default: the checkpoint's, 0.05 in the paper)",
            ),
            _opt(
                "--show-thresh",
                type=float,
                default=0.3,
                help="detection: lowest score drawn on the figures (default 0.3)",
            ),
            _opt(
                "--batch-size",
                type=_count(1),
                help="images per forward pass (default: classify 32, detect 4, segment 1)",
            ),
            _opt(
                "--workers", type=_count(0), help="processes decoding images ahead of the model (default: spare cores)"
            ),
            _opt("--resume", action="store_true", help="continue the interrupted run in --out (skips what is done)"),
            _opt("--strict", action="store_true", help="stop at the first unreadable image (default: skip, list)"),
            _opt(
                "--overwrite",
                action="store_true",
                help="write into an --out folder that holds another model's predictions (replaced when this run "
                "succeeds) or another command's outputs",
            ),
            _opt(
                "--ray",
                nargs="?",
                const="local",
                metavar="ADDRESS",
                help="run on Ray Data: alone, a local instance; or a cluster address (auto, ray://host:10001)",
            ),
            *_INFER,
        ),
    ),
    "export": Verb(
        "export a classifier, U-Net or detector to ONNX (checked against onnxruntime)",
        cmd_export,
        (
            _CHECKPOINT,
            _opt("--out", required=True, help="the .onnx file to write"),
            _opt("--opset", type=_count(7), default=17, help="ONNX opset (default 17)"),
            _opt(
                "--size",
                type=_count(1),
                nargs="+",
                default=None,
                help="input H [W] (default: a classifier's resolution, a U-Net's evaluation tile, a detector's "
                "min_size)",
            ),
            _opt("--device", default="auto", help=f"{_DEVICE} (default: auto)"),
        ),
    ),
    "models": Verb(
        "list EfficientNet variants with parameters, FLOPs and resolution",
        cmd_models,
        (_opt("--phi", type=float, action="append", default=[], help="also list the model for this φ"),),
    ),
    "explain": Verb(
        "CAM / Grad-CAM maps with boxes for classifiers, U-Nets and detectors",
        cmd_explain,
        (
            _CHECKPOINT,
            _opt("inputs", nargs="+", help="image files, folders or glob patterns"),
            _opt("--out", default="explanations", help="output folder (default: explanations)"),
            _opt("--top-k", type=_count(1), default=5, help="classes or best detections per image (default 5)"),
            _opt("--method", choices=["cam", "gradcam"], default="cam", help="cam (one forward pass) or gradcam"),
            _opt("--threshold", type=float, default=0.2, help="box threshold as a fraction (default 0.2)"),
            _opt(
                "--relative-to",
                choices=["max", "range"],
                default="max",
                help="threshold of the map's max (paper) or range",
            ),
            _opt(
                "--score-thresh",
                type=float,
                default=None,
                help="detectors: lowest score explained (default: checkpoint's)",
            ),
            _opt(
                "--map-stride",
                type=_count(1),
                default=None,
                help="EfficientNet classifiers: maps on this finer stride from the same weights (e.g. 2; default: its "
                "own)",
            ),
            _opt(
                "--map-scales",
                type=float,
                nargs="+",
                default=None,
                help="classifiers: average the maps of the image resized by these scales (e.g. 1 2.5; default: one "
                "scale)",
            ),
            _opt(
                "--flip",
                action="store_true",
                help="classifiers: average class scores and maps with those of the mirrored image (default: the image "
                "only)",
            ),
            *_INFER,
        ),
    ),
    "weightmap": Verb(
        "the U-Net border weight map of instance masks, drawn like the paper's Fig. 3",
        cmd_weightmap,
        (
            _opt("data", help="dataset with instance masks (nuclei-sample, a folder with images/ and masks/)"),
            _opt("--out", default="weightmaps", help="output folder (default: weightmaps)"),
            _opt("--w0", type=float, default=10.0, help="border weight w0 (default 10)"),
            _opt("--sigma", type=float, default=5.0, help="border width σ in pixels (default 5)"),
            _opt("--limit", type=_count(1), default=4, help="images to draw (default 4)"),
            _MAX_PIXELS,
        ),
    ),
    "data": Verb(
        "detection sets: check SRC (read it as training would, sum it up) or convert SRC --to FORMAT --out DST",
        cmd_data,
        (
            _opt(
                "action",
                choices=["check", "convert"],
                help="check: read SRC and say what is in it; convert: write SRC in another format",
            ),
            _opt("src", help="a detection set: COCO, VOC, YOLO, LabelMe, CVAT, Label Studio or CSV"),
            _opt("--to", choices=["coco", "yolo", "voc"], help="convert: the format to write"),
            _opt("--out", help="convert: the folder to write (new or empty)"),
            _opt(
                "--format",
                default="auto",
                choices=["auto", "coco", "voc", "yolo", "labelme", "cvat", "labelstudio", "csv"],
                help="the format of SRC (default: auto, recognised from its files)",
            ),
            _opt("--splits", nargs="+", default=["train", "val"], help="splits to read (default: train val)"),
        ),
    ),
    "report": Verb(
        "write report.html for a run, an eval / explain --out folder or the demo folder",
        cmd_report,
        (_opt("path", help="run directory, evaluation or explanation folder, or the demo's folder"),),
    ),
    "demo": Verb(
        "train, evaluate and predict on the bundled sample; write everything to one folder",
        cmd_demo,
        (
            _opt("--out", default="foveal-demo", help="output folder (default: foveal-demo)"),
            _opt("--quick", action="store_true", help="a much shorter run (for smoke tests)"),
            *_INFER,
        ),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``foveal`` parser, one sub-command per entry of :data:`VERBS`."""
    parser = _Parser(prog="foveal", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, verb in VERBS.items():
        p = sub.add_parser(name, help=verb.help)
        for names, kwargs in verb.options:
            p.add_argument(*names, **kwargs)
        p.set_defaults(func=verb.func)
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
        print(f"foveal: error: {rank_prefix()}{as_flags(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"foveal: interrupted{_resume_hint(args, started)}", file=sys.stderr)
        return 130
    except MemoryError:
        print(
            f"foveal: error: {rank_prefix()}{_what(args)} ran out of memory: use smaller inputs or batches "
            "(data.batch_size, --max-pixels)",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:  # the last resort: a bug, or an input no check foresaw
        if os.environ.get("FOVEAL_DEBUG") == "1":
            traceback.print_exc()
        message = str(exc).splitlines()[0] if str(exc).strip() else "no message"
        print(
            f"foveal: error: {rank_prefix()}{_what(args)} failed unexpectedly ({type(exc).__name__}: {message}); "
            "check that input, rerun with FOVEAL_DEBUG=1 for the traceback and report it if the input is valid",
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
