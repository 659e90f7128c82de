"""Crop boxes: OpenMask3D's mask2box / mask2box_multi_level, resolution mapping, the refiner seam."""

from __future__ import annotations

import numpy as np
import pytest

from scenegrep.indexer.features.crops import (
    MaskRefiner,
    ProjectedPointsRefiner,
    box_from_pixels,
    multi_level_boxes,
    scale_box,
    scale_pixels,
)


def _mask2box_multi_level_reference(mask: np.ndarray, level: int, expansion_ratio: float):
    """OpenMask3D's utils.mask2box / mask2box_multi_level transcribed (numpy instead of torch)."""
    row = np.nonzero(mask.sum(axis=0))[0]
    x1, x2 = row.min(), row.max()
    col = np.nonzero(mask.sum(axis=1))[0]
    y1, y2 = col.min(), col.max()
    x1, y1, x2, y2 = int(x1), int(y1), int(x2) + 1, int(y2) + 1
    if level == 0:
        return x1, y1, x2, y2
    shape = mask.shape
    x_exp = int(abs(x2 - x1) * expansion_ratio) * level
    y_exp = int(abs(y2 - y1) * expansion_ratio) * level
    return max(0, x1 - x_exp), max(0, y1 - y_exp), min(shape[1], x2 + x_exp), min(shape[0], y2 + y_exp)


def test_box_from_pixels_is_exclusive_bbox():
    uv = np.array([[3, 4], [7, 2], [5, 9]])
    assert box_from_pixels(uv) == (3, 2, 8, 10)
    assert box_from_pixels(np.array([[0, 0]])) == (0, 0, 1, 1)
    with pytest.raises(ValueError):
        box_from_pixels(np.zeros((0, 2), int))


def test_multi_level_hand_computed():
    # w = 30, h = 25 -> x_exp = int(3.0) = 3, y_exp = int(2.5) = 2 per level
    boxes = multi_level_boxes((10, 20, 40, 45), 3, 0.1, image_size=(100, 80))
    assert boxes == [(10, 20, 40, 45), (7, 18, 43, 47), (4, 16, 46, 49)]


def test_multi_level_clipping_and_truncation_before_level():
    # w = 50, h = 78 -> 5 and int(7.8) = 7 per level; clipped at 0, width 60 and height 80
    assert multi_level_boxes((2, 1, 52, 79), 3, 0.1, image_size=(60, 80)) == [
        (2, 1, 52, 79), (0, 0, 57, 80), (0, 0, 60, 80)]
    # w = 19 -> int(1.9) = 1, times level 2 = 2 (not int(3.8) = 3)
    assert multi_level_boxes((40, 40, 59, 59), 3, 0.1, image_size=(200, 200))[2] == (38, 38, 61, 61)
    # level 0 is returned unchanged, never clipped
    assert multi_level_boxes((-3, 0, 10, 10), 2, 0.1, image_size=(5, 5))[0] == (-3, 0, 10, 10)


def test_multi_level_matches_transcribed_openmask3d():
    rng = np.random.default_rng(1)
    for _ in range(200):
        h, w = rng.integers(5, 60, size=2)
        mask = np.zeros((h, w), bool)
        n = rng.integers(1, 12)
        mask[rng.integers(0, h, n), rng.integers(0, w, n)] = True
        v, u = np.nonzero(mask)
        box = box_from_pixels(np.column_stack([u, v]))
        ratio = float(rng.choice([0.1, 0.15, 0.25, 0.3]))
        ours = multi_level_boxes(box, 4, ratio, image_size=(w, h))
        ref = [_mask2box_multi_level_reference(mask, lv, ratio) for lv in range(4)]
        assert ours == ref


def test_scale_box_identity_and_ratios():
    assert scale_box((3, 2, 8, 10), (64, 48), (64, 48)) == (3, 2, 8, 10)
    assert scale_box((3, 2, 8, 10), (64, 48), (128, 96)) == (6, 4, 16, 20)
    # ScanNet-like 640x480 depth -> 1296x968 colour: floor(3 * 2.025) = 6, ceil(8 * 2.025) = 17,
    # floor(2 * 968 / 480) = 4, ceil(10 * 968 / 480) = 21
    assert scale_box((3, 2, 8, 10), (640, 480), (1296, 968)) == (6, 4, 17, 21)
    assert scale_box((0, 0, 640, 480), (640, 480), (1296, 968)) == (0, 0, 1296, 968)
    # downscale keeps a non-empty box
    assert scale_box((5, 5, 6, 6), (100, 100), (10, 10)) == (0, 0, 1, 1)


def test_scale_pixels_centres():
    uv = np.array([[0, 0], [63, 47], [10, 5]])
    assert np.array_equal(scale_pixels(uv, (64, 48), (64, 48)), uv)
    assert scale_pixels(uv, (64, 48), (128, 96)).tolist() == [[1, 1], [127, 95], [21, 11]]


def test_projected_points_refiner():
    ref = ProjectedPointsRefiner()
    assert isinstance(ref, MaskRefiner)
    image = np.zeros((96, 128, 3), np.uint8)  # colour at 2x the 64x48 depth grid
    px = [np.array([[3, 4], [7, 2], [5, 9]], np.int32), np.zeros((0, 2), np.int32)]
    assert ref.refine(image, px, (64, 48)) == [(6, 4, 16, 20), None]
    same = np.zeros((48, 64, 3), np.uint8)
    assert ref.refine(same, px[:1], (64, 48)) == [(3, 2, 8, 10)]
