"""Readers of indexer/scans.py: ScanNet export layout, 7-Scenes layout, intrinsics scaling, typed errors."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from plyfile import PlyData, PlyElement

from scenegrep.indexer.scans import (
    FrameError,
    PointCloudError,
    ScanError,
    ScanLayoutError,
    ScanMetaError,
    detect_layout,
    read_scan,
    scale_intrinsics,
    voxel_downsample,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


# -- builders -----------------------------------------------------------------------------------------


def _write_ply(path: Path, n: int = 50, colors: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xyz = rng.random((n, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, (n, 3), dtype=np.uint8)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")] + ([("red", "u1"), ("green", "u1"), ("blue", "u1")] if colors else [])
    v = np.empty(n, dtype=fields)
    v["x"], v["y"], v["z"] = xyz.T
    if colors:
        v["red"], v["green"], v["blue"] = rgb.T
    PlyData([PlyElement.describe(v, "vertex")], text=False).write(str(path))
    return xyz, rgb


def _pose(i: int) -> np.ndarray:
    """A distinct rigid pose per id (rotation about z by i * 10 degrees, translation (i, 2i, 1))."""
    a = np.deg2rad(10 * i)
    m = np.eye(4)
    m[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    m[:3, 3] = [i, 2 * i, 1.0]
    return m


def _save_matrix(path: Path, m: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(path, m, fmt="%.9f")


def make_scannet(root: Path, n_frames: int = 12, color_size=(16, 12), depth_size=(8, 6),
                 K_color: np.ndarray | None = None, depth_intrinsics: np.ndarray | None = None) -> Path:
    """A tiny ScanNet-layout scan with frame ids 0..n_frames-1 (unpadded)."""
    root.mkdir(parents=True)
    _write_ply(root / f"{root.name}_vh_clean_2.ply")
    for sub in ("color", "depth", "pose"):
        (root / sub).mkdir()
    for i in range(n_frames):
        Image.fromarray(np.full((color_size[1], color_size[0], 3), 10 * i, np.uint8)).save(root / "color" / f"{i}.jpg")
        Image.fromarray(np.full((depth_size[1], depth_size[0]), 1000 + i, np.uint16)).save(root / "depth" / f"{i}.png")
        _save_matrix(root / "pose" / f"{i}.txt", _pose(i))
    K = np.eye(4)
    K[:3, :3] = K_color if K_color is not None else [[20.0, 0, 8.0], [0, 20.0, 6.0], [0, 0, 1]]
    _save_matrix(root / "intrinsic" / "intrinsic_color.txt", K)
    if depth_intrinsics is not None:
        _save_matrix(root / "intrinsic" / "intrinsic_depth.txt", depth_intrinsics)
    return root


K7 = np.array([[4.0, 0.0, 3.5], [0.0, 4.0, 2.5], [0.0, 0.0, 1.0]])  # 8x6 depth camera


def make_7scenes(root: Path, depths: list[np.ndarray], colors: list[np.ndarray], poses: list[np.ndarray]) -> Path:
    root.mkdir(parents=True)
    np.savetxt(root / "camera-intrinsics.txt", K7)
    for i, (d, c, p) in enumerate(zip(depths, colors, poses)):
        Image.fromarray(d.astype(np.uint16)).save(root / f"frame-{i:06d}.depth.png")
        Image.fromarray(c.astype(np.uint8)).save(root / f"frame-{i:06d}.color.png")
        np.savetxt(root / f"frame-{i:06d}.pose.txt", p)
    return root


# -- ScanNet layout -------------------------------------------------------------------------------------


def test_reads_synthetic_scannet_scan(synth_scans):
    root = synth_scans[0]
    scan = read_scan(root)
    gt = np.load(root / "gt_instances.npy")
    assert scan.layout == "scannet" == detect_layout(root)
    assert scan.name == root.name and scan.tags == ["synthetic"]
    assert scan.num_points == len(gt) > 10_000
    assert scan.points.dtype == np.float32 and scan.colors.dtype == np.uint8
    ply = PlyData.read(str(root / f"{root.name}.ply"))["vertex"].data
    np.testing.assert_array_equal(scan.points[:, 0], ply["x"])
    np.testing.assert_array_equal(scan.colors[:, 2], ply["blue"])
    # ids 0..19: a lexicographic sort would put 10 before 2.
    assert [f.frame_id for f in scan.frames] == list(range(20))
    f10 = scan.frames[10]
    np.testing.assert_allclose(f10.pose_c2w, np.loadtxt(root / "pose" / "10.txt"))
    np.testing.assert_allclose(f10.K_color, np.loadtxt(root / "intrinsic" / "intrinsic_color.txt")[:3, :3])
    assert f10.color_path == root / "color" / "10.jpg" and f10.depth_path == root / "depth" / "10.png"
    assert f10.color_size == f10.depth_size == (320, 240)
    assert f10.depth_scale == 1000.0
    assert f10.pose_c2w.dtype == np.float64 and f10.K_depth.shape == (3, 3)
    assert len(scan.content_hash) == 64 and read_scan(root).content_hash == scan.content_hash


def test_frame_ids_sorted_numerically_and_poses_match(tmp_path):
    scan = read_scan(make_scannet(tmp_path / "s0", n_frames=12))
    assert [f.frame_id for f in scan.frames] == list(range(12))
    for f in scan.frames:
        np.testing.assert_allclose(f.pose_c2w, _pose(f.frame_id), atol=1e-8)
    assert scan.source_file == tmp_path / "s0" / "s0_vh_clean_2.ply"


def test_depth_scale_name_and_tags_from_scan_json(tmp_path):
    root = make_scannet(tmp_path / "s0", n_frames=3)
    (root / "scan.json").write_text(json.dumps({"depth_scale": 5000, "name": "kitchen", "tags": ["home", "a"]}))
    scan = read_scan(root)
    assert scan.name == "kitchen" and scan.tags == ["home", "a"]
    assert all(f.depth_scale == 5000.0 for f in scan.frames)
    np.testing.assert_allclose(scan.frames[2].load_depth(), 1002 / 5000, rtol=1e-6)


@pytest.mark.parametrize("meta", [{"depth_scale": "1000"}, {"depth_scale": -1}, {"depth_scale": True},
                                  {"tags": "kitchen"}, {"tags": [1]}, {"name": 3}, {"name": ""}, [1, 2]])
def test_scan_json_types_are_checked(tmp_path, meta):
    root = make_scannet(tmp_path / "s0", n_frames=1)
    (root / "scan.json").write_text(json.dumps(meta))
    with pytest.raises(ScanMetaError, match="scan.json"):
        read_scan(root)


def test_point_cloud_only_scan_has_no_frames(tmp_path):
    root = tmp_path / "cloud"
    root.mkdir()
    xyz, rgb = _write_ply(root / "scene.ply", n=30)
    scan = read_scan(root)
    assert scan.frames == [] and scan.num_points == 30
    np.testing.assert_array_equal(scan.points, xyz)
    np.testing.assert_array_equal(scan.colors, rgb)


def test_prefers_vh_clean_2_among_several_plys(tmp_path):
    root = make_scannet(tmp_path / "scene0000_00", n_frames=1)
    _write_ply(root / "scene0000_00_vh_clean.ply", n=7)
    assert read_scan(root).source_file.name == "scene0000_00_vh_clean_2.ply"
    (root / "scene0000_00_vh_clean_2.ply").unlink()
    _write_ply(root / "other.ply", n=7)
    with pytest.raises(PointCloudError, match="several .ply"):
        read_scan(root)


# -- intrinsics scaling ---------------------------------------------------------------------------------


def test_scale_intrinsics_hand_computed():
    K = np.array([[600.0, 0.0, 320.0], [0.0, 580.0, 240.0], [0.0, 0.0, 1.0]])
    half = scale_intrinsics(K, (640, 480), (320, 240))
    np.testing.assert_allclose(half, [[300.0, 0, 160.0], [0, 290.0, 120.0], [0, 0, 1]])
    # ScanNet colour 1296x968 -> depth 640x480: the aspect ratio changes, so each axis scales on its own.
    Kc = np.array([[1170.0, 0.0, 648.0], [0.0, 1170.0, 484.0], [0.0, 0.0, 1.0]])
    Kd = scale_intrinsics(Kc, (1296, 968), (640, 480))
    sx, sy = 640 / 1296, 480 / 968
    np.testing.assert_allclose(Kd, [[1170 * sx, 0, 648 * sx], [0, 1170 * sy, 484 * sy], [0, 0, 1]])
    assert Kd[0, 0] == pytest.approx(577.7778, abs=1e-3) and Kd[1, 1] == pytest.approx(580.1653, abs=1e-3)


def test_depth_intrinsics_scaled_from_colour_when_no_depth_file(tmp_path):
    Kc = np.array([[1170.0, 0.0, 648.0], [0.0, 1170.0, 484.0], [0.0, 0.0, 1.0]])
    scan = read_scan(make_scannet(tmp_path / "s0", n_frames=1, color_size=(1296, 968), depth_size=(640, 480),
                                  K_color=Kc))
    f = scan.frames[0]
    assert f.color_size == (1296, 968) and f.depth_size == (640, 480)
    np.testing.assert_allclose(f.K_color, Kc)
    np.testing.assert_allclose(f.K_depth, scale_intrinsics(Kc, (1296, 968), (640, 480)))


def test_depth_intrinsics_file_is_used_when_present(tmp_path):
    Kd = np.eye(4)
    Kd[:3, :3] = [[7.0, 0, 3.0], [0, 8.0, 2.0], [0, 0, 1]]
    f = read_scan(make_scannet(tmp_path / "s0", n_frames=1, depth_intrinsics=Kd)).frames[0]
    np.testing.assert_allclose(f.K_depth, Kd[:3, :3])


# -- errors ---------------------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(ScanLayoutError, match="no such folder") as e:
        read_scan(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)


def test_unknown_layout(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ScanLayoutError, match="no known layout") as e:
        detect_layout(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_scannet_folders_without_point_cloud(tmp_path):
    root = make_scannet(tmp_path / "s0", n_frames=1)
    (root / "s0_vh_clean_2.ply").unlink()
    with pytest.raises(ScanLayoutError, match="no point cloud"):
        read_scan(root)


def test_ply_without_colours(tmp_path):
    root = tmp_path / "s0"
    root.mkdir()
    _write_ply(root / "scene.ply", colors=False)
    with pytest.raises(PointCloudError, match="colour") as e:
        read_scan(root)
    assert "scene.ply" in str(e.value)


def test_ply_without_vertices(tmp_path):
    root = tmp_path / "s0"
    root.mkdir()
    _write_ply(root / "scene.ply", n=0)
    with pytest.raises(PointCloudError, match="no vertices") as e:
        read_scan(root)
    assert "scene.ply" in str(e.value)


def test_unreadable_ply(tmp_path):
    root = tmp_path / "s0"
    root.mkdir()
    (root / "scene.ply").write_bytes(b"not a ply at all\n\x00\x01")
    with pytest.raises(PointCloudError, match="unreadable PLY") as e:
        read_scan(root)
    assert "scene.ply" in str(e.value)


def test_pose_not_4x4(tmp_path):
    root = make_scannet(tmp_path / "s0", n_frames=4)
    np.savetxt(root / "pose" / "3.txt", np.eye(4)[:3])
    with pytest.raises(FrameError, match="4x4") as e:
        read_scan(root)
    assert str(root / "pose" / "3.txt") in str(e.value)


def test_singular_pose(tmp_path):
    root = make_scannet(tmp_path / "s0", n_frames=4)
    m = np.eye(4)
    m[:3, :3] = 0.0
    np.savetxt(root / "pose" / "2.txt", m)
    with pytest.raises(FrameError, match="singular") as e:
        read_scan(root)
    assert "2.txt" in str(e.value)


def test_unreadable_image(tmp_path):
    root = make_scannet(tmp_path / "s0", n_frames=4)
    (root / "color" / "3.jpg").write_bytes(b"garbage")
    with pytest.raises(FrameError, match="unreadable colour image") as e:
        read_scan(root)
    assert str(root / "color" / "3.jpg") in str(e.value)


def test_mismatched_frame_ids_name_the_missing_ids(tmp_path):
    root = make_scannet(tmp_path / "s0", n_frames=12)
    (root / "depth" / "5.png").unlink()
    (root / "pose" / "11.txt").unlink()
    with pytest.raises(FrameError) as e:
        read_scan(root)
    msg = str(e.value)
    assert "depth/ lacks ids [5]" in msg and "pose/ lacks ids [11]" in msg and "color/ lacks" not in msg
    assert str(root) in msg


def test_missing_frame_folder(tmp_path):
    root = make_scannet(tmp_path / "s0", n_frames=2)
    shutil.rmtree(root / "pose")
    with pytest.raises(ScanLayoutError, match="folder missing") as e:
        read_scan(root)
    assert "pose" in str(e.value)


@pytest.mark.parametrize("content", ["1 2\n3 4\n", "a b c\n", "0 0 0\n0 0 0\n0 0 1\n"])
def test_bad_intrinsics(tmp_path, content):
    root = make_scannet(tmp_path / "s0", n_frames=2)
    (root / "intrinsic" / "intrinsic_color.txt").write_text(content)
    with pytest.raises(FrameError) as e:
        read_scan(root)
    assert "intrinsic_color.txt" in str(e.value)


def test_missing_intrinsics(tmp_path):
    root = make_scannet(tmp_path / "s0", n_frames=2)
    (root / "intrinsic" / "intrinsic_color.txt").unlink()
    with pytest.raises(ScanLayoutError, match="intrinsic_color.txt"):
        read_scan(root)


def test_nan_pose_frame_is_skipped_with_warning(tmp_path, caplog):
    root = make_scannet(tmp_path / "s0", n_frames=5)
    np.savetxt(root / "pose" / "3.txt", np.full((4, 4), -np.inf))
    m = _pose(1)
    m[0, 3] = np.nan
    np.savetxt(root / "pose" / "1.txt", m)
    with caplog.at_level(logging.WARNING, logger="scenegrep.indexer.scans"):
        scan = read_scan(root)
    assert [f.frame_id for f in scan.frames] == [0, 2, 4]
    assert any("inf/NaN" in r.getMessage() and "[1, 3]" in r.getMessage() for r in caplog.records)


def test_errors_are_one_line_scan_errors(tmp_path):
    root = make_scannet(tmp_path / "s0", n_frames=2)
    np.savetxt(root / "pose" / "1.txt", np.eye(3))
    with pytest.raises(ScanError) as e:
        read_scan(root)
    assert "\n" not in str(e.value) and e.value.path == root / "pose" / "1.txt"


# -- content hash ---------------------------------------------------------------------------------------


def test_content_hash_tracks_file_contents_not_location(tmp_path):
    root = make_scannet(tmp_path / "s0", n_frames=3)
    h = read_scan(root).content_hash
    moved = tmp_path / "elsewhere" / "s0"
    shutil.copytree(root, moved)
    assert read_scan(moved).content_hash == h
    np.savetxt(moved / "pose" / "2.txt", _pose(7))
    assert read_scan(moved).content_hash != h


# -- 7-Scenes layout ------------------------------------------------------------------------------------


def _wall_pose() -> np.ndarray:
    """Camera at (1, 2, 3) looking along world +x (x_cam = -y_world, y_cam = -z_world, z_cam = +x_world)."""
    m = np.eye(4)
    m[:3, :3] = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float)
    m[:3, 3] = [1.0, 2.0, 3.0]
    return m


def test_7scenes_backprojection_lands_on_the_wall(tmp_path):
    depth = np.full((6, 8), 2000, np.uint16)  # a flat wall 2 m in front of the camera
    depth[0, 0] = 65535
    depth[5, 7] = 0
    color = np.zeros((6, 8, 3), np.uint8)
    root = make_7scenes(tmp_path / "wall", [depth], [color], [_wall_pose()])
    assert detect_layout(root) == "7scenes"
    scan = read_scan(root, voxel_size=0)
    assert scan.layout == "7scenes" and scan.source_file is None and scan.num_points == 46
    v, u = np.mgrid[0:6, 0:8]
    ok = (depth > 0) & (depth < 65535)
    cam = np.stack([(u[ok] - 3.5) / 4 * 2, (v[ok] - 2.5) / 4 * 2, np.full(ok.sum(), 2.0)], 1)
    expected = cam @ _wall_pose()[:3, :3].T + [1.0, 2.0, 3.0]
    np.testing.assert_allclose(np.sort(scan.points, axis=0), np.sort(expected, axis=0), atol=1e-6)
    np.testing.assert_allclose(scan.points[:, 0], 3.0, atol=1e-6)  # the wall is the plane x = 3


def test_7scenes_colour_sampled_at_colour_resolution(tmp_path):
    depth = np.full((6, 8), 1000, np.uint16)
    cv, cu = np.mgrid[0:12, 0:16]  # colour is 16x12: twice the depth resolution
    color = np.stack([cu * 10, cv * 10, np.zeros_like(cu)], -1)
    scan = read_scan(make_7scenes(tmp_path / "c", [depth], [color], [np.eye(4)]), voxel_size=0)
    f = scan.frames[0]
    np.testing.assert_allclose(f.K_depth, K7)
    np.testing.assert_allclose(f.K_color, [[8.0, 0, 7.0], [0, 8.0, 5.0], [0, 0, 1]])
    # Depth pixel (u, v) -> camera point (x, y) -> colour pixel (2u, 2v).
    u = np.rint(scan.points[:, 0] * 4 + 3.5)
    v = np.rint(scan.points[:, 1] * 4 + 2.5)
    np.testing.assert_array_equal(scan.colors[:, 0], 20 * u)
    np.testing.assert_array_equal(scan.colors[:, 1], 20 * v)


def test_7scenes_voxel_downsampling_averages_frames(tmp_path):
    depth = np.full((6, 8), 1500, np.uint16)
    depth[2, 3] = 65535
    colors = [np.full((6, 8, 3), 100, np.uint8), np.full((6, 8, 3), 201, np.uint8)]
    root = make_7scenes(tmp_path / "v", [depth, depth], colors, [np.eye(4), np.eye(4)])
    scan = read_scan(root, voxel_size=0.01)  # the two frames' points coincide: one voxel each pair
    assert scan.num_points == 47 and len(scan.frames) == 2
    np.testing.assert_array_equal(scan.colors, 150)  # mean of 100 and 201 = 150.5 -> rint -> 150
    np.testing.assert_allclose(scan.points[:, 2], 1.5, atol=1e-6)


def test_voxel_downsample_means():
    pts = np.array([[0.001, 0.002, 0.003], [0.009, 0.008, 0.007], [0.5, 0.5, 0.5]])
    cols = np.array([[0, 10, 20], [100, 110, 120], [7, 7, 7]], np.uint8)
    p, c = voxel_downsample(pts, cols, 0.01)
    assert p.dtype == np.float32 and c.dtype == np.uint8
    np.testing.assert_allclose(p, [[0.005, 0.005, 0.005], [0.5, 0.5, 0.5]], atol=1e-7)
    np.testing.assert_array_equal(c, [[50, 60, 70], [7, 7, 7]])


def test_7scenes_frame_step_and_hash(tmp_path):
    depths = [np.full((6, 8), 1000 + 500 * i, np.uint16) for i in range(4)]
    colors = [np.zeros((6, 8, 3), np.uint8)] * 4
    root = make_7scenes(tmp_path / "s", depths, colors, [np.eye(4)] * 4)
    # four frames of one pose seeing a wall at four depths disagree: without the depth check
    every = read_scan(root, voxel_size=0, depth_check=False)
    half = read_scan(root, frame_step=2, voxel_size=0, depth_check=False)
    assert len(every.frames) == len(half.frames) == 4  # all frames listed either way
    assert every.num_points == 4 * 48 and half.num_points == 2 * 48
    assert sorted(np.unique(half.points[:, 2]).round(3)) == [1.0, 2.0]
    assert every.content_hash != half.content_hash  # same files, different cloud


def test_7scenes_errors(tmp_path, caplog):
    root = tmp_path / "empty7"
    root.mkdir()
    np.savetxt(root / "camera-intrinsics.txt", K7)
    with pytest.raises(ScanLayoutError, match="no frames"):
        read_scan(root)

    d, c = np.full((6, 8), 1000, np.uint16), np.zeros((6, 8, 3), np.uint8)
    nan = make_7scenes(tmp_path / "nan", [d, d], [c, c], [np.full((4, 4), np.nan)] * 2)
    with caplog.at_level(logging.WARNING), pytest.raises(FrameError, match="all 2 frames"):
        read_scan(nan)

    odd = make_7scenes(tmp_path / "odd", [d, d], [c, c], [np.eye(4)] * 2)
    (odd / "frame-000001.color.png").unlink()
    with pytest.raises(FrameError, match=r"color files lacks ids \[1\]"):
        read_scan(odd)

    nok = make_7scenes(tmp_path / "nok", [d], [c], [np.eye(4)])
    (nok / "camera-intrinsics.txt").unlink()
    with pytest.raises(ScanLayoutError, match="camera-intrinsics.txt"):
        read_scan(nok)


def test_labelfusion_shelf_reads():
    root = SHARED / "data" / "labelfusion-shelf"
    if not root.is_dir():
        pytest.skip(f"{root} is not present")
    scan = read_scan(root)
    assert scan.layout == "7scenes" and len(scan.frames) == 15
    assert [f.frame_id for f in scan.frames] == list(range(15))
    assert scan.num_points > 1000
    f = scan.frames[0]
    assert f.color_size == f.depth_size == (640, 480)
    assert f.K_depth[0, 0] == pytest.approx(611.6857, abs=1e-3)
    # Median depth is ~0.44 m: the cloud lies within ~1.5 m of every camera centre.
    centres = np.array([fr.pose_c2w[:3, 3] for fr in scan.frames])
    dist = np.linalg.norm(scan.points[:, None, :] - centres[None], axis=2).min(axis=1)
    assert np.percentile(dist, 95) < 1.5
    assert scan.colors.std() > 5  # real colours, not a constant
