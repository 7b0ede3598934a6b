"""Segmentation image files: reading images and masks page by page, normalising images, writing label images.

The formats and the normalisations are described in :mod:`foveal.data.segmentation`, which builds datasets on these
readers. Every failure (missing, corrupt or truncated file, bad option, a label image that cannot be written) raises
FovealError naming the file.
"""

from __future__ import annotations

import os
import secrets
import struct
import zlib
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image, ImageFile, UnidentifiedImageError
from torch import Tensor

from foveal.data.images import check_file, check_finite, check_pixels, check_tiff_series, pillow_unbounded, stack_error
from foveal.errors import FovealError

NORMALIZATIONS = ("percentile", "dtype", "minmax")
#: Percentiles mapped to 0 and 1 by ``normalize="percentile"``.
PERCENTILES = (1.0, 99.8)
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})

_LOSSY = frozenset({".jpg", ".jpeg", ".webp"})
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error, zlib.error,
    Image.DecompressionBombError,
)  # fmt: skip
_ALPHA_SAMPLES = (1, 2)  # TIFF ExtraSamples: associated and unassociated alpha


# ------------------------------------------------------------------------------------------------------- reading


def _read_tiff(path: Path, role: str) -> list[np.ndarray]:
    """Pages (H, W, C) of the first series of a TIFF file, in the stored dtype (alpha samples dropped)."""
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise FovealError(f"{role} {path} holds no image data: fix or remove it")
            check_tiff_series(tif, path, role)
            series = tif.series[0]
            check_pixels(path, [n for n, a in zip(series.shape, series.axes, strict=False) if a not in "SC"], role)
            pixels = series.asarray()
            axes = series.axes
            extras = tuple(getattr(series.keyframe, "extrasamples", ()) or ())
    except FovealError:
        raise
    except PermissionError:
        raise FovealError(f"cannot read {role} {path}: permission denied (check its permissions)") from None
    except (tifffile.TiffFileError, *_DECODE_ERRORS) as exc:
        if "imagecodecs" in str(exc):  # LZW, JPEG, ... compression that tifffile cannot decode alone: Pillow can
            return _read_pillow(path, role, all_frames=True)
        raise FovealError(f"cannot read {role} {path}: {exc} (the TIFF file is corrupt or truncated)") from None
    if "Y" not in axes or "X" not in axes:
        raise FovealError(f"{role} {path} has axes {axes} (shape {pixels.shape}): a 2-D image needs Y and X axes")
    chan = [i for i, a in enumerate(axes) if a in "SC"]
    pages = [i for i, a in enumerate(axes) if a not in "YXSC"]
    pixels = pixels.transpose([*pages, axes.index("Y"), axes.index("X"), *chan])
    h, w = pixels.shape[len(pages)], pixels.shape[len(pages) + 1]
    pixels = pixels.reshape(-1, h, w, int(np.prod(pixels.shape[len(pages) + 2 :])))
    n_alpha = sum(e in _ALPHA_SAMPLES for e in extras)
    if n_alpha and axes.count("S") == 1 and "C" not in axes and pixels.shape[-1] > n_alpha:
        pixels = pixels[..., : pixels.shape[-1] - n_alpha]
    return [_native(page) for page in pixels]


def _native(a: np.ndarray) -> np.ndarray:
    return a.astype(a.dtype.newbyteorder("="), copy=False) if a.dtype.byteorder not in "=|" else a


def pillow_pixels(img: Image.Image, role: str) -> np.ndarray:
    """(H, W, C) pixels of a loaded frame; for images colour modes become RGB (or L), masks keep their mode."""
    mode = img.mode
    if role == "image" and mode in ("1", "LA", "La"):
        img = img.convert("L")
    elif role == "image" and mode in ("P", "PA"):
        img = img.convert("RGBA").convert("RGB")  # palette transparency applied without a warning
    elif role == "image" and mode not in ("L", "RGB", "F", "I") and not mode.startswith("I;16"):
        img = img.convert("RGB")
    pixels = np.asarray(img)
    if pixels.dtype == bool:
        pixels = pixels.astype(np.uint8) * (255 if role == "image" else 1)
    return _native(pixels if pixels.ndim == 3 else pixels[:, :, None])


def _read_pillow(path: Path, role: str, all_frames: bool = False) -> list[np.ndarray]:
    """Fully decoded frames (H, W, C): the first only, or every frame (pages of a TIFF) with ``all_frames``."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise FovealError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, so truncated images cannot be detected: "
            "set it back to False"
        )
    try:
        with pillow_unbounded(), Image.open(path) as img:
            check_pixels(path, (getattr(img, "n_frames", 1) if all_frames else 1, img.height, img.width), role)
            frames = []
            for i in range(getattr(img, "n_frames", 1) if all_frames else 1):
                img.seek(i)
                img.load()
                frames.append(pillow_pixels(img, role))
    except UnidentifiedImageError:
        raise FovealError(f"{role} {path} is not an image Pillow can read (corrupt, or not an image)") from None
    except PermissionError:
        raise FovealError(f"cannot read {role} {path}: permission denied (check its permissions)") from None
    except _DECODE_ERRORS as exc:
        raise FovealError(f"cannot read {role} {path}: {exc} (the file is truncated or corrupt)") from None
    return frames


def read_pages(path: Path, role: str) -> list[np.ndarray]:
    check_file(path, role)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _read_tiff(path, role)
    if role == "mask" and path.suffix.lower() in _LOSSY:
        raise FovealError(
            f"mask {path} is a {path.suffix} file: lossy compression alters label values; save masks as PNG or TIFF"
        )
    return _read_pillow(path, role)


# -------------------------------------------------------------------------------------------------------- images


def check_options(normalize: str, channels: int | None) -> None:
    if normalize not in NORMALIZATIONS:
        raise FovealError(f"unknown normalize='{normalize}': choose one of {', '.join(NORMALIZATIONS)}")
    if channels is not None and (not isinstance(channels, int) or channels < 1):
        raise FovealError(f"bad channels={channels!r}: use a positive channel count (1 grayscale, 3 RGB) or None")


def to_float(pixels: np.ndarray, path: Path, normalize: str) -> Tensor:
    """(C, H, W) float32 of one (H, W, C) page, normalised as :mod:`foveal.data.segmentation` describes."""
    if pixels.dtype.kind not in "biuf":
        raise FovealError(
            f"image {path} holds {pixels.dtype} values, not pixel intensities: pass an image of integer, "
            "floating-point or boolean pixels"
        )
    if pixels.dtype == np.uint8:
        x = pixels.astype(np.float32) / 255.0
    else:
        x = pixels.astype(np.float32)
        check_finite(x, path)
        if normalize == "dtype" and pixels.dtype.kind in "iu":
            x /= float(np.iinfo(pixels.dtype).max)
        elif normalize == "dtype":
            lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
            if lo < 0.0 or hi > 1.0:
                raise FovealError(
                    f"float image {path} holds values in [{lo:g}, {hi:g}], outside [0, 1], so normalize='dtype' "
                    "cannot scale it: use normalize='percentile' or 'minmax'"
                )
        else:
            lo_v, hi_v = x.min(axis=(0, 1)), x.max(axis=(0, 1))
            if normalize == "percentile":
                p_lo, p_hi = np.percentile(x, PERCENTILES, axis=(0, 1))
                flat = p_hi <= p_lo
                lo_v, hi_v = np.where(flat, lo_v, p_lo), np.where(flat, hi_v, p_hi)
            span = (hi_v - lo_v).astype(np.float32)
            # A constant channel has x == lo everywhere, so dividing by 1 instead of 0 maps it to 0.
            x = (x - lo_v.astype(np.float32)) / np.where(span > 0, span, 1.0).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32))


def convert_hint(found: int, channels: int, stack: bool) -> str:
    """The fix for an image of ``found`` channels given to a model of ``channels``; ``stack`` when those may be the
    planes of a stack (a leading axis, or more channels than a colour image has)."""
    want = "grayscale" if channels == 1 else f"{channels} channels"
    hint = f"convert it to {want}"
    if stack:
        hint += f"; if its {found} channels are the planes of a stack (Z, time or pages), pass one plane at a time"
    return hint


def check_channels(images: list[Tensor], paths: list[Path], channels: int | None) -> int:
    for image, path in zip(images, paths, strict=True):
        c = int(image.shape[0])
        if channels is not None and c != channels:
            raise FovealError(
                f"image {path} has {c} channel(s) but channels={channels} was asked (the model's input, or "
                f"data.channels in training): {convert_hint(c, channels, c > 4)}"
            )
        if c != images[0].shape[0]:
            raise FovealError(
                f"images differ in channel count: {paths[0]} has {int(images[0].shape[0])}, {path} has {c}; "
                "convert them to one count (e.g. all grayscale or all RGB)"
            )
    return int(images[0].shape[0]) if images else channels or 1


def load_seg_pages(path: str | Path, channels: int | None = None, normalize: str = "percentile") -> list[Tensor]:
    """Every page of an image file (one for non-stack files), normalised as
    :func:`foveal.data.segmentation.open_segmentation` does.

    Args:
        path: PNG, TIFF (8/16/32-bit, float, multi-channel, multi-page) or any format Pillow reads.
        channels: the channel count every page must have, None for the file's own.
        normalize: ``percentile``, ``dtype`` or ``minmax`` (8-bit images are always divided by 255).

    Returns:
        float32 tensors (C, H, W), one per page.

    Raises:
        FovealError: the file is missing, corrupt or truncated, has another channel count, or an option is bad.
    """
    check_options(normalize, channels)
    p = Path(path)
    images = [to_float(page, p, normalize) for page in read_pages(p, "image")]
    check_channels(images, [p] * len(images), channels)
    return images


def load_seg_image(path: str | Path, channels: int | None = None, normalize: str = "percentile") -> Tensor:
    """One image for prediction: float32 (C, H, W), as :func:`load_seg_pages` loads it.

    Raises:
        FovealError: as :func:`load_seg_pages` does, and for a multi-page stack.
    """
    pages = load_seg_pages(path, channels, normalize)
    if len(pages) != 1:
        raise stack_error(path, len(pages))
    return pages[0]


# -------------------------------------------------------------------------------------------------------- writing


def write_label_image(labels: np.ndarray, path: str | Path) -> Path:
    """Write a label image atomically (to a hidden file beside ``path``, then renamed over it; folders are created).

    Args:
        labels: (H, W) non-negative integer (or bool) labels.
        path: ``.png`` (16-bit grayscale, labels up to 65535) or ``.tif`` / ``.tiff`` (zlib-compressed, 16-bit, or
            32-bit when a label exceeds 65535).

    Returns:
        ``path`` as a Path.

    Raises:
        FovealError: bad labels (shape, type, negative, too large for the format), another extension, or a file that
            cannot be written.
    """
    p = Path(path)
    arr = np.asarray(labels)
    ext = p.suffix.lower()
    if ext not in TIFF_SUFFIXES | {".png"}:
        raise FovealError(f"cannot write labels to {p}: use a .png, .tif or .tiff file name")
    if arr.ndim != 2 or arr.dtype.kind not in "iub":
        raise FovealError(f"labels for {p} must be a 2-D integer array, got {arr.dtype} of shape {arr.shape}")
    top = int(arr.max()) if arr.size else 0
    if arr.size and int(arr.min()) < 0:
        raise FovealError(f"labels for {p} hold negative values (down to {int(arr.min())}): labels are 0 or positive")
    limit = 65535 if ext == ".png" else 2**32 - 1
    if top > limit:
        hint = "write a .tif" if ext == ".png" else "relabel the objects consecutively"
        raise FovealError(f"labels for {p} go up to {top}, more than a {ext} label image holds ({limit}): {hint}")
    out = arr.astype(np.uint16 if top <= 65535 else np.uint32)
    tmp = p.with_name(f".{p.name}.{os.getpid()}-{secrets.token_hex(4)}.part")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if ext == ".png":
            Image.fromarray(out).save(tmp, format="PNG")
        else:
            tifffile.imwrite(tmp, out, photometric="minisblack", compression="zlib")
        os.replace(tmp, p)
    except OSError as exc:
        raise FovealError(f"cannot write label image {p}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return p
