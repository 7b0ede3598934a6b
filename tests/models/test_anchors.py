"""Anchors (golden values, torchvision order), box coding round trip, matcher cases."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TvBoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator as TvAnchorGenerator
from torchvision.models.detection.image_list import ImageList

from foveal.errors import FovealError
from foveal.models.anchors import AnchorGenerator, BoxCoder, Matcher

S1, S2 = 2 ** (1 / 3), 2 ** (2 / 3)


def test_cell_anchors_golden_p3():
    cell = AnchorGenerator().cell_anchors(0)
    # size 32 on P3, ratio r = h / w: half-width 16·s/√r, half-height 16·s·√r; ratio-major, scale-minor.
    # By hand: 16·√2 = 22.6274, 16/√2 = 11.3137, 16·2^(1/3) = 20.1587, 16·2^(2/3)·√2 = 35.9188, 16·2^(2/3)/√2 = 17.9594
    golden = torch.tensor(
        [[-22.6274, -11.3137, 22.6274, 11.3137],  # 1:2, scale 1
         [-20.1587, -20.1587, 20.1587, 20.1587],  # 1:1, scale 2^(1/3)
         [-17.9594, -35.9188, 17.9594, 35.9188]],  # 2:1, scale 2^(2/3)
        dtype=torch.float64,
    )  # fmt: skip
    torch.testing.assert_close(cell[[0, 4, 8]], golden, atol=1e-4, rtol=0)
    halves = [(16 * s / math.sqrt(r), 16 * s * math.sqrt(r)) for r in (0.5, 1.0, 2.0) for s in (1.0, S1, S2)]
    torch.testing.assert_close(cell, torch.tensor([[-w, -h, w, h] for w, h in halves], dtype=torch.float64))
    # every anchor of a level has the same area (size · scale)² whatever its ratio
    cell = AnchorGenerator().cell_anchors(4)
    areas = (cell[:, 2] - cell[:, 0]) * (cell[:, 3] - cell[:, 1])
    torch.testing.assert_close(areas, torch.tensor([(512 * s) ** 2 for s in (1, S1, S2)] * 3, dtype=torch.float64))


def test_grid_anchor_position_and_order():
    gen = AnchorGenerator()
    # P4 (stride 16) of a 3 × 4 map: location (y=1, x=2) is index 1·4 + 2 = 6, centre (32, 16)
    anchors = gen.grid_anchors(1, 3, 4, dtype=torch.float64)
    assert anchors.shape == (3 * 4 * 9, 4)
    loc = anchors[6 * 9 : 7 * 9]
    torch.testing.assert_close(loc, gen.cell_anchors(1) + torch.tensor([32.0, 16.0, 32.0, 16.0], dtype=torch.float64))
    ratio1_scale1 = loc[3]  # ratio 1, scale 1: a 64 × 64 square
    torch.testing.assert_close(ratio1_scale1, torch.tensor([0.0, -16.0, 64.0, 48.0], dtype=torch.float64))
    centred = AnchorGenerator(offset=0.5).grid_anchors(1, 3, 4, dtype=torch.float64)
    torch.testing.assert_close(centred - anchors, torch.full_like(anchors, 8.0))


def test_round_to_pixels_golden_and_equal_to_torchvision():
    gen = AnchorGenerator(round_to_pixels=True)
    # sides int(32·s) = 32, 40, 50; ratio 1:2 half-extents round(32√2/2) = 23 etc.
    expected = torch.tensor(
        [[-23, -11, 23, 11], [-28, -14, 28, 14], [-35, -18, 35, 18],
         [-16, -16, 16, 16], [-20, -20, 20, 20], [-25, -25, 25, 25],
         [-11, -23, 11, 23], [-14, -28, 14, 28], [-18, -35, 18, 35]],
        dtype=torch.float64,
    )  # fmt: skip
    torch.testing.assert_close(gen.cell_anchors(0), expected)
    sizes = tuple((x, int(x * S1), int(x * S2)) for x in (32, 64, 128, 256, 512))
    tv = TvAnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    # an image whose size every level divides, so torchvision's image // grid strides are the nominal ones
    grids = [(16, 32), (8, 16), (4, 8), (2, 4), (1, 2)]
    feats = [torch.zeros(1, 1, h, w) for h, w in grids]
    ref = tv(ImageList(torch.zeros(1, 3, 128, 256), [(128, 256)]), feats)[0]
    torch.testing.assert_close(torch.cat(gen(grids)), ref)


def test_generator_checks_levels():
    with pytest.raises(FovealError, match="one entry per level"):
        AnchorGenerator(sizes=(32, 64), strides=(8,))
    with pytest.raises(FovealError, match="feature maps"):
        AnchorGenerator()([(4, 4)])


def test_box_coder_golden_and_round_trip():
    coder = BoxCoder()
    anchor = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    box = torch.tensor([[5.0, 5.0, 25.0, 25.0]])
    # anchor centre (5, 10), size 10 × 20; box centre (15, 15), size 20 × 20
    torch.testing.assert_close(coder.encode(box, anchor), torch.tensor([[1.0, 0.25, math.log(2.0), 0.0]]))
    weighted = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(weighted.encode(box, anchor), torch.tensor([[10.0, 2.5, 5 * math.log(2.0), 0.0]]))

    g = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=g, dtype=torch.float64) * 100
    anchors = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g, dtype=torch.float64) * 80], 1)
    xy = torch.rand(50, 2, generator=g, dtype=torch.float64) * 100
    boxes = torch.cat([xy, xy + 1 + torch.rand(50, 2, generator=g, dtype=torch.float64) * 80], 1)
    for c in (coder, weighted):
        deltas = c.encode(boxes, anchors)
        torch.testing.assert_close(c.decode(deltas, anchors), boxes)
    tv = TvBoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    torch.testing.assert_close(weighted.encode(boxes, anchors), tv.encode_single(boxes, anchors))


def test_box_coder_clamps_scale():
    coder = BoxCoder()
    huge = coder.decode(torch.tensor([[0.0, 0.0, 50.0, 50.0]]), torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    # exp(log(1000/16)) · 16 = 1000 wide, centred on 8
    torch.testing.assert_close(huge, torch.tensor([[-492.0, -492.0, 508.0, 508.0]]))


def test_matcher_thresholds():
    iou = torch.tensor([[0.6, 0.45, 0.3, 0.1, 0.4], [0.55, 0.2, 0.39, 0.5, 0.0]])
    # anchor 0 → box 0 (0.6); 1 → ignored (0.45); 2 → negative (0.39); 3 → box 1 (exactly 0.5); 4 → ignored (0.4)
    assert Matcher()(iou).tolist() == [0, -2, -1, 1, -2]
    assert Matcher(high=0.5, low=0.5)(iou).tolist() == [0, -1, -1, 1, -1]
    assert Matcher()(torch.zeros(0, 3)).tolist() == [-1, -1, -1]


def test_matcher_low_quality():
    iou = torch.tensor([[0.3, 0.1, 0.3, 0.0], [0.2, 0.35, 0.0, 0.1], [0.0, 0.0, 0.0, 0.0]])
    assert Matcher()(iou).tolist() == [-1, -1, -1, -1]
    # box 0's best IoU 0.3 is reached by anchors 0 and 2 (tie, both kept), box 1's by anchor 1; box 2 touches
    # nothing and claims no anchor
    assert Matcher(allow_low_quality=True)(iou).tolist() == [0, 1, 0, -1]
    # a low-quality anchor keeps its own best box: anchor 0 is box 0's best, but box 1 overlaps it more
    iou = torch.tensor([[0.3, 0.0], [0.35, 0.1]])
    assert Matcher(allow_low_quality=True)(iou).tolist() == [1, -1]
    with pytest.raises(FovealError, match="low <= high"):
        Matcher(high=0.4, low=0.5)
