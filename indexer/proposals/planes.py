"""Planar structure of a voxelised scan: plane regions, the gravity (up) direction, architecture.

Used by the geometric proposer (:mod:`scenegrep.indexer.proposals.geometric`) to take floors, walls,
ceilings and table tops out before it segments objects. Every length is in units of the voxel edge ``h``
the caller derived from the cloud's own point spacing, so the same settings work on a 1 cm ScanNet mesh, a
4 cm subsampled one and a 2 mm Kinect table top.

1. **Smooth-surface regions** (:func:`grow_planes`): the kNN graph keeps an edge when the two voxel normals
   are nearly parallel (``|n_i . n_j| > cos(angle)``), each voxel lies close to the other's tangent plane
   and both voxels are flat (low PCA curvature). Connected components of those edges are candidate planes:
   this is normal-based region growing done in one ``connected_components`` call.
2. **Plane fit and clean-up**: each candidate large enough gets a least-squares plane (PCA of its voxels);
   voxels farther than ``dist_tol`` or with a normal off by more than ``refit_angle`` are dropped (the
   region may have crept round a gentle bend), and what remains must still be large and mostly inliers.
3. **Gravity** (:func:`estimate_up`): real captures are not always z-up (a Kinect table top is in camera
   coordinates, y down). When the scan has camera poses, the cameras say where up is
   (:func:`camera_up`: upright cameras pan and tilt but do not roll, so up is perpendicular to all their
   x axes), and the support is the largest bounding plane facing up, or none (a shelf bin whose floor is
   hidden under its objects). Without cameras the up direction is taken as the normal of the largest
   plane that bounds the scan: almost all voxels lie on one side of it (a floor under a room, the table
   under objects), oriented towards them. A plane whose normal is near +-z gets a bonus, because z-up is
   the convention of most room scans, but it is only a tie-breaker. The data-only guess fails where a
   wall bounds the scan better than the floor does (labelfusion-shelf: a side wall of the bin bounds 99 %,
   the bin floor is hidden), which is why the cameras come first.
4. **Architecture** (:func:`classify_planes`): the support plane and every horizontal plane coplanar with
   it is *floor*; a large horizontal bounding plane on the far side is *ceiling*; a vertical bounding plane
   whose area is a good fraction of the floor's and which rises over most of the scan's height is *wall*.
   Coplanar pieces of one floor/wall/ceiling (split by furniture in front of them) are merged into one
   instance, which is how ScanNet annotates them. Other planes (table tops, seats, box faces) are kept as
   *other*: they may be parts of objects. Without a support plane (up from the cameras), heights are
   measured from the scan's lowest percentile and areas compared with its footprint.

Noisy captures (frames fused with pose error give thick surfaces) loosen the thresholds: the curvature
limit is at least the median voxel curvature, and the angle and distance limits at least ``noise_factor``
times the cloud's median neighbour angle and tangent-plane offset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

log = logging.getLogger(__name__)

#: Plane kinds.
FLOOR, WALL, CEILING, OTHER = "floor", "wall", "ceiling", "other"


@dataclass
class PlaneConfig:
    """Settings of the plane stage (lengths in voxel edges ``h``, angles in degrees).

    Attributes:
        angle: largest angle between neighbouring normals inside one smooth region.
        max_curvature: voxels with PCA curvature ``l0 / (l0 + l1 + l2)`` above this are not planar.
        dist_tol: inlier distance to the fitted plane, in ``h``.
        refit_angle: largest angle between a voxel's normal and the fitted plane's normal.
        min_voxels: smallest plane, in voxels (after clean-up).
        min_inlier_fraction: a region is a plane only when this fraction of it fits one plane.
        bound_fraction: a plane *bounds* the scan when at least this fraction of all voxels lies on one side.
        horizontal_angle: planes within this angle of the up direction's normal are horizontal, within it of
            perpendicular are vertical.
        wall_area_fraction: a vertical bounding plane is a wall when its area is at least this fraction of
            the floor's.
        ceiling_area_fraction: a horizontal bounding plane above everything is a ceiling when its area is at
            least this fraction of the floor's (a box top is not).
        noise_factor: the angle and distance thresholds are at least this multiple of the cloud's median
            neighbour normal angle and tangent-plane offset, and ``max_curvature`` at least the median voxel
            curvature, so noisy captures still have planes.
        wall_height_fraction: a wall spans at least this fraction of the scan's height above the floor.
        z_prior: bonus factor on a candidate support plane whose normal is within ``horizontal_angle`` of z
            (only without a camera prior).
        prior_angle: with an up prior from the cameras (:func:`camera_up`), the support plane's normal must
            be within this angle of it.
    """

    angle: float = 12.0
    max_curvature: float = 0.04
    dist_tol: float = 1.0
    refit_angle: float = 25.0
    min_voxels: int = 60
    min_inlier_fraction: float = 0.6
    bound_fraction: float = 0.9
    horizontal_angle: float = 15.0
    wall_area_fraction: float = 0.08
    ceiling_area_fraction: float = 0.25
    wall_height_fraction: float = 0.5
    z_prior: float = 1.5
    prior_angle: float = 20.0
    noise_factor: float = 1.0


@dataclass
class Plane:
    """One planar region.

    Attributes:
        normal: (3,) unit normal, oriented towards the side holding most of the scan.
        offset: ``d`` with ``normal . x + d = 0`` on the plane.
        voxels: (K,) int64 voxel ids of the region.
        area: occupied voxels x h^2 (m^2).
        bound: fraction of all voxels on the positive side of the plane (within ``dist_tol``).
        kind: floor / wall / ceiling / other (set by :func:`classify_planes`).
        pieces: ids (into the plane list) of the coplanar planes merged into this one.
    """

    normal: np.ndarray
    offset: float
    voxels: np.ndarray
    area: float
    bound: float
    kind: str = OTHER
    pieces: list[int] = field(default_factory=list)


def grow_planes(xyz: np.ndarray, normals: np.ndarray, curvature: np.ndarray, ei: np.ndarray, ej: np.ndarray,
                h: float, cfg: PlaneConfig) -> list[Plane]:
    """Planar regions of the voxel graph (see the module docstring, steps 1-2), largest first."""
    v = xyz.shape[0]
    ni, nj = normals[ei], normals[ej]
    d = xyz[ej] - xyz[ei]
    dots = np.abs(np.einsum("ij,ij->i", ni, nj))
    off_i = np.abs(np.einsum("ij,ij->i", ni, d))
    off_j = np.abs(np.einsum("ij,ij->i", nj, d))
    # Noisy captures (fused frames with pose error, thick surfaces) get looser thresholds: each one is at
    # least the configured value and at least a multiple of the cloud's own typical value.
    if ei.size:
        angle = max(cfg.angle, cfg.noise_factor * float(np.degrees(np.arccos(np.clip(np.median(dots), 0, 1)))))
        tol = max(cfg.dist_tol * h, cfg.noise_factor * float(np.median(off_i)))
    else:
        angle, tol = cfg.angle, cfg.dist_tol * h
    max_curv = max(cfg.max_curvature, float(np.median(curvature)) if curvature.size else 0.0)
    cos_a = np.cos(np.radians(angle))
    flat = curvature <= max_curv
    smooth = (dots > cos_a) & (off_i < tol) & (off_j < tol) & flat[ei] & flat[ej]
    graph = sp.coo_matrix((np.ones(int(smooth.sum())), (ei[smooth], ej[smooth])), shape=(v, v)).tocsr()
    _, comp = connected_components(graph, directed=False)
    sizes = np.bincount(comp)
    order = np.argsort(comp, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    centre = xyz.mean(axis=0)
    planes: list[Plane] = []
    cos_r = np.cos(np.radians(max(cfg.refit_angle, angle)))
    for c in np.flatnonzero(sizes >= cfg.min_voxels):
        rest = order[starts[c]:starts[c + 1]]
        # A smooth region may hold several planes chained through gentle bends: peel up to 3 off it.
        for _ in range(3):
            if rest.size < cfg.min_voxels:
                break
            fit = _fit_plane(xyz[rest], normals[rest], tol, cos_r)
            if fit is None:
                break
            n, off, inl = fit
            if inl.sum() < max(cfg.min_voxels, cfg.min_inlier_fraction * rest.size) and not planes_ok(inl, cfg):
                break
            members, rest = rest[inl], rest[~inl]
            side = xyz @ n + off
            above = float(np.mean(side > -2 * tol))
            below = float(np.mean(side < 2 * tol))
            if below > above or (below == above and n @ (centre - xyz[members].mean(axis=0)) < 0):
                n, off, above = -n, -off, below
            planes.append(Plane(n, off, members, members.size * h * h, above))
    planes.sort(key=lambda pl: -pl.area)
    return planes


def camera_up(rotations: np.ndarray, max_roll: float = 10.0) -> np.ndarray | None:
    """The up direction implied by upright cameras: (3,) unit vector, or None without cameras.

    ``rotations`` are (F, 3, 3) camera-to-world rotations with OpenCV axes (x right, y down, z forward).
    RGB-D captures are taken with the camera upright: it pans and tilts but hardly rolls, so its x axis
    stays horizontal while its up axis (image -y) leans with the tilt (a camera looking down into a shelf
    bin has its up axis 10-20 degrees off gravity). So up is the direction most nearly perpendicular to
    every camera's x axis: the smallest eigenvector of ``sum x x^T``, signed like the mean image -y. When
    all x axes are parallel (the cameras only tilt, never pan), that leaves a plane of candidates: the mean
    image -y projected onto it. When no direction is within ``max_roll`` degrees of perpendicular to
    every x axis on average (the cameras roll), the mean image -y itself is the best guess.
    """
    r = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    if r.shape[0] == 0:
        return None
    mean_up = -r[:, :, 1].mean(axis=0)
    if not np.linalg.norm(mean_up) > 1e-9:
        return None
    mean_up /= np.linalg.norm(mean_up)
    x = r[:, :, 0]
    vals, vecs = np.linalg.eigh(x.T @ x / x.shape[0])  # ascending: vals[k] = mean (x . vecs[:, k])^2
    tol = np.sin(np.radians(max_roll)) ** 2
    if vals[0] > tol:
        return mean_up
    if vals[1] <= tol:  # x axes all (nearly) parallel: up lies in the plane perpendicular to them
        basis = vecs[:, :2]
        up = basis @ (basis.T @ mean_up)
        if not np.linalg.norm(up) > 1e-9:
            return mean_up
        return up / np.linalg.norm(up)
    up = vecs[:, 0]
    return up if up @ mean_up >= 0 else -up


def estimate_up(planes: list[Plane], cfg: PlaneConfig,
                prior: np.ndarray | None = None) -> tuple[np.ndarray | None, int]:
    """(up, support plane id or -1).

    Without a prior: the largest bounding plane's normal (z-like normals favoured), or (None, -1).
    With a prior (:func:`camera_up`): the support is the largest bounding plane whose normal is within
    ``prior_angle`` of the prior *and* oriented along it (the scan lies above it: a floor, never a wall or
    a ceiling), and up is its normal; when no plane qualifies, up is the prior and there is no support.
    """
    cos_h = np.cos(np.radians(cfg.horizontal_angle))
    best, best_score = -1, 0.0
    if prior is not None:
        prior = np.asarray(prior, dtype=np.float64) / np.linalg.norm(prior)
        cos_p = np.cos(np.radians(cfg.prior_angle))
        for k, pl in enumerate(planes):
            if pl.bound >= cfg.bound_fraction and float(pl.normal @ prior) > cos_p and pl.area > best_score:
                best, best_score = k, pl.area
        if best < 0:
            return prior.copy(), -1
        return planes[best].normal.copy(), best
    for k, pl in enumerate(planes):
        if pl.bound < cfg.bound_fraction:
            continue
        score = pl.area * (cfg.z_prior if abs(pl.normal[2]) > cos_h else 1.0)
        if score > best_score:
            best, best_score = k, score
    if best < 0:
        return None, -1
    return planes[best].normal.copy(), best


def classify_planes(planes: list[Plane], xyz: np.ndarray, up: np.ndarray | None, support: int, h: float,
                    cfg: PlaneConfig) -> list[Plane]:
    """Label planes floor / wall / ceiling / other and merge coplanar architecture pieces.

    Structure must bound the scan: a ceiling has (nearly) everything below it, a wall everything on one
    side (``bound >= bound_fraction``); a plane with many points on both sides is a shelf board, a
    partition or a box face, not architecture. Sizes are compared with the floor's area, or without a
    floor (``support`` < 0, up known from the cameras) with the scan's footprint, and heights are measured
    from the floor or else from the scan's lowest percentile along ``up``.

    Returns the architectural instances (merged; each lists its ``pieces``). ``planes`` get their ``kind``.
    """
    if up is None:
        return []
    cos_h = np.cos(np.radians(cfg.horizontal_angle))
    sin_h = np.sin(np.radians(cfg.horizontal_angle))
    along = xyz @ up
    floor = planes[support] if support >= 0 else None
    if floor is not None:
        floor_h = -floor.offset  # height of the floor along ``up`` (normal . x = -offset on the plane)
        ref_area = floor.area
    else:
        floor_h = float(np.percentile(along, 1))
        ref_area = footprint_area(xyz, up, h)
    top = float(np.percentile(along, 99)) - floor_h  # height of the scan above the floor
    tol = 2.0 * cfg.dist_tol * h
    for k, pl in enumerate(planes):
        c = float(pl.normal @ up)
        if abs(c) > cos_h:
            # plane height along up: for a horizontal plane n ~ +-up, so up . x on it is -offset * sign(c)
            level = -pl.offset * np.sign(c)
            if floor is not None and abs(level - floor_h) < tol:
                pl.kind = FLOOR
            elif c < 0 and pl.bound >= cfg.bound_fraction and pl.area >= cfg.ceiling_area_fraction * ref_area:
                pl.kind = CEILING
        elif abs(c) < sin_h and pl.bound >= cfg.bound_fraction and pl.area >= cfg.wall_area_fraction * ref_area:
            # a wall rises over most of the scan's height; a large box face beside it does not
            heights = along[pl.voxels]
            if float(np.ptp(heights)) >= cfg.wall_height_fraction * top:
                pl.kind = WALL
    if floor is not None:
        floor.kind = FLOOR
    # merge coplanar pieces of the same kind (same orientation, same offset)
    arch: list[Plane] = []
    cos_m = np.cos(np.radians(cfg.angle))
    for k, pl in enumerate(planes):
        if pl.kind == OTHER:
            continue
        for a in arch:
            if a.kind == pl.kind and float(a.normal @ pl.normal) > cos_m and abs(a.offset - pl.offset) < tol:
                a.voxels = np.concatenate([a.voxels, pl.voxels])
                a.area += pl.area
                a.pieces.append(k)
                break
        else:
            arch.append(Plane(pl.normal, pl.offset, pl.voxels, pl.area, pl.bound, pl.kind, [k]))
    return arch


def footprint_area(xyz: np.ndarray, up: np.ndarray, h: float) -> float:
    """Area (m^2) of the scan seen from above: occupied ``h`` x ``h`` cells of the points projected on the
    plane perpendicular to ``up``."""
    if xyz.shape[0] == 0:
        return 0.0
    u = np.asarray(up, dtype=np.float64)
    e1 = np.cross(u, [1.0, 0.0, 0.0] if abs(u[0]) < 0.9 else [0.0, 1.0, 0.0])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(u, e1)
    cells = np.floor(np.c_[xyz @ e1, xyz @ e2] / h).astype(np.int64)
    return float(np.unique(cells, axis=0).shape[0]) * h * h


def planes_ok(inliers: np.ndarray, cfg: PlaneConfig) -> bool:
    """A fit whose inliers are a minority of the region still counts when they are many on their own."""
    return int(inliers.sum()) >= 4 * cfg.min_voxels


def _fit_plane(p: np.ndarray, nrm: np.ndarray, tol: float, cos_r: float,
               iterations: int = 3) -> tuple[np.ndarray, float, np.ndarray] | None:
    """(normal, offset, inlier mask) of the dominant plane of a smooth region, or None.

    Starts from the region's dominant voxel normal (sign-aligned mean) and the median offset along it,
    which a minority of off-plane voxels does not drag, then refits by PCA on the inliers.
    """
    ref = nrm[0]
    aligned = nrm * np.where(nrm @ ref < 0, -1.0, 1.0)[:, None]
    n = aligned.mean(axis=0)
    if not np.linalg.norm(n) > 0:
        return None
    n /= np.linalg.norm(n)
    off = -float(np.median(p @ n))
    inl = np.zeros(p.shape[0], dtype=bool)
    for _ in range(iterations):
        inl = (np.abs(p @ n + off) < tol) & (np.abs(nrm @ n) > cos_r)
        if inl.sum() < 3:
            return None
        q = p[inl]
        mu = q.mean(axis=0)
        _, vecs = np.linalg.eigh(np.cov((q - mu).T))
        n = vecs[:, 0]
        off = -float(n @ mu)
    inl = (np.abs(p @ n + off) < tol) & (np.abs(nrm @ n) > cos_r)
    return n, off, inl
