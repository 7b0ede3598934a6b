"""Segmentation datasets: images with per-pixel masks, loaded into memory as float images and int64 label maps.

``open_segmentation(spec, ...)`` accepts

- ``nuclei-sample``: the real fluorescence nuclei sample bundled with foveal (one 256 × 512 uint16 image with
  instance labels; see ``samples/nuclei/PROVENANCE.md``);
- a folder with an ``images/`` and a ``masks/`` (or ``labels/``) sub-folder. Files are paired by stem: the mask of
  ``images/a.png`` is ``masks/a.<ext>``, or ``masks/a_labels.<ext>`` (also ``_masks``, ``_label``, ``_mask``).
  Every image needs a mask and every mask an image. Sub-folders are not searched; hidden files are skipped;
- one TIFF file (``.tif`` / ``.tiff``), usually a stack: its masks are the file ``<stem>_labels.tif`` beside it
  (also ``_masks``, ``_label``, ``_mask``, and ``.tiff``).

Files: TIFF is read with tifffile (the first series of the file; axes ``S`` and ``C`` are channels, all axes other
than ``Y``, ``X`` and channels are pages; LZW- or JPEG-compressed TIFFs, which tifffile cannot decode alone, go to
Pillow), every other format with Pillow (fully decoded, so a truncated file fails here naming it; first frame only).
A multi-page image with a mask of as many pages gives one sample per page, named ``stem[page]``; single images are
named by their stem.

Images become float32 (C, H, W). 8-bit images are divided by 255. Other bit depths follow ``normalize``:

- ``percentile`` (default): per channel, the 1st percentile maps to 0 and the 99.8th to 1. Values beyond are not
  clipped (a bright nucleus may reach 1.3), so no contrast is lost; a channel whose two percentiles coincide falls
  back to ``minmax``;
- ``minmax``: per channel, the minimum maps to 0 and the maximum to 1 (a constant channel becomes 0);
- ``dtype``: integers are divided by their type's maximum (65535 for 16-bit); float images must already lie in
  [0, 1].

Grayscale images have 1 channel, RGB 3 (alpha is dropped, palette images are expanded); multi-channel TIFFs keep
their channels. All images of a dataset must have the same number, ``channels`` when given.

Masks are single-channel label images, 0 being background. ``masks`` says how to read them:

- ``instances``: each object has its own id (any positive integer; ids need not be consecutive); 2 classes result
  (background, foreground);
- ``classes``: every pixel holds its class, 0..num_classes − 1 (``num_classes`` defaults to the largest value + 1);
  8-bit masks holding only 0 and 255 are binary masks, 255 becoming class 1;
- ``auto``, decided over all masks at once: 8-bit masks holding only 0 and 255 → binary classes (255 → 1); else
  masks whose values all lie in 0..K − 1 → classes, K being ``num_classes`` or 2 when not given (so 0/1 masks are
  binary classes); else instances. Multi-class masks therefore need ``num_classes`` (or ``masks="classes"``).

A mask without any foreground is allowed (an image without objects is legitimate training data), but a dataset
whose masks are ALL empty is an error. Everything a user can get wrong (missing or unpaired files, sizes or page
counts that differ, colour, float, negative or out-of-range masks, corrupt files) raises FovealError naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from foveal.data.images import IMAGE_EXTENSIONS, list_images
from foveal.data.seg_io import (
    TIFF_SUFFIXES,
    check_channels,
    check_options,
    read_pages,
    to_float,
)
from foveal.errors import FovealError

#: The bundled real sample (one 256 × 512 uint16 fluorescence image of nuclei with 64 instance labels).
NUCLEI_SAMPLE = Path(__file__).resolve().parent / "samples" / "nuclei"
#: The ``spec`` that names the bundled sample.
NUCLEI_SAMPLE_SPEC = "nuclei-sample"
MASK_KINDS = ("auto", "instances", "classes")
#: Sub-folder names that hold the masks of a folder dataset.
MASK_FOLDERS = ("masks", "labels")
#: Stem endings allowed on a mask file (``a_labels.tif`` is the mask of ``a.tif``).
MASK_SUFFIXES = ("_labels", "_masks", "_label", "_mask")


@dataclass(eq=False)
class SegmentationData(Dataset[tuple[Tensor, Tensor]]):
    """Images with one mask each, in memory.

    Attributes:
        images: float32 tensors (C, H, W), intensities normalised to about [0, 1].
        masks: int64 tensors (H, W) of the same H, W as their image: instance ids (0 = background) or class ids.
        names: one name per sample (the file stem, ``stem[page]`` for stack pages).
        kind: ``instances`` or ``classes``.
        num_classes: classes of the pixel-wise task, 2 (background, foreground) for instances.
        channels: C of every image.
        source: where the data came from, for messages.
    """

    images: list[Tensor] = field(repr=False)
    masks: list[Tensor] = field(repr=False)
    names: list[str]
    kind: str
    num_classes: int
    channels: int
    source: str = ""

    def __post_init__(self) -> None:
        if not len(self.images) == len(self.masks) == len(self.names):
            raise ValueError(f"{len(self.images)} images, {len(self.masks)} masks and {len(self.names)} names")
        if self.kind not in ("instances", "classes"):
            raise ValueError(f"kind must be 'instances' or 'classes', not {self.kind!r}")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        """(image (C, H, W) float32, mask (H, W) int64) of sample ``i``."""
        return self.images[i], self.masks[i]

    def _like(self, images: list[Tensor], masks: list[Tensor], names: list[str], source: str) -> SegmentationData:
        return SegmentationData(images, masks, names, self.kind, self.num_classes, self.channels, source)

    def crop(self, rows: slice, cols: slice) -> SegmentationData:
        """The same region of every sample (Python slicing rules: bounds beyond the image are clamped).

        Args:
            rows: rows to keep, e.g. ``slice(0, 128)``.
            cols: columns to keep, e.g. ``slice(384, None)``.

        Returns:
            New data with copies of the cropped images (C, h, w) and masks (h, w).

        Raises:
            FovealError: naming a sample whose crop would be empty.
        """
        images, masks = [], []
        for name, image, mask in zip(self.names, self.images, self.masks, strict=True):
            part = mask[rows, cols]
            if part.numel() == 0:
                h, w = mask.shape
                raise FovealError(f"the crop leaves nothing of sample {name} ({h}×{w}): choose a region inside it")
            images.append(image[:, rows, cols].clone())
            masks.append(part.clone())
        return self._like(images, masks, list(self.names), f"{self.source} (cropped)")

    def subset(self, indices: Sequence[int]) -> SegmentationData:
        """The samples at ``indices`` (same kind, classes and channels; tensors shared, not copied)."""
        picked = [int(i) for i in indices]
        return self._like(
            [self.images[i] for i in picked], [self.masks[i] for i in picked], [self.names[i] for i in picked],
            self.source,
        )  # fmt: skip


def split_columns(data: SegmentationData, at: int) -> tuple[SegmentationData, SegmentationData]:
    """Split every sample at column ``at``: (columns ``[:at]``, columns ``[at:]``), e.g. train left, evaluate right.

    Raises:
        FovealError: ``at`` does not lie strictly inside every sample.
    """
    for name, mask in zip(data.names, data.masks, strict=True):
        width = int(mask.shape[1])
        if not 0 < at < width:
            raise FovealError(
                f"cannot split sample {name} (width {width}) at column {at}: choose a column between 1 and {width - 1}"
            )
    return data.crop(slice(None), slice(None, at)), data.crop(slice(None), slice(at, None))


# --------------------------------------------------------------------------------------------------------- masks


@dataclass
class _Mask:
    labels: np.ndarray  # (H, W) int64
    path: Path
    name: str
    eight_bit: bool


def _to_labels(pixels: np.ndarray, path: Path) -> np.ndarray:
    """(H, W) int64 of one (H, W, C) mask page."""
    if pixels.shape[2] != 1:
        raise FovealError(
            f"mask {path} has {pixels.shape[2]} channels: masks must be single-channel label images (0 background, "
            "object or class ids as gray values); save it as 8/16-bit grayscale"
        )
    m = pixels[:, :, 0]
    if m.dtype.kind == "f":
        if not np.isfinite(m).all() or not np.array_equal(m, np.round(m)):
            raise FovealError(f"mask {path} holds non-integer values: label images hold whole numbers only")
    elif m.dtype.kind not in "iub":
        raise FovealError(f"mask {path} holds {m.dtype} values: label images hold whole numbers only")
    if m.size and m.min() < 0:
        raise FovealError(f"mask {path} holds negative values (down to {m.min():g}): labels are 0 or positive")
    return m.astype(np.int64)


def _only_0_255(m: _Mask) -> bool:
    return m.eight_bit and bool(np.all((m.labels == 0) | (m.labels == 255)))


def _resolve_kind(masks: list[_Mask], kind: str, num_classes: int | None) -> tuple[str, int, bool]:
    """(kind, num_classes, whether 255 means class 1) by the rules of the module docstring."""
    if kind == "instances":
        if num_classes not in (None, 2):
            raise FovealError(
                f"instance masks give 2 classes (background, foreground), not num_classes={num_classes}: leave "
                "num_classes unset, or set masks='classes' for class masks"
            )
        return "instances", 2, False
    binary = num_classes in (None, 2) and all(_only_0_255(m) for m in masks)
    if binary:
        return "classes", 2, True
    top = max(int(m.labels.max()) if m.labels.size else 0 for m in masks)
    if kind == "auto":
        if top < (num_classes or 2):
            return "classes", num_classes or 2, False
        if num_classes in (None, 2):
            return "instances", 2, False
    k = num_classes if num_classes is not None else max(2, top + 1)
    for m in masks:
        bad = np.unique(m.labels[m.labels >= k])
        if bad.size:
            shown = ", ".join(str(v) for v in bad[:5]) + (", …" if bad.size > 5 else "")
            raise FovealError(
                f"mask {m.path} ({m.name}) holds values {shown}, outside the classes 0..{k - 1} of num_classes={k}: "
                f"fix the mask, raise num_classes, or set masks='instances' for label images of objects"
            )
    return "classes", k, False


# ------------------------------------------------------------------------------------------------------- opening


def _by_stem(paths: list[Path], folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in paths:
        if p.stem in found:
            raise FovealError(f"{folder} holds {found[p.stem].name} and {p.name} with the same stem: keep one")
        found[p.stem] = p
    return found


def _listing(paths: list[Path]) -> str:
    return ", ".join(p.name for p in paths[:5]) + (f" and {len(paths) - 5} more" if len(paths) > 5 else "")


def _folder_pairs(root: Path) -> list[tuple[Path, Path]]:
    image_dir = root / "images"
    mask_dirs = [root / name for name in MASK_FOLDERS if (root / name).is_dir()]
    if not image_dir.is_dir() or not mask_dirs:
        raise FovealError(
            f"{root} is not a segmentation folder: it needs an images/ and a masks/ (or labels/) sub-folder with "
            f"files paired by name ({root}/images/a.png + {root}/masks/a.png)"
        )
    if len(mask_dirs) > 1:
        raise FovealError(f"{root} has both masks/ and labels/ sub-folders: keep one")
    images = _by_stem(list_images(image_dir), image_dir)
    if not images:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise FovealError(f"{image_dir} holds no images (looked for {exts}, not in sub-folders): add images")
    pairs: dict[str, Path] = {}
    orphans: list[Path] = []
    for stem, path in _by_stem(list_images(mask_dirs[0]), mask_dirs[0]).items():
        key = stem if stem in images else next((stem[: -len(s)] for s in MASK_SUFFIXES if stem.endswith(s)), "")
        if key not in images:
            orphans.append(path)
        elif key in pairs:
            raise FovealError(f"image {images[key]} has two masks, {pairs[key]} and {path}: keep one")
        else:
            pairs[key] = path
    lonely = [images[s] for s in sorted(images) if s not in pairs]
    if lonely or orphans:
        parts = [f"{len(lonely)} image(s) without a mask in {mask_dirs[0]}: {_listing(lonely)}"] if lonely else []
        parts += [f"{len(orphans)} mask(s) without an image in {image_dir}: {_listing(orphans)}"] if orphans else []
        raise FovealError(
            f"{'; '.join(parts)}. Every image needs a mask of the same name (a.png + a.png or a_labels.png)"
        )
    return [(images[s], pairs[s]) for s in sorted(images)]


def _stack_pair(path: Path) -> tuple[Path, Path]:
    if path.suffix.lower() not in TIFF_SUFFIXES:
        raise FovealError(
            f"{path} is not a TIFF stack: pass '{NUCLEI_SAMPLE_SPEC}', a folder with images/ and masks/ sub-folders, "
            "or a .tif stack with its masks in <stem>_labels.tif beside it"
        )
    candidates = [path.with_name(path.stem + s + e) for s in MASK_SUFFIXES for e in (".tif", ".tiff")]
    for candidate in candidates:
        if candidate.is_file():
            return path, candidate
    raise FovealError(
        f"no masks found for {path}: put them in {candidates[0].name} (or {candidates[2].name}, "
        f"{candidates[4].name}) beside it"
    )


def _load_pairs(
    pairs: list[tuple[Path, Path]], channels: int | None, normalize: str
) -> tuple[list[Tensor], list[_Mask], list[Path]]:
    images: list[Tensor] = []
    masks: list[_Mask] = []
    paths: list[Path] = []
    for image_path, mask_path in pairs:
        image_pages = read_pages(image_path, "image")
        mask_pages = read_pages(mask_path, "mask")
        if len(image_pages) != len(mask_pages):
            raise FovealError(
                f"image {image_path} has {len(image_pages)} page(s) but mask {mask_path} has {len(mask_pages)}: "
                "a stack needs one mask page per image page"
            )
        stack = len(image_pages) > 1
        for page, (pixels, mask_pixels) in enumerate(zip(image_pages, mask_pages, strict=True)):
            name = f"{image_path.stem}[{page}]" if stack else image_path.stem
            where = f" (page {page})" if stack else ""
            if pixels.shape[:2] != mask_pixels.shape[:2]:
                (h, w), (mh, mw) = pixels.shape[:2], mask_pixels.shape[:2]
                raise FovealError(
                    f"image {image_path}{where} is {h}×{w} but its mask {mask_path} is {mh}×{mw}: an image and its "
                    "mask must have the same size"
                )
            images.append(to_float(pixels, image_path, normalize))
            masks.append(_Mask(_to_labels(mask_pixels, mask_path), mask_path, name, mask_pixels.dtype == np.uint8))
            paths.append(image_path)
    return images, masks, paths


def open_segmentation(
    spec: str | Path,
    *,
    channels: int | None = None,
    masks: str = "auto",
    num_classes: int | None = None,
    normalize: str = "percentile",
) -> SegmentationData:
    """Open a segmentation dataset, all in memory (the module docstring gives the forms of ``spec`` and the rules).

    Args:
        spec: ``nuclei-sample``, a folder with ``images/`` and ``masks/`` (or ``labels/``), or a TIFF stack.
        channels: the channel count every image must have, None for the data's own.
        masks: ``auto``, ``instances`` or ``classes``.
        num_classes: classes of class masks (at least 2); None to infer.
        normalize: ``percentile``, ``dtype`` or ``minmax``, for images that are not 8-bit.

    Returns:
        Images float32 (C, H, W) and masks int64 (H, W).

    Raises:
        FovealError: bad input of any kind listed in the module docstring; the message names the file.
    """
    check_options(normalize, channels)
    if masks not in MASK_KINDS:
        raise FovealError(f"unknown masks='{masks}': choose one of {', '.join(MASK_KINDS)}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
        raise FovealError(f"bad num_classes={num_classes!r}: use at least 2 (background and one class) or None")
    path = Path(spec).expanduser()
    if str(spec) == NUCLEI_SAMPLE_SPEC or (path.is_dir() and path.resolve() == NUCLEI_SAMPLE):
        pairs = [(NUCLEI_SAMPLE / "image_top.tif", NUCLEI_SAMPLE / "labels_top.tif")]
    elif not path.exists():
        raise FovealError(
            f"dataset {path} does not exist: set data.train (training), data (eval) or weightmap's DATA to "
            f"'{NUCLEI_SAMPLE_SPEC}', a folder with images/ and masks/ sub-folders, or a .tif stack with "
            "<stem>_labels.tif beside it",
            options=("data",),
        )
    else:
        pairs = _folder_pairs(path) if path.is_dir() else [_stack_pair(path)]
    images, mask_list, paths = _load_pairs(pairs, channels, normalize)
    n_channels = check_channels(images, paths, channels)
    kind, k, binary = _resolve_kind(mask_list, masks, num_classes)
    if all(not m.labels.any() for m in mask_list):
        raise FovealError(
            f"all masks are empty: none of the {len(mask_list)} masks of {spec} (e.g. {mask_list[0].path}) has a "
            "foreground pixel; check that the masks hold labels (0 is background)"
        )
    labels = [torch.from_numpy((m.labels == 255).astype(np.int64) if binary else m.labels) for m in mask_list]
    names = [m.name for m in mask_list]
    return SegmentationData(images, labels, names, kind, k, n_channels, str(spec))
