"""Joint augmentation of image, label map and weight map for segmentation, above all the elastic deformation.

Reference: O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015, §3.1: shift, rotation, gray-value variation and random elastic deformations — displacement vectors on a
coarse 3 × 3 grid drawn from a Gaussian of 10 px standard deviation, per-pixel displacements by bicubic interpolation.

Conventions used throughout:

- A displacement field has shape (N, H, W, 2); the last axis is (x, y) = (column, row), in pixels. It is a backward
  map: output pixel p takes the input value at p + d(p). Pixel centres sit at integer coordinates.
- The coarse lattice spans the output from corner to corner: lattice point (i, j) of a g × g grid lies on pixel
  (j · (W − 1)/(g − 1), i · (H − 1)/(g − 1)), so for g = 3 at the corners, edge midpoints and centre ("align_corners"
  semantics). The upsampling is bicubic convolution (Keys kernel, a = −0.75, the kernel of torch and OpenCV) with the
  edge lattice values repeated outside, i.e. ``F.interpolate(coarse, mode="bicubic", align_corners=True)``, computed
  as two small matrix products (one weight matrix per axis), which is exact on lattice points that fall on pixels.
- Sampling uses one ``grid_sample`` with pixel-centre normalisation (``align_corners=False``); "reflection" mirrors
  about the image edge (the edge pixel is repeated: … c b a | a b c …), the mirror extrapolation of the paper.
  Coordinates pass through grid_sample's float32 normalisation, exact for power-of-two sizes and within ≈ 1e-4 px
  otherwise.

:func:`augment_batch` folds dihedral flip, rotation, shift and the elastic field into ONE sampling grid per sample,
built by a single batched matrix product, so image, labels and weight map are each resampled once.

Randomness: every sample consumes a fixed number of uniforms (``2 · g² + 7``) from the generator in one
``torch.rand(N, K)`` call, Gaussian values coming from them by the inverse error function. Since CPU generators fill
a tensor element by element, a batch gives the same result as calling sample by sample with the same generator, and
switching one augmentation off leaves the random values of the others unchanged.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from foveal.errors import FovealError

__all__ = ["AugmentConfig", "augment_batch", "elastic_displacement", "warp"]

_MODES = ("bilinear", "bicubic", "nearest")
_PADDINGS = ("reflection", "border", "zeros")
_KEYS_A = -0.75  # bicubic convolution parameter of torch and OpenCV
_N_SCALARS = 7  # rotation, shift x, shift y, dihedral element, gamma, contrast, brightness


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of :func:`augment_batch`; every magnitude is the bound of a uniform draw unless said otherwise.

    Paper values where the paper gives them (elastic σ = 10 px on a 3 × 3 grid, bicubic field); the rest is ours:

    - ``rotate = 45``° together with ``flip`` (the 8 flips/transposes of the square) covers every orientation, as
      microscopy images have none preferred; non-square inputs get only the 4 flips (no transpose).
    - ``shift = 16`` px: one period of the pooling grid of a 4-level U-Net (2⁴ px), so every phase is seen.
    - gray values (intensities taken in [0, 1], as the segmentation datasets deliver them), applied in this order:
      gamma ``x ← sign(x)·|x|^γ`` with ``ln γ ∈ [−gamma, gamma]``; contrast about the sample's mean with factor in
      ``[1 − contrast, 1 + contrast]``; brightness offset in ``[−brightness, brightness]``. 0 disables each.

    Attributes:
        elastic: Apply the elastic deformation.
        elastic_sigma: Standard deviation (px) of the displacement vectors on the coarse grid.
        elastic_grid: Points per side of the coarse grid (≥ 2).
        image_interpolation: "bilinear" or "bicubic" for the image (labels: nearest, weight map: bilinear).
        rotate: Maximum rotation in degrees.
        shift: Maximum translation in pixels, per axis.
        flip: Random element of the dihedral group (horizontal / vertical flip, transpose when square).
        brightness: Maximum additive offset.
        contrast: Maximum relative contrast change (< 1).
        gamma: Maximum |ln γ|.
        padding: Outside the image: "reflection" (mirror), "border" (repeat edge) or "zeros".
    """

    elastic: bool = True
    elastic_sigma: float = 10.0
    elastic_grid: int = 3
    image_interpolation: str = "bilinear"
    rotate: float = 45.0
    shift: float = 16.0
    flip: bool = True
    brightness: float = 0.1
    contrast: float = 0.2
    gamma: float = 0.2
    padding: str = "reflection"

    def __post_init__(self) -> None:
        if self.elastic_grid < 2:
            raise FovealError(f"bad elastic_grid={self.elastic_grid}: the coarse grid needs at least 2 points a side")
        if self.image_interpolation not in ("bilinear", "bicubic"):
            raise FovealError(f"bad image_interpolation={self.image_interpolation!r}: use 'bilinear' or 'bicubic'")
        if self.padding not in _PADDINGS:
            raise FovealError(f"bad padding={self.padding!r}: use one of {', '.join(_PADDINGS)}")
        for name in ("elastic_sigma", "rotate", "shift", "brightness", "contrast", "gamma"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise FovealError(f"bad {name}={value!r}: use a finite number ≥ 0 (0 disables it)")
        if self.contrast >= 1:
            raise FovealError(f"bad contrast={self.contrast!r}: use a value in [0, 1) (factor 1 ± contrast)")

    @property
    def geometric(self) -> bool:
        """Whether any geometric transform is on (if not, nothing is resampled)."""
        return (self.elastic and self.elastic_sigma > 0) or self.rotate > 0 or self.shift > 0 or self.flip


def elastic_displacement(
    n: int,
    size: tuple[int, int],
    *,
    sigma: float = 10.0,
    grid: int = 3,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The paper's random elastic displacement field: Gaussian vectors on a coarse grid, upsampled bicubically.

    Args:
        n: Number of fields.
        size: (H, W) of the output.
        sigma: Standard deviation of each displacement component on the lattice, in pixels.
        grid: Points per side of the lattice (spanning the image corner to corner).
        generator: Source of randomness (its device is where the values are drawn); the default CPU one if None.
        device: Device of the result (default: the generator's, i.e. CPU without one).

    Returns:
        Float32 tensor (n, H, W, 2), components (x, y) in pixels; equal to the lattice values on lattice pixels.
    """
    _check_size(size, "size")
    if n < 0 or grid < 2 or not (math.isfinite(sigma) and sigma >= 0):
        raise FovealError(f"bad elastic field (n={n}, grid={grid}, sigma={sigma}): need n ≥ 0, grid ≥ 2, sigma ≥ 0")
    u = _uniforms(n, 2 * grid * grid, generator)
    coarse = (_gaussian(u) * sigma).to(device=device, dtype=torch.float32).view(n, grid, grid, 2)
    wy = _cubic_weights(size[0], grid, coarse.device)
    wx = _cubic_weights(size[1], grid, coarse.device)
    return _separable(wy, coarse, wx)


def warp(x: Tensor, displacement: Tensor, *, mode: str = "bilinear", padding: str = "reflection") -> Tensor:
    """Resample ``x`` at p + displacement(p) with one ``grid_sample``.

    Args:
        x: (N, C, H, W) tensor, any real or integer dtype. Integers are sampled as floats and converted back:
            "nearest" returns exact input values, the others round (bicubic also clips to the dtype's range).
        displacement: (N, H, W, 2) in pixels, components (x, y), e.g. from :func:`elastic_displacement`.
        mode: "bilinear", "bicubic" or "nearest" (use nearest for labels).
        padding: "reflection" (mirror about the edge), "border" or "zeros".

    Returns:
        Tensor of the shape and dtype of ``x``.
    """
    _check_mode(mode, padding)
    if x.dim() != 4 or displacement.shape != (x.shape[0], x.shape[2], x.shape[3], 2):
        raise FovealError(
            f"warp needs x (N, C, H, W) and displacement (N, H, W, 2) of the same N, H, W; got {tuple(x.shape)} "
            f"and {tuple(displacement.shape)}"
        )
    h, w = x.shape[-2:]
    dtype = x.dtype if x.is_floating_point() else torch.float32
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=dtype, device=x.device)
    grid = torch.addcmul(_identity_grid(h, w, dtype, x.device), displacement.to(dtype), scale)
    return _sample(x, grid, mode, padding)


def augment_batch(
    image: Tensor,
    labels: Tensor,
    weight: Tensor | None,
    cfg: AugmentConfig,
    generator: torch.Generator,
    *,
    out_size: tuple[int, int] | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Randomly flip, rotate, shift and elastically deform a batch (one resampling), then vary its gray values.

    Every sample gets its own draw. Source of output pixel p (centred coordinates q = p − output centre):
    ``M · q + input centre + shift + elastic(p)`` with ``M`` = rotation · dihedral element. The elastic lattice spans
    the output. Image, labels and weight map share this map; labels are sampled nearest (exact label values), the
    weight map bilinearly, the image as ``cfg.image_interpolation`` says (bicubic may overshoot the input range).
    Gray-value changes touch the image only. With no geometric transform on and no ``out_size``, nothing is
    resampled and the geometry is exactly the identity.

    Args:
        image: (N, C, H, W) floating point, intensities in [0, 1] for the gray-value ranges to mean what they say.
        labels: (N, H, W) integer label map (dtype preserved).
        weight: (N, H, W) floating point weight map, or None.
        cfg: The augmentation parameters.
        generator: Source of all randomness; the same state gives the same output.
        out_size: (h, w) of the outputs, a window centred on the input's centre (default: the input size). Larger
            than the input, the surroundings are filled by ``cfg.padding`` (mirror) — e.g. the bigger input tile of a
            valid-convolution U-Net, whose loss then takes the centre crop of labels and weight.

    Returns:
        (image, labels, weight) of shapes (N, C, h, w), (N, h, w), (N, h, w) or None, in the input dtypes.
    """
    n, _, h_in, w_in = _check_batch(image, labels, weight)
    h, w = (h_in, w_in) if out_size is None else _check_size(out_size, "out_size")
    g = cfg.elastic_grid
    u = _uniforms(n, 2 * g * g + _N_SCALARS, generator)
    if cfg.geometric or (h, w) != (h_in, w_in):
        grid = _sampling_grid(u, cfg, (h_in, w_in), (h, w), image.device, image.dtype)
        image = _sample(image, grid, cfg.image_interpolation, cfg.padding)
        weight = None if weight is None else _sample(weight[:, None], grid, "bilinear", cfg.padding)[:, 0]
        labels = _sample(labels[:, None], grid, "nearest", cfg.padding)[:, 0]
    else:
        image, labels = image.clone(), labels.clone()
        weight = None if weight is None else weight.clone()
    return _gray_values(image, u[:, 2 * g * g + 4 :], cfg), labels, weight


# --- randomness -----------------------------------------------------------------------------------------------------


def _uniforms(n: int, k: int, generator: torch.Generator | None) -> Tensor:
    """(n, k) float64 uniforms in (0, 1), drawn row by row on the generator's device."""
    device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(n, k, dtype=torch.float64, generator=generator, device=device)
    return u.clamp_(2.0**-53, 1 - 2.0**-53)


def _gaussian(u: Tensor) -> Tensor:
    """Standard normal values from uniforms (inverse CDF)."""
    return torch.erfinv(u * 2 - 1) * math.sqrt(2.0)


def _symmetric(u: Tensor, bound: float) -> Tensor:
    """Uniform in [−bound, bound] from uniforms in (0, 1)."""
    return (u * 2 - 1) * bound


# --- geometry -------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _cubic_weights(n_out: int, grid: int, device: torch.device) -> Tensor:
    """(n_out, grid) float32 bicubic-convolution weights, lattice → pixels of one axis (cached; never written to)."""
    pos = torch.arange(n_out, dtype=torch.float64) * ((grid - 1) / max(n_out - 1, 1))
    base = pos.floor()
    frac = pos - base
    offsets = torch.arange(-1, 3, dtype=torch.float64)
    dist = (frac[:, None] - offsets).abs()  # distance to the 4 neighbours base − 1 … base + 2
    a = _KEYS_A
    near = ((a + 2) * dist - (a + 3)) * dist * dist + 1
    far = ((a * dist - 5 * a) * dist + 8 * a) * dist - 4 * a
    taps = torch.where(dist <= 1, near, far)
    index = (base[:, None] + offsets).clamp(0, grid - 1).long()  # edge values repeated outside the lattice
    weights = torch.zeros(n_out, grid, dtype=torch.float64).scatter_add_(1, index, taps)
    return weights.to(device=device, dtype=torch.float32)


def _separable(wy: Tensor, coarse: Tensor, wx: Tensor) -> Tensor:
    """``out[n, y, x, c] = Σ_ij wy[y, i] · coarse[n, i, j, c] · wx[x, j]`` as two matrix products → (N, H, W, 2)."""
    n, k = coarse.shape[:2]
    cols = torch.matmul(wx, coarse)  # (N, Ki, W, 2)
    out = torch.matmul(wy, cols.reshape(n, k, -1))  # (N, H, W·2)
    return out.view(n, wy.shape[0], wx.shape[0], 2)


@functools.lru_cache(maxsize=8)
def _identity_grid(h: int, w: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(H, W, 2) grid_sample coordinates (align_corners=False) of the pixel centres; cached, never written to."""
    xs, ys = (torch.arange(n, dtype=torch.float64) * (2.0 / n) + (1.0 / n - 1) for n in (w, h))
    grid = torch.stack([xs.expand(h, w), ys[:, None].expand(h, w)], -1)
    return grid.to(device=device, dtype=dtype)


def _dihedral(u: Tensor, allow_transpose: bool) -> Tensor:
    """(N, 2, 2) flip/transpose matrices: element floor(8u) of the dihedral group, or of its 4 flips."""
    k = (u * 8).floor().clamp(max=7).long()
    if not allow_transpose:
        k = k % 4
    sx = 1 - 2 * (k % 2).to(u.dtype)
    sy = 1 - 2 * (k // 2 % 2).to(u.dtype)
    swap = (k >= 4).to(u.dtype)
    zero = torch.zeros_like(u)
    perm = torch.stack([1 - swap, swap, swap, 1 - swap], -1).view(-1, 2, 2)
    return torch.stack([sx, zero, zero, sy], -1).view(-1, 2, 2) @ perm


def _sampling_grid(
    u: Tensor,
    cfg: AugmentConfig,
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """(N, h, w, 2) grid_sample grid of dihedral · rotation + shift + elastic field, from one matrix product.

    The field is ``Σ_ij Ay[y, i] · G[n, i, j] · Ax[x, j]``: the columns of ``Ay`` / ``Ax`` are the lattice weights,
    then the centred pixel coordinate, then 1; ``G`` holds the (normalised) lattice vectors, the linear part and the
    offset, so the affine map and the bicubic field come out of the same product.
    """
    n = u.shape[0]
    g = cfg.elastic_grid
    (h_in, w_in), (h, w) = in_size, out_size
    elastic = cfg.elastic and cfg.elastic_sigma > 0
    e = g if elastic else 0
    scale = torch.tensor([2.0 / w_in, 2.0 / h_in], dtype=torch.float64, device=u.device)

    theta = _symmetric(u[:, 2 * g * g], math.radians(cfg.rotate))
    cos, sin = torch.cos(theta), torch.sin(theta)
    rotation = torch.stack([cos, -sin, sin, cos], -1).view(n, 2, 2)
    linear = rotation
    if cfg.flip:
        linear = rotation @ _dihedral(u[:, 2 * g * g + 3], h_in == w_in and h == w)
    shift = _symmetric(u[:, 2 * g * g + 1 : 2 * g * g + 3], cfg.shift)
    centre = torch.tensor([(w_in - 1) / 2, (h_in - 1) / 2], dtype=torch.float64, device=u.device)
    offset = (centre + shift) * scale + (scale / 2 - 1)  # pixel → normalised: x · 2/W + 1/W − 1

    big = torch.zeros(n, e + 2, e + 2, 2, dtype=torch.float64, device=u.device)
    if elastic:
        coarse = _gaussian(u[:, : 2 * g * g]).view(n, g, g, 2) * cfg.elastic_sigma
        big[:, :g, :g] = coarse * scale
    big[:, e, e + 1] = linear[:, :, 1] * scale  # row coordinate × column 1 of M
    big[:, e + 1, e] = linear[:, :, 0] * scale  # column coordinate × column 0 of M
    big[:, e + 1, e + 1] = offset
    big = big.to(device=device, dtype=torch.float32)

    ay = _affine_columns(h, g if elastic else 0, device)
    ax = _affine_columns(w, g if elastic else 0, device)
    grid = _separable(ay, big, ax)
    return grid if dtype == torch.float32 else grid.to(dtype)


@functools.lru_cache(maxsize=16)
def _affine_columns(size: int, grid: int, device: torch.device) -> Tensor:
    """(size, grid + 2) float32: lattice weights (if grid > 0), centred pixel coordinate, 1 (cached, never written)."""
    coord = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    cols = [coord[:, None], torch.ones(size, 1, device=device)]
    if grid:
        cols.insert(0, _cubic_weights(size, grid, device))
    return torch.cat(cols, 1)


# --- sampling and gray values ---------------------------------------------------------------------------------------


def _sample(x: Tensor, grid: Tensor, mode: str, padding: str) -> Tensor:
    """One grid_sample of (N, C, H, W) ``x`` on ``grid`` (N, h, w, 2); integer dtypes go through float and back."""
    if x.is_floating_point():
        return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode=padding, align_corners=False)
    exact_in_float32 = x.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16) or x.numel() == 0
    if not exact_in_float32:
        low, high = torch.aminmax(x)  # one pass
        exact_in_float32 = int(low) >= -(2**24) and int(high) <= 2**24
    work = torch.float32 if exact_in_float32 else torch.float64
    out = F.grid_sample(x.to(work), grid.to(work), mode=mode, padding_mode=padding, align_corners=False)
    if x.dtype == torch.bool:
        return out > 0.5
    if mode != "nearest":
        out = out.round_()
    if mode == "bicubic":  # the only mode that can overshoot the input range
        info = torch.iinfo(x.dtype)
        out = out.clamp_(info.min, info.max)
    return out.to(x.dtype)


def _gray_values(image: Tensor, u: Tensor, cfg: AugmentConfig) -> Tensor:
    """Gamma, contrast about the mean, brightness; ``u`` (N, 3) uniforms in that order."""
    shape = (-1, 1, 1, 1)
    if cfg.gamma > 0:
        gamma = torch.exp(_symmetric(u[:, 0], cfg.gamma)).to(image).view(shape)
        image = image.abs().pow(gamma).copysign(image)
    if cfg.contrast > 0:
        factor = (1 + _symmetric(u[:, 1], cfg.contrast)).to(image).view(shape)
        mean = image.mean(dim=(1, 2, 3), keepdim=True)
        image = (image - mean) * factor + mean
    if cfg.brightness > 0:
        image = image + _symmetric(u[:, 2], cfg.brightness).to(image).view(shape)
    return image


# --- checks ---------------------------------------------------------------------------------------------------------


def _check_size(size: tuple[int, int], name: str) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise FovealError(f"bad {name}={size!r}: give (height, width), two positive integers")
    return int(size[0]), int(size[1])


def _check_mode(mode: str, padding: str) -> None:
    if mode not in _MODES:
        raise FovealError(f"bad mode={mode!r}: use one of {', '.join(_MODES)} (nearest for labels)")
    if padding not in _PADDINGS:
        raise FovealError(f"bad padding={padding!r}: use one of {', '.join(_PADDINGS)}")


def _check_batch(image: Tensor, labels: Tensor, weight: Tensor | None) -> tuple[int, int, int, int]:
    if image.dim() != 4 or not image.is_floating_point():
        raise FovealError(
            f"augment_batch needs a floating-point image batch (N, C, H, W), got {image.dtype} {tuple(image.shape)} "
            "(convert uint8 images with image.float() / 255)"
        )
    n, c, h, w = image.shape
    if labels.shape != (n, h, w) or labels.is_floating_point() or labels.is_complex():
        raise FovealError(
            f"labels must be an integer tensor (N, H, W) = {(n, h, w)}, got {labels.dtype} {tuple(labels.shape)}"
        )
    if weight is not None and (weight.shape != (n, h, w) or not weight.is_floating_point()):
        raise FovealError(
            f"weight must be a floating-point tensor (N, H, W) = {(n, h, w)} or None, got "
            f"{weight.dtype} {tuple(weight.shape)}"
        )
    return n, c, h, w
