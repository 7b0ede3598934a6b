"""Joint image + box transforms: flips and resizes move boxes with the pixels, determinism by seed, collation."""

from __future__ import annotations

import pytest
import torch

from foveal.data.box_transforms import (
    DetectionSamples,
    DetectionTransform,
    collate_detection,
    drop_empty,
    hflip,
    resize,
    resize_shorter,
    scale_jitter,
)
from foveal.errors import FovealError
from foveal.preprocess import normalize, resize_for_detection


def _scene(h: int = 40, w: int = 60) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A uint8 image with two filled rectangles and their exact (exclusive-end) boxes."""
    boxes = torch.tensor([[3.0, 5.0, 20.0, 17.0], [33.0, 20.0, 60.0, 38.0]])
    image = torch.zeros(1, h, w, dtype=torch.uint8)
    for value, (x1, y1, x2, y2) in zip((100, 240), boxes.int().tolist(), strict=True):
        image[0, y1:y2, x1:x2] = value
    return image, boxes, torch.tensor([0, 2])


def _extent(mask: torch.Tensor) -> list[float]:
    rows, cols = mask.nonzero(as_tuple=True)
    return [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]


def test_flip_moves_boxes_with_the_pixels_and_twice_is_identity() -> None:
    image, boxes, _ = _scene()
    flipped, moved = hflip(image, boxes)
    assert moved.tolist()[0] == _extent(flipped[0] == 100) and moved.tolist()[1] == _extent(flipped[0] == 240)
    back, again = hflip(flipped, moved)
    assert torch.equal(back, image) and torch.equal(again, boxes)


def test_resize_scales_boxes_exactly_and_keeps_them_inside() -> None:
    image, boxes, _ = _scene()
    for scale in (0.5, 1.7, 2.0):
        out, moved = resize(image.float(), boxes, scale)
        assert out.shape[-2:] == (round(40 * scale), round(60 * scale))
        expected = boxes * scale
        expected[:, 0::2] = expected[:, 0::2].clamp(max=out.shape[-1])
        expected[:, 1::2] = expected[:, 1::2].clamp(max=out.shape[-2])
        assert torch.equal(moved, expected)
    # doubling (bilinear, pixel centres at half-integers): the 240 block's half-value edge lands exactly on 2 × its box
    out, moved = resize(image, boxes, 2.0)
    assert out.dtype == torch.uint8 and _extent(out[0] >= 120) == moved[1].tolist()
    # a box reaching past the image is clipped to it: an image of 15 × 15 scaled by 1/3 is 5 × 5, boxes end ≤ 5
    _, clipped = resize(torch.zeros(1, 15, 15), torch.tensor([[0.0, 0.0, 15.0, 16.0]]), 0.34)
    assert clipped.tolist() == [[0.0, 0.0, 5.0, 5.0]]


def test_resize_shorter_is_the_models_resize() -> None:
    image = torch.rand(3, 30, 50) * 255
    boxes = torch.tensor([[2.0, 3.0, 40.0, 29.0]])
    for min_size, max_size in ((60, 200), (60, 80), (20, 20)):
        out, moved, scale = resize_shorter(image, boxes, min_size, max_size)
        reference, ref_scale = resize_for_detection(image, min_size, max_size)
        assert scale == ref_scale and torch.equal(out, reference)
        assert torch.allclose(moved, boxes * scale)
    assert resize_shorter(image, boxes, 60, 200)[0].shape[-2:] == (60, 100)  # shorter side → 60
    assert resize_shorter(image, boxes, 60, 80)[0].shape[-2:] == (48, 80)  # longer side capped at 80
    with pytest.raises(FovealError, match="min_size"):
        resize_shorter(image, boxes, 100, 50)


def test_scale_jitter_is_deterministic_by_seed() -> None:
    image, boxes, _ = _scene()
    sizes = [20, 30, 40, 50]

    def draw(seed: int) -> tuple[int, ...]:
        return tuple(scale_jitter(image, boxes, sizes, 500, torch.Generator().manual_seed(seed))[0].shape)

    assert [draw(s) for s in range(8)] == [draw(s) for s in range(8)]
    assert {draw(s)[-2] for s in range(40)} == set(sizes)  # every size is drawn (shorter side = the drawn size)


def test_drop_empty_keeps_labels_aligned() -> None:
    boxes = torch.tensor([[0.0, 0.0, 5.0, 5.0], [3.0, 3.0, 3.0, 9.0], [1.0, 4.0, 2.0, 4.0], [1.0, 1.0, 2.0, 2.0]])
    kept, labels = drop_empty(boxes, torch.tensor([7, 8, 9, 10]))
    assert kept.tolist() == [[0, 0, 5, 5], [1, 1, 2, 2]] and labels.tolist() == [7, 10]


def test_eval_transform_resizes_and_normalises() -> None:
    image, boxes, labels = _scene()
    t = DetectionTransform(train=False, min_size=80, max_size=1000, mean=(0.5,), std=(0.25,))
    sample = t(image, boxes, labels)
    assert sample.scale == 2.0 and sample.image.shape == (1, 80, 120)
    assert torch.equal(sample.boxes, boxes * 2) and torch.equal(sample.labels, labels)
    upsampled = torch.nn.functional.interpolate(image[None].float(), size=(80, 120), mode="bilinear")[0]
    assert torch.allclose(sample.image, (upsampled / 255 - 0.5) / 0.25, atol=1e-6)
    assert torch.allclose(
        normalize(torch.full((3, 1, 1), 255, dtype=torch.uint8), (0.5,) * 3, (0.5,) * 3), torch.ones(3, 1, 1)
    )


def test_train_transform_is_a_function_of_the_generator_and_moves_ignore_regions() -> None:
    image, boxes, labels = _scene()
    ignore = torch.tensor([[40.0, 0.0, 50.0, 10.0]])
    t = DetectionTransform(train=True, min_size=40, max_size=400, jitter_min_sizes=(20, 40, 60), flip_p=0.5)
    flips = 0
    for seed in range(12):
        a = t(image, boxes, labels, ignore, torch.Generator().manual_seed(seed))
        b = t(image, boxes, labels, ignore, torch.Generator().manual_seed(seed))
        assert torch.equal(a.image, b.image) and torch.equal(a.boxes, b.boxes) and a.scale == b.scale
        w = a.image.shape[-1]
        assert (a.boxes >= 0).all() and (a.boxes[:, 0::2] <= w).all() and (a.boxes[:, 1::2] <= a.image.shape[-2]).all()
        flipped = bool(a.ignore[0, 0] < w / 2)  # the region sits on the right unless flipped
        flips += flipped
        expected = hflip(image, ignore)[1] if flipped else ignore
        assert torch.allclose(a.ignore, expected * a.scale)
    assert 0 < flips < 12


def test_samples_by_seed_leave_the_global_rng_alone_and_collate_pads_to_32() -> None:
    image, boxes, labels = _scene()
    other = torch.zeros(1, 50, 30, dtype=torch.uint8)

    class Data:
        def __len__(self) -> int:
            return 2

        def get(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            if i == 0:
                return image, {"boxes": boxes, "labels": labels}
            return other, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}

    samples = DetectionSamples(Data(), DetectionTransform(train=True, min_size=40, max_size=100))
    state = torch.get_rng_state()
    first, again = samples[(0, 123)], samples[(0, 123)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.image, again.image) and first.image_index == 0
    batch = collate_detection([first, samples[(1, 5)]])
    assert batch.images.shape == (2, 1, 96, 64)  # 40 × 60 and 66.67 → 67 × 40, padded up to multiples of 32
    assert batch.image_sizes == [(40, 60), (67, 40)] and batch.indices == [0, 1]
    assert batch.scales == pytest.approx([1.0, 40 / 30])
    assert batch.targets[1]["boxes"].shape == (0, 4) and batch.targets[0]["ignore"].shape == (0, 4)
    assert torch.equal(batch.images[0, :, :40, :60], first.image) and (batch.images[0, :, 40:] == 0).all()
