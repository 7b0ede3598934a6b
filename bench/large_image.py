"""Segmenting an image larger than memory: foveal's streaming overlap-tile path, its time and peak memory, and MONAI
``sliding_window_inference`` on the same model, tile and image where MONAI can hold the image.

Run: ``python bench/large_image.py --size 40000`` (streaming only) and
``python bench/large_image.py --size 12000 --monai`` (both, side by side). Writes ``bench/results/large_image.json``
(one entry per size, ``<size>_monai`` with MONAI; other entries are kept).

The image is generated, never stored in the repository: a smooth random field with fine noise, uint8, written as an
uncompressed tiled BigTIFF (512² tiles) in a temporary folder that is removed afterwards. The network is the paper's
valid U-Net (depth 4, 1 channel in, 2 classes, unpadded convolutions) at ``--base-width`` (default 4: 0.12 M
parameters; the paper's is 64), output tiles 516 (700² inputs) on a 512 step, batch 4, fp32, 2 threads. Untrained
weights, the output bias set so that about half of the image is foreground (many objects), so instance labelling works
as hard as on a real image.

Each contender runs in its own subprocess, so its peak resident memory (``ru_maxrss``) is its own:

- foveal: :func:`foveal.inference.stream.segment_large`: reads the TIFF band by band through tifffile's zarr view,
  labels instances across tile seams (min_size 8), writes the labels to a tiled zlib BigTIFF.
- MONAI: the whole image read (``tifffile.imread``) and converted to float32, ``sliding_window_inference`` with 512²
  windows, overlap 0 (the same 516² network outputs per window as ours; each window mirror-padded by 94 px from its own
  pixels, as in bench/tiling_speed.py), ``mode="constant"``, ``sw_batch_size=4``, then arg-max, instances
  (``instances_from_classes``, min_size 8) and the label TIFF (``write_label_image``): what a user of MONAI writes.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import torch
from scipy import ndimage as ndi

from _common import environment

THREADS = 2
TILE = 516
WINDOW = 512
BATCH = 4
RESULTS = Path(__file__).parent / "results" / "large_image.json"


def _generate(path: Path, size: int, tile: int = 512) -> None:
    """A uint8 image of size² as an uncompressed tiled BigTIFF, generated tile by tile (memory: one tile row)."""
    rng = np.random.default_rng(0)
    coarse = rng.random((size // 32 + 2, size // 32 + 2)).astype(np.float32)

    def tiles() -> Any:
        for y in range(0, size, tile):
            rows = np.arange(y, y + tile) / 32.0
            for x in range(0, size, tile):
                cols = np.arange(x, x + tile) / 32.0
                smooth = ndi.map_coordinates(coarse, np.meshgrid(rows, cols, indexing="ij"), order=1)
                noise = rng.normal(0, 0.08, (tile, tile))
                yield (np.clip(smooth + noise, 0, 1) * 255).astype(np.uint8)

    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(tiles(), shape=(size, size), dtype=np.uint8, tile=(tile, tile), photometric="minisblack")


def _network(base_width: int) -> torch.nn.Module:
    from foveal.models.unet import UNet

    torch.manual_seed(0)
    net = UNet(1, 2, depth=4, base_width=base_width).eval()
    x = torch.linspace(0, 1, 700)[None, None, :, None].expand(1, 1, 700, 700) + 0.1 * torch.rand(1, 1, 700, 700)
    with torch.no_grad():
        logits = net(x)
        bias: torch.Tensor = net.head.bias  # type: ignore[assignment]
        bias[1] -= float((logits[0, 1] - logits[0, 0]).median())
    return net


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # kB on Linux


def _run_foveal(image: Path, out: Path, base_width: int) -> dict[str, Any]:
    from foveal.inference.stream import segment_large

    net = _network(base_width)
    start = time.perf_counter()
    result = segment_large(net, image, out, tile=TILE, normalize="dtype", min_size=8, batch=BATCH, progress=True)
    return {"seconds": time.perf_counter() - start, "objects": result.objects, "foreground": result.foreground}


def _run_monai(image: Path, out: Path, base_width: int) -> dict[str, Any]:
    from monai.inferers import sliding_window_inference

    from foveal.data.instances import instances_from_classes
    from foveal.data.seg_io import write_label_image
    from tiling_speed import _MonaiWindow

    net = _network(base_width)
    wrapper = _MonaiWindow(net, WINDOW)  # type: ignore[arg-type]
    start = time.perf_counter()
    x = torch.from_numpy(tifffile.imread(image)).float().div_(255.0)[None, None]
    with torch.no_grad():
        logits = sliding_window_inference(x, (WINDOW, WINDOW), BATCH, wrapper, overlap=0.0, mode="constant")
    del x
    cls = logits[0].argmax(0).numpy()  # type: ignore[index]
    del logits
    labels = instances_from_classes(cls > 0, min_size=8)
    write_label_image(labels, out)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "objects": int(labels.max()), "foreground": float((cls > 0).mean())}


def _child(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    run = _run_foveal if args.child == "foveal" else _run_monai
    record = run(Path(args.image), Path(args.out), args.base_width)
    record["peak_rss_gb"] = _peak_rss_gb()
    print("RESULT " + json.dumps(record), flush=True)


def _spawn(name: str, image: Path, out: Path, base_width: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", name, "--image", str(image), "--out", str(out)]
    cmd += ["--base-width", str(base_width), "--threads", str(threads)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)  # the tile progress bar goes to the terminal
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"failed": f"exit {proc.returncode} (its error is printed above)"}
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=40000, help="image edge in pixels (default 40000)")
    parser.add_argument("--monai", action="store_true", help="also run MONAI on the whole image (needs the RAM)")
    parser.add_argument("--base-width", type=int, default=4)
    parser.add_argument("--threads", type=int, default=THREADS, help=f"torch threads (default {THREADS})")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"JSON file to add the entry to ({RESULTS})")
    parser.add_argument("--tmp", help="folder for the generated image and the outputs (default: the system's)")
    parser.add_argument("--note", default="", help="free text stored with the result (e.g. other jobs running)")
    parser.add_argument("--child", choices=["foveal", "monai"], help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        image = Path(tmp) / "image.tif"
        start = time.perf_counter()
        _generate(image, args.size)
        generated = time.perf_counter() - start
        print(f"generated {args.size}² in {generated:.0f} s ({image.stat().st_size / 1e9:.2f} GB)", flush=True)
        runs: dict[str, Any] = {
            "foveal": _spawn("foveal", image, Path(tmp) / "labels.tif", args.base_width, args.threads)
        }
        print("foveal", runs["foveal"], flush=True)
        if args.monai:
            runs["monai"] = _spawn("monai", image, Path(tmp) / "monai_labels.tif", args.base_width, args.threads)
            print("monai", runs["monai"], flush=True)
            if "failed" not in runs["monai"]:
                ours, theirs = (tifffile.imread(Path(tmp) / n) > 0 for n in ("labels.tif", "monai_labels.tif"))
                runs["foreground_agreement"] = float((ours == theirs).mean())
    params = sum(p.numel() for p in _network(args.base_width).parameters())
    entry = {
        "size": args.size,
        "pixels": args.size**2,
        "network": f"valid U-Net depth 4, base width {args.base_width}, {params} parameters",
        "tile": TILE,
        "batch": BATCH,
        "threads": args.threads,
        "generate_seconds": generated,
        "runs": runs,
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
        "torch": torch.__version__,
        "note": args.note,
        "environment": environment(),
    }
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results[f"{args.size}{'_monai' if args.monai else ''}"] = entry
    args.results.parent.mkdir(exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main()
