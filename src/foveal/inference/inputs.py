"""Images a Python caller passes to :mod:`foveal.api`: image files, folders, glob patterns and list files, PIL
images, numpy arrays and tensors, one or a sequence of them.

Files are read by the loaders the command line uses, so a file gives the same result through both. An image in
memory is read as an image file holding the same pixels would be:

- a PIL image by its mode (:func:`foveal.data.images.image_pixels`, :func:`foveal.data.seg_io.pillow_pixels`);
- a numpy array is (H, W) or (H, W, C) with channels last, RGB order (a 4-D array is a batch (N, H, W, C));
- a tensor is (C, H, W) with channels first, as torchvision's (a 4-D tensor is a batch (N, C, H, W));
- uint8 values are 0…255; for classifiers and detectors float values in 0…1 are scaled by 255 and 16-bit grayscale
  by 1/257, as for image files; segmenters normalise them as the checkpoint says (``normalize``);
- pixels must be numbers (bool, integer or float) and finite: an array of NaN, infinity, complex numbers, strings or
  objects is refused naming the image, as an image file holding them is.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import tifffile
import torch
from PIL import Image
from torch import Tensor

from foveal.errors import FovealError

ImageInput: TypeAlias = "str | os.PathLike[str] | Image.Image | np.ndarray | Tensor"
Images: TypeAlias = "ImageInput | Sequence[ImageInput]"


@dataclass(frozen=True)
class InMemory:
    """An image passed in memory: its name (``<image i>``) and its pixels (a PIL image or an (H, W, C) array)."""

    name: str
    pixels: Image.Image | np.ndarray


_END = object()  # the end of the items (None is an item: a caller's mistake that must be named)


def gather(images: Any) -> list[Path | InMemory]:
    """The images of ``images`` in order: paths (folders, globs and list files expanded) and in-memory images."""
    from foveal.data.images import check_finite, expand_inputs

    items = list(images) if isinstance(images, (list, tuple)) else [images]
    out: list[Path | InMemory] = []
    paths: list[str | Path] = []  # consecutive paths are expanded together, as the command line expands its inputs
    for i, x in enumerate([*items, _END]):
        if isinstance(x, (str, os.PathLike)) and not isinstance(x, bytes):
            paths.append(x if isinstance(x, str) else Path(x))
            continue
        if paths:
            out.extend(expand_inputs(paths))
            paths = []
        if x is _END:
            break
        if isinstance(x, Image.Image):
            if min(x.size) < 1:
                raise FovealError(f"<image {len(out)}> is an empty PIL image ({x.width}×{x.height} px): pass pixels")
            out.append(InMemory(f"<image {len(out)}>", x))
        elif isinstance(x, (np.ndarray, Tensor)):
            for a in _hwc_arrays(x):
                name = f"<image {len(out)}>"
                check_finite(a, name)
                out.append(InMemory(name, a))
        else:
            where = f", item {i + 1} of {len(items)}" if len(items) > 1 else ""
            raise FovealError(
                f"cannot read an image from {x!r:.60} (type {type(x).__name__}{where}): pass paths (str or "
                "pathlib.Path), PIL images, numpy arrays (H, W, C) or tensors (C, H, W), or a list of them"
            )
    if not out:
        raise FovealError("no input images given: pass an image, a folder, a glob pattern or a list of them")
    return out


def _hwc_arrays(x: np.ndarray | Tensor) -> list[np.ndarray]:
    """(H, W, C) arrays of one image or a batch: numpy channels last, tensors channels first."""
    if isinstance(x, Tensor):
        a = x.detach().cpu()
        a = a.float() if a.dtype == torch.bfloat16 else a  # numpy has no bfloat16
        a = a.unsqueeze(0) if a.ndim == 2 else a
        arr = (a.movedim(-3, -1) if a.ndim in (3, 4) else a).numpy()
    else:
        arr = x[:, :, None] if x.ndim == 2 else x
    if arr.ndim not in (3, 4) or min(arr.shape) < 1:
        what = "tensor (C, H, W) or (N, C, H, W)" if isinstance(x, Tensor) else "array (H, W, C) or (N, H, W, C)"
        raise FovealError(f"an image of shape {tuple(x.shape)} ({x.ndim} dimensions) cannot be read: pass an {what}")
    if arr.dtype.kind not in "biuf":
        raise FovealError(
            f"an image of {arr.dtype} values cannot be read: pass pixels of bool, integer or float type (e.g. uint8 "
            "0…255, or float 0…1)"
        )
    return list(arr) if arr.ndim == 4 else [arr]


def uint8_pixels(item: InMemory, channels: int) -> Tensor:
    """(C, H, W) uint8 of an in-memory image with ``channels`` (1 or 3), as :func:`foveal.data.images.load_image`
    reads an image file with the same pixels."""
    from foveal.data.images import image_pixels

    image = item.pixels if isinstance(item.pixels, Image.Image) else _as_pil(item.pixels, item.name)
    arr = image_pixels(image, channels, item.name)
    chw = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.array(chw, dtype=np.uint8, order="C"))


def _as_pil(arr: np.ndarray, name: str) -> Image.Image:
    """The PIL image an image file of ``arr``'s (H, W, C) pixels would open as."""
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    c = arr.shape[-1]
    if c == 1:
        gray = arr[:, :, 0]
        if gray.dtype in (np.uint8, np.uint16):
            return Image.fromarray(gray)  # modes L and I;16
        if gray.dtype.kind == "f":
            return Image.fromarray(gray.astype(np.float32))  # mode F
        if gray.dtype.kind in "iu" and (not gray.size or (int(gray.min()) >= -(2**31) and int(gray.max()) < 2**31)):
            return Image.fromarray(gray.astype(np.int32))  # mode I
    elif c in (3, 4):
        if arr.dtype == np.uint8:
            return Image.fromarray(np.ascontiguousarray(arr))
        if arr.dtype.kind == "f" and arr.size and float(arr.min()) >= 0.0 and float(arr.max()) <= 1.0:
            return Image.fromarray(np.round(np.asarray(arr, np.float64) * 255.0).astype(np.uint8))
    stack = (
        f"; a numpy array is (H, W, C): if its {arr.shape[0]} leading planes are a stack (Z, time or pages), pass one "
        "plane at a time (a (C, H, W) image is given as a torch tensor)"
        if arr.ndim == 3 and arr.shape[0] < c
        else ""
    )
    raise FovealError(
        f"{name}: {c}-channel {arr.dtype} pixels cannot be read as an image: pass uint8 (H, W, 1|3|4), float in "
        "0…1, or one-channel 16-bit / float images" + stack
    )


def native_pixels(item: InMemory) -> np.ndarray:
    """(H, W, C) pixels of an in-memory image as :func:`foveal.data.seg_io.read_pages` reads an image file."""
    from foveal.data.seg_io import pillow_pixels

    if isinstance(item.pixels, Image.Image):
        return pillow_pixels(item.pixels, "image")
    arr = item.pixels
    return arr.astype(np.uint8) * 255 if arr.dtype == bool else arr


def batches(items: list[Path | InMemory], size: int) -> list[list[Path | InMemory]]:
    """``items`` in consecutive batches of ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)]


@contextlib.contextmanager
def as_files(images: Images, pixels_of: Callable[[InMemory], np.ndarray]) -> Iterator[tuple[list[str], dict[str, str]]]:
    """Paths of ``images`` for the functions that read files: paths as they are, in-memory images written losslessly
    (``pixels_of`` them: PNG for 8-bit gray or RGB, TIFF otherwise) to a temporary folder; with the map of those files
    back to the images' names."""
    items = gather(images)
    with tempfile.TemporaryDirectory(prefix="foveal-images-") as tmp:
        paths, names = [], {}
        for i, x in enumerate(items):
            if isinstance(x, InMemory):
                path = write_lossless(pixels_of(x), Path(tmp) / f"image-{i}")
                paths.append(str(path))
                names[str(path)] = x.name
            else:
                paths.append(str(x))
        yield paths, names


def write_lossless(pixels: np.ndarray, stem: Path) -> Path:
    """``pixels`` (H, W, C) as ``stem``.png (uint8, 1 or 3 channels) or ``stem``.tif (any other), exactly."""
    flat = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    if pixels.dtype == np.uint8 and pixels.shape[-1] in (1, 3):
        Image.fromarray(np.ascontiguousarray(flat)).save(stem.with_suffix(".png"))
        return stem.with_suffix(".png")
    photometric = "rgb" if flat.ndim == 3 and flat.shape[-1] == 3 else "minisblack"
    tifffile.imwrite(stem.with_suffix(".tif"), flat, photometric=photometric)
    return stem.with_suffix(".tif")
