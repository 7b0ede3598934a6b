"""Load image files as uint8 tensors, and turn user arguments (files, folders, globs) into lists of image paths.

Every image is decoded in full when loaded, so a truncated or corrupt file fails here with a message naming it,
not later inside a batch. Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay off (its default) for that.

Channel rules of :func:`load_image`:

- grayscale modes (``1``, ``L``, ``LA``, ``I``, ``I;16``, ``F``) have 1 channel, all others 3 (alpha is dropped;
  palette images are expanded to RGB);
- 16-bit grayscale (``I;16*``) is mapped to 8 bits by ``round(v / 257)``, so 0 → 0 and 65535 → 255 for every image
  alike. 32-bit ``I`` images whose values lie in 0..255 are kept, in 0..65535 are treated as 16-bit, otherwise
  stretched from their min..max to 0..255. Float ``F`` images in 0..1 are multiplied by 255, else treated like ``I``;
- with ``channels=1`` colour images become luma (ITU-R 601-2, Pillow's ``L``); with ``channels=3`` grayscale is
  repeated into three channels.

EXIF orientation tags are not applied: pixels are returned as stored. Float images that hold NaN or infinity are
refused (no scaling makes an image of them), and so are TIFF files of several full-resolution pages: one image per file
is read, and page 1 alone would be a silently wrong result (thumbnails and pyramid levels do not count as pages).

Size limit: an image's size is read from its header before any pixel is decoded and compared with the pixel limit
(:data:`DEFAULT_MAX_PIXELS`, 2³⁰ ≈ 1.07 billion pixels, all pages of a stack together; ``pixel_limit`` or the
CLI's ``--max-pixels`` changes it). A larger image is refused as too large, naming its size and the option that
raises the limit; Pillow's own decompression-bomb limit is replaced by this one while foveal opens an image.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from foveal.errors import FovealError
from foveal.errors import missing_message as _missing
from foveal.io import missing_reason

#: The largest image read by default, in pixels (pages × height × width).
DEFAULT_MAX_PIXELS = 2**30
_max_pixels = DEFAULT_MAX_PIXELS
#: The parameters an image's own error message names (the pixel limit): a caller that passes such a message on in
#: its own error lists them too, so that the command line writes them as its flags.
IMAGE_OPTIONS = ("max_pixels",)

#: File extensions (lower case) treated as images when listing folders and globs.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pbm"}
)

_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "F"})
# Pillow's exceptions for a damaged file: OSError ("image file is truncated", decoder errors), SyntaxError (broken
# PNG chunks), ValueError / struct.error-like failures in some plugins, DecompressionBombError for absurd sizes.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@contextlib.contextmanager
def pixel_limit(limit: float | None) -> Iterator[int]:
    """Read images of up to ``limit`` pixels inside the block (None: the default); yields the limit in force."""
    global _max_pixels
    if limit is None:
        limit = DEFAULT_MAX_PIXELS
    if isinstance(limit, bool) or not isinstance(limit, int | float) or not (math.isfinite(limit) and limit >= 1):
        raise FovealError(
            f"max_pixels {limit:g}: use a positive number of pixels, e.g. max_pixels {2**30}", options=IMAGE_OPTIONS
        )
    before, _max_pixels = _max_pixels, int(limit)
    try:
        yield _max_pixels
    finally:
        _max_pixels = before


def max_pixels() -> int:
    """The pixel limit in force (see :func:`pixel_limit`)."""
    return _max_pixels


def check_pixels(path: str | Path, shape: Sequence[int], role: str = "image") -> None:
    """Refuse an image whose header claims more pixels than the limit, before anything is decoded.

    Args:
        path: the file (named in the message).
        shape: (height, width) or (pages, …, height, width) as the header gives it, without channel axes.
        role: "image" or "mask", for the message.
    """
    pixels = math.prod(int(v) for v in shape)
    if pixels <= _max_pixels:
        return
    dims = [int(v) for v in shape]
    while len(dims) > 2 and dims[0] == 1:
        dims = dims[1:]
    size = " × ".join(map(str, dims))
    raise FovealError(
        f"{role} {path} is too large: its header gives {size} = {pixels:,} pixels, more than the limit of "
        f"{_max_pixels:,}; if the file is genuine and fits in memory, raise the limit with max_pixels {pixels}",
        options=IMAGE_OPTIONS,
    )


@contextlib.contextmanager
def pillow_unbounded() -> Iterator[None]:
    """Pillow's decompression-bomb limit off inside the block: foveal's own limit (checked from the header) rules."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a non-hidden file with an extension from :data:`IMAGE_EXTENSIONS`."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def _check_channels(channels: int | None) -> None:
    if channels not in (None, 1, 3):
        raise FovealError(f"bad channels={channels!r}: use 1 (grayscale), 3 (RGB) or None (keep the image's own)")


def mode_channels(mode: str) -> int:
    """Channels (1 or 3) that :func:`load_image` gives an image of Pillow mode ``mode`` when ``channels`` is None."""
    return 1 if mode in _GRAY_MODES or mode.startswith("I;16") else 3


def missing_message(what: str, path: str | Path, fix: str) -> str:
    """``"<what> <path> does not exist: <fix>"``, or what is wrong instead (a broken symbolic link, whose target is
    missing; a link that loops), or what the path's text hides (an invisible character, quotes) and its fix."""
    return _missing(what, path, missing_reason(path), "fix or remove the link" if os.path.islink(path) else fix)


def stack_error(path: str | Path, pages: int, role: str = "image") -> FovealError:
    """The error for a stack of ``pages`` pages where one image per file is read."""
    return FovealError(
        f"{role} {path} is a stack of {pages} pages, and one image per file is read: pass single images (save each "
        "page as its own file, e.g. with ImageJ's Image > Stacks > Stack to Images)"
    )


def check_tiff_series(tif: Any, path: str | Path, role: str = "image", error: type[FovealError] = FovealError) -> None:
    """Refuse (raise ``error``) a TIFF whose pages form several series (``tif`` is an open ``tifffile.TiffFile``):
    pages saved one call at a time, or images of different sizes. Reading the first series alone would drop the
    others unnoticed."""
    series = tif.series
    if len(series) > 1:
        pages = sum(math.prod(n for n, a in zip(s.shape, s.axes, strict=False) if a not in "YXS") for s in series)
        raise error(
            f"{role} {path} holds {pages} pages in {len(series)} separate TIFF series (pages saved one at a time, or "
            "images of different sizes), and only the first series would be read: save each page as its own file, "
            "or all pages as one stack (tifffile.imwrite(path, numpy.stack(pages)))"
        )


def _tiff_pages(path: Path, frames: int) -> int:
    """Full-resolution pages of a TIFF file that Pillow counts ``frames`` frames in: reduced-resolution pages
    (thumbnails, pyramid levels) and transparency masks do not count."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return sum(1 for page in tif.pages if not int(getattr(page, "subfiletype", 0)) & 0b101)
    except (tifffile.TiffFileError, *_DECODE_ERRORS):
        return frames  # a layout tifffile cannot parse: Pillow's count


def check_finite(values: np.ndarray, name: str | Path) -> None:
    """Refuse float pixels holding NaN or infinity: no scaling turns them into an image."""
    if values.dtype.kind in "fc" and not np.isfinite(values).all():
        raise FovealError(
            f"image {name} holds NaN or infinite values: fix the image (e.g. numpy.nan_to_num) or leave it out"
        )


def _special(path: Path) -> str:
    """What an existing path that is neither a file nor a folder is, for a message."""
    target = f" (a link to {os.readlink(path)})" if path.is_symlink() else ""
    return f"not a regular file but a pipe, device or socket{target}"


def check_file(path: Path, role: str = "image") -> None:
    """Refuse ``path`` unless it is an existing regular file, naming what it is instead (missing, a broken link, a
    folder, a pipe or device: opening a pipe would wait for a writer forever)."""
    if not path.exists():
        raise FovealError(missing_message(role, path, "check the path"))
    if path.is_dir():
        raise FovealError(
            f"expected {'an' if role[0] in 'aeiou' else 'a'} {role} file but {path} is a folder: pass a file, or the "
            "folder where a folder is accepted"
        )
    if not path.is_file():
        raise FovealError(f"{role} {path} is {_special(path)}: pass an {role} file")


def _open(path: Path) -> Image.Image:
    """The image lazily opened (header only), after its size was checked against the pixel limit."""
    check_file(path)
    try:
        with pillow_unbounded():
            img = Image.open(path)
    except UnidentifiedImageError:
        raise FovealError(
            f"{path} is not an image Pillow can read (corrupt, or not an image): fix or remove it"
        ) from None
    except PermissionError:
        raise FovealError(f"cannot read image {path}: permission denied (check its permissions)") from None
    except _DECODE_ERRORS as exc:
        raise FovealError(f"cannot read image {path}: {exc} (the file is corrupt; fix or remove it)") from None
    try:
        check_pixels(path, (img.height, img.width))
        frames = int(getattr(img, "n_frames", 1)) if img.format == "TIFF" else 1
        if frames > 1 and (pages := _tiff_pages(path, frames)) > 1:
            raise stack_error(path, pages)
    except FovealError:
        img.close()
        raise
    return img


def peek_channels(path: str | Path) -> int:
    """Channels (1 or 3) of an image from its header alone, without decoding the pixels.

    Args:
        path: an image file.

    Returns:
        1 for grayscale modes, 3 for the rest (see the module docstring).
    """
    with _open(Path(path)) as img:
        return mode_channels(img.mode)


def _to_uint8_gray(img: Image.Image, name: str | Path) -> np.ndarray:
    """(H, W) uint8 from a 16-bit, 32-bit int or float grayscale image (``name`` it in an error)."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        return np.round(arr.astype(np.float64) / 257.0).astype(np.uint8)
    check_finite(arr, name)
    values = arr.astype(np.float64)
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if img.mode == "F" and lo >= 0.0 and hi <= 1.0:
        values = values * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        pass
    elif lo >= 0.0 and hi <= 65535.0:
        values = values / 257.0
    else:
        values = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def image_pixels(img: Image.Image, channels: int | None, name: str | Path = "<image>") -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 array of a fully loaded image, by the channel rules of :func:`load_image`.

    Raises:
        FovealError: naming ``name`` when a float image holds NaN or infinity.
    """
    mode = img.mode
    target = channels if channels is not None else mode_channels(mode)
    if mode.startswith("I") or mode == "F":
        gray = _to_uint8_gray(img, name)
        return gray if target == 1 else np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("P", "PA"):
        img = img.convert("RGBA")  # applies palette transparency without Pillow's warning
    if target == 1:
        return np.asarray(img.convert("L"))
    if img.mode in ("L", "1"):
        return np.repeat(np.asarray(img.convert("L"))[:, :, None], 3, axis=2)
    return np.asarray(img.convert("RGB"))


def load_image(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """Load and fully decode one image file.

    Args:
        path: the image file.
        channels: 1 (grayscale), 3 (RGB) or None to keep the image's own (1 for grayscale modes, 3 otherwise).

    Returns:
        uint8 tensor of shape (C, H, W).

    Raises:
        FovealError: naming ``path`` when it is missing, a folder, unreadable, not an image, corrupt or truncated, a
            stack of TIFF pages, or a float image holding NaN or infinity.
    """
    _check_channels(channels)
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone enabled Pillow's process-wide flag: truncated files would load padded with grey, unnoticed.
        raise FovealError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process, so truncated images cannot be detected: "
            "set it back to False"
        )
    p = Path(path)
    with _open(p) as img, pillow_unbounded():
        try:
            img.load()
            arr = image_pixels(img, channels, p)
        except _DECODE_ERRORS as exc:
            raise FovealError(
                f"cannot decode image {p}: {exc} (the file is truncated or corrupt; fix or remove it)"
            ) from None
    chw = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(np.array(chw, dtype=np.uint8, order="C"))  # one copy: writable, contiguous


def _has_glob(item: str) -> bool:
    return any(ch in item for ch in "*?[")


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder``, sorted by path; hidden files and folders are skipped.

    Args:
        folder: an existing folder.
        recursive: also list images in sub-folders (at any depth).

    Returns:
        Sorted paths; possibly empty.
    """
    root = Path(folder)
    candidates = root.rglob("*") if recursive else root.iterdir()
    found = [
        p
        for p in candidates
        if is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(found)


def expand_inputs(items: Sequence[str | Path]) -> list[Path]:
    """Turn command-line inputs into image paths (all of :func:`iter_inputs`, as a list).

    Each item is one of: an image file (taken as given, whatever its extension); a list file (``.txt`` / ``.lst``,
    one image path per line); a folder (the images directly in it, sorted — sub-folders are not searched); a glob
    pattern such as ``photos/*.jpg`` or ``data/**/*.png`` (``**`` matches any depth; only files with an image
    extension are kept, sorted). A broken symbolic link found in a folder or by a pattern is kept, so that loading it
    names it. Duplicates are dropped, keeping the first.

    Args:
        items: files, list files, folders and glob patterns.

    Returns:
        Image paths, in the order of ``items``.

    Raises:
        FovealError: naming the item when a file or folder does not exist, a folder holds no images, or a pattern
            matches no image; also when ``items`` is empty.
    """
    return list(iter_inputs(items))


#: Extensions of list files: an input ending so is read as one image path per line (blank lines and ``#`` comments
#: skipped; relative paths are relative to the list file's folder).
LIST_EXTENSIONS: frozenset[str] = frozenset({".txt", ".lst"})


def _list_file(path: Path) -> Iterator[Path]:
    """The paths of a list file: UTF-8 (a byte-order mark at its start, or at a line's, is dropped) or UTF-16 with
    its byte-order mark (Notepad's "Unicode")."""
    try:
        with open(path, "rb") as probe:
            encoding = "utf-16" if probe.read(2) in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
        with open(path, encoding=encoding) as handle:
            for line in handle:
                entry = line.strip().lstrip("\ufeff").strip()
                if entry and not entry.startswith("#"):
                    p = Path(entry)
                    yield p if p.is_absolute() else path.parent / p
    except (OSError, UnicodeError) as exc:
        raise FovealError(
            f"cannot read the list file {path}: {exc} (it must be text, UTF-8 or UTF-16, one image path per line)"
        ) from None


ZARR_SUFFIXES = (".zarr",)


def is_zarr_path(path: str | Path) -> bool:
    """Whether ``path`` names a zarr store (a ``.zarr`` folder, or a folder with zarr metadata): one input, streamed
    by segmentation predict."""
    p = Path(path)
    if not p.is_dir():
        return False
    return p.suffix.lower() in ZARR_SUFFIXES or any((p / f).exists() for f in ("zarr.json", ".zarray", ".zgroup"))


def _listed(path: Path) -> bool:
    """Whether a folder entry or pattern match is an input: a non-hidden entry with an image extension that is not a
    folder. A broken symbolic link, a pipe or a device is kept, so that loading it names the problem instead of
    dropping it unnoticed."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and not path.is_dir()


def _expand_one(text: str) -> Iterator[Path]:
    exts = ", ".join(sorted(IMAGE_EXTENSIONS))
    path = Path(text)
    if not text.strip():
        raise FovealError(f"input {text!r} is an empty path: pass image files, folders, glob patterns or list files")
    if path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
        listed = False
        for entry in _list_file(path):
            listed = True
            yield entry
        if not listed:
            raise FovealError(
                f"list file {path} holds no image paths (one path per line; blank lines and lines starting with # "
                "are skipped): add the images' paths to it"
            )
    elif path.is_file() or is_zarr_path(path):
        yield path
    elif path.is_dir():
        found = False
        for name in sorted(e.name for e in os.scandir(path) if not e.name.startswith(".")):
            if _listed(path / name):
                found = True
                yield path / name
        if not found:
            raise FovealError(
                f"folder {path} holds no images (looked for {exts}, not in sub-folders): "
                f"pass a folder with images, or a pattern such as '{path}/**/*.png'"
            )
    elif _has_glob(text):
        found = False
        for m in sorted(glob.iglob(text, recursive=True)):
            if _listed(Path(m)):
                found = True
                yield Path(m)
        if not found:
            raise FovealError(f"pattern '{text}' matches no image files (extensions {exts}): check the pattern")
    elif path.exists():
        raise FovealError(f"input {path} is {_special(path)}: pass image files, folders, glob patterns or list files")
    else:
        fix = "pass an existing image file, folder, glob pattern or list file"
        raise FovealError(missing_message("input", path, fix))


def iter_inputs(items: Sequence[str | Path]) -> Iterator[Path]:
    """Image paths of command-line inputs, one at a time, in a fixed order (for streams of any length).

    Like :func:`expand_inputs`, and a file ending in ``.txt`` / ``.lst`` is a list of image paths, one per line
    (read as the stream goes). Paths are not checked to exist here: a missing file in a list is reported when it is
    loaded. Duplicates are dropped, keeping the first (the set of seen paths grows with the stream).

    Raises:
        FovealError: as :func:`expand_inputs`, when the stream reaches the bad item.
    """
    if not items:
        raise FovealError("no inputs given: pass image files, folders of images or glob patterns such as 'imgs/*.png'")
    seen: set[str] = set()
    for item in items:
        for p in _expand_one(str(item)):
            key = str(p)
            if key not in seen:
                seen.add(key)
                yield p
