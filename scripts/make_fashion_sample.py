"""Build the bundled Fashion-MNIST sample from the Debian package ``dataset-fashion-mnist``.

Takes the FIRST ``--train`` training images and labels and the FIRST ``--test`` test images and labels (defaults 3000
and 1000, the bundled sample), so the selection is reproducible, and writes them as gzipped IDX files with the standard
names, plus ``classes.txt`` and ``PROVENANCE.md``. The gzip timestamp is zero, so the same input gives the same bytes.

    apt-get install dataset-fashion-mnist
    python scripts/make_fashion_sample.py            # writes src/foveal/data/samples/fashion-mnist-sample/
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from foveal.data.classification import DEBIAN_FASHION_MNIST, FASHION_MNIST_CLASSES, FASHION_SAMPLE
from foveal.data.idx import read_idx, write_idx
from foveal.errors import FovealError

_PROVENANCE = """# Fashion-MNIST sample bundled with foveal

- **Source**: Fashion-MNIST by Zalando Research — H. Xiao, K. Rasul, R. Vollgraf, "Fashion-MNIST: a Novel Image
  Dataset for Benchmarking Machine Learning Algorithms", 2017, arXiv:1708.07747.
  <https://github.com/zalandoresearch/fashion-mnist>
- **License**: MIT License, Copyright (c) 2017 Zalando SE (the license of the Fashion-MNIST dataset).
- **Taken from**: the Debian package `dataset-fashion-mnist`{version},
  files in `{source}`.
- **Which images**: the FIRST {n_train} images and labels of `train-images-idx3-ubyte.gz` /
  `train-labels-idx1-ubyte.gz` and the FIRST {n_test} images and labels of `t10k-images-idx3-ubyte.gz` /
  `t10k-labels-idx1-ubyte.gz`, in their original order, pixels unchanged (28×28 uint8 grayscale).
- **Files**: gzipped IDX with the standard names, and `classes.txt` (label k is line k + 1).
- **Regenerate**: `apt-get install dataset-fashion-mnist && python scripts/make_fashion_sample.py`
  (`--train`, `--test`, `--source`, `--out` change the defaults; the output is byte-for-byte reproducible).

## Class balance

{balance}

## License of the data

Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation the
rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to permit
persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of the
Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE
WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _debian_version() -> str:
    """The installed package's version, e.g. `` (version 0.0~git20200523.55506a9-1)``, or "" if unknown."""
    dpkg = shutil.which("dpkg-query")
    if dpkg is None:
        return ""
    done = subprocess.run(
        [dpkg, "-W", "-f=${Version}", "dataset-fashion-mnist"], capture_output=True, text=True, check=False
    )
    return f" (version {done.stdout.strip()})" if done.returncode == 0 and done.stdout.strip() else ""


def make_sample(source: Path, out: Path, n_train: int, n_test: int) -> dict[str, np.ndarray]:
    """Write the sample to ``out``; returns the label arrays per split."""
    out.mkdir(parents=True, exist_ok=True)
    labels_by_split: dict[str, np.ndarray] = {}
    for split, count in (("train", n_train), ("test", n_test)):
        images_name, labels_name = _FILES[split]
        images = read_idx(source / images_name)
        labels = read_idx(source / labels_name)
        if count > len(images):
            raise FovealError(f"--{split} {count} is more than the {len(images)} {split} images in {source}")
        write_idx(out / images_name, images[:count])
        write_idx(out / labels_name, labels[:count])
        labels_by_split[split] = labels[:count]
    (out / "classes.txt").write_text("\n".join(FASHION_MNIST_CLASSES) + "\n")
    train_counts = np.bincount(labels_by_split["train"], minlength=10)
    test_counts = np.bincount(labels_by_split["test"], minlength=10)
    rows = [f"| {k} | {name} | {train_counts[k]} | {test_counts[k]} |" for k, name in enumerate(FASHION_MNIST_CLASSES)]
    balance = "\n".join(["| label | class | train | test |", "|---|---|---|---|", *rows])
    shown_source = str(source) + ("/" if not str(source).endswith("/") else "")
    text = _PROVENANCE.format(
        version=_debian_version(), source=shown_source, n_train=n_train, n_test=n_test, balance=balance
    )
    (out / "PROVENANCE.md").write_text(text)
    return labels_by_split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEBIAN_FASHION_MNIST, help="folder of the Debian package")
    parser.add_argument("--out", type=Path, default=FASHION_SAMPLE, help="folder to write the sample to")
    parser.add_argument("--train", type=int, default=3000, help="number of training images (the first N)")
    parser.add_argument("--test", type=int, default=1000, help="number of test images (the first N)")
    args = parser.parse_args(argv)
    try:
        labels = make_sample(args.source, args.out, args.train, args.test)
    except FovealError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for split, values in labels.items():
        counts = np.bincount(values, minlength=10)
        print(f"{split}: {len(values)} images; per class: {counts.tolist()} (min {counts.min()}, max {counts.max()})")
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"wrote {args.out} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
