"""Synthetic rooms: determinism, ground truth consistent with the cloud, renders consistent with the cloud."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy.spatial import cKDTree

from scenegrep.indexer.scans import backproject_frame, read_scan
from scenegrep.indexer.synthetic import CATEGORIES, PALETTE, generate_scan, generate_scans, scan_seed

PALETTE_NAMES = {name for name, _ in PALETTE}


def _project(scan, frame, pts: np.ndarray):
    """Pixel (u, v) (rounded, pixel centres at integers), camera z, and in-image mask for world points."""
    w2c = np.linalg.inv(frame.pose_c2w)
    cam = pts @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.rint(frame.K_depth[0, 0] * cam[:, 0] / z + frame.K_depth[0, 2])
        v = np.rint(frame.K_depth[1, 1] * cam[:, 1] / z + frame.K_depth[1, 2])
    w, h = frame.depth_size
    inside = (z > 0.05) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    return u.astype(np.int64, copy=False), v.astype(np.int64, copy=False), z, inside


def test_same_seed_same_bytes(tmp_path):
    a = generate_scan(tmp_path / "a", "room", seed=11)
    b = generate_scan(tmp_path / "b", "room", seed=11)
    for rel in ("room.ply", "depth/5.png", "color/7.jpg", "pose/3.txt", "gt_instances.npy", "gt_labels.json"):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = generate_scan(tmp_path / "c", "room", seed=12)
    assert (a / "room.ply").read_bytes() != (c / "room.ply").read_bytes()


def test_generate_scans_names_and_seeds(synth_dir, synth_scans, tmp_path):
    assert [p.name for p in synth_scans] == ["synth_000", "synth_001"]
    # conftest made them with seed 7: scan 1 is generate_scan with the derived seed.
    again = generate_scan(tmp_path, "synth_001", scan_seed(7, 1))
    assert (again / "synth_001.ply").read_bytes() == (synth_dir / "synth_001" / "synth_001.ply").read_bytes()
    assert scan_seed(7, 0) != scan_seed(7, 1) != scan_seed(8, 1)


def test_regenerating_replaces_only_synthetic_folders(tmp_path):
    generate_scans(tmp_path, 1, seed=1)
    generate_scans(tmp_path, 1, seed=1)  # overwrites its own output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_scan(tmp_path, "mine", seed=0)
    assert (tmp_path / "mine" / "data.txt").read_text() == "keep me"


def test_ground_truth_matches_cloud(synth_scans):
    for root in synth_scans:
        scan = read_scan(root)
        gt = np.load(root / "gt_instances.npy")
        labels = json.loads((root / "gt_labels.json").read_text())
        assert gt.dtype == np.int32 and gt.shape == (scan.num_points,)
        assert 30_000 <= scan.num_points <= 60_000
        k = len(labels)
        assert 5 <= k <= 15
        assert set(np.unique(gt)) == set(range(k + 1))  # 0 = floor/walls, objects 1..K
        assert set(labels) == {str(i) for i in range(1, k + 1)}
        colours = [v.split(" ")[0] for v in labels.values()]
        assert all(c in PALETTE_NAMES for c in colours) and len(set(colours)) == k  # distinct colours
        assert all(v.split(" ")[1] in CATEGORIES for v in labels.values())
        # Masks are not contiguous index ranges (point order is shuffled).
        idx = np.flatnonzero(gt == 1)
        assert idx[-1] - idx[0] + 1 > 2 * len(idx)

        pts = scan.points
        trees = {i: cKDTree(pts[gt == i]) for i in range(1, k + 1)}
        for i in range(1, k + 1):
            obj = pts[gt == i]
            assert len(obj) > 100
            assert obj[:, 2].min() < 0.03  # rests on the floor
            for j in range(i + 1, k + 1):
                d, _ = trees[j].query(obj, k=1)
                assert d.min() > 0.14, (labels[str(i)], labels[str(j)])  # >= ~15 cm apart


def test_rendered_depth_matches_projected_points(synth_scans):
    """Project object points into every frame: a pixel is never farther than a point that should occlude
    it, and most in-view points agree with the rendered depth to 1.5 cm."""
    root = synth_scans[0]
    scan = read_scan(root)
    gt = np.load(root / "gt_instances.npy")
    obj = gt > 0
    pts = scan.points[obj].astype(np.float64)
    total_in, total_agree, total_behind = 0, 0, 0
    for f in scan.frames:
        depth = f.load_depth()
        u, v, z, inside = _project(scan, f, pts)
        d = depth[v[inside], u[inside]]
        zi = z[inside]
        total_in += int(inside.sum())
        total_agree += int((np.abs(d - zi) < 0.015).sum())
        # The rendered surface is farther than a surface point: only possible at silhouettes.
        total_behind += int(((d > zi + 0.02) | (d == 0)).sum())
    assert total_in > 10_000
    assert total_agree / total_in > 0.3  # the rest are back faces and occluded points
    assert total_behind / total_in < 0.03


def test_backprojected_depth_lies_on_the_surfaces(synth_scans):
    """Rendered depth back-projected with the written pose and intrinsics: floor and wall pixels land on the
    hand-computed planes (z = 0, x = 0, x = Lx, y = 0, y = Ly) to the millimetre, and every pixel lies within
    the sampling spacing of the cloud (the converse of the projection test)."""
    root = synth_scans[0]
    scan = read_scan(root)
    gt = np.load(root / "gt_instances.npy")
    room = scan.points[gt == 0]
    lx, ly = room[:, 0].max(), room[:, 1].max()  # walls are sampled exactly on their planes
    tree = cKDTree(scan.points)
    dists, plane_err = [], []
    for f in scan.frames[::4]:
        world, _ = backproject_frame(f)
        assert len(world) > 0.5 * f.depth_size[0] * f.depth_size[1]  # no holes below the walls' top
        d, nn = tree.query(world, k=1)
        dists.append(d)
        s = world[gt[nn] == 0]
        plane_err.append(np.min(np.abs([s[:, 2], s[:, 0], s[:, 0] - lx, s[:, 1], s[:, 1] - ly]), axis=0))
    d, err = np.concatenate(dists), np.concatenate(plane_err)
    assert np.percentile(d, 99) < 0.035
    assert len(err) > 10_000 and np.mean(err < 0.002) > 0.98


def test_every_object_is_seen_by_several_frames(synth_scans):
    for root in synth_scans:
        scan = read_scan(root)
        gt = np.load(root / "gt_instances.npy")
        k = int(gt.max())
        seen = np.zeros(k + 1, int)
        for f in scan.frames:
            depth = f.load_depth()
            u, v, z, inside = _project(scan, f, scan.points.astype(np.float64))
            vis = np.zeros(len(z), bool)
            vis[inside] = np.abs(depth[v[inside], u[inside]] - z[inside]) < 0.015
            seen += np.bincount(gt[vis], minlength=k + 1) >= 30
        assert seen[1:].min() >= 2, seen


def test_image_colours_match_point_colours(synth_scans):
    """Same shading for points and pixels: a crop of an object looks like its points."""
    root = synth_scans[1]
    scan = read_scan(root)
    diffs = []
    for f in scan.frames[:8]:
        depth, rgb = f.load_depth(), f.load_color()
        u, v, z, inside = _project(scan, f, scan.points.astype(np.float64))
        vis = np.zeros(len(z), bool)
        vis[inside] = np.abs(depth[v[inside], u[inside]] - z[inside]) < 0.005
        diffs.append(np.abs(rgb[v[vis], u[vis]].astype(int) - scan.colors[vis].astype(int)).mean(axis=1))
    diff = np.concatenate(diffs)
    assert len(diff) > 5000
    assert np.median(diff) < 10


def test_files_of_the_layout(synth_scans):
    root = synth_scans[0]
    meta = json.loads((root / "scan.json").read_text())
    assert meta["name"] == root.name and meta["tags"] == ["synthetic"]
    K = np.loadtxt(root / "intrinsic" / "intrinsic_color.txt")
    assert K.shape == (4, 4) and np.allclose(K[3], [0, 0, 0, 1])
    pose = np.loadtxt(root / "pose" / "0.txt")
    assert pose.shape == (4, 4) and np.allclose(pose[:3, :3].T @ pose[:3, :3], np.eye(3), atol=1e-8)
    assert 1.3 <= pose[2, 3] <= 1.8  # camera height
    with Image.open(root / "depth" / "0.png") as im:
        assert im.mode.startswith("I;16") and im.size == (320, 240)
    with Image.open(root / "color" / "0.jpg") as im:
        assert im.format == "JPEG" and im.size == (320, 240)
