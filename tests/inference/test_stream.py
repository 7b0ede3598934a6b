"""Streaming overlap-tile segmentation: the same logits, labels and files as the whole-image path, read and written
band by band."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage as ndi
from torch import Tensor, nn

from foveal.cli import main
from foveal.config import to_dict
from foveal.data.instances import instances_from_classes
from foveal.data.seg_io import load_seg_image, to_float
from foveal.engine.checkpoint import save_checkpoint
from foveal.errors import FovealError
from foveal.inference import stream
from foveal.inference.stream import statistics
from foveal.inference.tiling import TileGeometry
from foveal.models.unet import UNet
from foveal.tasks import segment, segment_predict
from foveal.tasks.segment import SegmentConfig

zarr = pytest.importorskip("zarr")


class Threshold(nn.Module):
    """A stand-in segmenter whose class map is exactly ``image > 0.5``: valid geometry (border 6, stride 4)."""

    border, stride = 6, 4

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :1, self.border : -self.border, self.border : -self.border]
        return torch.cat([0.5 - x, x - 0.5], 1)


def _stream_labels(tmp_path: Path, mask: np.ndarray, tile: int, **kw: int) -> np.ndarray:
    src = tmp_path / "mask.tif"
    tifffile.imwrite(src, mask.astype(np.uint8) * 255, tile=(16, 16), compression="zlib")
    result = stream.segment_large(Threshold(), src, tmp_path / "labels.tif", tile=tile, out_tile=16, **kw)
    labels = tifffile.imread(result.labels)
    assert result.objects == int(labels.max())
    return labels


def _seam_objects() -> np.ndarray:
    """Objects that tiles of step 12 cut: a cross on a four-tile corner, a U whose arms begin in one band and join in
    the next, a staircase over several seams, pairs of specks on a seam (each half below min_size 6, the whole above)
    and a one-pixel line along a seam."""
    m = np.zeros((50, 61), bool)
    m[8:17, 11:14] = m[11:14, 8:17] = True  # cross centred on the corner (12, 12)
    m[20:35, 26:28] = m[20:35, 32:34] = m[33:35, 26:34] = True  # U: arms in band 1, joined in band 2
    for k in range(10):  # staircase: 4-connected steps down and right over row and column seams
        m[2 + 4 * k : 6 + 4 * k, 38 + 2 * k : 41 + 2 * k] = True
    m[10:14, 2:4] = True  # 2×2 above the seam at row 12 + 2×2 below: 8 px in all
    m[35:37, 20:21] = True  # 2 px on each side of row 36: dropped by min_size 6
    m[24, 0:61] = False
    m[47, 5:55] = True  # a line in the last band
    return m


@pytest.mark.parametrize("tile", [4, 12, 20])
@pytest.mark.parametrize(("min_size", "expand"), [(0, 0), (6, 0), (6, 2), (0, 15)])
def test_objects_cut_by_tiles_get_one_label_as_on_the_whole_image(tmp_path, tile, min_size, expand):
    mask = _seam_objects()
    reference = instances_from_classes(mask, min_size=min_size, expand=expand)
    labels = _stream_labels(tmp_path, mask, tile, min_size=min_size, expand=expand)
    assert labels.dtype == np.uint16 and labels.shape == mask.shape
    np.testing.assert_array_equal(labels, reference)
    assert reference.max() >= 5
    cross = labels[8:17, 12]
    assert len(np.unique(cross)) == 1 and cross[0] > 0  # the cross crosses the corner in one piece


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_equal_whole_image_instances(tmp_path, seed):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(20, 90, 2))
    blobs = ndi.gaussian_filter(rng.random((h, w)), rng.uniform(0.7, 2.5))
    mask = blobs > np.quantile(blobs, rng.uniform(0.3, 0.7))
    min_size, expand, tile = int(rng.integers(0, 12)), int(rng.choice([0, 1, 4])), int(rng.choice([4, 8, 16]))
    reference = instances_from_classes(mask, min_size=min_size, expand=expand)
    np.testing.assert_array_equal(_stream_labels(tmp_path, mask, tile, min_size=min_size, expand=expand), reference)


def test_seam_labeler_numbers_objects_by_their_first_pixel():
    mask = np.zeros((6, 5), bool)
    mask[0, 4] = mask[1, 4] = mask[2, 4] = True  # first pixel (0, 4)
    mask[2, 0] = mask[3, 0] = mask[3, 1] = mask[3, 2] = mask[3, 3] = mask[3, 4] = True  # joins it at (3, 4)
    mask[5, 2] = True
    labeler = stream.SeamLabeler(5)
    for y in range(0, 6, 2):
        labeler.add(mask[y : y + 2])
    n = labeler.finish()
    got = np.concatenate(list(labeler.labels()))
    labeler.close()
    expected, n_expected = ndi.label(mask)
    assert n == n_expected == 2
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("normalize", ["percentile", "minmax", "dtype"])
def test_normalisation_equals_whole_image(monkeypatch, dtype, normalize):
    monkeypatch.setattr(statistics, "_STAT_ROWS", 5)  # statistics gathered over several bands
    rng = np.random.default_rng(3)
    if np.dtype(dtype).kind == "f":
        pixels = rng.random((23, 17, 2)) if normalize == "dtype" else rng.standard_normal((23, 17, 2)) * 300
    else:
        pixels = rng.integers(-5000 if dtype == np.int32 else 0, 40000, (23, 17, 2))
    pixels = pixels.astype(dtype)
    source = stream.open_source(pixels, channels=2)
    got = stream.normalizer(source, normalize)(source.read(0, 23))
    expected = to_float(pixels, Path("x"), normalize).numpy().transpose(1, 2, 0)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_order_statistics_are_exact():
    rng = np.random.default_rng(4)
    values = np.concatenate([rng.standard_normal(300) * 1e6, [-0.5, 0.0, 3.25, -np.inf, np.inf]]).reshape(-1, 1)
    source = stream.open_source(values.reshape(5, 61, 1), channels=1)
    ranks = [0, 1, 150, 303, 304]
    np.testing.assert_array_equal(stream.order_statistics(source, ranks)[0], np.sort(values[:, 0])[ranks])


@pytest.fixture(scope="module")
def unet() -> UNet:
    torch.manual_seed(0)
    return UNet(1, 2, depth=2, base_width=4).eval()  # border 20, stride 4; tile 28 needs 68-px inputs


def _blobs(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = ndi.gaussian_filter(rng.random(shape), 2.0)
    return ((smooth - smooth.min()) / np.ptp(smooth) * 50000 + 1000).astype(np.uint16)


@pytest.mark.parametrize("layout", ["tiled", "striped", "contiguous", "zarr"])
def test_unet_logits_equal_whole_image_for_every_input_layout(tmp_path, unet, layout):
    pixels = _blobs((90, 117))
    if layout == "zarr":
        src: Path = tmp_path / "image.zarr"
        zarr.open_array(str(src), mode="w", shape=pixels.shape, chunks=(32, 32), dtype=pixels.dtype)[:] = pixels
        image = to_float(pixels[..., None], src, "percentile")
    else:
        src = tmp_path / "image.tif"
        options = {"tiled": {"tile": (32, 32), "compression": "zlib"}, "striped": {"rowsperstrip": 7}}
        tifffile.imwrite(src, pixels, **options.get(layout, {}))
        image = load_seg_image(src)
    source = stream.open_source(src, channels=1)
    geom = TileGeometry(90, 117, 28, unet.border, unet.stride)
    bands = list(stream.logit_bands(unet, source, stream.normalizer(source, "percentile"), geom, batch=3))
    source.close()
    assert [y for y, _ in bands] == [0, 28, 56, 84]
    reference = segment.predict_logits(unet, image, 28, batch=3)
    assert torch.equal(torch.cat([b for _, b in bands], 1), reference)


def test_only_the_needed_rows_are_read(unet):
    pixels = _blobs((200, 64))
    reads: list[tuple[int, int]] = []

    class Counting:
        shape, dtype = pixels.shape, pixels.dtype

        def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
            reads.append((index[0].start, index[0].stop))
            return pixels[index]

    source = stream.open_source(Counting(), channels=1)
    geom = TileGeometry(200, 64, 28, unet.border, unet.stride)
    for _ in stream.logit_bands(unet, source, stream.normalizer(source, "dtype"), geom):
        pass
    assert len(reads) == geom.rows
    assert max(stop - start for start, stop in reads) <= geom.input_size  # one band of input rows at a time


def test_band_writer_writes_tiled_bigtiff_and_zarr(tmp_path):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 70000, (70, 45)).astype(np.uint32)
    bands = [image[:13], image[13:14], image[14:50], image[50:]]
    path = stream.write_labels_streaming(tmp_path / "l.tif", bands, image.shape, int(image.max()), tile=16)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled and tif.pages[0].tilewidth == 16
        np.testing.assert_array_equal(tif.asarray(), image)
    small = (image % 1000).astype(np.uint16)
    path = stream.write_labels_streaming(tmp_path / "l.zarr", [small[:40], small[40:]], small.shape, 999, tile=16)
    stored = zarr.open(str(path), mode="r")
    assert stored.dtype == np.uint16 and stored.chunks == (16, 16)
    np.testing.assert_array_equal(stored[:], small)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["l.tif", "l.zarr"]  # no partial files left


def test_failed_writing_leaves_the_earlier_file(tmp_path):
    dst = tmp_path / "labels.tif"
    tifffile.imwrite(dst, np.ones((4, 4), np.uint16))

    def failing():
        yield np.zeros((16, 32), np.int32)
        raise FovealError("stop")

    with pytest.raises(FovealError, match="stop"):
        stream.write_labels_streaming(dst, failing(), (40, 32), 3, tile=16)
    assert [p.name for p in tmp_path.iterdir()] == ["labels.tif"]
    np.testing.assert_array_equal(tifffile.imread(dst), np.ones((4, 4)))


def test_bad_inputs_name_the_problem(tmp_path, unet):
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((3, 40, 40), np.uint8), photometric="minisblack")
    with pytest.raises(FovealError, match="stack cannot be streamed"):
        stream.segment_large(unet, stack, tmp_path / "l.tif", tile=28)
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((40, 40, 3), np.uint8), photometric="rgb")
    with pytest.raises(FovealError, match="3 channel"):
        stream.segment_large(unet, rgb, tmp_path / "l.tif", tile=28, channels=1)
    with pytest.raises(FovealError, match="use a .tif"):
        stream.segment_large(unet, rgb, tmp_path / "l.png", tile=28)
    assert not (tmp_path / "l.tif").exists()


# -- foveal predict -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, unet) -> Path:
    """A segmentation checkpoint of the tiny U-Net, its output bias set so that about half of a blob image is
    foreground (many objects)."""
    root = tmp_path_factory.mktemp("stream_ckpt")
    image = torch.from_numpy(_blobs((96, 96), seed=1).astype(np.float32))[None, None] / 65535
    with torch.no_grad():
        logits = unet(image)
        unet.head.bias[1] -= float((logits[0, 1] - logits[0, 0]).median())
    cfg = SegmentConfig()
    meta = {
        "task": "segment",
        "model": {"arch": "unet", "args": unet.args},
        "config": to_dict(cfg),
        "classes": ["background", "foreground"],
        "input": {"channels": 1, "normalize": "percentile", "masks": "instances"},
    }
    return save_checkpoint(root / "best", model=unet, meta=meta)


def test_predict_streams_a_large_tiff_to_the_in_memory_labels(tmp_path, checkpoint, monkeypatch):
    src = tmp_path / "big.tif"
    tifffile.imwrite(src, _blobs((150, 170), seed=2), tile=(32, 32), compression="zlib", bigtiff=True)
    args = ["predict", str(checkpoint), str(src), "--tile", "28", "--probabilities"]
    assert main([*args, "--out", str(tmp_path / "mem")]) == 0
    reference = tifffile.imread(tmp_path / "mem" / "big_labels.tif")
    monkeypatch.setattr(segment_predict, "STREAM_PIXELS", 100 * 100)
    assert main([*args, "--out", str(tmp_path / "big")]) == 0
    with tifffile.TiffFile(tmp_path / "big" / "big_labels.tif") as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled
        labels = tif.asarray()
    assert reference.max() > 10  # many objects, some cut by the 28-px tiles
    assert labels.dtype == reference.dtype
    np.testing.assert_array_equal(labels, reference)
    assert not (tmp_path / "big" / "big_overlay.png").exists()
    probs = tifffile.imread(tmp_path / "big" / "big_probabilities.tif")
    assert probs.shape == (150, 170, 2) and probs.dtype == np.float32
    # the same logits; the soft-max of a band may round differently from that of the whole image in the last bit
    np.testing.assert_allclose(probs, tifffile.imread(tmp_path / "mem" / "big_probabilities.tif"), rtol=0, atol=1e-6)
    assert (probs[..., 1] > 0.5).mean() > 0.3

    assert main([*args, "--out", str(tmp_path / "z"), "--format", "zarr"]) == 0
    np.testing.assert_array_equal(zarr.open(str(tmp_path / "z" / "big_labels.zarr"), mode="r")[:], reference)
    assert zarr.open(str(tmp_path / "z" / "big_probabilities.zarr"), mode="r").shape == (150, 170, 2)


def test_predict_takes_zarr_inputs_and_refuses_png_or_tta_for_streamed_images(tmp_path, checkpoint, capsys):
    src = tmp_path / "image.zarr"
    pixels = _blobs((80, 90), seed=3)
    zarr.open_array(str(src), mode="w", shape=pixels.shape, chunks=(32, 32), dtype=pixels.dtype)[:] = pixels
    tifffile.imwrite(tmp_path / "same.tif", pixels)
    assert main(["predict", str(checkpoint), str(src), str(tmp_path / "same.tif"), "--out", str(tmp_path / "o")]) == 0
    streamed = tifffile.imread(tmp_path / "o" / "image_labels.tif")
    np.testing.assert_array_equal(streamed, tifffile.imread(tmp_path / "o" / "same_labels.tif"))
    assert main(["predict", str(checkpoint), str(src), "--format", "png", "--out", str(tmp_path / "p")]) == 2
    assert "--format tif or zarr" in capsys.readouterr().err
    assert main(["predict", str(checkpoint), str(src), "--tta", "dihedral", "--out", str(tmp_path / "p")]) == 2
    assert "--tta none" in capsys.readouterr().err


def test_class_map_is_argmax_with_its_ties_and_nans():
    logits = torch.randint(0, 3, (4, 9, 11)).float()  # many ties
    logits[2, 0, :3] = float("nan")
    logits[0, 1, :2] = float("nan")
    assert np.array_equal(stream.class_map(logits), logits.argmax(0).numpy())


def test_the_api_streams_a_large_image_to_the_labels_file_it_is_given(tmp_path, checkpoint, monkeypatch):
    """``foveal.load(seg).predict("huge.tif", out="labels.tif")`` streams as ``foveal predict`` does: the same labels,
    written tile by tile to that file, read back lazily through the result; without ``out`` it says how to stream."""
    import foveal

    src = tmp_path / "big.tif"
    tifffile.imwrite(src, _blobs((150, 170), seed=2), tile=(32, 32), compression="zlib", bigtiff=True)
    model = foveal.load(checkpoint, device="cpu")
    (whole,) = model.predict(src, tile=28)  # in memory: under the streaming threshold
    monkeypatch.setattr(segment_predict, "STREAM_PIXELS", 100 * 100)
    with pytest.raises(FovealError, match="too large to hold in memory: pass out='labels.tif'"):
        model.predict(src, tile=28)
    (streamed,) = model.predict(src, tile=28, out=tmp_path / "labels.tif", probabilities=True)
    assert streamed.path == str(tmp_path / "labels.tif")
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled
    np.testing.assert_array_equal(streamed.labels[:], whole.labels)
    np.testing.assert_array_equal(streamed.labels[40:60, 100:130], whole.labels[40:60, 100:130])  # read in part
    assert streamed.count == whole.count and streamed.foreground == pytest.approx(whole.foreground, abs=1e-6)
    assert streamed.probabilities is not None and streamed.probabilities.shape == (150, 170, 2)
    assert (tmp_path / "labels_probabilities.tif").is_file()
    other = tmp_path / "other.tif"
    other.write_bytes(src.read_bytes())
    folder = model.predict([src, other], tile=28, out=tmp_path / "many")  # a folder for several images
    assert [Path(str(r.path)).name for r in folder] == ["big_labels.tif", "other_labels.tif"]
    with pytest.raises(FovealError, match="one labels file, but 2 images were given"):
        model.predict([src, other], tile=28, out=tmp_path / "one.tif")
