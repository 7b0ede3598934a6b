"""open_segmentation over the bundled nuclei sample, image/mask folders and TIFF stacks; bad input; label writing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from foveal.data.seg_io import load_seg_image, load_seg_pages, write_label_image
from foveal.data.segmentation import NUCLEI_SAMPLE, SegmentationData, open_segmentation, split_columns
from foveal.errors import FovealError

RNG = np.random.default_rng(0)
H, W = 12, 16


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _tif(path: Path, arr: np.ndarray, **kwargs: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("photometric", "minisblack")
    tifffile.imwrite(path, arr, **kwargs)
    return path


def _labels(seed: int, top: int = 3) -> np.ndarray:
    """A (H, W) uint8 label image with ids 1..top in blocks and background elsewhere."""
    m = np.zeros((H, W), np.uint8)
    for k in range(1, top + 1):
        r, c = divmod((k - 1 + seed) % 8, 4)
        m[r * 6 : r * 6 + 4, c * 4 : c * 4 + 3] = k
    return m


def _folder(root: Path, n: int = 2, ext: str = ".png", mask_dir: str = "masks") -> tuple[list, list]:
    images, masks = [], []
    for i in range(n):
        img = RNG.integers(0, 256, (H, W), dtype=np.uint8)
        mask = _labels(i)
        (_png if ext == ".png" else _tif)(root / "images" / f"s{i}{ext}", img)
        (_png if ext == ".png" else _tif)(root / mask_dir / f"s{i}{ext}", mask)
        images.append(img)
        masks.append(mask)
    return images, masks


# ------------------------------------------------------------------------------------------------ bundled sample


def test_nuclei_sample() -> None:
    data = open_segmentation("nuclei-sample")
    raw = tifffile.imread(NUCLEI_SAMPLE / "image_top.tif")
    truth = tifffile.imread(NUCLEI_SAMPLE / "labels_top.tif")
    assert raw.dtype == np.uint16 and truth.dtype == np.uint16
    assert len(data) == 1 and data.names == ["image_top"]
    assert (data.kind, data.num_classes, data.channels) == ("instances", 2, 1)
    image, mask = data[0]
    assert image.shape == (1, 256, 512) and image.dtype == torch.float32
    assert mask.shape == (256, 512) and mask.dtype == torch.int64
    assert torch.equal(mask, torch.from_numpy(truth.astype(np.int64)))
    assert len(torch.unique(mask)) - 1 == 64
    # 1st / 99.8th percentile → 0 / 1, unclipped: about 1 % of pixels below 0 and 0.2 % above 1.
    assert 0.0 < float((image < 0).float().mean()) <= 0.01
    assert 0.0 < float((image > 1).float().mean()) <= 0.002 + 1e-4
    order = np.argsort(raw, axis=None)
    assert image.flatten()[torch.from_numpy(order)].diff().min() >= 0  # monotone in the raw values
    dtype = open_segmentation("nuclei-sample", normalize="dtype").images[0]
    assert torch.allclose(dtype, torch.from_numpy(raw.astype(np.float32) / 65535.0)[None])
    same = open_segmentation(NUCLEI_SAMPLE)
    assert torch.equal(same.images[0], image)
    assert (NUCLEI_SAMPLE / "PROVENANCE.md").is_file()


def test_nuclei_split_columns_for_the_benchmark() -> None:
    data = open_segmentation("nuclei-sample")
    left, right = split_columns(data, 384)
    assert left.images[0].shape == (1, 256, 384) and left.masks[0].shape == (256, 384)
    assert right.images[0].shape == (1, 256, 128) and right.masks[0].shape == (256, 128)
    assert torch.equal(torch.cat([left.masks[0], right.masks[0]], dim=1), data.masks[0])
    assert torch.equal(torch.cat([left.images[0], right.images[0]], dim=2), data.images[0])
    assert (left.kind, left.num_classes, right.channels) == ("instances", 2, 1)
    for bad in (0, 512, 600):
        with pytest.raises(FovealError, match=f"image_top \\(width 512\\) at column {bad}"):
            split_columns(data, bad)


# -------------------------------------------------------------------------------------------------- folder layout


def test_png_folder(tmp_path: Path) -> None:
    images, masks = _folder(tmp_path)
    data = open_segmentation(tmp_path)
    assert data.names == ["s0", "s1"] and (data.kind, data.num_classes, data.channels) == ("instances", 2, 1)
    for i in range(2):
        assert torch.equal(data.images[i], torch.from_numpy(images[i].astype(np.float32) / 255)[None])
        assert torch.equal(data.masks[i], torch.from_numpy(masks[i].astype(np.int64)))


def test_tiff_folder_with_labels_and_suffix(tmp_path: Path) -> None:
    img = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 300 + 1000
    _tif(tmp_path / "images" / "cell.tiff", img)
    _tif(tmp_path / "labels" / "cell_labels.tif", _labels(0).astype(np.uint16))
    data = open_segmentation(tmp_path, normalize="minmax")
    assert data.names == ["cell"]
    expected = (img.astype(np.float64) - 1000) / (img.max() - 1000.0)
    assert np.allclose(data.images[0][0].numpy(), expected, atol=1e-6)
    assert torch.equal(data.masks[0], torch.from_numpy(_labels(0).astype(np.int64)))
    by_dtype = open_segmentation(tmp_path, normalize="dtype").images[0][0].numpy()
    assert np.allclose(by_dtype, img / 65535.0, atol=1e-7)


def test_percentile_golden_and_fallback(tmp_path: Path) -> None:
    img = np.arange(1000, dtype=np.uint16).reshape(20, 50)
    x = load_seg_image(_tif(tmp_path / "ramp.tif", img))
    # linear percentiles of 0..999: 1 % → 9.99, 99.8 % → 997.002
    expected = (img - 9.99) / (997.002 - 9.99)
    assert np.allclose(x[0].numpy(), expected, atol=1e-5)
    assert float(x.min()) < 0 and float(x.max()) > 1  # not clipped
    flat = np.zeros((20, 50), np.uint16)
    flat[0, 0] = 500  # both percentiles are 0: min-max instead
    y = load_seg_image(_tif(tmp_path / "spot.tif", flat))
    assert float(y[0, 0, 0]) == 1.0 and float(y.sum()) == 1.0
    assert float(load_seg_image(_tif(tmp_path / "const.tif", flat * 0 + 7)).abs().sum()) == 0.0


def test_channels_normalised_separately(tmp_path: Path) -> None:
    two = np.stack([np.arange(200).reshape(10, 20), 10 * np.arange(200).reshape(10, 20) + 5000]).astype(np.uint16)
    path = _tif(tmp_path / "two.tif", two, imagej=True, metadata={"axes": "CYX"})
    x = load_seg_image(path, normalize="minmax")
    assert x.shape == (2, 10, 20)
    assert torch.allclose(x[0], x[1], atol=1e-6) and float(x[1].max()) == 1.0
    with pytest.raises(FovealError, match="has 2 channel\\(s\\) but channels=1 was asked.*convert it to grayscale"):
        load_seg_image(path, channels=1)


def test_16_bit_png_and_float_tiff(tmp_path: Path) -> None:
    img = (np.arange(H * W).reshape(H, W) * 200).astype(np.uint16)
    x = load_seg_image(_png(tmp_path / "a16.png", img), normalize="dtype")
    assert np.allclose(x[0].numpy(), img / 65535.0, atol=1e-7)
    f = RNG.random((H, W)).astype(np.float32)
    assert np.allclose(load_seg_image(_tif(tmp_path / "f.tif", f), normalize="dtype")[0].numpy(), f)
    with pytest.raises(FovealError, match="float image .*f2.tif.*outside \\[0, 1\\]"):
        load_seg_image(_tif(tmp_path / "f2.tif", f * 10), normalize="dtype")
    f[0, 0] = np.nan
    with pytest.raises(FovealError, match="nan.tif holds NaN"):
        load_seg_image(_tif(tmp_path / "nan.tif", f))


def test_rgb_and_rgba_images(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    _png(tmp_path / "images" / "c.png", np.concatenate([rgb, np.full((H, W, 1), 9, np.uint8)], axis=2))
    _png(tmp_path / "masks" / "c.png", _labels(0))
    _tif(tmp_path / "images" / "d.tif", rgb, photometric="rgb")
    _png(tmp_path / "masks" / "d.png", _labels(1))
    rgba = np.concatenate([rgb, np.full((H, W, 1), 200, np.uint8)], axis=2)
    _tif(tmp_path / "images" / "e.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    _png(tmp_path / "masks" / "e.png", _labels(2))
    data = open_segmentation(tmp_path)
    assert data.channels == 3 and data.names == ["c", "d", "e"]
    expected = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)
    assert all(torch.equal(image, expected) for image in data.images)
    with pytest.raises(
        FovealError, match="c.png has 3 channel\\(s\\) but channels=1 was asked.*convert it to grayscale"
    ):
        open_segmentation(tmp_path, channels=1)
    _png(tmp_path / "images" / "f.png", rgb[:, :, 0])
    _png(tmp_path / "masks" / "f.png", _labels(3))
    with pytest.raises(FovealError, match="differ in channel count.*c.png has 3.*f.png has 1"):
        open_segmentation(tmp_path)


# ------------------------------------------------------------------------------------------------------- stacks


def test_tiff_stack_with_sibling_masks(tmp_path: Path) -> None:
    stack = RNG.integers(0, 4000, (3, H, W), dtype=np.uint16)
    labels = np.stack([_labels(i).astype(np.uint16) for i in range(3)])
    labels[1] = 0  # one page without objects is fine
    path = _tif(tmp_path / "cells.tif", stack)
    _tif(tmp_path / "cells_labels.tif", labels)
    data = open_segmentation(path)
    assert data.names == ["cells[0]", "cells[1]", "cells[2]"] and data.kind == "instances"
    for i in range(3):
        assert data.images[i].shape == (1, H, W)
        assert torch.equal(data.masks[i], torch.from_numpy(labels[i].astype(np.int64)))
        assert torch.equal(data.images[i], load_seg_image(_tif(tmp_path / f"p{i}.tif", stack[i])))
    assert len(load_seg_pages(path)) == 3
    with pytest.raises(FovealError, match="cells.tif is a stack of 3 pages"):
        load_seg_image(path)


def test_lzw_tiff_stack_read_through_pillow(tmp_path: Path) -> None:
    """tifffile needs imagecodecs for LZW; such files (ImageJ saves them) are decoded by Pillow instead."""
    pages = [RNG.integers(0, 4000, (H, W)).astype(np.uint16) for _ in range(2)]
    frames = [Image.fromarray(p) for p in pages]
    frames[0].save(tmp_path / "lzw.tif", compression="tiff_lzw", save_all=True, append_images=frames[1:])
    _tif(tmp_path / "lzw_masks.tif", np.stack([_labels(0), _labels(1)]))
    data = open_segmentation(tmp_path / "lzw.tif", normalize="dtype")
    assert data.names == ["lzw[0]", "lzw[1]"]
    for i in range(2):
        assert np.allclose(data.images[i][0].numpy(), pages[i] / 65535.0, atol=1e-7)


def test_stack_in_folder_and_page_mismatch(tmp_path: Path) -> None:
    _tif(tmp_path / "images" / "s.tif", RNG.integers(0, 255, (2, H, W), dtype=np.uint8))
    _tif(tmp_path / "masks" / "s.tif", np.stack([_labels(0), _labels(1)]))
    assert open_segmentation(tmp_path).names == ["s[0]", "s[1]"]
    _tif(tmp_path / "masks" / "s.tif", np.stack([_labels(0)] * 3))
    with pytest.raises(FovealError, match="image .*s.tif has 2 page\\(s\\) but mask .*s.tif has 3"):
        open_segmentation(tmp_path)


def test_stack_spec_errors(tmp_path: Path) -> None:
    path = _tif(tmp_path / "cells.tif", np.zeros((2, H, W), np.uint16))
    with pytest.raises(FovealError, match="no masks found for .*cells.tif: put them in cells_labels.tif"):
        open_segmentation(path)
    png = _png(tmp_path / "one.png", np.zeros((H, W), np.uint8))
    with pytest.raises(FovealError, match="one.png is not a TIFF stack"):
        open_segmentation(png)


# ---------------------------------------------------------------------------------------------------- mask kinds


def _one_pair(root: Path, mask: np.ndarray, mask_name: str = "a.png") -> Path:
    _png(root / "images" / "a.png", RNG.integers(0, 256, mask.shape[:2], dtype=np.uint8))
    (_png if mask_name.endswith(".png") else _tif)(root / "masks" / mask_name, mask)
    return root


def test_binary_0_255_masks_become_classes(tmp_path: Path) -> None:
    mask = (_labels(0) > 0).astype(np.uint8) * 255
    data = open_segmentation(_one_pair(tmp_path, mask))
    assert (data.kind, data.num_classes) == ("classes", 2)
    assert torch.equal(data.masks[0], torch.from_numpy((mask == 255).astype(np.int64)))
    assert open_segmentation(tmp_path, masks="classes").masks[0].max() == 1
    instances = open_segmentation(tmp_path, masks="instances")
    assert instances.kind == "instances" and int(instances.masks[0].max()) == 255


def test_auto_rule(tmp_path: Path) -> None:
    zero_one = open_segmentation(_one_pair(tmp_path / "a", (_labels(0) > 0).astype(np.uint8)))
    assert (zero_one.kind, zero_one.num_classes) == ("classes", 2)
    root = _one_pair(tmp_path / "b", _labels(0, top=3))
    assert open_segmentation(root).kind == "instances"
    four = open_segmentation(root, num_classes=4)
    assert (four.kind, four.num_classes) == ("classes", 4)
    assert torch.equal(four.masks[0], torch.from_numpy(_labels(0, 3).astype(np.int64)))
    explicit = open_segmentation(root, masks="classes")
    assert (explicit.kind, explicit.num_classes) == ("classes", 4)
    wide = open_segmentation(_one_pair(tmp_path / "c", (_labels(0) > 0).astype(np.uint16) * 255, "a.tif"))
    assert wide.kind == "instances"  # 0/255 means binary only for 8-bit masks


def test_class_values_out_of_range(tmp_path: Path) -> None:
    mask = _labels(0, top=3)
    mask[0, 0] = 5
    root = _one_pair(tmp_path, mask)
    with pytest.raises(FovealError, match="mask .*a.png \\(a\\) holds values 3, 5, outside the classes 0..2"):
        open_segmentation(root, masks="classes", num_classes=3)
    with pytest.raises(FovealError, match="holds values 3, 5, outside"):
        open_segmentation(root, num_classes=3)  # auto with an explicit K > 2 never turns to instances
    with pytest.raises(FovealError, match="instance masks give 2 classes.*not num_classes=3"):
        open_segmentation(root, masks="instances", num_classes=3)


# ----------------------------------------------------------------------------------------------------- bad masks


def test_rgb_mask(tmp_path: Path) -> None:
    root = _one_pair(tmp_path, np.repeat(_labels(0)[:, :, None], 3, axis=2))
    with pytest.raises(FovealError, match="mask .*a.png has 3 channels: masks must be single-channel label images"):
        open_segmentation(root)


def test_float_masks(tmp_path: Path) -> None:
    good = _one_pair(tmp_path / "ok", _labels(0).astype(np.float32), "a.tif")
    assert torch.equal(open_segmentation(good).masks[0], torch.from_numpy(_labels(0).astype(np.int64)))
    bad = _one_pair(tmp_path / "bad", _labels(0).astype(np.float32) * 0.5, "a.tif")
    with pytest.raises(FovealError, match="mask .*bad/masks/a.tif holds non-integer values"):
        open_segmentation(bad)


def test_negative_mask(tmp_path: Path) -> None:
    mask = _labels(0).astype(np.int16)
    mask[2, 2] = -4
    with pytest.raises(FovealError, match="mask .*a.tif holds negative values \\(down to -4\\)"):
        open_segmentation(_one_pair(tmp_path, mask, "a.tif"))


def test_size_mismatch(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "a.png", np.zeros((H, W), np.uint8))
    _png(tmp_path / "masks" / "a.png", _labels(0)[:, :15])
    with pytest.raises(FovealError, match=f"image .*images/a.png is {H}×{W} but its mask .*masks/a.png is {H}×15"):
        open_segmentation(tmp_path)


def test_lossy_mask(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "a.png", np.zeros((H, W), np.uint8))
    _png(tmp_path / "masks" / "a.jpg", _labels(0))
    with pytest.raises(FovealError, match="mask .*a.jpg is a .jpg file: lossy compression"):
        open_segmentation(tmp_path)


def test_empty_masks(tmp_path: Path) -> None:
    _folder(tmp_path)
    _png(tmp_path / "masks" / "s1.png", np.zeros((H, W), np.uint8))
    data = open_segmentation(tmp_path)  # one image without objects is fine
    assert int(data.masks[1].abs().sum()) == 0 and int(data.masks[0].max()) > 0
    _png(tmp_path / "masks" / "s0.png", np.zeros((H, W), np.uint8))
    with pytest.raises(FovealError, match="all masks are empty: none of the 2 masks .*s0.png"):
        open_segmentation(tmp_path)


# ------------------------------------------------------------------------------------------------- bad folders


def test_unpaired_files(tmp_path: Path) -> None:
    _folder(tmp_path, n=3)
    (tmp_path / "masks" / "s1.png").unlink()
    _png(tmp_path / "masks" / "zz.png", _labels(0))
    with pytest.raises(FovealError) as err:
        open_segmentation(tmp_path)
    msg = str(err.value)
    assert "1 image(s) without a mask" in msg and "s1.png" in msg
    assert "1 mask(s) without an image" in msg and "zz.png" in msg


def test_folder_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(FovealError, match="dataset .*nowhere does not exist"):
        open_segmentation(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    with pytest.raises(FovealError, match="flat is not a segmentation folder: it needs an images/ and a masks/"):
        open_segmentation(tmp_path / "flat")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(FovealError, match="empty/images holds no images"):
        open_segmentation(tmp_path / "empty")
    (tmp_path / "empty" / "labels").mkdir()
    with pytest.raises(FovealError, match="has both masks/ and labels/"):
        open_segmentation(tmp_path / "empty")
    _folder(tmp_path / "dup")
    _tif(tmp_path / "dup" / "images" / "s0.tif", np.zeros((H, W), np.uint8))
    with pytest.raises(FovealError, match="holds s0.png and s0.tif with the same stem"):
        open_segmentation(tmp_path / "dup")
    _folder(tmp_path / "two")
    _png(tmp_path / "two" / "masks" / "s0_mask.png", _labels(0))
    with pytest.raises(FovealError, match="s0.png has two masks"):
        open_segmentation(tmp_path / "two")


def test_corrupt_files(tmp_path: Path) -> None:
    _folder(tmp_path)
    png = tmp_path / "images" / "s0.png"
    png.write_bytes(png.read_bytes()[:-40])
    with pytest.raises(FovealError, match="cannot read image .*s0.png.*truncated or corrupt"):
        open_segmentation(tmp_path)
    png.write_bytes(b"not an image at all")
    with pytest.raises(FovealError, match="image .*s0.png is not an image Pillow can read"):
        open_segmentation(tmp_path)
    _folder(tmp_path / "t", ext=".tif")
    tif = tmp_path / "t" / "masks" / "s1.tif"
    tif.write_bytes(tif.read_bytes()[:100])
    with pytest.raises(FovealError, match="cannot read mask .*s1.tif.*corrupt or truncated"):
        open_segmentation(tmp_path / "t")
    tif.write_bytes(b"garbage" * 20)
    with pytest.raises(FovealError, match="cannot read mask .*s1.tif: not a TIFF file"):
        open_segmentation(tmp_path / "t")


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(FovealError, match="unknown normalize='zscore'"):
        open_segmentation("nuclei-sample", normalize="zscore")
    with pytest.raises(FovealError, match="unknown masks='semantic'"):
        open_segmentation("nuclei-sample", masks="semantic")
    with pytest.raises(FovealError, match="bad num_classes=1"):
        open_segmentation("nuclei-sample", num_classes=1)
    with pytest.raises(FovealError, match="bad channels=0"):
        open_segmentation("nuclei-sample", channels=0)
    with pytest.raises(FovealError, match="image .*missing.png does not exist"):
        load_seg_image(tmp_path / "missing.png")


# ------------------------------------------------------------------------------------------------ crop / subset


def test_crop_and_subset(tmp_path: Path) -> None:
    _folder(tmp_path, n=3)
    data = open_segmentation(tmp_path)
    part = data.crop(slice(2, 10), slice(4, None))
    assert isinstance(part, SegmentationData) and len(part) == 3 and part.names == data.names
    for i in range(3):
        assert part.images[i].shape == (1, 8, W - 4) and part.masks[i].shape == (8, W - 4)
        assert torch.equal(part.masks[i], data.masks[i][2:10, 4:])
        assert torch.equal(part.images[i], data.images[i][:, 2:10, 4:])
    part.masks[0][0, 0] = 99  # a copy: the original is untouched
    assert int(data.masks[0][2, 4]) != 99
    with pytest.raises(FovealError, match="leaves nothing of sample s0"):
        data.crop(slice(0, 4), slice(W, None))
    sub = data.subset([2, 0])
    assert sub.names == ["s2", "s0"] and sub.masks[0] is data.masks[2]
    assert (sub.kind, sub.num_classes, sub.channels) == (data.kind, data.num_classes, data.channels)


# ------------------------------------------------------------------------------------------------ label writing


def test_write_label_image_round_trip(tmp_path: Path) -> None:
    labels = RNG.integers(0, 65536, (H, W)).astype(np.int32)
    png = write_label_image(labels, tmp_path / "out" / "a.png")
    with Image.open(png) as img:
        assert img.mode == "I;16" and np.array_equal(np.asarray(img), labels)
    tif = write_label_image(labels, tmp_path / "a.tif")
    back = tifffile.imread(tif)
    assert back.dtype == np.uint16 and np.array_equal(back, labels)
    big = labels.astype(np.int64) * 3
    tif32 = write_label_image(big, tmp_path / "big.tiff")
    back32 = tifffile.imread(tif32)
    assert back32.dtype == np.uint32 and np.array_equal(back32, big)
    write_label_image(np.zeros((H, W), np.uint8), tmp_path / "a.tif")  # overwrites
    assert int(tifffile.imread(tmp_path / "a.tif").max()) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "big.tiff", "out"]  # no temporary files left
    # written labels read back as masks
    _png(tmp_path / "ds" / "images" / "a.png", np.zeros((H, W), np.uint8))
    write_label_image(_labels(0), tmp_path / "ds" / "masks" / "a.png")
    assert torch.equal(open_segmentation(tmp_path / "ds").masks[0], torch.from_numpy(_labels(0).astype(np.int64)))


def test_write_label_image_errors(tmp_path: Path) -> None:
    with pytest.raises(
        FovealError, match="go up to 70000, more than a .png label image holds \\(65535\\): write a .tif"
    ):
        write_label_image(np.full((2, 2), 70000), tmp_path / "a.png")
    with pytest.raises(FovealError, match="more than a .tif label image holds"):
        write_label_image(np.full((2, 2), 2**32), tmp_path / "a.tif")
    with pytest.raises(FovealError, match="negative values"):
        write_label_image(np.full((2, 2), -1), tmp_path / "a.tif")
    with pytest.raises(FovealError, match="use a .png, .tif or .tiff"):
        write_label_image(np.zeros((2, 2), np.int32), tmp_path / "a.jpg")
    with pytest.raises(FovealError, match="2-D integer array"):
        write_label_image(np.zeros((2, 2), np.float32), tmp_path / "a.tif")
    assert list(tmp_path.iterdir()) == []


def test_write_label_image_failure_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(path: Path, *args: Any, **kwargs: Any) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", disk_full)
    with pytest.raises(FovealError, match="cannot write label image .*a.tif: No space left on device"):
        write_label_image(np.zeros((2, 2), np.int32), tmp_path / "a.tif")
    assert list(tmp_path.iterdir()) == []
