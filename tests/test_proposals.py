"""Mask proposers: the geometric proposer's steps and output, file import, the registry."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from scenegrep.indexer.proposals import make_proposer, proposer_names, register_proposer
from scenegrep.indexer.proposals.base import MaskFileError, MaskSet
from scenegrep.indexer.proposals.files import FileProposer, dense_to_maskset, load_mask_file
from scenegrep.indexer.proposals.geometric import (
    GeometricConfig,
    GeometricProposer,
    Hierarchy,
    VoxelGraph,
    felzenszwalb,
    orient_normals,
    pca_normals,
    propose_points,
    voxelize,
)
from scenegrep.indexer.scans import Scan

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OM3D_SCENE = SHARED / "fixtures" / "openmask3d-features" / "scene"


# -- a small in-test room: grey floor + coloured boxes ----------------------------------------------


def _box_surface(rng, lo, hi, spacing):
    """Points on the 5 visible faces of an axis-aligned box (no bottom)."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    pts = []
    for axis in range(3):
        for side in (0, 1):
            if axis == 2 and side == 0:
                continue
            a, b = [i for i in range(3) if i != axis]
            na = max(2, int((hi[a] - lo[a]) / spacing))
            nb = max(2, int((hi[b] - lo[b]) / spacing))
            u, v = np.meshgrid((np.arange(na) + rng.random(na)) / na, (np.arange(nb) + rng.random(nb)) / nb)
            p = np.empty((u.size, 3))
            p[:, axis] = hi[axis] if side else lo[axis]
            p[:, a] = lo[a] + u.ravel() * (hi[a] - lo[a])
            p[:, b] = lo[b] + v.ravel() * (hi[b] - lo[b])
            pts.append(p)
    return np.concatenate(pts)


def boxes_on_floor(seed: int = 0, spacing: float = 0.015):
    """(points, colors, gt): a 2.4 x 2 m floor (gt 0) with three boxes (gt 1..3), shaded like the
    synthetic rooms (a fixed light), colour noise, shuffled."""
    rng = np.random.default_rng(seed)
    light = np.array([0.35, 0.25, 1.0]) / np.linalg.norm([0.35, 0.25, 1.0])
    boxes = [((0.3, 0.3, 0), (0.7, 0.6, 0.4), (215, 30, 35)),
             ((1.2, 0.4, 0), (1.5, 0.9, 0.25), (35, 75, 215)),
             ((0.6, 1.2, 0), (1.1, 1.6, 0.6), (30, 160, 60))]
    n = int(2.4 / spacing) * int(2.0 / spacing)
    floor = np.stack([rng.random(n) * 2.4, rng.random(n) * 2.0, np.zeros(n)], axis=1)
    under = np.zeros(n, bool)
    for lo, hi, _ in boxes:
        under |= np.all((floor[:, :2] >= lo[:2]) & (floor[:, :2] <= hi[:2]), axis=1)
    pts, cols, ids = [floor[~under]], [np.tile([150, 142, 132], ((~under).sum(), 1)) * (0.55 + 0.45 * light[2])], \
        [np.zeros((~under).sum(), np.int32)]
    for k, (lo, hi, rgb) in enumerate(boxes, 1):
        p = _box_surface(rng, lo, hi, spacing)
        centre = (np.asarray(lo) + np.asarray(hi)) / 2
        # face normal = the axis on which the point sits on the box boundary
        rel = (p - centre) / ((np.asarray(hi) - np.asarray(lo)) / 2)
        nrm = np.zeros_like(p)
        ax = np.argmax(np.abs(rel), axis=1)
        nrm[np.arange(len(p)), ax] = np.sign(rel[np.arange(len(p)), ax])
        shade = 0.55 + 0.45 * np.clip(nrm @ light, 0, None)
        pts.append(p)
        cols.append(np.asarray(rgb)[None, :] * shade[:, None])
        ids.append(np.full(len(p), k, np.int32))
    points = np.concatenate(pts) + rng.normal(0, 0.002, (sum(len(p) for p in pts), 3))
    colors = np.clip(np.concatenate(cols) + rng.normal(0, 5, (len(points), 3)), 0, 255).astype(np.uint8)
    gt = np.concatenate(ids)
    order = rng.permutation(len(points))
    return points[order].astype(np.float32), colors[order], gt[order]


def _scan(points, colors, name="room") -> Scan:
    return Scan(name, Path("."), "scannet", points, colors)


@pytest.fixture(scope="module")
def room():
    return boxes_on_floor()


@pytest.fixture(scope="module")
def room_masks(room):
    points, colors, _ = room
    return GeometricProposer().propose(_scan(points, colors))


def _assert_well_formed(ms: MaskSet, n: int):
    assert ms.num_points == n
    for m in ms:
        assert m.size > 0
        assert np.all(np.diff(m.astype(np.int64)) > 0), "indices sorted and unique within a mask"
        assert int(m.max()) < n
    assert np.all((ms.scores >= 0) & (ms.scores <= 1))


# -- geometric proposer ----------------------------------------------------------------------------


def test_geometric_output_well_formed(room, room_masks):
    points, _, _ = room
    ms = room_masks
    assert len(ms) > 0
    _assert_well_formed(ms, len(points))
    cfg = GeometricConfig()
    assert np.all(ms.sizes >= cfg.min_points)
    assert np.all(np.diff(ms.scores) <= 0), "sorted by descending score"
    iou = ms.iou()
    np.fill_diagonal(iou, 0)
    assert iou.max() <= cfg.dedupe_iou, "near-duplicates removed"


def test_geometric_finds_each_box_whole(room, room_masks):
    _, _, gt = room
    gtm = MaskSet.from_lists([np.flatnonzero(gt == k) for k in (1, 2, 3)], None, gt.size)
    best = room_masks.iou(gtm).max(axis=0)
    assert np.all(best > 0.9), best


def test_geometric_ap_on_in_test_room(room, room_masks):
    from scenegrep.indexer.evaluate import evaluate_masks

    _, _, gt = room
    r = evaluate_masks(room_masks, gt)
    assert r.ap50 > 0.9 and r.ap > 0.8, r


def test_geometric_is_deterministic(room, room_masks):
    points, colors, _ = room
    again = GeometricProposer().propose(_scan(points, colors))
    assert np.array_equal(again.offsets, room_masks.offsets)
    assert np.array_equal(again.point_indices, room_masks.point_indices)
    assert np.array_equal(again.scores, room_masks.scores)


def test_geometric_debug_and_stats(room):
    points, colors, _ = room
    dbg: dict = {}
    ms, stats = propose_points(points, colors, GeometricConfig(), None, dbg)
    assert {"voxels", "edges", "superpoints", "proposals", "t_total"} <= set(stats)
    for key in ("node", "birth", "death", "persistence", "area"):
        assert len(dbg[key]) == len(ms)
    assert np.all(dbg["birth"] <= dbg["death"])


def test_geometric_tiny_and_empty_clouds():
    prop = GeometricProposer()
    empty = prop.propose(_scan(np.zeros((0, 3)), np.zeros((0, 3))))
    assert len(empty) == 0 and empty.num_points == 0
    few = prop.propose(_scan(np.random.default_rng(0).random((3, 3)), np.zeros((3, 3))))
    assert len(few) == 0 and few.num_points == 3
    # a small cloud (fewer voxels than knn) must not crash
    rng = np.random.default_rng(1)
    small = prop.propose(_scan(rng.random((300, 3)) * 0.05, rng.integers(0, 255, (300, 3))))
    _assert_well_formed(small, 300)


def test_geometric_max_proposals_and_min_points(room):
    points, colors, _ = room
    ms = GeometricProposer(GeometricConfig(max_proposals=2, min_points=500)).propose(_scan(points, colors))
    assert len(ms) <= 2 and np.all(ms.sizes >= 500)


def test_config_validation():
    with pytest.raises(ValueError):
        GeometricConfig(voxel_size=0)
    with pytest.raises(ValueError):
        GeometricConfig(merge_levels=())
    assert GeometricConfig(merge_levels=(0.3, 0.1)).merge_levels == (0.1, 0.3)


def test_runtime_small_scan(room):
    points, colors, _ = room  # ~30k points
    t = time.perf_counter()
    GeometricProposer().propose(_scan(points, colors))
    assert time.perf_counter() - t < 5.0


# -- steps -----------------------------------------------------------------------------------------


def test_voxelize_averages_and_keeps_inverse():
    pts = np.array([[0.001, 0.001, 0.001], [0.009, 0.009, 0.009], [0.5, 0.5, 0.5]], np.float32)
    cols = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0]], np.uint8)
    g = voxelize(pts, cols, 0.02)
    assert g.xyz.shape == (2, 3)
    assert g.inverse[0] == g.inverse[1] != g.inverse[2]
    v = g.inverse[0]
    assert np.allclose(g.xyz[v], [0.005, 0.005, 0.005], atol=1e-6)
    assert np.allclose(g.rgb[v], [0.5, 0.5, 0.5])
    assert g.counts[v] == 2 and g.counts[g.inverse[2]] == 1


def test_pca_normals_of_a_plane():
    rng = np.random.default_rng(0)
    xyz = np.c_[rng.random((500, 2)), np.zeros(500)]
    from scipy.spatial import cKDTree

    _, nbr = cKDTree(xyz).query(xyz, k=10)
    n = pca_normals(xyz, nbr)
    assert np.allclose(np.abs(n[:, 2]), 1.0, atol=1e-6)


def test_orient_normals_consistent_and_facing_viewpoint():
    rng = np.random.default_rng(0)
    # a folded sheet: floor z=0 (x in [0,1]) and a wall x=1 (z in [0,1]), normals randomly flipped
    a = rng.random((2000, 2))
    floor = np.c_[a[:1000, 0], a[:1000, 1], np.zeros(1000)]
    wall = np.c_[np.ones(1000), a[1000:, 1], a[1000:, 0]]
    xyz = np.vstack([floor, wall])
    from scipy.spatial import cKDTree

    _, nbr = cKDTree(xyz).query(xyz, k=12)
    n = pca_normals(xyz, nbr) * rng.choice([-1.0, 1.0], (2000, 1))
    src = np.repeat(np.arange(2000), 11)
    dst = nbr[:, 1:].ravel()
    lo, hi = np.minimum(src, dst), np.maximum(src, dst)
    key = np.unique(lo * 2000 + hi)
    out = orient_normals(xyz, n, key // 2000, key % 2000, viewpoints=np.array([[0.3, 0.5, 0.7]]))
    away_from_fold = (xyz[:, 0] < 0.8) & (xyz[:, 2] < 0.01) | (xyz[:, 2] > 0.2) & (xyz[:, 0] > 0.99)
    on_floor = away_from_fold & (xyz[:, 2] < 0.01)
    on_wall = away_from_fold & (xyz[:, 0] > 0.99)
    assert np.all(out[on_floor, 2] > 0.9), "floor normals point up, towards the viewer"
    assert np.all(out[on_wall, 0] < -0.9), "wall normals point into the room"


def test_felzenszwalb_splits_at_the_heavy_edge():
    # two chains of 10 nodes with cheap edges, joined by one expensive edge
    i = np.r_[np.arange(9), np.arange(10, 19), 9]
    j = np.r_[np.arange(1, 10), np.arange(11, 20), 10]
    w = np.r_[np.full(18, 0.01), 5.0]
    g = VoxelGraph(i, j, w, np.zeros_like(w), w)
    labels = felzenszwalb(20, g, k=1.0, min_size=1)
    assert len(np.unique(labels)) == 2
    assert len(np.unique(labels[:10])) == 1 and labels[0] != labels[10]
    # min_size larger than a chain forces the merge
    assert len(np.unique(felzenszwalb(20, g, k=1.0, min_size=15))) == 1


def test_hierarchy_cuts_are_nested_partitions():
    # merges: (0,1)->4 at 0.1, (2,3)->5 at 0.2, (4,5)->6 at 0.5
    h = Hierarchy(4, np.array([0, 2, 4]), np.array([1, 3, 5]), np.array([0.1, 0.2, 0.5]))
    assert list(h.cut(0.05)) == [0, 1, 2, 3]
    assert list(h.cut(0.15)) == [4, 4, 2, 3]
    assert list(h.cut(0.3)) == [4, 4, 5, 5]
    assert list(h.cut(1.0)) == [6, 6, 6, 6]
    birth, death = h.birth_death()
    assert list(birth) == [0, 0, 0, 0, 0.1, 0.2, 0.5]
    assert list(death[:6]) == [0.1, 0.1, 0.2, 0.2, 0.5, 0.5] and np.isinf(death[6])


def test_dedupe_indices_matches_dedupe():
    ms = MaskSet.from_lists([np.arange(100), np.arange(99), np.arange(200, 300), np.arange(100)],
                            [0.5, 0.9, 0.7, 0.5], 400)
    keep = ms.dedupe_indices(0.9)
    assert list(keep) == [1, 2]  # 0 and 3 are near-duplicates of 1 (IoU 0.99)
    d = ms.dedupe(0.9)
    assert np.array_equal(d.point_indices, ms.select(keep).point_indices)


# -- file proposer ---------------------------------------------------------------------------------


def _dense(n=500, m=4, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, m)) < 0.2).astype(np.float32)


def _same(a: MaskSet, b: MaskSet) -> bool:
    return (a.num_points == b.num_points and np.array_equal(a.offsets, b.offsets)
            and np.array_equal(a.point_indices, b.point_indices))


def test_npz_round_trip(tmp_path):
    ms = MaskSet.from_lists([np.array([3, 1, 2]), np.array([7]), np.array([], int)], [0.2, 0.9, 0.5], 10)
    ms.save_npz(tmp_path / "m.npz")
    back = FileProposer(tmp_path / "m.npz").propose(_scan(np.zeros((10, 3)), np.zeros((10, 3))))
    assert _same(ms, back) and np.array_equal(ms.scores, back.scores)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_openmask3d_numpy_pt(tmp_path, dtype):
    import torch

    dense = _dense().astype(dtype)
    torch.save(dense, tmp_path / "scene_masks.pt")
    got = load_mask_file(tmp_path / "scene_masks.pt", 500)
    assert _same(got, MaskSet.from_dense(dense))
    assert np.all(got.scores == 1)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bool", "uint8", "bfloat16"])
def test_torch_tensor_pt(tmp_path, dtype):
    import torch

    dense = _dense(seed=1)
    torch.save(torch.from_numpy(dense).to(getattr(torch, dtype)), tmp_path / "t.pt")
    assert _same(load_mask_file(tmp_path / "t.pt"), MaskSet.from_dense(dense))


def test_file_proposer_name_template(tmp_path):
    import torch

    torch.save(_dense(n=20), tmp_path / "kitchen_masks.pt")
    prop = make_proposer("file", path=tmp_path / "{name}_masks.pt")
    assert prop.name == "file"
    ms = prop.propose(_scan(np.zeros((20, 3)), np.zeros((20, 3)), name="kitchen"))
    assert ms.num_points == 20


def test_num_points_mismatch_names_file_and_counts(tmp_path):
    import torch

    torch.save(_dense(n=500), tmp_path / "x_masks.pt")
    with pytest.raises(MaskFileError) as e:
        FileProposer(tmp_path / "x_masks.pt").propose(_scan(np.zeros((499, 3)), np.zeros((499, 3))))
    msg = str(e.value)
    assert "x_masks.pt" in msg and "500" in msg and "499" in msg
    MaskSet.from_dense(_dense(n=500)).save_npz(tmp_path / "x.npz")
    with pytest.raises(MaskFileError, match="500.*499"):
        load_mask_file(tmp_path / "x.npz", 499)


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.parametrize("payload", [{"masks": 1}, "a string", [1, 2, 3], _Evil()])
def test_pt_holding_something_else(tmp_path, payload, capsys):
    import torch

    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(MaskFileError, match="other.pt"):
        load_mask_file(tmp_path / "other.pt")
    assert "unpickled!" not in capsys.readouterr().out


def test_bad_values_rank_and_files(tmp_path):
    import torch

    bad = _dense()
    bad[3, 2] = 0.5
    torch.save(bad, tmp_path / "half.pt")
    with pytest.raises(MaskFileError, match="0/1"):
        load_mask_file(tmp_path / "half.pt")
    nan = _dense()
    nan[0, 0] = np.nan
    torch.save(nan, tmp_path / "nan.pt")
    with pytest.raises(MaskFileError, match="0/1"):
        load_mask_file(tmp_path / "nan.pt")
    torch.save(np.ones(10, np.float32), tmp_path / "rank1.pt")
    with pytest.raises(MaskFileError, match="shape"):
        load_mask_file(tmp_path / "rank1.pt")
    torch.save(torch.ones(2, 3, 4), tmp_path / "rank3.pt")
    with pytest.raises(MaskFileError, match="shape"):
        load_mask_file(tmp_path / "rank3.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(MaskFileError, match="junk.pt"):
        load_mask_file(tmp_path / "junk.pt")
    (tmp_path / "m.txt").write_text("1\n")
    with pytest.raises(MaskFileError, match="unknown mask file type"):
        load_mask_file(tmp_path / "m.txt")
    with pytest.raises(MaskFileError, match="no such"):
        load_mask_file(tmp_path / "missing.npz")
    with pytest.raises(MaskFileError):
        dense_to_maskset(np.array([["a", "b"]]), "x.pt")


def test_dense_conversion_makes_no_full_copy():
    # a column-strided view of a C-ordered matrix converts column by column
    dense = _dense(n=1000, m=6)
    ms = dense_to_maskset(dense, "mem.pt")
    for j in range(6):
        assert np.array_equal(ms[j], np.flatnonzero(dense[:, j]))


@pytest.mark.skipif(not OM3D_SCENE.is_dir(), reason="../shared fixtures are not present")
def test_openmask3d_fixture_pt_equals_npz():
    pt = load_mask_file(OM3D_SCENE / "masks.pt", 66785)
    npz = load_mask_file(OM3D_SCENE / "masks.npz", 66785)
    assert len(pt) == 10 and pt.num_points == 66785
    assert _same(pt, npz) and np.array_equal(pt.scores, npz.scores)


# -- registry --------------------------------------------------------------------------------------


def test_registry(tmp_path):
    assert {"geometric", "file"} <= set(proposer_names())
    g = make_proposer("geometric", voxel_size=0.03)
    assert isinstance(g, GeometricProposer) and g.config.voxel_size == 0.03 and g.name == "geometric"
    cfg = GeometricConfig(fh_k=3.0)
    assert make_proposer("geometric", config=cfg).config is cfg
    with pytest.raises(TypeError):
        make_proposer("geometric", config=cfg, fh_k=1.0)
    with pytest.raises(TypeError):
        make_proposer("file")
    with pytest.raises(ValueError, match="unknown proposer 'nope'"):
        make_proposer("nope")

    class Const:
        name = "const"

        def __init__(self, n_masks=1):
            self.n_masks = n_masks

        def propose(self, scan):
            return MaskSet.empty(scan.num_points)

    register_proposer("const-test", Const)
    assert make_proposer("const-test", n_masks=3).n_masks == 3


# -- quality floor on the project's synthetic rooms -----------------------------------------------


def test_geometric_ap50_floor_on_synthetic_scan(synth_scans):
    """AP50 of the default geometric proposer on the shared synthetic scans (generate_scans(seed=7,
    "small")). Measured with the tuned defaults: synth_000 AP50 0.901 (AP 0.879), synth_001 AP50 0.974
    (AP 0.892). The floor leaves room for small generator changes while catching a broken proposer
    (untuned settings scored AP50 ~0.54 on the tuning rooms)."""
    from scenegrep.indexer.evaluate import evaluate_scan_dir

    for scan_dir in synth_scans:
        r = evaluate_scan_dir(scan_dir, make_proposer("geometric"))
        assert r.ap50 >= 0.75, (scan_dir.name, r)
        assert r.ap >= 0.6, (scan_dir.name, r)


# -- colour splits -----------------------------------------------------------------------------------


def _flat_patch(colour_of, n=40, seed=0):
    """An n x n grid of voxels (1 cm) on a plane, with 4-neighbour adjacency; ``colour_of(x, y, rng)``
    gives each voxel's rgb in [0, 1]."""
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    xs, ys = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    xs, ys = xs.ravel(), ys.ravel()
    rgb = np.clip(np.array([colour_of(x, y, rng) for x, y in zip(xs, ys)]), 0, 1)
    idx = xs * n + ys
    right = idx[xs < n - 1]
    down = idx[ys < n - 1]
    i = np.r_[right, down]
    j = np.r_[right + n, down + 1]
    adj = sp.csr_matrix((np.ones(2 * i.size), (np.r_[i, j], np.r_[j, i])), shape=(n * n, n * n))
    return rgb, adj, xs


def test_colour_split_finds_two_coloured_halves_despite_noise():
    """A region whose left 40 % is a dull red and the rest a grey of similar lightness (with per-voxel
    noise and one shading gradient) splits into those two parts, each connected; the speckle of noise does
    not survive the smoothing."""
    from scenegrep.indexer.proposals.colour import ColourSplitConfig, lab_features, split_region

    def colour(x, y, rng):
        shade = 0.7 + 0.3 * y / 40  # lightness changes across the patch, hue does not
        base = np.array([0.55, 0.2, 0.22]) if x < 16 else np.array([0.4, 0.4, 0.4])
        return base * shade + rng.normal(0, 0.04, 3)

    rgb, adj, xs = _flat_patch(colour)
    cfg = ColourSplitConfig()
    parts = split_region(np.arange(len(rgb)), lab_features(rgb, cfg), np.ones(len(rgb), np.int64), adj, cfg)
    assert len(parts) == 2
    red = max(parts, key=lambda p: np.mean(xs[p] < 16))
    truth = np.flatnonzero(xs < 16)
    inter = np.intersect1d(red, truth).size
    assert inter / (red.size + truth.size - inter) > 0.95


def test_colour_split_leaves_one_coloured_texture_alone():
    """Texture and noise (one hue, strong lightness and chroma noise, a shading gradient) are not a second
    colour: Ashman's D of the two means stays low and nothing is split. Nor is a region under
    ``min_voxels``."""
    from scenegrep.indexer.proposals.colour import ColourSplitConfig, lab_features, split_region

    def colour(x, y, rng):
        return np.array([0.5, 0.42, 0.3]) * (0.5 + 0.5 * x / 40) + rng.normal(0, 0.06, 3)

    rgb, adj, _ = _flat_patch(colour)
    cfg = ColourSplitConfig()
    lab = lab_features(rgb, cfg)
    assert split_region(np.arange(len(rgb)), lab, np.ones(len(rgb), np.int64), adj, cfg) == []
    two = np.r_[np.zeros((20, 3)), np.ones((19, 3))]
    small = ColourSplitConfig(min_voxels=40)
    assert split_region(np.arange(39), lab_features(two, small), np.ones(39, np.int64), adj[:39, :39], small) == []


def test_colour_parts_rank_below_every_hierarchy_mask(room):
    """Colour parts are extra candidates: with them the hierarchy's masks and their order are the same as
    without, and every part scores below every one of them."""
    from scenegrep.indexer.proposals.colour import ColourSplitConfig

    points, colors, _ = room
    dbg: dict = {}
    on = propose_points(points, colors, GeometricConfig(max_proposals=None), None, dbg)[0]
    off = propose_points(points, colors, GeometricConfig(max_proposals=None, colour=ColourSplitConfig(enabled=False)),
                         None)[0]
    part = np.asarray(dbg["colour_part"])
    assert part.any() and len(dbg["kind"]) == len(on)
    hier = on.select(np.flatnonzero(~part))
    assert np.array_equal(hier.offsets, off.offsets) and np.array_equal(hier.point_indices, off.point_indices)
    assert on.scores[part].max() <= on.scores[~part].min()
