"""Which masks each frame sees: OpenMask3D's projection, depth test, pixel counts and top-k views.

OpenMask3D materialises a (views, masks, H, W) boolean "visible-pixel image" and sums it. That is
gigabytes on a real scan, so this module computes the same numbers sparsely:

* every used frame is projected once for all N points (O(N)) and depth-tested against its sensor depth;
* the visible points' (mask, pixel) pairs come from ``MaskSet.mask_of_point`` (O(nnz)); the distinct
  ``mask * W*H + pixel`` keys are exactly the set pixels of OpenMask3D's visible-pixel images, so their
  per-mask tally is OpenMask3D's count (distinct pixels, not points: two points on one pixel count once);
* the top-k views per mask are kept with a streaming selection, and only for those views are the
  mask's distinct pixels retained (for the crop box now and SAM prompts later), so memory is
  O(N + nnz + k * pixels of the chosen views), never frames x masks x H x W.

Semantics copied from OpenMask3D (``features_extractor.PointProjector``, see
``shared/fixtures/openmask3d-features/README.md``):

* world->camera is ``np.linalg.inv(pose_c2w)[:3]``; K is multiplied into that 3x4 first;
* division by z only where z != 0 (a point with z == 0 keeps pixel (0, 0));
* pixel coordinates are truncated toward zero (``astype(int)``), so x in (-1, 0) lands on column 0;
* inside test ``0 <= u < W and 0 <= v < H``; visible when ``|depth[v, u] - z| <= threshold`` (inclusive);
* projection uses the intrinsics at the depth image's resolution.

One deliberate difference, switchable: ``require_positive_depth=True`` (project default) also requires
z > 0 and a sensor reading > 0, so points behind the camera or on missing depth never count;
``False`` reproduces OpenMask3D bit for bit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from scenegrep.indexer.scans import Frame

if TYPE_CHECKING:
    from scenegrep.indexer.proposals.base import MaskSet
    from scenegrep.indexer.scans import Scan

log = logging.getLogger(__name__)

#: Projected coordinates are clipped to this magnitude before the integer cast: near-zero z gives huge
#: values whose int64 cast would overflow (numpy warns and yields INT64_MIN). Clipping keeps every
#: out-of-image point out of the image, so results equal OpenMask3D's.
_COORD_LIMIT = float(2**40)


def _homogeneous_T(points: np.ndarray) -> np.ndarray:
    """(4, N) float64 homogeneous coordinates, transposed (built once per scan, reused per frame)."""
    pts = np.asarray(points, dtype=np.float64)
    xh = np.empty((pts.shape[0], 4), np.float64)
    xh[:, :3] = pts
    xh[:, 3] = 1.0
    return xh.T


def _project_h(xh_T: np.ndarray, pose_c2w: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, z) for homogeneous points ``xh_T`` (4, N): u, v (N,) int64 contiguous, z (N,) float64."""
    w2c = np.linalg.inv(np.asarray(pose_c2w, dtype=np.float64))[:3, :]
    # Same expression and association as OpenMask3D: (K @ w2c) first, then applied to the (4, N)
    # homogeneous points; OpenMask3D transposes the (3, N) result, which changes no value.
    proj = np.asarray(K, dtype=np.float64) @ w2c @ xh_T
    z = proj[2]
    n = z.size
    nz = z != 0
    u = np.zeros(n, np.int64)
    v = np.zeros(n, np.int64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for row, out in ((proj[0], u), (proj[1], v)):
            q = np.divide(row, z, out=np.zeros(n), where=nz)
            np.clip(q, -_COORD_LIMIT, _COORD_LIMIT, out=q)
            out[:] = q.astype(np.int64)  # truncation toward zero, as OpenMask3D's int array assignment
    return u, v, z


def project_points(points: np.ndarray, pose_c2w: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points into an image, exactly as OpenMask3D does.

    Args:
        points: (N, 3) world coordinates (any float dtype; computed in float64).
        pose_c2w: (4, 4) camera-to-world matrix (OpenCV axes).
        K: (3, 3) pinhole intrinsics of the target image.

    Returns:
        uv: (N, 2) int64 (column, row), truncated toward zero; (0, 0) where z == 0.
        z: (N,) float64 camera-frame depth (negative behind the camera).

    Raises:
        numpy.linalg.LinAlgError: the pose is singular.
    """
    u, v, z = _project_h(_homogeneous_T(points), pose_c2w, K)
    return np.column_stack([u, v]), z


def visible_mask(
    uv: np.ndarray,
    z: np.ndarray,
    depth: np.ndarray,
    threshold: float = 0.2,
    require_positive_depth: bool = True,
) -> np.ndarray:
    """(N,) bool: inside the depth image and passing the depth test (see module doc).

    Args:
        uv: (N, 2) int pixel coordinates from :func:`project_points`.
        z: (N,) camera-frame depth.
        depth: (H, W) sensor depth in metres.
    """
    return _visible(uv[:, 0], uv[:, 1], z, depth, threshold, require_positive_depth)


def _visible(u: np.ndarray, v: np.ndarray, z: np.ndarray, depth: np.ndarray, threshold: float,
             require_positive_depth: bool) -> np.ndarray:
    h, w = depth.shape
    # One unsigned comparison per axis tests 0 <= u < W (negative values wrap to huge).
    ok = (u.astype(np.uint64, copy=False) < w) & (v.astype(np.uint64, copy=False) < h)
    if require_positive_depth:
        ok &= z > 0
    idx = np.flatnonzero(ok)
    sensor = depth.reshape(-1)[v[idx] * w + u[idx]]
    good = np.abs(sensor - z[idx]) <= threshold
    if require_positive_depth:
        good &= sensor > 0
    ok[idx] = good
    return ok


def visible_points(
    points: np.ndarray,
    frame: Frame,
    depth: np.ndarray,
    threshold: float = 0.2,
    require_positive_depth: bool = True,
) -> np.ndarray:
    """(V,) int64 indices of ``points`` visible in ``frame`` given its ``depth`` (H, W) in metres.

    Projection uses ``frame.K_depth`` (intrinsics at depth resolution); the image bounds are the depth
    image's shape. ``require_positive_depth=False`` reproduces OpenMask3D exactly.
    """
    uv, z = project_points(points, frame.pose_c2w, frame.K_depth)
    return np.flatnonzero(visible_mask(uv, z, depth, threshold, require_positive_depth))


def exact_depth(frame: Frame) -> np.ndarray:
    """(H, W) float64 metres, bit-identical to OpenMask3D's ``imageio.imread(png) / depth_scale``.

    ``Frame.load_depth`` returns float32; the uint16 raw value is recovered exactly with rint (float32
    keeps 24 bits, raw <= 65535) and divided in float64, so depth tests at the 0.2 m boundary decide
    as in OpenMask3D. Missing readings stay 0.
    """
    d32 = frame.load_depth()
    raw = np.rint(d32.astype(np.float64) * frame.depth_scale)
    return raw / float(frame.depth_scale)


def frame_positions(num_frames: int, frame_step: int | None, max_frames: int = 300) -> np.ndarray:
    """Positions of the used frames: every ``frame_step``-th from 0 (OpenMask3D's ``frequency``).

    ``frame_step=None`` picks the smallest step that uses at most ``max_frames`` frames,
    i.e. ``ceil(num_frames / max_frames)`` (1 for short scans).
    """
    if num_frames <= 0:
        return np.zeros(0, np.int64)
    if frame_step is None:
        frame_step = max(1, -(-num_frames // max_frames))
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    return np.arange(0, num_frames, frame_step, dtype=np.int64)


@dataclass
class Visibility:
    """Per-view visibility of every mask, and each mask's top-k views.

    Views are positions ``f`` in ``frame_indices`` (OpenMask3D's "view index"), not frame ids.

    Attributes:
        frame_indices: (F,) int64 positions in ``scan.frames`` of the used frames.
        frame_ids: (F,) int64 ``Frame.frame_id`` of the used frames.
        depth_sizes: (F, 2) int64 (width, height) of each used frame's depth image (the grid the pixel
            coordinates below live on).
        counts: (F, M) int64 number of distinct depth-image pixels covered by the mask's visible points
            (OpenMask3D's ``visible_points_in_view_in_mask.sum((2, 3))``).
        topk_views: (M, k) int64 chosen views per mask, most pixels first; ties go to the lower view
            (a stable descending sort, what OpenMask3D's fixture shows); views with zero pixels are not
            chosen and the row is padded with -1.
        topk_counts: (M, k) int64 pixel counts of ``topk_views`` (0 where padded).
        pixels: ``pixels[m][j]`` is a (P, 2) int32 array of the distinct (u, v) depth-resolution pixels of
            mask m's visible points in view ``topk_views[m, j]``, in row-major order (v, then u), i.e. the
            order of ``np.where`` on OpenMask3D's visible-pixel image. ``pixels[m]`` has one entry per
            non-padded slot of ``topk_views[m]`` (only the chosen views are kept).
        threshold: depth-test threshold used (metres).
        require_positive_depth: whether z > 0 and sensor depth > 0 were required.
        seconds: wall time of the computation.
        skipped_frames: frame ids whose pose was unusable (non-finite or singular); they see nothing.
    """

    frame_indices: np.ndarray
    frame_ids: np.ndarray
    depth_sizes: np.ndarray
    counts: np.ndarray
    topk_views: np.ndarray
    topk_counts: np.ndarray
    pixels: list[list[np.ndarray]]
    threshold: float = 0.2
    require_positive_depth: bool = True
    seconds: float = 0.0
    skipped_frames: list[int] = field(default_factory=list)

    @property
    def num_masks(self) -> int:
        return int(self.counts.shape[1])

    @property
    def topk_frame_ids(self) -> np.ndarray:
        """(M, k) int64 frame ids of the chosen views (-1 padded)."""
        out = np.full(self.topk_views.shape, -1, np.int64)
        ok = self.topk_views >= 0
        out[ok] = self.frame_ids[self.topk_views[ok]]
        return out

    def views_by_frame(self) -> dict[int, list[tuple[int, int]]]:
        """{view: [(mask, slot j), ...]} over all chosen (mask, view) pairs, masks ascending."""
        out: dict[int, list[tuple[int, int]]] = {}
        ms, js = np.nonzero(self.topk_views >= 0)
        for m, j in zip(ms.tolist(), js.tolist()):
            out.setdefault(int(self.topk_views[m, j]), []).append((m, j))
        return out


class _TopK:
    """Streaming top-k views per mask, keeping the chosen views' pixel arrays.

    Views arrive in increasing order. A new view enters when a slot is free or its count beats the
    worst kept one strictly; the worst is the smallest count, latest view among equals. This yields the
    same set and order as a stable descending sort over all views (ties -> lower view index).
    """

    def __init__(self, num_masks: int, k: int):
        self.k = k
        self.counts = np.zeros((num_masks, k), np.int64)
        self.views = np.full((num_masks, k), -1, np.int64)
        self.pixels: list[list[np.ndarray | None]] = [[None] * k for _ in range(num_masks)]
        # Count a new view must beat (strictly) to enter; 0 while a slot is free, so zero views never enter.
        self.bar = np.zeros(num_masks, np.int64)
        self.filled = np.zeros(num_masks, np.int64)

    def offer(self, view: int, counts: np.ndarray, pixels_of: Callable[[int], np.ndarray]) -> None:
        if self.k == 0:
            return
        for m in np.flatnonzero(counts > self.bar).tolist():
            c = int(counts[m])
            if self.filled[m] < self.k:
                slot = int(self.filled[m])
                self.filled[m] += 1
            else:
                row_c, row_v = self.counts[m], self.views[m]
                low = row_c == row_c.min()
                slot = int(np.flatnonzero(low)[np.argmax(row_v[low])])  # smallest count, latest view
            self.counts[m, slot] = c
            self.views[m, slot] = view
            self.pixels[m][slot] = pixels_of(m)
            self.bar[m] = self.counts[m].min() if self.filled[m] == self.k else 0

    def result(self) -> tuple[np.ndarray, np.ndarray, list[list[np.ndarray]]]:
        m_count = self.counts.shape[0]
        views = np.full_like(self.views, -1)
        counts = np.zeros_like(self.counts)
        pixels: list[list[np.ndarray]] = []
        for m in range(m_count):
            n = int(self.filled[m])
            # Descending count, ties by ascending view: lexsort's last key is primary.
            order = np.lexsort((self.views[m, :n], -self.counts[m, :n]))
            views[m, :n] = self.views[m, :n][order]
            counts[m, :n] = self.counts[m, :n][order]
            pixels.append([self.pixels[m][int(s)] for s in order])  # type: ignore[misc]
        return views, counts, pixels


def compute_visibility(
    scan: "Scan",
    masks: "MaskSet",
    frame_indices: Sequence[int] | np.ndarray | None = None,
    threshold: float = 0.2,
    top_k: int = 5,
    require_positive_depth: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Visibility:
    """Visibility counts of every mask in the used frames and each mask's top-k views.

    Per used frame: load depth once, project all N points once, depth-test, then tally distinct
    (mask, pixel) keys of the visible (mask, point) pairs. Cost O(N + nnz) per frame.

    Args:
        scan: the scan (points and frames).
        masks: M masks over ``scan.points``.
        frame_indices: positions in ``scan.frames`` to use (None: all).
        threshold: depth-test threshold in metres (inclusive).
        top_k: views kept per mask.
        require_positive_depth: also require z > 0 and sensor depth > 0 (False = OpenMask3D).
        progress: optional ``progress(done, total)`` after each frame.

    Frames whose pose is not finite or not invertible (ScanNet marks lost tracking with -inf poses) see
    nothing; they are listed in ``skipped_frames`` (frame ids) with a warning.
    """
    t0 = time.perf_counter()
    fidx = np.arange(len(scan.frames), dtype=np.int64) if frame_indices is None \
        else np.asarray(frame_indices, dtype=np.int64).reshape(-1)
    num_views, num_masks = int(fidx.size), len(masks)
    if masks.num_points != scan.num_points:
        raise ValueError(f"masks refer to {masks.num_points} points, scan has {scan.num_points}")
    counts = np.zeros((num_views, num_masks), np.int64)
    sizes = np.zeros((num_views, 2), np.int64)
    frame_ids = np.array([scan.frames[int(i)].frame_id for i in fidx], dtype=np.int64)
    topk = _TopK(num_masks, top_k)
    skipped: list[int] = []
    rows, pts = masks.mask_of_point()
    xh_T = _homogeneous_T(scan.points) if num_masks else None

    for f, pos in enumerate(fidx.tolist()):
        frame = scan.frames[pos]
        if num_masks == 0:  # nothing to count: skip decoding, record the declared size
            sizes[f] = frame.depth_size
            if progress is not None:
                progress(f + 1, num_views)
            continue
        depth = exact_depth(frame)
        h, w = depth.shape
        sizes[f] = (w, h)
        pose = np.asarray(frame.pose_c2w, dtype=np.float64)
        try:
            if not np.all(np.isfinite(pose)):
                raise np.linalg.LinAlgError("non-finite pose")
            u, v, z = _project_h(xh_T, pose, frame.K_depth)
        except np.linalg.LinAlgError as e:
            log.warning("%s: frame %d skipped for visibility (%s)", scan.name, frame.frame_id, e)
            skipped.append(int(frame.frame_id))
            if progress is not None:
                progress(f + 1, num_views)
            continue
        vis = _visible(u, v, z, depth, threshold, require_positive_depth)
        sel = vis[pts]
        npix = w * h
        # key = mask row * (W*H) + row-major pixel; sorting groups by mask, then pixel order.
        keys = rows[sel] * npix + (v * w + u)[pts[sel]]
        keys.sort()
        if keys.size:
            keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]  # distinct pixels per mask
        c = np.bincount(keys // npix, minlength=num_masks).astype(np.int64)
        counts[f] = c
        starts = np.concatenate([[0], np.cumsum(c)])

        def pixels_of(m: int, _keys=keys, _starts=starts, _w=w, _npix=npix) -> np.ndarray:
            pix = _keys[_starts[m] : _starts[m + 1]] % _npix
            return np.stack([pix % _w, pix // _w], axis=1).astype(np.int32)

        topk.offer(f, c, pixels_of)
        if progress is not None:
            progress(f + 1, num_views)

    views, tk_counts, pixels = topk.result()
    vis_rec = Visibility(
        frame_indices=fidx, frame_ids=frame_ids, depth_sizes=sizes, counts=counts,
        topk_views=views, topk_counts=tk_counts, pixels=pixels, threshold=threshold,
        require_positive_depth=require_positive_depth, seconds=time.perf_counter() - t0,
        skipped_frames=skipped,
    )
    log.debug("%s: visibility of %d masks in %d frames in %.2f s", scan.name, num_masks, num_views,
              vis_rec.seconds)
    return vis_rec


def homogeneous_points(points: np.ndarray) -> np.ndarray:
    """(4, N) float64 homogeneous coordinates of ``points`` (N, 3), transposed: build once per scan and pass
    to :func:`frame_visible_pixels` for every frame."""
    return _homogeneous_T(points)


def frame_visible_pixels(
    xh_T: np.ndarray,
    frame: Frame,
    depth: np.ndarray,
    threshold: float = 0.2,
    require_positive_depth: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The points visible in ``frame`` and the colour-image pixel each one falls on.

    Visibility is the stage's own test (projection with ``frame.K_depth`` onto ``depth``, then
    ``|depth - z| <= threshold``, see the module doc); the visible points are then projected again with
    ``frame.K_color`` so that 2D masks made on the colour image can be read at their pixels. Visible
    points falling outside the colour image are dropped.

    Args:
        xh_T: (4, N) from :func:`homogeneous_points`.
        frame: the frame (its pose must be finite and invertible).
        depth: (H, W) sensor depth in metres at the depth image's resolution.

    Returns:
        idx: (V,) int64 indices of the visible points, ascending.
        pix: (V,) int64 row-major colour-image pixel ``v * W_color + u`` of each.

    Raises:
        numpy.linalg.LinAlgError: the pose is not finite or not invertible.
    """
    pose = np.asarray(frame.pose_c2w, dtype=np.float64)
    if not np.all(np.isfinite(pose)):
        raise np.linalg.LinAlgError("non-finite pose")
    u, v, z = _project_h(xh_T, pose, frame.K_depth)
    idx = np.flatnonzero(_visible(u, v, z, depth, threshold, require_positive_depth))
    same_grid = tuple(frame.color_size) == (depth.shape[1], depth.shape[0]) and np.array_equal(
        np.asarray(frame.K_color, np.float64), np.asarray(frame.K_depth, np.float64))
    if same_grid:
        uc, vc = u[idx], v[idx]
    else:
        uc, vc, _ = _project_h(xh_T[:, idx], pose, frame.K_color)
    wc, hc = int(frame.color_size[0]), int(frame.color_size[1])
    inside = (uc.astype(np.uint64, copy=False) < wc) & (vc.astype(np.uint64, copy=False) < hc)
    return idx[inside], vc[inside] * wc + uc[inside]
