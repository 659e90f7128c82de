"""Projection, depth test, distinct-pixel counts and top-k views (OpenMask3D semantics)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scenegrep.indexer.features.crops import ProjectedPointsRefiner, multi_level_boxes
from scenegrep.indexer.features.visibility import (
    _TopK,
    compute_visibility,
    exact_depth,
    frame_positions,
    project_points,
    visible_mask,
    visible_points,
)
from scenegrep.indexer.proposals.base import MaskSet
from scenegrep.indexer.scans import Frame, Scan


K = np.array([[100.0, 0.0, 50.0], [0.0, 100.0, 40.0], [0.0, 0.0, 1.0]])
W, H = 100, 80


def _frame(tmp: Path, i: int, depth_m: np.ndarray, pose: np.ndarray | None = None, K_: np.ndarray = K) -> Frame:
    """A frame whose depth PNG (uint16 mm) holds ``depth_m``; colour is a flat grey image."""
    h, w = depth_m.shape
    dp, cp = tmp / f"d{i}.png", tmp / f"c{i}.png"
    Image.fromarray(np.rint(depth_m * 1000).astype(np.uint16)).save(dp)
    Image.fromarray(np.full((h, w, 3), 128, np.uint8)).save(cp)
    return Frame(i, cp, dp, np.eye(4) if pose is None else pose, K_, K_, (w, h), (w, h), 1000.0)


def _scan(tmp: Path, points: np.ndarray, frames: list[Frame]) -> Scan:
    pts = np.asarray(points, np.float32)
    return Scan("t", tmp, "scannet", pts, np.zeros_like(pts, dtype=np.uint8), frames)


# --------------------------------------------------------------------------------------------------
# project_points
# --------------------------------------------------------------------------------------------------


def test_project_identity_pose_hand_computed():
    pts = np.array([
        [0.1, 0.2, 2.0],     # x = (10 + 100) / 2 = 55, y = (20 + 80) / 2 = 50
        [0.118, 0.0, 1.0],   # x = 61.8 -> 61 (truncation), y = 40
        [-0.505, 0.0, 1.0],  # x = -0.5 -> 0 (toward zero, NOT floor -1)
        [-0.515, 0.0, 1.0],  # x = -1.5 -> -1
        [0.1, 0.2, -2.0],    # behind: x = (10 - 100) / -2 = 45, y = (20 - 80) / -2 = 30, z = -2
        [0.3, 0.4, 0.0],     # z == 0: no division, keeps (0, 0)
    ])
    uv, z = project_points(pts, np.eye(4), K)
    assert uv.dtype == np.int64 and z.dtype == np.float64
    assert uv.tolist() == [[55, 50], [61, 40], [0, 40], [-1, 40], [45, 30], [0, 0]]
    np.testing.assert_allclose(z, [2.0, 1.0, 1.0, 1.0, -2.0, 0.0])


def test_project_non_identity_pose_uses_inverse():
    # Camera rotated 90 deg about z (camera x -> world y) and translated to (1, 2, 3).
    pose = np.eye(4)
    pose[:3, :3] = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    pose[:3, 3] = [1.0, 2.0, 3.0]
    cam = np.array([0.1, 0.2, 2.0])
    world = pose[:3, :3] @ cam + pose[:3, 3]
    uv, z = project_points(world[None], pose, K)
    assert uv.tolist() == [[55, 50]]
    assert z[0] == pytest.approx(2.0)


def test_project_far_off_axis_does_not_overflow():
    uv, z = project_points(np.array([[1.0, 1.0, 1e-300]]), np.eye(4), K)
    assert uv[0, 0] > W and uv[0, 1] > H  # clipped, still outside, no int overflow


# --------------------------------------------------------------------------------------------------
# visible_points / visible_mask
# --------------------------------------------------------------------------------------------------


def test_depth_test_inclusive_at_threshold(tmp_path):
    assert abs(0.45 - 0.25) == 0.2  # exact in float64: the boundary case is really at the boundary
    depth = np.zeros((H, W))
    # point (0, 0, 0.25) projects to pixel (50, 40); (0.05, 0, 0.25) to (70, 40)
    depth[40, 50] = 0.45
    depth[40, 70] = 0.4501
    pts = np.array([[0.0, 0.0, 0.25], [0.05, 0.0, 0.25]])
    frame = _frame(tmp_path, 0, depth)
    assert visible_points(pts, frame, depth, threshold=0.2).tolist() == [0]


def test_inside_bounds_and_positive_depth(tmp_path):
    depth = np.ones((H, W))
    z = 1.0
    pts = np.array([
        [(W - 1 - 50) / 100, 0.0, z],   # u = 99: inside
        [(W - 50) / 100, 0.0, z],       # u = 100: outside
        [0.0, (H - 40) / 100, z],       # v = 80: outside
        [0.0, (H - 1 - 40) / 100, z],   # v = 79: inside
        [-0.505, 0.0, z],               # u = -0.5 -> 0: inside (OpenMask3D truncation)
    ])
    uv, zz = project_points(pts, np.eye(4), K)
    assert uv[:, 0].tolist() == [99, 100, 50, 50, 0]
    assert uv[:, 1].tolist() == [40, 40, 80, 79, 40]
    assert np.flatnonzero(visible_mask(uv, zz, depth)).tolist() == [0, 3, 4]

    # Behind the camera, landing inside on a pixel with no reading (0): OpenMask3D counts it
    # (|0 - (-0.1)| <= 0.2); the project default does not.
    behind = np.array([[0.0, 0.0, -0.1]])
    depth0 = np.zeros((H, W))
    frame = _frame(tmp_path, 1, depth0)
    assert visible_points(behind, frame, depth0, require_positive_depth=False).tolist() == [0]
    assert visible_points(behind, frame, depth0, require_positive_depth=True).tolist() == []
    # A point at ~0.1 m in front on a pixel without reading: OpenMask3D yes, default no.
    near = np.array([[0.0, 0.0, 0.1]])
    assert visible_points(near, frame, depth0, require_positive_depth=False).tolist() == [0]
    assert visible_points(near, frame, depth0).tolist() == []


def test_exact_depth_matches_float64_division(tmp_path):
    raw = np.array([[0, 1, 999, 1234], [4321, 65534, 777, 2]], np.uint16)
    dp = tmp_path / "d.png"
    Image.fromarray(raw).save(dp)
    fr = Frame(0, dp, dp, np.eye(4), K, K, (4, 2), (4, 2), 1000.0)
    d = exact_depth(fr)
    assert d.dtype == np.float64
    assert np.array_equal(d, raw / 1000)


# --------------------------------------------------------------------------------------------------
# compute_visibility: counts are distinct pixels; top-k order
# --------------------------------------------------------------------------------------------------


def test_distinct_pixel_counting_and_pixels(tmp_path):
    depth = np.full((H, W), 2.0)
    # Coordinates sit mid-pixel so the float32 storage of Scan.points cannot move them across a border.
    pts = np.array([
        [0.101, 0.201, 2.0],  # pixel (55.05, 50.05) -> (55, 50)
        [0.109, 0.209, 2.0],  # (55.45, 50.45) -> same pixel (55, 50): counts once
        [0.121, 0.201, 2.0],  # (56, 50)
        [0.101, 0.301, 2.0],  # (55, 55)
        [0.101, 0.201, 3.0],  # occluded: |2 - 3| > 0.2
        [5.0, 0.0, 2.0],      # outside
    ])
    masks = MaskSet.from_lists([[0, 1, 2, 3, 4, 5], [1], [4, 5], [0, 2]], None, len(pts))
    scan = _scan(tmp_path, pts, [_frame(tmp_path, 0, depth)])
    vis = compute_visibility(scan, masks, threshold=0.2, top_k=3)
    assert vis.counts.tolist() == [[3, 1, 0, 2]]
    assert vis.counts.dtype == np.int64
    assert vis.topk_views.tolist() == [[0, -1, -1], [0, -1, -1], [-1, -1, -1], [0, -1, -1]]
    # Distinct pixels, row-major (v, then u), as np.where on the visible-pixel image.
    assert vis.pixels[0][0].tolist() == [[55, 50], [56, 50], [55, 55]]
    assert vis.pixels[3][0].tolist() == [[55, 50], [56, 50]]
    assert vis.pixels[2] == []


def test_topk_ties_go_to_lower_view_and_zero_views_excluded(tmp_path):
    # Mask 0 is seen by 3 pixels in frames 0 and 2 (tie) and by 5 in frame 1; invisible in frame 3.
    def depth_with(n_visible: int) -> np.ndarray:
        d = np.full((H, W), 9.0)
        d[50, 55 : 55 + n_visible] = 2.0
        return d

    pts = np.array([[0.101 + 0.02 * i, 0.201, 2.0] for i in range(5)])  # pixels (55..59, 50)
    frames = [_frame(tmp_path, i, depth_with(n)) for i, n in enumerate([3, 5, 3, 0])]
    masks = MaskSet.from_lists([np.arange(5)], None, len(pts))
    vis = compute_visibility(_scan(tmp_path, pts, frames), masks, top_k=3)
    assert vis.counts[:, 0].tolist() == [3, 5, 3, 0]
    assert vis.topk_views.tolist() == [[1, 0, 2]]
    assert vis.topk_counts.tolist() == [[5, 3, 3]]
    vis2 = compute_visibility(_scan(tmp_path, pts, frames), masks, top_k=5)
    assert vis2.topk_views.tolist() == [[1, 0, 2, -1, -1]]  # the zero view is not chosen
    assert vis2.topk_frame_ids.tolist() == [[1, 0, 2, -1, -1]]


def test_streaming_topk_equals_stable_sort():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 4, size=(40, 25))  # many ties and zeros
    for k in (1, 3, 5, 40):
        tk = _TopK(counts.shape[1], k)
        for f in range(counts.shape[0]):
            tk.offer(f, counts[f], lambda m, _f=f: np.array([[_f, m]], np.int32))
        views, cnts, pixels = tk.result()
        for m in range(counts.shape[1]):
            order = np.argsort(-counts[:, m], kind="stable")[:k]
            order = order[counts[order, m] > 0]
            assert views[m, : order.size].tolist() == order.tolist()
            assert (views[m, order.size :] == -1).all()
            assert cnts[m, : order.size].tolist() == counts[order, m].tolist()
            assert [int(p[0, 0]) for p in pixels[m]] == order.tolist()


def test_unusable_pose_is_skipped(tmp_path):
    depth = np.full((H, W), 2.0)
    bad = np.full((4, 4), -np.inf)
    pts = np.array([[0.1, 0.2, 2.0]])
    scan = _scan(tmp_path, pts, [_frame(tmp_path, 0, depth, pose=bad), _frame(tmp_path, 1, depth)])
    vis = compute_visibility(scan, MaskSet.from_lists([[0]], None, 1), top_k=2)
    assert vis.counts.tolist() == [[0], [1]]
    assert vis.skipped_frames == [0]


def test_frame_positions_auto_step():
    assert frame_positions(0, None).tolist() == []
    assert frame_positions(10, None).tolist() == list(range(10))
    assert frame_positions(300, None).size == 300
    assert frame_positions(301, None).tolist() == list(range(0, 301, 2))
    assert frame_positions(6000, None).size == 300
    assert frame_positions(10, 3).tolist() == [0, 3, 6, 9]


# --------------------------------------------------------------------------------------------------
# OpenMask3D reference fixture
# --------------------------------------------------------------------------------------------------


def test_openmask3d_fixture_counts_topk_and_boxes(openmask3d_fixture):
    scan, masks, exp = openmask3d_fixture
    vis = compute_visibility(scan, masks, frame_positions(len(scan.frames), 1), threshold=0.2, top_k=5,
                             require_positive_depth=False)
    assert np.array_equal(vis.counts, exp["visible_counts"])
    # Non-zero-count entries must match exactly; OpenMask3D's zero-count fillers we leave at -1.
    exp_topk = exp["topk_views"]
    nonzero = np.take_along_axis(exp["visible_counts"].T, exp_topk, axis=1) > 0
    assert np.array_equal(np.where(nonzero, exp_topk, -1), vis.topk_views)

    refiner = ProjectedPointsRefiner()
    blank = np.zeros((240, 320, 3), np.uint8)
    rows = []
    for m in range(len(masks)):
        views = [int(v) for v in vis.topk_views[m] if v >= 0]
        boxes = refiner.refine(blank, vis.pixels[m], (320, 240))
        for view, box in zip(views, boxes):
            for level, b in enumerate(multi_level_boxes(box, 3, 0.1, image_size=(320, 240))):
                rows.append((m, view, level, *b))
    assert np.array_equal(np.array(rows, np.int64), exp["crop_boxes"])
