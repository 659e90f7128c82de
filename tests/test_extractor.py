"""The mask-feature stage against a plain dense re-computation, and against OpenMask3D's fixture."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scenegrep.indexer.features.encoders import load_encoder
from scenegrep.indexer.features.extractor import FeatureConfig, InstanceFeatures, extract_features
from scenegrep.testing import write_local_dir_model
from scenegrep.indexer.proposals.base import MaskSet
from scenegrep.indexer.scans import Frame, Scan

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "openmask3d-features"

DW, DH = 64, 48  # depth resolution
K_D = np.array([[40.0, 0.0, 31.5], [0.0, 40.0, 23.5], [0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return load_encoder(f"local-dir:{write_local_dir_model(tmp_path_factory.mktemp('xclip') / 'tiny')}", None)


def _grid(x0, x1, y0, y1, z, step=0.02):
    xs, ys = np.meshgrid(np.arange(x0, x1, step), np.arange(y0, y1, step))
    return np.column_stack([xs.ravel(), ys.ravel(), np.full(xs.size, z)])


def _room() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Points, colours and 4 masks: two visible patches, one behind the camera, one far outside."""
    wall = _grid(-3.0, 3.0, -2.0, 2.0, 3.0, step=0.04)
    patch0 = _grid(-0.6, -0.1, -0.3, 0.3, 2.0)
    patch1 = _grid(0.1, 0.5, -0.2, 0.4, 1.5)
    behind = _grid(-0.2, 0.2, -0.2, 0.2, -1.0)
    outside = _grid(20.0, 20.4, 0.0, 0.4, 2.0)
    parts = [wall, patch0, patch1, behind, outside]
    pts = np.concatenate(parts).astype(np.float32)
    rng = np.random.default_rng(0)
    base = [(200, 200, 210), (220, 40, 40), (40, 200, 60), (10, 10, 200), (250, 250, 0)]
    cols = np.concatenate([np.clip(np.array(c) + rng.integers(-30, 30, (len(p), 3)), 0, 255)
                           for c, p in zip(base, parts)]).astype(np.uint8)
    starts = np.cumsum([0] + [len(p) for p in parts])
    masks = [np.arange(starts[i], starts[i + 1]) for i in range(1, 5)]
    return pts, cols, masks


def _render(pts, cols, pose, K, w, h):
    """Nearest-point z-buffer: depth (h, w) metres (0 = empty) and colour (h, w, 3)."""
    P = K @ np.linalg.inv(pose)[:3]
    proj = (P @ np.column_stack([pts.astype(np.float64), np.ones(len(pts))]).T).T
    z = proj[:, 2]
    ok = z > 0
    uv = np.zeros((len(pts), 2), np.int64)
    uv[ok] = (proj[ok, :2] / z[ok, None]).astype(np.int64)
    ok &= (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & (uv[:, 0] < w) & (uv[:, 1] < h)
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(-z[idx], kind="stable")]  # far first, near last: near wins on write
    depth = np.zeros((h, w))
    color = np.zeros((h, w, 3), np.uint8)
    depth[uv[idx, 1], uv[idx, 0]] = z[idx]
    color[uv[idx, 1], uv[idx, 0]] = cols[idx]
    return depth, color


def _make_scan(tmp: Path, color_scale: int = 1) -> tuple[Scan, MaskSet]:
    pts, cols, mask_lists = _room()
    poses = []
    for tx in (0.0, 0.15, -0.1):
        p = np.eye(4)
        p[0, 3] = tx
        poses.append(p)
    frames = []
    cw, ch = DW * color_scale, DH * color_scale
    K_c = K_D.copy()
    K_c[:2] *= color_scale
    for i, pose in enumerate(poses):
        depth, _ = _render(pts, cols, pose, K_D, DW, DH)
        _, color = _render(pts, cols, pose, K_c, cw, ch)
        dp, cp = tmp / f"depth{i}.png", tmp / f"color{i}.png"
        Image.fromarray(np.rint(depth * 1000).astype(np.uint16)).save(dp)
        Image.fromarray(color).save(cp)
        frames.append(Frame(10 + i, cp, dp, pose, K_c, K_D, (cw, ch), (DW, DH), 1000.0))
    scan = Scan("room", tmp, "scannet", pts, cols, frames)
    return scan, MaskSet.from_lists(mask_lists, None, len(pts))


def _reference(scan: Scan, masks: MaskSet, encoder, cfg: FeatureConfig):
    """Dense per-(view, mask) visible-pixel images, stable top-k, OpenMask3D boxes, one crop at a time."""
    x = np.column_stack([scan.points.astype(np.float64), np.ones(scan.num_points)])
    images = []
    for fr in scan.frames:
        raw = np.asarray(Image.open(fr.depth_path)).astype(np.float64)
        depth = raw / fr.depth_scale
        proj = ((fr.K_depth @ np.linalg.inv(fr.pose_c2w)[:3]) @ x.T).T
        z = proj[:, 2]
        uv = np.zeros((len(z), 2), np.int64)
        nz = z != 0
        uv[nz] = (proj[nz, :2] / z[nz, None]).astype(np.int64)
        h, w = depth.shape
        inside = (uv[:, 0] >= 0) & (uv[:, 1] >= 0) & (uv[:, 0] < w) & (uv[:, 1] < h)
        vis = np.zeros(len(z), bool)
        d = depth[uv[inside, 1], uv[inside, 0]]
        vis[inside] = (np.abs(d - z[inside]) <= cfg.depth_threshold) & (z[inside] > 0) & (d > 0)
        per_mask = []
        for m in range(len(masks)):
            img = np.zeros((h, w), bool)
            sel = masks[m][vis[masks[m]]]
            img[uv[sel, 1], uv[sel, 0]] = True
            per_mask.append(img)
        images.append(per_mask)
    counts = np.array([[img.sum() for img in per] for per in images])  # (F, M)
    vectors, n_crops = [], 0
    for m in range(len(masks)):
        order = np.argsort(-counts[:, m], kind="stable")[: cfg.top_k]
        order = [int(v) for v in order if counts[v, m] > 0]
        embs = []
        for v in order:
            fr = scan.frames[v]
            color = Image.open(fr.color_path).convert("RGB")
            sy, sx = color.size[1] // images[v][m].shape[0], color.size[0] // images[v][m].shape[1]
            mask2d = np.repeat(np.repeat(images[v][m], sy, axis=0), sx, axis=1)  # colour-resolution mask
            rows, cols_ = np.nonzero(mask2d)
            x1, x2, y1, y2 = cols_.min(), cols_.max() + 1, rows.min(), rows.max() + 1
            for level in range(cfg.crop_levels):
                if level == 0:
                    box = (x1, y1, x2, y2)
                else:
                    xe = int(abs(x2 - x1) * cfg.crop_expansion) * level
                    ye = int(abs(y2 - y1) * cfg.crop_expansion) * level
                    box = (max(0, x1 - xe), max(0, y1 - ye), min(mask2d.shape[1], x2 + xe),
                           min(mask2d.shape[0], y2 + ye))
                embs.append(encoder.encode_images([color.crop(tuple(int(c) for c in box))])[0])
                n_crops += 1
        if embs:
            mean = np.mean(np.array(embs, np.float64), axis=0)
            vectors.append(mean / np.linalg.norm(mean))
        else:
            vectors.append(None)
    return vectors, n_crops


@pytest.mark.parametrize("color_scale", [1, 2])
def test_matches_dense_reference(tmp_path, encoder, color_scale):
    scan, masks = _make_scan(tmp_path, color_scale)
    cfg = FeatureConfig(frame_step=1, top_k=2, batch_size=5)
    seen: list[tuple[str, int, int]] = []
    feats = extract_features(scan, masks, encoder, cfg, progress=lambda *a: seen.append(a))
    ref, ref_crops = _reference(scan, masks, encoder, cfg)

    assert isinstance(feats, InstanceFeatures)
    assert feats.valid.tolist() == [True, True, False, False]
    assert feats.vectors.dtype == np.float32 and feats.vectors.shape == (4, 64)
    for m in (0, 1):
        assert np.linalg.norm(feats.vectors[m]) == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(feats.vectors[m], ref[m], atol=1e-5)
    assert (feats.vectors[2:] == 0).all()
    assert ref[2] is None and ref[3] is None
    # 2 visible masks x top-2 views x 3 levels
    assert ref_crops == 12 and feats.stats["clip_crops"] == 12
    assert feats.stats["frames_used"] == 3
    assert feats.best_frame[2:].tolist() == [-1, -1]
    assert set(feats.best_frame[:2].tolist()) <= {10, 11, 12}
    assert feats.topk_frames.shape == (4, 2)
    assert (feats.topk_frames[:2] >= 10).all() and (feats.topk_frames[2:] == -1).all()
    assert (feats.topk_frames[:, 0] == feats.best_frame).all()
    for s in ("visibility_s", "crops_s", "encode_s"):
        assert feats.stats[s] >= 0.0
    stages = {s for s, _, _ in seen}
    assert {"visibility", "crops", "encode"} <= stages
    assert ("visibility", 3, 3) in seen and ("encode", 12, 12) in seen

    for m in (0, 1):
        with Image.open(io.BytesIO(feats.thumbnails[m])) as im:
            assert im.format == "JPEG" and max(im.size) == cfg.thumbnail_size
    assert feats.thumbnails[2] is None and feats.thumbnails[3] is None


def test_mean_without_renormalize(tmp_path, encoder):
    scan, masks = _make_scan(tmp_path)
    a = extract_features(scan, masks, encoder, FeatureConfig(frame_step=1, renormalize=False))
    b = extract_features(scan, masks, encoder, FeatureConfig(frame_step=1, renormalize=True, batch_size=1))
    norms = np.linalg.norm(a.vectors[:2], axis=1)
    assert (norms < 1.0).all() and (norms > 0.5).all()
    np.testing.assert_allclose(a.vectors[:2] / norms[:, None], b.vectors[:2], atol=1e-6)


def test_no_frames_and_no_masks(tmp_path, encoder):
    scan, masks = _make_scan(tmp_path)
    bare = Scan("bare", tmp_path, "scannet", scan.points, scan.colors, [])
    feats = extract_features(bare, masks, encoder)
    assert feats.valid.tolist() == [False] * 4
    assert feats.vectors.shape == (4, 64) and not feats.vectors.any()
    assert feats.best_frame.tolist() == [-1] * 4 and feats.thumbnails == [None] * 4
    assert feats.topk_frames.shape == (4, 5)
    assert feats.stats["clip_crops"] == 0
    empty = extract_features(scan, MaskSet.empty(scan.num_points), encoder)
    assert empty.vectors.shape == (0, 64) and empty.valid.shape == (0,)


def test_frame_step(tmp_path, encoder):
    scan, masks = _make_scan(tmp_path)
    feats = extract_features(scan, masks, encoder, FeatureConfig(frame_step=2))
    assert feats.stats["frames_used"] == 2
    assert set(feats.topk_frames[:2].ravel().tolist()) <= {10, 12, -1}
    with pytest.raises(ValueError):
        FeatureConfig(frame_step=0)


def test_openmask3d_fixture_features(openmask3d_fixture):
    scan, masks, exp = openmask3d_fixture
    enc = load_encoder(f"local-dir:{FIXTURE / 'tinyclip'}", None)
    cfg = FeatureConfig(frame_step=1, depth_threshold=0.2, top_k=5, crop_levels=3, crop_expansion=0.1,
                        require_positive_depth=False, renormalize=False)
    feats = extract_features(scan, masks, enc, cfg)
    expected = exp["features"]
    assert feats.stats["clip_crops"] == 132
    assert feats.valid.tolist() == [True] * 9 + [False]
    np.testing.assert_allclose(feats.vectors, expected, atol=1e-6, rtol=0)


class _RecordingRefiner:
    """The projected-points box, recording what the stage passes (and counting like SAM does)."""

    name = "recording"

    def __init__(self):
        from scenegrep.indexer.features.crops import ProjectedPointsRefiner

        self.inner = ProjectedPointsRefiner()
        self.calls: list[tuple[int, list[int], int]] = []
        self.stats = {"image_encodings": 0, "prompts": 0, "fallbacks": 0}

    def refine(self, image, pixels, pixel_size, *, frame_id=0, mask_ids=None):
        self.calls.append((frame_id, list(mask_ids), len(pixels)))
        self.stats["image_encodings"] += 1
        self.stats["prompts"] += len(pixels)
        return self.inner.refine(image, pixels, pixel_size)


def test_refiner_gets_frame_and_mask_identity_and_stats(tmp_path, encoder):
    scan, masks = _make_scan(tmp_path)
    cfg = FeatureConfig(frame_step=1, top_k=2)
    rec = _RecordingRefiner()
    feats = extract_features(scan, masks, encoder, cfg, refiner=rec)
    plain = extract_features(scan, masks, encoder, cfg)
    assert np.array_equal(feats.vectors, plain.vectors)
    # one call per decoded frame, with that frame's id and the ids of the masks that chose it
    assert len(rec.calls) == feats.stats["frames_decoded"]
    chosen: dict[int, list[int]] = {}
    for m in range(len(masks)):
        for f in feats.topk_frames[m]:
            if f >= 0:
                chosen.setdefault(int(f), []).append(m)
    assert {fid: ids for fid, ids, _ in rec.calls} == chosen
    assert all(len(ids) == n for _, ids, n in rec.calls)
    st = feats.stats
    assert st["mask_method"] == "recording" and plain.stats["mask_method"] == "projected-points-box"
    assert st["sam_image_encodings"] == len(rec.calls) and st["sam_prompts"] == 4
    assert plain.stats["sam_image_encodings"] == 0 and plain.stats["sam_prompts"] == 0
    # OpenMask3D would encode once per (mask, view) pair: 2 visible masks x top-2 views
    assert st["openmask3d_sam_encodings"] == plain.stats["openmask3d_sam_encodings"] == 4
    assert st["features_s"] >= st["visibility_s"] + st["encode_s"]
    for key in ("refine_s", "crops_s", "encode_s", "visibility_s"):
        assert 0.0 <= st[key] <= st["features_s"]
    empty = extract_features(Scan("bare", tmp_path, "scannet", scan.points, scan.colors, []), masks, encoder,
                             refiner=rec)
    assert empty.stats["mask_method"] == "recording" and empty.stats["openmask3d_sam_encodings"] == 0
    assert set(empty.stats) == set(st)
