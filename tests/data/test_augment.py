"""Joint image / label / weight augmentation and the paper's elastic field (foveal.data.augment)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from foveal.data.augment import AugmentConfig, augment_batch, elastic_displacement, warp
from foveal.errors import FovealError

NO_GRAY = {"brightness": 0.0, "contrast": 0.0, "gamma": 0.0}
IDENTITY = AugmentConfig(elastic_sigma=0.0, rotate=0.0, shift=0.0, flip=False, **NO_GRAY)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(n: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    image = torch.rand(n, 2, h, w, generator=g)
    labels = (image[:, 0] * 5).long()
    weight = torch.rand(n, h, w, generator=g) + 1
    return image, labels, weight


def _lattice(field: torch.Tensor, grid: int) -> torch.Tensor:
    """Field values on the lattice pixels (sizes with (size − 1) divisible by grid − 1)."""
    sy = (field.shape[1] - 1) // (grid - 1)
    sx = (field.shape[2] - 1) // (grid - 1)
    return field[:, ::sy, ::sx]


# --- the elastic field --------------------------------------------------------------------------------------------


def test_lattice_values_are_gaussian_with_sigma() -> None:
    sigma = 10.0
    field = elastic_displacement(3000, (33, 33), sigma=sigma, generator=_gen(0))
    coarse = _lattice(field, 3)  # (3000, 3, 3, 2)
    assert coarse.shape == (3000, 3, 3, 2)
    values = coarse.reshape(-1).double()
    m = values.numel()  # 54 000 samples: standard error of the mean σ/√m ≈ 0.043, of the std ≈ σ/√(2m) ≈ 0.03
    assert abs(values.mean().item()) < 4 * sigma / m**0.5
    assert abs(values.std().item() / sigma - 1) < 0.015
    # components and neighbouring lattice points are independent
    flat = coarse.reshape(3000, 18).double()
    corr = torch.corrcoef(flat.T)
    off_diagonal = corr - torch.eye(18, dtype=torch.float64)
    assert off_diagonal.abs().max() < 0.08


@pytest.mark.parametrize(("size", "grid"), [((33, 33), 3), ((41, 61), 3), ((37, 49), 5), ((20, 30), 4)])
def test_field_is_bicubic_upsampling_of_the_lattice(size: tuple[int, int], grid: int) -> None:
    g = _gen(1)
    field = elastic_displacement(4, size, sigma=10.0, grid=grid, generator=g)
    # the same draws, as the lattice the field was built from
    coarse = elastic_displacement(4, (grid, grid), sigma=10.0, grid=grid, generator=_gen(1))
    reference = F.interpolate(coarse.permute(0, 3, 1, 2), size=size, mode="bicubic", align_corners=True)
    torch.testing.assert_close(field, reference.permute(0, 2, 3, 1), atol=1e-4, rtol=0)
    if (size[0] - 1) % (grid - 1) == 0 and (size[1] - 1) % (grid - 1) == 0:
        torch.testing.assert_close(_lattice(field, grid), coarse, atol=1e-5, rtol=0)


def test_field_between_lattice_points_is_smooth_and_bounded() -> None:
    field = elastic_displacement(200, (65, 65), sigma=10.0, generator=_gen(2))
    peak = _lattice(field, 3).abs().amax(dim=(1, 2, 3))  # largest lattice value per field
    # Keys kernel (a = −0.75): Σ|weights| ≤ 1.375 per axis and Σ|weight slopes| ≤ 3 per lattice spacing (both at
    # the half-way point), so |d| ≤ 1.375² · peak and a one-pixel step changes d by ≤ 3 · 1.375 · peak / spacing
    assert (field.abs().amax(dim=(1, 2, 3)) <= 1.375**2 * peak + 1e-4).all()
    spacing = 32.0
    step_x = (field[:, :, 1:] - field[:, :, :-1]).abs().amax(dim=(1, 2, 3))
    step_y = (field[:, 1:] - field[:, :-1]).abs().amax(dim=(1, 2, 3))
    bound = 3 * 1.375 * peak / spacing + 1e-4
    assert (step_x <= bound).all() and (step_y <= bound).all()
    # and it is not flat: lattice values do reach the field
    assert (field.abs().amax(dim=(1, 2, 3)) >= peak - 1e-4).all()


def test_field_is_deterministic_and_sample_by_sample() -> None:
    batch = elastic_displacement(3, (16, 24), generator=_gen(3))
    g = _gen(3)
    single = torch.cat([elastic_displacement(1, (16, 24), generator=g) for _ in range(3)])
    assert torch.equal(batch, single)
    assert batch.dtype == torch.float32 and batch.shape == (3, 16, 24, 2)
    assert not torch.equal(batch, elastic_displacement(3, (16, 24), generator=_gen(4)))
    assert torch.equal(elastic_displacement(2, (9, 9), sigma=0.0, generator=_gen(3)), torch.zeros(2, 9, 9, 2))


# --- warp -----------------------------------------------------------------------------------------------------------


def test_zero_displacement_is_identity() -> None:
    image, labels, _ = _batch(2, 32, 64)
    zero = torch.zeros(2, 32, 64, 2)
    assert torch.equal(warp(image, zero), image)  # power-of-two sizes: exact
    assert torch.equal(warp(labels[:, None], zero, mode="nearest")[:, 0], labels)
    odd_image, odd_labels, _ = _batch(2, 45, 37)
    odd_zero = torch.zeros(2, 45, 37, 2)
    torch.testing.assert_close(warp(odd_image, odd_zero), odd_image, atol=1e-4, rtol=0)
    assert torch.equal(warp(odd_labels[:, None], odd_zero, mode="nearest")[:, 0], odd_labels)


def test_warp_shifts_by_the_displacement_in_pixels() -> None:
    x = torch.arange(16.0).expand(1, 1, 8, 16).clone()
    shift = torch.zeros(1, 8, 16, 2)
    shift[..., 0] = 2.5  # sample 2.5 px to the right
    out = warp(x, shift, padding="border")
    torch.testing.assert_close(out[0, 0, :, :10], (torch.arange(10.0) + 2.5).expand(8, 10))
    assert (out[0, 0, :, -1] == 15).all()  # border: the last column repeats


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64, torch.bool])
def test_warp_nearest_keeps_label_values_and_dtype(dtype: torch.dtype) -> None:
    values = torch.tensor([0, 1]) if dtype == torch.bool else torch.tensor([0, 3, 7, 100])
    pick = torch.randint(0, len(values), (2, 1, 24, 24), generator=_gen(5))
    x = values[pick].to(dtype)
    out = warp(x, elastic_displacement(2, (24, 24), sigma=4.0, generator=_gen(6)), mode="nearest")
    assert out.dtype == dtype and out.shape == x.shape
    assert set(out.unique().tolist()) <= set(values.to(dtype).tolist())


def test_warp_large_int64_labels_are_exact() -> None:
    x = torch.tensor([2**40 + 1, 2**40 + 2]).repeat(1, 1, 8, 4)
    out = warp(x, elastic_displacement(1, (8, 8), sigma=3.0, generator=_gen(7)), mode="nearest")
    assert set(out.unique().tolist()) <= {2**40 + 1, 2**40 + 2}


def test_warp_integer_bilinear_rounds_back() -> None:
    x = torch.tensor([[0, 10, 20, 30]], dtype=torch.uint8).expand(1, 1, 4, 4).clone()
    half = torch.zeros(1, 4, 4, 2)
    half[..., 0] = 0.5
    out = warp(x, half, padding="border")
    assert out.dtype == torch.uint8
    assert out[0, 0, 0].tolist() == [5, 15, 25, 30]


# --- augment_batch --------------------------------------------------------------------------------------------------


def test_identity_config_is_exact() -> None:
    image, labels, weight = _batch(2, 30, 45)
    out_image, out_labels, out_weight = augment_batch(image, labels, weight, IDENTITY, _gen(0))
    assert torch.equal(out_image, image) and torch.equal(out_labels, labels) and torch.equal(out_weight, weight)
    assert out_image.data_ptr() != image.data_ptr()
    # through the resampling path (out_size given), exact for power-of-two sizes
    image, labels, weight = _batch(2, 32, 64)
    out = augment_batch(image, labels, weight, IDENTITY, _gen(0), out_size=(32, 64))
    assert torch.equal(out[0], image) and torch.equal(out[1], labels) and torch.equal(out[2], weight)


def _ramps(n: int, h: int, w: int, labels: torch.Tensor) -> torch.Tensor:
    """Image whose channels are the x coordinate, the y coordinate and the label map."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([xs.expand(n, h, w), ys.expand(n, h, w), labels.float()], 1)


@pytest.mark.parametrize("size", [(48, 48), (40, 56)])
def test_image_labels_weight_get_the_same_deformation(size: tuple[int, int]) -> None:
    n, (h, w) = 6, size
    labels = torch.randint(0, 9, (n, h, w), generator=_gen(8))
    image = _ramps(n, h, w, labels)
    cfg = AugmentConfig(rotate=30.0, shift=6.0, elastic_sigma=4.0, **NO_GRAY)
    out_image, out_labels, out_weight = augment_batch(image, labels, labels.float(), cfg, _gen(9))
    assert out_weight is not None
    # the weight map is the label channel of the image, sampled bilinearly on the same grid
    assert torch.equal(out_weight, out_image[:, 2])
    # the ramps give each output pixel's (mirrored) source coordinate; the label found there is the output label
    src_x, src_y = out_image[:, 0], out_image[:, 1]
    unambiguous = ((src_x % 1 - 0.5).abs() > 1e-3) & ((src_y % 1 - 0.5).abs() > 1e-3)
    sx = src_x.round().long().clamp(0, w - 1)
    sy = src_y.round().long().clamp(0, h - 1)
    expected = labels[torch.arange(n)[:, None, None], sy, sx]
    assert unambiguous.float().mean() > 0.99
    assert torch.equal(out_labels[unambiguous], expected[unambiguous])
    # something did move
    assert (out_labels != labels).float().mean() > 0.2


def test_rotation_and_shift_are_a_rigid_motion_within_bounds() -> None:
    n, size, rotate, shift = 32, 48, 20.0, 3.0
    labels = torch.zeros(n, size, size, dtype=torch.long)
    cfg = AugmentConfig(elastic=False, rotate=rotate, shift=shift, flip=False, **NO_GRAY)
    out, _, _ = augment_batch(_ramps(n, size, size, labels), labels, None, cfg, _gen(17))
    inner = slice(12, 36)  # its sources stay inside the image, away from the mirror
    src = torch.stack([out[:, 0, inner, inner], out[:, 1, inner, inner]], -1).reshape(n, -1, 2).double()
    q = _ramps(1, size, size, labels[:1])[0, :2, inner, inner].permute(1, 2, 0).reshape(-1, 2).double()
    q = q - (size - 1) / 2
    design = torch.cat([q, torch.ones(len(q), 1, dtype=torch.float64)], 1)  # src = [q, 1] @ [Mᵀ; c + t]
    fit = torch.linalg.lstsq(design.expand(n, -1, -1), src).solution
    m, t = fit[:, :2].transpose(1, 2), fit[:, 2] - (size - 1) / 2
    assert (design @ fit - src).abs().max() < 1e-3  # exactly affine
    torch.testing.assert_close(
        m @ m.transpose(1, 2), torch.eye(2, dtype=torch.float64).expand(n, 2, 2), atol=1e-5, rtol=0
    )
    assert (torch.linalg.det(m) > 0).all()  # a rotation, no reflection
    angle = torch.rad2deg(torch.atan2(m[:, 1, 0], m[:, 0, 0]))
    assert angle.abs().max() <= rotate + 1e-3 and angle.max() > rotate / 2 and angle.min() < -rotate / 2
    assert t.abs().max() <= shift + 1e-3 and t.abs().max() > shift / 2


def test_elastic_displacement_in_pixels_in_augment() -> None:
    n, size, sigma = 300, 65, 5.0
    labels = torch.zeros(n, size, size, dtype=torch.long)
    cfg = AugmentConfig(elastic_sigma=sigma, rotate=0.0, shift=0.0, flip=False, **NO_GRAY)
    out, _, _ = augment_batch(_ramps(n, size, size, labels), labels, None, cfg, _gen(10))
    centre = size // 2  # a lattice point: its displacement is one Gaussian draw per component
    d = torch.stack([out[:, 0, centre, centre], out[:, 1, centre, centre]], 1) - centre
    assert abs(d.std().item() / sigma - 1) < 0.12  # 600 draws: standard error ≈ 3 %
    assert abs(d.mean().item()) < 4 * sigma / 600**0.5


def test_augment_elastic_equals_warp_of_elastic_displacement() -> None:
    image, labels, weight = _batch(1, 40, 40)
    cfg = AugmentConfig(elastic_sigma=10.0, rotate=0.0, shift=0.0, flip=False, **NO_GRAY)
    out_image, out_labels, out_weight = augment_batch(image, labels, weight, cfg, _gen(11))
    field = elastic_displacement(1, (40, 40), sigma=10.0, generator=_gen(11))
    torch.testing.assert_close(out_image, warp(image, field), atol=1e-4, rtol=0)
    torch.testing.assert_close(out_weight, warp(weight[:, None], field)[:, 0], atol=1e-4, rtol=0)
    same = (out_labels == warp(labels[:, None], field, mode="nearest")[:, 0]).float().mean()
    assert same > 0.999  # only exact rounding ties may differ


def test_batch_equals_sample_by_sample() -> None:
    image, labels, weight = _batch(3, 32, 32)
    cfg = AugmentConfig()
    batch = augment_batch(image, labels, weight, cfg, _gen(12))
    g = _gen(12)
    single = [augment_batch(image[i : i + 1], labels[i : i + 1], weight[i : i + 1], cfg, g) for i in range(3)]
    torch.testing.assert_close(batch[0], torch.cat([s[0] for s in single]), atol=1e-5, rtol=0)
    assert torch.equal(batch[1], torch.cat([s[1] for s in single]))
    torch.testing.assert_close(batch[2], torch.cat([s[2] for s in single if s[2] is not None]), atol=1e-5, rtol=0)
    again = augment_batch(image, labels, weight, cfg, _gen(12))
    assert all(torch.equal(a, b) for a, b in zip(batch, again, strict=True) if a is not None and b is not None)
    other = augment_batch(image, labels, weight, cfg, _gen(13))
    assert not torch.equal(batch[0], other[0])


@pytest.mark.parametrize("label_dtype", [torch.int64, torch.uint8, torch.int32])
@pytest.mark.parametrize("image_dtype", [torch.float32, torch.float64])
def test_dtypes_and_shapes_preserved(image_dtype: torch.dtype, label_dtype: torch.dtype) -> None:
    image, labels, weight = _batch(2, 24, 20)
    cfg = AugmentConfig(image_interpolation="bicubic")
    out = augment_batch(image.to(image_dtype), labels.to(label_dtype), weight, cfg, _gen(14))
    assert out[0].dtype == image_dtype and out[0].shape == (2, 2, 24, 20)
    assert out[1].dtype == label_dtype and out[1].shape == (2, 24, 20)
    assert out[2] is not None and out[2].dtype == torch.float32 and out[2].shape == (2, 24, 20)
    assert set(out[1].unique().tolist()) <= set(labels.unique().tolist())
    image_only, labels_only, none = augment_batch(image, labels, None, cfg, _gen(14), out_size=(16, 30))
    assert image_only.shape == (2, 2, 16, 30) and labels_only.shape == (2, 16, 30) and none is None


def _dihedral_images(x: torch.Tensor, square: bool) -> list[torch.Tensor]:
    flips = [x, x.flip(-1), x.flip(-2), x.flip(-1, -2)]
    return flips + [f.transpose(-1, -2) for f in flips] if square else flips


@pytest.mark.parametrize(("size", "elements"), [((16, 16), 8), ((16, 32), 4)])
def test_flips_are_dihedral_and_keep_alignment(size: tuple[int, int], elements: int) -> None:
    n = 64
    image, labels, weight = _batch(n, *size)
    cfg = dataclasses.replace(IDENTITY, flip=True)
    out_image, out_labels, out_weight = augment_batch(image, labels, weight, cfg, _gen(15))
    seen = set()
    for i in range(n):
        candidates = _dihedral_images(image[i], size[0] == size[1])
        match = [k for k, c in enumerate(candidates) if torch.equal(out_image[i], c)]
        assert len(match) == 1
        k = match[0]
        seen.add(k)
        assert torch.equal(out_labels[i], _dihedral_images(labels[i], size[0] == size[1])[k])
        assert out_weight is not None and torch.equal(out_weight[i], _dihedral_images(weight[i], True)[k])
    assert len(seen) == elements


def test_out_size_crops_or_mirrors_around_the_centre() -> None:
    image, labels, weight = _batch(2, 16, 16)
    crop = augment_batch(image, labels, weight, IDENTITY, _gen(0), out_size=(8, 12))
    assert torch.equal(crop[0], image[..., 4:12, 2:14]) and torch.equal(crop[1], labels[..., 4:12, 2:14])
    big = augment_batch(image, labels, weight, IDENTITY, _gen(0), out_size=(24, 20))
    padded = np.pad(labels.numpy(), ((0, 0), (4, 4), (2, 2)), mode="symmetric")
    assert np.array_equal(big[1].numpy(), padded)
    padded_image = np.pad(image.numpy(), ((0, 0), (0, 0), (4, 4), (2, 2)), mode="symmetric")
    np.testing.assert_allclose(big[0].numpy(), padded_image, atol=1e-6)


def test_gray_values_change_the_image_only() -> None:
    image, labels, weight = _batch(8, 16, 16)
    geometry_off = dataclasses.replace(IDENTITY, brightness=0.1)
    out_image, out_labels, out_weight = augment_batch(image, labels, weight, geometry_off, _gen(16))
    assert torch.equal(out_labels, labels) and torch.equal(out_weight, weight)
    offset = out_image - image
    per_sample = offset.mean(dim=(1, 2, 3))
    torch.testing.assert_close(offset, per_sample.view(-1, 1, 1, 1).expand_as(offset), atol=1e-6, rtol=0)
    assert (per_sample.abs() <= 0.1).all() and per_sample.std() > 0.01

    contrast = augment_batch(image, labels, weight, dataclasses.replace(IDENTITY, contrast=0.3), _gen(16))[0]
    torch.testing.assert_close(contrast.mean(dim=(1, 2, 3)), image.mean(dim=(1, 2, 3)), atol=1e-5, rtol=0)
    ratio = contrast.std(dim=(1, 2, 3)) / image.std(dim=(1, 2, 3))
    assert ((ratio >= 0.7 - 1e-5) & (ratio <= 1.3 + 1e-5)).all()

    gamma = augment_batch(image, labels, weight, dataclasses.replace(IDENTITY, gamma=0.5), _gen(16))[0]
    assert gamma.min() >= 0 and gamma.max() <= 1  # [0, 1] maps onto itself
    order_in = image.flatten(1).argsort(dim=1)
    sorted_out = gamma.flatten(1).gather(1, order_in)
    assert (sorted_out[:, 1:] >= sorted_out[:, :-1]).all()  # monotone


def test_bad_options_raise_foveal_error() -> None:
    with pytest.raises(FovealError, match="elastic_grid"):
        AugmentConfig(elastic_grid=1)
    with pytest.raises(FovealError, match="image_interpolation"):
        AugmentConfig(image_interpolation="nearest")
    with pytest.raises(FovealError, match="rotate"):
        AugmentConfig(rotate=-1.0)
    with pytest.raises(FovealError, match="contrast"):
        AugmentConfig(contrast=1.0)
    with pytest.raises(FovealError, match="mode"):
        warp(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, 2), mode="cubic")
    with pytest.raises(FovealError, match="displacement"):
        warp(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 5, 2))
    with pytest.raises(FovealError, match="size"):
        elastic_displacement(1, (0, 4))
    image, labels, weight = _batch(1, 8, 8)
    with pytest.raises(FovealError, match="floating-point image"):
        augment_batch(image.to(torch.uint8), labels, weight, AugmentConfig(), _gen(0))
    with pytest.raises(FovealError, match="labels"):
        augment_batch(image, labels[:, :4], weight, AugmentConfig(), _gen(0))
    with pytest.raises(FovealError, match="out_size"):
        augment_batch(image, labels, weight, AugmentConfig(), _gen(0), out_size=(8, -1))
