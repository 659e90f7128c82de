"""The geometric proposer on real captures and at several densities; the shared voxel grid; planes/gravity.

Real-data tests use ``../shared/data`` (skipped without it). Floors sit a little under the measured values
(BENCHMARKS.md, "Geometric proposer on real scans"); where the issue sets a target that is met, the floor is
the target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scenegrep.indexer.evaluate import evaluate_masks, load_ground_truth, load_gt
from scenegrep.indexer.proposals.geometric import (
    GeometricConfig,
    GeometricProposer,
    choose_voxel_size,
    point_spacing,
    propose_points,
)
from scenegrep.indexer.proposals.planes import PlaneConfig, camera_up, classify_planes, estimate_up, grow_planes
from scenegrep.indexer.scans import Scan, read_scan
from scenegrep.indexer.voxels import KEY_OFFSET, group_mean, pack_coords, voxel_coords, voxel_index

# -- the shared voxel grid -------------------------------------------------------------------------


def test_voxel_index_key_order_matches_unique_axis0():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(5000, 3)) * 3
    idx = voxel_index(pts, 0.5)
    grid = np.floor(pts / 0.5).astype(np.int64)
    uniq, first, inv = np.unique(grid, axis=0, return_index=True, return_inverse=True)
    assert np.array_equal(idx.coords, uniq)
    assert np.array_equal(idx.first, first) and np.array_equal(idx.inverse, inv.reshape(-1))
    assert idx.counts.sum() == len(pts)


def test_voxel_index_first_order_is_first_occurrence():
    pts = np.array([[0.9, 0, 0], [0.1, 0, 0], [0.2, 0, 0], [5.0, 0, 0], [0.95, 0, 0]])
    idx = voxel_index(pts, 0.5, order="first")
    assert list(idx.first) == [0, 1, 3]  # strictly increasing: voxel of point 0, of point 1, of point 3
    assert list(idx.inverse) == [0, 1, 1, 2, 0]
    assert list(idx.counts) == [2, 2, 1]
    assert np.allclose(group_mean(idx, pts)[:, 0], [0.925, 0.15, 5.0])


def test_voxel_coords_float64_and_origin():
    # 0.3 / 0.1 is 2.9999999999999996 in float64: floor gives 2, as OpenMask3D's float64 collate does
    assert voxel_coords(np.array([[0.3, 0.0, 0.0]]), 0.1)[0, 0] == 2
    assert voxel_coords(np.array([[1.0, 1.0, 1.0]]), 0.5, origin=np.array([1.0, 1.0, 1.0])).tolist() == [[0, 0, 0]]
    with pytest.raises(ValueError):
        voxel_coords(np.zeros((1, 3)), 0.0)


def test_pack_coords_round_trips_order_and_flags_out_of_range():
    c = np.array([[-3, 2, 1], [-3, 2, 2], [0, -1, 0], [KEY_OFFSET, 0, 0]])
    keys, ok = pack_coords(c)
    assert list(ok) == [True, True, True, False]
    assert keys[0] < keys[1] < keys[2]  # lexicographic order of the triples


def test_voxel_index_far_from_origin_falls_back():
    # a cloud spanning more than 2^21 voxels per axis cannot be packed: the helper still groups it
    pts = np.array([[0.0, 0, 0], [0.001, 0, 0], [3e5, 0, 0]])
    idx = voxel_index(pts, 0.1)
    assert len(idx) == 2 and list(idx.inverse) == [0, 0, 1]


# -- a synthetic room in camera coordinates -------------------------------------------------------


def _plane_patch(rng, origin, u, v, nu, nv):
    a, b = rng.random(nu * nv), rng.random(nu * nv)
    return origin + a[:, None] * u + b[:, None] * v


def tabletop(seed: int = 0, spacing: float = 0.004):
    """(points, colors, gt): a 1 x 0.8 m table (gt 1) with three grey boxes (gt 2..4) touching nothing,
    in camera coordinates (y down, z forward, the table tilted 40 degrees), dull colours, depth noise."""
    rng = np.random.default_rng(seed)
    parts, ids = [], []
    n_table = int(1.0 * 0.8 / spacing**2)
    parts.append(np.c_[rng.random(n_table) * 1.0, rng.random(n_table) * 0.8, np.zeros(n_table)])
    ids.append(np.ones(n_table, np.int32))
    boxes = [((0.2, 0.2), (0.12, 0.1, 0.15)), ((0.6, 0.3), (0.1, 0.15, 0.08)), ((0.4, 0.55), (0.15, 0.1, 0.2))]
    for k, ((x, y), (sx, sy, sz)) in enumerate(boxes, 2):
        faces = []
        for lo, du, dv in [((x, y, sz), (sx, 0, 0), (0, sy, 0)), ((x, y, 0), (sx, 0, 0), (0, 0, sz)),
                           ((x, y + sy, 0), (sx, 0, 0), (0, 0, sz)), ((x, y, 0), (0, sy, 0), (0, 0, sz)),
                           ((x + sx, y, 0), (0, sy, 0), (0, 0, sz))]:
            du, dv = np.asarray(du, float), np.asarray(dv, float)
            n = max(4, int(np.linalg.norm(du) * np.linalg.norm(dv) / spacing**2))
            faces.append(_plane_patch(rng, np.asarray(lo, float), du, dv, n, 1))
        p = np.concatenate(faces)
        parts.append(p)
        ids.append(np.full(len(p), k, np.int32))
        inside = np.all((parts[0][:, :2] >= (x, y)) & (parts[0][:, :2] <= (x + sx, y + sy)), axis=1)
        parts[0], ids[0] = parts[0][~inside], ids[0][~inside]
    pts = np.concatenate(parts)
    gt = np.concatenate(ids)
    # table frame (z up) -> camera frame: y down, looking at the table from 0.8 m, tilted 40 degrees
    t = np.radians(40)
    rot = np.array([[1, 0, 0], [0, -np.sin(t), -np.cos(t)], [0, np.cos(t), -np.sin(t)]])
    cam = (pts - [0.5, 0.4, 0]) @ rot.T + [0, 0, 0.9]
    cam += rng.normal(0, spacing * 0.2, cam.shape)
    grey = np.where(gt == 1, 120, 100 + 8 * gt)[:, None] + rng.normal(0, 6, (len(gt), 3))
    order = rng.permutation(len(gt))
    return cam[order].astype(np.float32), np.clip(grey, 0, 255).astype(np.uint8)[order], gt[order], rot


def test_up_direction_is_estimated_not_assumed():
    points, colors, gt, rot = tabletop()
    dbg: dict = {}
    propose_points(points, colors, GeometricConfig(), None, dbg)
    table_up = rot @ np.array([0.0, 0.0, 1.0])  # the table's normal in camera coordinates
    assert dbg["up"] is not None and float(dbg["up"] @ table_up) > 0.98
    assert abs(float(dbg["up"][2])) < 0.9, "the camera's z is not up here"


def test_planes_on_a_room_corner():
    # floor z=0 and a wall x=0, 3 x 3 m x 2.5 m high, plus a 0.5 m box: floor + wall found, box is not a wall
    rng = np.random.default_rng(1)
    h = 0.05
    floor = np.c_[rng.random(6000) * 3, rng.random(6000) * 3, np.zeros(6000)]
    wall = np.c_[np.zeros(5000), rng.random(5000) * 3, rng.random(5000) * 2.5]
    box = np.c_[np.full(800, 1.5), 1 + rng.random(800) * 0.5, rng.random(800) * 0.5]
    xyz = np.concatenate([floor, wall, box])
    from scipy.spatial import cKDTree

    from scenegrep.indexer.proposals.geometric import knn_edges, pca_normals

    dist, nbr = cKDTree(xyz).query(xyz, k=16)
    normals, curv = pca_normals(xyz, nbr, return_curvature=True)
    ei, ej = knn_edges(nbr, dist, 10, 2.5 * h)
    cfg = PlaneConfig()
    planes = grow_planes(xyz, normals, curv, ei, ej, h, cfg)
    up, support = estimate_up(planes, cfg)
    assert up is not None and up[2] > 0.99
    arch = classify_planes(planes, xyz, up, support, h, cfg)
    kinds = sorted(a.kind for a in arch)
    assert kinds == ["floor", "wall"]
    wall_plane = next(a for a in arch if a.kind == "wall")
    on_wall = (wall_plane.voxels >= 6000) & (wall_plane.voxels < 11000)
    assert on_wall.mean() > 0.98  # a few floor points on the corner line fit both planes
    assert not np.any(wall_plane.voxels >= 11000), "no box point is wall"


# -- gravity from the cameras ---------------------------------------------------------------------


def _camera(yaw_deg: float, tilt_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    """(3, 3) camera-to-world rotation, OpenCV axes, world z up: looking along ``yaw`` in the xy plane,
    pitched down by ``tilt``, rolled by ``roll`` about its viewing axis."""
    y, t, r = np.radians([yaw_deg, tilt_deg, roll_deg])
    fwd = np.array([np.cos(y) * np.cos(t), np.sin(y) * np.cos(t), -np.sin(t)])
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    # roll: rotate right/down about fwd
    right, down = np.cos(r) * right + np.sin(r) * down, -np.sin(r) * right + np.cos(r) * down
    return np.stack([right, down, fwd], axis=1)


def test_camera_up_ignores_tilt_and_pan():
    # cameras looking down into a shelf (tilt 10-25 degrees), panning: the mean image -y leans 17 degrees
    rots = np.stack([_camera(yaw, tilt) for yaw in (-30, -10, 10, 30) for tilt in (10, 18, 25)])
    mean_up = -rots[:, :, 1].mean(axis=0)
    assert np.degrees(np.arccos(mean_up[2] / np.linalg.norm(mean_up))) > 15
    assert camera_up(rots) == pytest.approx([0, 0, 1], abs=1e-9)
    # only tilting, one heading: up is the mean image -y projected on the plane normal to the x axes
    one = camera_up(np.stack([_camera(40, t) for t in (0, 5, 10)]))
    assert abs(float(one @ [np.cos(np.radians(130)), np.sin(np.radians(130)), 0])) < 1e-9 and one[2] > 0.98
    # cameras that roll by up to 30 degrees: no common horizontal, the mean image -y is the guess
    rolled = np.stack([_camera(yaw, 10, roll) for yaw, roll in [(0, 30), (60, -30), (120, 25), (200, -25)]])
    got = camera_up(rolled)
    want = -rolled[:, :, 1].mean(axis=0)
    assert got == pytest.approx(want / np.linalg.norm(want))
    assert camera_up(np.zeros((0, 3, 3))) is None


def _bin_scene(rng, floor: bool):
    """A shelf bin: side walls y=0 and y=0.3 and a back wall x=0.6, 0.4 m high, a 0.1 m cube standing at
    z=0, the shelf below (a strip at z=-0.12, in front) and, with ``floor``, a 0.6 x 0.3 m bin floor at
    z=0. Each side wall has more than 90 % of the scan on one side and is larger than any floor: from the
    data alone a side wall is the support (the failure on labelfusion-shelf)."""
    def patch(n, lo, du, dv):
        a, b = rng.random(n), rng.random(n)
        return np.asarray(lo) + a[:, None] * np.asarray(du) + b[:, None] * np.asarray(dv)

    parts = [patch(900, (0, 0, 0), (0.6, 0, 0), (0, 0, 0.4)),            # side wall y = 0
             patch(900, (0, 0.3, 0), (0.6, 0, 0), (0, 0, 0.4)),          # side wall y = 0.3
             patch(500, (0.6, 0, 0), (0, 0.3, 0), (0, 0, 0.4)),          # back wall
             patch(120, (0.2, 0.1, 0.1), (0.1, 0, 0), (0, 0.1, 0)),      # cube top
             patch(120, (0.2, 0.1, 0), (0, 0.1, 0), (0, 0, 0.1)),        # cube front
             patch(450, (-0.3, 0, -0.12), (0.25, 0, 0), (0, 0.3, 0))]    # shelf below, in front
    if floor:
        parts.append(patch(700, (0, 0, 0), (0.6, 0, 0), (0, 0.3, 0)))
    return np.concatenate(parts), np.cumsum([len(p) for p in parts])


@pytest.mark.parametrize("floor", [True, False])
def test_camera_prior_keeps_side_walls_walls(floor):
    from scipy.spatial import cKDTree

    from scenegrep.indexer.proposals.geometric import knn_edges, pca_normals

    rng = np.random.default_rng(2)
    h = 0.02
    xyz, ends = _bin_scene(rng, floor)
    dist, nbr = cKDTree(xyz).query(xyz, k=16)
    normals, curv = pca_normals(xyz, nbr, return_curvature=True)
    ei, ej = knn_edges(nbr, dist, 10, 2.5 * h)
    cfg = PlaneConfig(min_voxels=40)
    planes = grow_planes(xyz, normals, curv, ei, ej, h, cfg)
    up_data, _ = estimate_up(planes, cfg)
    assert up_data is not None and abs(up_data[2]) < 0.2, "from the data alone gravity comes out sideways"
    # upright cameras looking down into the bin give z; the support must be horizontal with the scan
    # above it (the shelf below the bin), and the side and back walls are walls (nothing is a ceiling)
    prior = camera_up(np.stack([_camera(yaw, 20) for yaw in (-20, 0, 20)]))
    up, support = estimate_up(planes, cfg, prior)
    assert up[2] > np.cos(np.radians(2))
    shelf = np.arange(ends[4], ends[5])
    if support >= 0:
        assert np.isin(planes[support].voxels, shelf).mean() > 0.95, "only the shelf below bounds the scan"
    arch = classify_planes(planes, xyz, up, support, h, cfg)
    assert sorted(a.kind for a in arch if a.kind != "floor") == ["wall", "wall", "wall"]
    cube = np.arange(ends[2], ends[4])
    assert not any(np.isin(cube, a.voxels).any() for a in arch), "the cube is no structure"
    # without the shelf below nothing horizontal bounds the scan when the bin floor is hidden: up is the
    # prior itself, and the walls are still found (heights from the scan's lowest points)
    keep = np.flatnonzero((xyz[:, 2] > -0.05))
    sub = xyz[keep]
    dist, nbr = cKDTree(sub).query(sub, k=16)
    normals, curv = pca_normals(sub, nbr, return_curvature=True)
    ei, ej = knn_edges(nbr, dist, 10, 2.5 * h)
    planes = grow_planes(sub, normals, curv, ei, ej, h, cfg)
    up, support = estimate_up(planes, cfg, prior)
    if floor:
        assert support >= 0 and planes[support].normal[2] > 0.99  # the bin floor is the support now
    else:
        assert support == -1 and up == pytest.approx(prior)
    arch = classify_planes(planes, sub, up, support, h, cfg)
    assert sorted(a.kind for a in arch if a.kind != "floor") == ["wall", "wall", "wall"]


# -- density: one scene at several subsampling rates ----------------------------------------------


@pytest.fixture(scope="module")
def table_scene():
    return tabletop()


@pytest.mark.parametrize("rate", [1.0, 0.5, 0.25])
def test_density_invariance_on_tabletop(table_scene, rate):
    points, colors, gt, _ = table_scene
    keep = np.sort(np.random.default_rng(3).choice(len(points), int(len(points) * rate), replace=False))
    ms = GeometricProposer().propose(Scan("t", Path("."), "scannet", points[keep], colors[keep]))
    r = evaluate_masks(ms, gt[keep])
    assert r.ap50 >= 0.9, (rate, r)


def test_voxel_size_follows_the_spacing(table_scene):
    points = table_scene[0].astype(np.float64)
    s1 = point_spacing(points)
    sub = points[np.random.default_rng(0).choice(len(points), len(points) // 4, replace=False)]
    s4 = point_spacing(sub)
    assert 1.5 < s4 / s1 < 2.6  # a quarter of the points: about twice the spacing
    cfg = GeometricConfig(max_voxels=10**9)
    assert choose_voxel_size(sub, cfg) / choose_voxel_size(points, cfg) == pytest.approx(s4 / s1)
    # the cap on voxels grows the edge for very dense clouds
    capped = GeometricConfig(max_voxels=2000)
    assert len(np.unique(np.floor(points / choose_voxel_size(points, capped)), axis=0)) <= 2000 * 1.05


# -- real captures ---------------------------------------------------------------------------------


def _scannet(shared_dir):
    root = shared_dir / "data" / "scannet-scene0451_01"
    if not (root / "gt_instances.npy").is_file():
        pytest.skip("scannet-scene0451_01 is not in ../shared/data")
    scan = read_scan(root)
    return scan, load_gt(root, scan.num_points)


def test_scannet_scene0451_full_density(shared_dir):
    scan, gt = _scannet(shared_dir)
    r = evaluate_masks(GeometricProposer().propose(scan), gt)
    # measured 0.102 / 0.285 / 0.603 (was 0.023 / 0.074 / 0.192)
    assert r.ap50 >= 0.25 and r.ap25 >= 0.5, r


@pytest.mark.parametrize("seed", [10, 11])
def test_scannet_scene0451_subsampled_to_3_5_cm(shared_dir, seed):
    """The acceptance regime: a ScanNet cloud with about 3.5 cm median spacing (20 % of the points)."""
    scan, gt = _scannet(shared_dir)
    keep = np.sort(np.random.default_rng(seed).choice(scan.num_points, scan.num_points // 5, replace=False))
    points = scan.points[keep]
    assert 0.03 < point_spacing(points) < 0.04
    ms = propose_points(points, scan.colors[keep], GeometricConfig())[0]
    r = evaluate_masks(ms, gt[keep])
    # issue targets: AP50 >= 0.12, AP25 >= 0.45 (measured 0.283 / 0.597 and 0.350 / 0.587)
    assert r.ap50 >= 0.12 and r.ap25 >= 0.45, r


@pytest.mark.parametrize("name, ap50_floor", [("test50", 0.8), ("test55", 0.65)])
def test_mosd_tabletop(shared_dir, name, ap50_floor):
    """Camera coordinates (y down): the table must be found as the support without assuming z up."""
    root = shared_dir / "data" / "mosd-tabletop" / name
    if not (root / "gt_instances.npy").is_file():
        pytest.skip(f"mosd-tabletop/{name} is not in ../shared/data")
    scan = read_scan(root)
    r = evaluate_masks(GeometricProposer().propose(scan), load_gt(root, scan.num_points))
    assert r.ap50 >= ap50_floor, r


@pytest.fixture(scope="module")
def shelf(shared_dir):
    """(scan, gt, masks, debug) of labelfusion-shelf with the default reader and proposer; ground truth
    lifted from the label maps by :func:`scenegrep.indexer.evaluate.load_ground_truth` (projection, depth
    test, majority vote). Label 48: a bag of straws leaning on the bin's side wall; 132: a box."""
    root = shared_dir / "data" / "labelfusion-shelf"
    if not (root / "camera-intrinsics.txt").is_file():
        pytest.skip("labelfusion-shelf is not in ../shared/data")
    scan = read_scan(root)
    gt, source = load_ground_truth(scan)
    assert source.startswith("label maps") and sorted(np.unique(gt)) == [0, 48, 132]
    debug: dict = {}
    masks = GeometricProposer().propose_with_stats(scan, debug)[0]
    # asking for the debug arrays does not change the masks
    same = GeometricProposer().propose(scan)
    assert np.array_equal(same.point_indices, masks.point_indices)
    return scan, gt, masks, debug


def _best_ious(masks, gt, ids):
    return [max(float((gt[m] == g).sum() / ((gt == g).sum() + m.size - (gt[m] == g).sum())) for m in masks)
            for g in ids]


def test_labelfusion_shelf_gravity_and_structure(shelf):
    """Gravity comes from the upright cameras (world z here), not from the largest bounding plane (a side
    wall of the bin, which made the opposite wall with the straws on it a "ceiling"); no structure mask
    takes more than 5 % of either object. Box: measured 0.836 (0.511 before the colour splits: its cyan
    print is a colour part of a cyan-and-white region); straws: measured 0.358."""
    _, gt, masks, debug = shelf
    assert debug["up"] @ np.array([0.0, 0.0, 1.0]) > np.cos(np.radians(2))
    kinds = list(debug["kind"])
    assert "ceiling" not in kinds and "floor" not in kinds  # the bin floor is hidden under the objects
    for g in (48, 132):
        inside = gt == g
        in_structure = max((inside[m].sum() for m, k in zip(masks, kinds) if k != "object"), default=0)
        assert in_structure <= 0.05 * inside.sum(), (g, in_structure)
    straws, box = _best_ious(masks, gt, (48, 132))
    assert box >= 0.8 and straws >= 0.3, (straws, box)


@pytest.mark.xfail(strict=True, reason="issue 10 target not met: the straws' best IoU is 0.358. Their label "
                   "map is shifted off the bag in every frame: 54 of the 130 points lifted to it are on the dark "
                   "gap and the bin's side wall, and the bag's white straws are unlabelled; the bag's mask (158 "
                   "points) holds 76 labelled points (BENCHMARKS.md, 'Proposers x scans', and "
                   "scripts/frameview.py)")
def test_labelfusion_shelf_each_object_iou_half(shelf):
    """The issue's target: each labelled object gets a mask with IoU >= 0.5."""
    _, gt, masks, _ = shelf
    straws, box = _best_ious(masks, gt, (48, 132))
    assert straws >= 0.5 and box >= 0.5, (straws, box)


def test_noise_rule_coarsens_only_noisy_clouds():
    """A plane with depth noise of about half its spacing gets a coarser voxel edge than the spacing alone
    would give; the same plane without noise does not (``max_noise``); nor does a surface so thick that a
    coarser grid does not smooth it (``noise_gain``)."""
    from scenegrep.indexer.proposals.geometric import surface_noise

    rng = np.random.default_rng(0)
    clean = np.c_[rng.random((40000, 2)), np.zeros(40000)]
    noisy = clean + np.c_[np.zeros((40000, 2)), rng.normal(0, 0.002, 40000)]
    cfg = GeometricConfig(max_voxels=10**9)
    h0 = cfg.spacing_factor * point_spacing(clean)
    assert surface_noise(clean, h0) < 1e-6 and surface_noise(noisy, h0) > cfg.max_noise
    assert choose_voxel_size(clean, cfg) == pytest.approx(h0)
    assert choose_voxel_size(noisy, cfg) >= 1.9 * cfg.spacing_factor * point_spacing(noisy)
    assert choose_voxel_size(noisy, GeometricConfig(max_voxels=10**9, max_noise=None)) == pytest.approx(
        cfg.spacing_factor * point_spacing(noisy))
    thick = clean + np.c_[np.zeros((40000, 2)), rng.normal(0, 0.008, 40000)]
    assert choose_voxel_size(thick, cfg) == pytest.approx(cfg.spacing_factor * point_spacing(thick))


def test_depth_check_drops_flying_pixels(tmp_path):
    """Three frames of one wall 1 m away; frame 0 also holds a patch of stray readings at 0.6 m (flying
    pixels). The depth check (:class:`~scenegrep.indexer.scans.DepthConsistency`) drops the stray patch,
    which no other frame sees, and keeps the wall, which they all do; without it the patch stays."""
    from PIL import Image

    from scenegrep.indexer.scans import DepthConsistency, Frame, backproject_frames

    K = np.array([[40.0, 0, 15.5], [0, 40.0, 11.5], [0, 0, 1]])
    frames = []
    for i in range(3):
        depth = np.full((24, 32), 1000, np.uint16)
        depth[::2, 1::2] = 0  # holes, as structured light leaves them
        if i == 0:
            depth[5:9, 5:9] = 600
        pose = np.eye(4)
        pose[0, 3] = 0.01 * i  # the camera slides 1 cm per frame
        Image.fromarray(depth).save(tmp_path / f"d{i}.png")
        Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(tmp_path / f"c{i}.png")
        frames.append(Frame(i, tmp_path / f"c{i}.png", tmp_path / f"d{i}.png", pose, K, K, (32, 24), (32, 24)))
    raw, _ = backproject_frames(frames, 0.0)
    checked, _ = backproject_frames(frames, 0.0, DepthConsistency())
    assert np.sum(np.abs(raw[:, 2] - 0.6) < 1e-3) == 16
    assert not np.any(np.abs(checked[:, 2] - 0.6) < 1e-3)
    wall = np.abs(raw[:, 2] - 1.0) < 1e-3
    assert len(checked) >= 0.9 * wall.sum()  # the wall stays (only pixels near the image border may go)
    one, _ = backproject_frames(frames[:1], 0.0, DepthConsistency())
    assert len(one) == len(backproject_frames(frames[:1], 0.0)[0])  # one frame: nothing to check against
