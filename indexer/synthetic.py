"""Seeded synthetic rooms with ground truth, written in the ScanNet layout that :func:`read_scan` reads.

A room is a floor and four walls (no ceiling) holding 5-15 coloured objects: boxes, cylinders, spheres,
tables (top + 4 legs) and chairs (seat + back + 4 legs). Objects rest on the floor, keep at least
``MIN_GAP`` metres apart (rejection sampling on footprints) and each gets its own palette colour.

What is written to ``<out_dir>/<name>/``::

    <name>.ply                  binary PLY, float32 x y z + uchar red green blue, shuffled point order
    color/<i>.jpg               RGB, JPEG quality 90 (4:4:4)
    depth/<i>.png               uint16 millimetres, 0 = ray hit nothing (open top of the room)
    pose/<i>.txt                4x4 camera-to-world, OpenCV axes (x right, y down, z forward)
    intrinsic/intrinsic_color.txt, intrinsic/intrinsic_depth.txt   4x4
    gt_instances.npy            int32 per point: 0 = floor/walls, 1..K = objects (a table is ONE instance)
    gt_labels.json              {"1": "red chair", ...}
    scan.json                   {"name": ..., "tags": ["synthetic"], "depth_scale": 1000, ...}

Surfaces are sampled on a jittered grid at a target spacing (uniform by area, no clumps). Frames are
rendered by analytic ray casting of the same primitives, so rendered depth matches the point cloud
surfaces up to the 1 mm depth quantisation, and pixels get the same Lambertian shading as the points.
Pixel (u, v) integer coordinates are pixel centres: the ray of pixel (u, v) is K^-1 [u, v, 1].

Everything derives from the seed through numpy's PCG64, and the encoders get fixed settings, so the
same seed writes byte-identical files.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Named, saturated object colours (RGB). Floor and walls use muted colours outside this palette.
PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("red", (215, 30, 35)),
    ("green", (30, 160, 60)),
    ("blue", (35, 75, 215)),
    ("yellow", (240, 215, 30)),
    ("magenta", (210, 40, 190)),
    ("cyan", (30, 200, 215)),
    ("orange", (245, 130, 20)),
    ("purple", (115, 45, 170)),
    ("white", (245, 245, 245)),
    ("black", (25, 25, 25)),
    ("pink", (250, 150, 190)),
    ("lime", (160, 230, 40)),
    ("brown", (125, 70, 30)),
    ("navy", (20, 30, 105)),
    ("teal", (0, 125, 125)),
    ("maroon", (120, 0, 35)),
)
FLOOR_RGB = (150, 142, 132)
WALL_RGB = (196, 192, 182)
BACKGROUND_RGB = (0, 0, 0)  # rays leaving through the open top of the room

CATEGORIES = ("box", "cylinder", "sphere", "table", "chair")
_CATEGORY_WEIGHTS = np.array([0.25, 0.2, 0.15, 0.2, 0.2])

MIN_GAP = 0.15  # metres between object footprints
WALL_MARGIN = 0.2  # metres between objects and walls
_LIGHT = np.array([0.35, 0.25, 1.0]) / np.linalg.norm([0.35, 0.25, 1.0])
_AMBIENT = 0.55
_COLOR_NOISE = 5.0  # std of per-point colour noise (0..255 units)
_INSIDE_EPS = 2e-3  # a sampled point this close inside another part of its object is hidden: dropped
_JPEG_QUALITY = 90


@dataclass(frozen=True)
class RoomSize:
    """Size of a generated scan.

    Attributes:
        room_x, room_y: (min, max) room extent in metres along x and y.
        wall_height: metres.
        n_objects: (min, max) objects per room, inclusive.
        object_spacing: target surface sample spacing on objects (metres).
        structure_spacing: target surface sample spacing on floor and walls (metres).
        n_frames: rendered RGB-D frames.
        image_size: (width, height) of colour and depth images.
        cam_distance: (min, max) horizontal distance from camera to its target (metres).
    """

    room_x: tuple[float, float]
    room_y: tuple[float, float]
    wall_height: float
    n_objects: tuple[int, int]
    object_spacing: float
    structure_spacing: float
    n_frames: int
    image_size: tuple[int, int]
    cam_distance: tuple[float, float]


ROOM_SIZES: dict[str, RoomSize] = {
    "small": RoomSize(room_x=(3.2, 3.8), room_y=(2.9, 3.4), wall_height=2.0, n_objects=(6, 9),
                    object_spacing=0.02, structure_spacing=0.036, n_frames=20, image_size=(320, 240),
                    cam_distance=(0.9, 2.4)),
    # ScanNet-size: ~225k points, 300 frames; cluttered (~130 objects) so the geometric proposer gives ~150-220
    # masks, the load the visibility and feature benchmarks are specified for.
    "scannet": RoomSize(room_x=(8.5, 9.5), room_y=(7.0, 8.0), wall_height=2.6, n_objects=(128, 136),
                      object_spacing=0.029, structure_spacing=0.036, n_frames=300, image_size=(640, 480),
                      cam_distance=(1.0, 3.5)),
}


def shade(normals: np.ndarray) -> np.ndarray:
    """Lambertian factor in [AMBIENT, 1] for unit normals (..., 3): one fixed light, view independent."""
    return _AMBIENT + (1.0 - _AMBIENT) * np.clip(normals[..., 0] * _LIGHT[0] + normals[..., 1] * _LIGHT[1]
                                                + normals[..., 2] * _LIGHT[2], 0.0, None)


# --------------------------------------------------------------------------------------------------
# Primitives: sampling, inside test, ray intersection
# --------------------------------------------------------------------------------------------------


def _grid01(n1: int, n2: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Jittered n1 x n2 grid in the unit square: one uniform sample per cell (stratified)."""
    i, j = np.meshgrid(np.arange(n1), np.arange(n2), indexing="ij")
    jit = rng.random((2, n1 * n2))
    return (i.ravel() + jit[0]) / n1, (j.ravel() + jit[1]) / n2


def _disk(radius: float, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) jittered-grid samples of a disk of ``radius`` centred at 0."""
    n = max(1, int(round(2 * radius / spacing)))
    a, b = _grid01(n, n, rng)
    xy = np.stack([a, b], axis=1) * 2 * radius - radius
    return xy[np.einsum("ij,ij->i", xy, xy) <= radius * radius]


def _mul3(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``x @ m`` for x (M, 3), m (3, 3) as three broadcast products: OpenBLAS handles this tall-skinny
    shape ~10x slower than plain elementwise numpy."""
    return x[:, 0:1] * m[0] + x[:, 1:2] * m[1] + x[:, 2:3] * m[2]


def _rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class Box:
    """Box rotated by ``yaw`` about z. center (3,), half (3,) half-extents in its local frame (metres)."""

    center: np.ndarray
    half: np.ndarray
    yaw: float = 0.0

    @property
    def R(self) -> np.ndarray:
        return _rot_z(self.yaw)

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        ext = np.abs(self.R) @ self.half
        return self.center - ext, self.center + ext

    def sample(self, spacing: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        pts, nrm = [], []
        for ax in range(3):
            b, c = [k for k in range(3) if k != ax]
            n1 = max(1, int(round(2 * self.half[b] / spacing)))
            n2 = max(1, int(round(2 * self.half[c] / spacing)))
            for sign in (-1.0, 1.0):
                u, v = _grid01(n1, n2, rng)
                local = np.zeros((len(u), 3))
                local[:, ax] = sign * self.half[ax]
                local[:, b] = (2 * u - 1) * self.half[b]
                local[:, c] = (2 * v - 1) * self.half[c]
                n = np.zeros((len(u), 3))
                n[:, ax] = sign
                pts.append(local)
                nrm.append(n)
        R = self.R
        return _mul3(np.concatenate(pts), R.T) + self.center, _mul3(np.concatenate(nrm), R.T)

    def inside(self, p: np.ndarray, eps: float) -> np.ndarray:
        local = _mul3(p - self.center, self.R)
        return np.all(np.abs(local) <= self.half + eps, axis=1)

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slab test in the box frame. o (3,) outside the box, d (M, 3). Returns t (M,) (inf = miss), n (M, 3)."""
        R = self.R
        ol = (o - self.center) @ R
        dl = _mul3(d, R)
        tn = np.full(len(d), -np.inf)
        tf = np.full(len(d), np.inf)
        axis = np.zeros(len(d), np.int8)
        with np.errstate(divide="ignore", invalid="ignore"):
            for ax in range(3):
                inv = 1.0 / dl[:, ax]
                t1 = (-self.half[ax] - ol[ax]) * inv
                t2 = (self.half[ax] - ol[ax]) * inv
                lo = np.minimum(t1, t2)
                hi = np.maximum(t1, t2)
                upd = lo > tn
                tn = np.where(upd, lo, tn)
                axis[upd] = ax
                np.minimum(tf, hi, out=tf)
        hit = (tf >= tn) & (tn > 1e-6)
        t = np.where(hit, tn, np.inf)
        nl = np.zeros_like(dl)
        rows = np.flatnonzero(hit)
        ax_h = axis[rows]
        nl[rows, ax_h] = -np.sign(dl[rows, ax_h])
        return t, _mul3(nl, R.T)


@dataclass(frozen=True)
class Cylinder:
    """Upright cylinder: axis along z through (center[0], center[1]), from z0 to z1, radius r (metres)."""

    center: np.ndarray  # (3,), z ignored
    radius: float
    z0: float
    z1: float

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        r = self.radius
        return (np.array([self.center[0] - r, self.center[1] - r, self.z0]),
                np.array([self.center[0] + r, self.center[1] + r, self.z1]))

    def sample(self, spacing: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        r, h = self.radius, self.z1 - self.z0
        n_t = max(8, int(round(2 * np.pi * r / spacing)))
        n_z = max(1, int(round(h / spacing)))
        a, b = _grid01(n_t, n_z, rng)
        th = 2 * np.pi * a
        side_n = np.stack([np.cos(th), np.sin(th), np.zeros_like(th)], axis=1)
        side = side_n * r + [self.center[0], self.center[1], 0.0]
        side[:, 2] = self.z0 + b * h
        pts, nrm = [side], [side_n]
        for z, nz in ((self.z0, -1.0), (self.z1, 1.0)):
            xy = _disk(r, spacing, rng)
            cap = np.column_stack([xy + self.center[:2], np.full(len(xy), z)])
            pts.append(cap)
            nrm.append(np.tile([0.0, 0.0, nz], (len(xy), 1)))
        return np.concatenate(pts), np.concatenate(nrm)

    def inside(self, p: np.ndarray, eps: float) -> np.ndarray:
        dx, dy = p[:, 0] - self.center[0], p[:, 1] - self.center[1]
        return ((dx * dx + dy * dy <= (self.radius + eps) ** 2)
                & (p[:, 2] >= self.z0 - eps) & (p[:, 2] <= self.z1 + eps))

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ox, oy = o[0] - self.center[0], o[1] - self.center[1]
        dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
        a = dx * dx + dy * dy
        b = 2 * (ox * dx + oy * dy)
        c = ox * ox + oy * oy - self.radius ** 2
        disc = b * b - 4 * a * c
        with np.errstate(divide="ignore", invalid="ignore"):
            t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2 * a)
            z_side = o[2] + t_side * dz
            ok_side = (disc >= 0) & (a > 1e-12) & (t_side > 1e-6) & (z_side >= self.z0) & (z_side <= self.z1)
            t = np.where(ok_side, t_side, np.inf)
            n = np.zeros_like(d)
            hx, hy = ox + t_side * dx, oy + t_side * dy
            n[:, 0] = hx / self.radius
            n[:, 1] = hy / self.radius
            for zc, nz in ((self.z1, 1.0), (self.z0, -1.0)):
                tc = (zc - o[2]) / dz
                cx, cy = ox + tc * dx, oy + tc * dy
                ok = (tc > 1e-6) & (cx * cx + cy * cy <= self.radius ** 2) & (tc < t)
                t = np.where(ok, tc, t)
                n[ok] = [0.0, 0.0, nz]
        return t, n


@dataclass(frozen=True)
class Sphere:
    """Sphere of ``radius`` at ``center`` (3,) (metres)."""

    center: np.ndarray
    radius: float

    def aabb(self) -> tuple[np.ndarray, np.ndarray]:
        return self.center - self.radius, self.center + self.radius

    def sample(self, spacing: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        # Fibonacci lattice: near-uniform by area; a random rotation about z varies it per seed.
        n = max(12, int(round(4 * np.pi * self.radius ** 2 / spacing ** 2)))
        k = np.arange(n) + 0.5
        z = 1 - 2 * k / n
        th = np.pi * (1 + 5 ** 0.5) * k + rng.random() * 2 * np.pi
        rr = np.sqrt(1 - z * z)
        nrm = np.stack([rr * np.cos(th), rr * np.sin(th), z], axis=1)
        return self.center + self.radius * nrm, nrm

    def inside(self, p: np.ndarray, eps: float) -> np.ndarray:
        q = p - self.center
        return np.einsum("ij,ij->i", q, q) <= (self.radius + eps) ** 2

    def intersect(self, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        oc = o - self.center
        a = np.einsum("ij,ij->i", d, d)
        b = 2 * (d[:, 0] * oc[0] + d[:, 1] * oc[1] + d[:, 2] * oc[2])
        c = oc @ oc - self.radius ** 2
        disc = b * b - 4 * a * c
        t = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2 * a)
        t = np.where((disc >= 0) & (t > 1e-6), t, np.inf)
        with np.errstate(invalid="ignore"):
            n = (o + t[:, None] * d - self.center) / self.radius
        return t, np.nan_to_num(n)


Part = Box | Cylinder | Sphere


@dataclass
class SynthObject:
    """One ground-truth instance.

    Attributes:
        instance_id: 1..K, the value in gt_instances.npy.
        category: one of CATEGORIES.
        color_name: palette name.
        rgb: (3,) float64 base colour 0..255.
        parts: primitives of the object (a table has 5, a chair 6).
    """

    instance_id: int
    category: str
    color_name: str
    rgb: np.ndarray
    parts: list[Part] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.color_name} {self.category}"

    def footprint(self) -> tuple[np.ndarray, np.ndarray]:
        """xy AABB (lo (2,), hi (2,)) of all parts."""
        boxes = [p.aabb() for p in self.parts]
        return np.min([b[0] for b in boxes], axis=0)[:2], np.max([b[1] for b in boxes], axis=0)[:2]


@dataclass
class Room:
    """Floor [0, size_x] x [0, size_y] at z = 0 and walls up to ``height``; objects inside."""

    size_x: float
    size_y: float
    height: float
    objects: list[SynthObject]


# --------------------------------------------------------------------------------------------------
# Room layout
# --------------------------------------------------------------------------------------------------


def _object_parts(category: str, rng: np.random.Generator) -> list[Part]:
    """Parts in object coordinates: footprint centred on the origin, resting on z = 0, yaw 0."""
    u = rng.uniform
    if category == "box":
        h = np.array([u(0.12, 0.35), u(0.12, 0.35), u(0.1, 0.45)])
        return [Box(np.array([0.0, 0.0, h[2]]), h)]
    if category == "cylinder":
        r, hgt = u(0.08, 0.25), u(0.25, 1.0)
        return [Cylinder(np.zeros(3), r, 0.0, hgt)]
    if category == "sphere":
        r = u(0.1, 0.25)
        return [Sphere(np.array([0.0, 0.0, r]), r)]
    if category == "table":
        w, d, hgt, t, leg, inset = u(0.8, 1.3), u(0.55, 0.85), u(0.68, 0.78), 0.04, 0.05, 0.05
        parts: list[Part] = [Box(np.array([0.0, 0.0, hgt - t / 2]), np.array([w / 2, d / 2, t / 2]))]
        lx, ly = w / 2 - inset - leg / 2, d / 2 - inset - leg / 2
        leg_h = (hgt - t) / 2
        for sx in (-1, 1):
            for sy in (-1, 1):
                parts.append(Box(np.array([sx * lx, sy * ly, leg_h]), np.array([leg / 2, leg / 2, leg_h])))
        return parts
    if category == "chair":
        w, d, sh, t, leg, bh = u(0.4, 0.5), u(0.4, 0.5), u(0.42, 0.48), 0.04, 0.04, u(0.35, 0.5)
        parts = [
            Box(np.array([0.0, 0.0, sh - t / 2]), np.array([w / 2, d / 2, t / 2])),
            Box(np.array([0.0, -d / 2 + t / 2, sh + bh / 2]), np.array([w / 2, t / 2, bh / 2])),
        ]
        leg_h = (sh - t) / 2
        for sx in (-1, 1):
            for sy in (-1, 1):
                parts.append(Box(np.array([sx * (w / 2 - leg / 2), sy * (d / 2 - leg / 2), leg_h]),
                                 np.array([leg / 2, leg / 2, leg_h])))
        return parts
    raise ValueError(f"unknown category {category!r}")


def _place(parts: list[Part], yaw: float, xy: np.ndarray) -> list[Part]:
    """Rotate object-frame parts by yaw about z and move them to ``xy``."""
    R = _rot_z(yaw)
    off = np.array([xy[0], xy[1], 0.0])
    out: list[Part] = []
    for p in parts:
        c = R @ p.center + off
        if isinstance(p, Box):
            out.append(Box(c, p.half, p.yaw + yaw))
        elif isinstance(p, Cylinder):
            out.append(Cylinder(c, p.radius, p.z0, p.z1))
        else:
            out.append(Sphere(c, p.radius))
    return out


def make_room(rng: np.random.Generator, preset: RoomSize) -> Room:
    """Room size and non-intersecting objects (rejection sampling on footprints, MIN_GAP apart)."""
    sx, sy = rng.uniform(*preset.room_x), rng.uniform(*preset.room_y)
    n_target = int(rng.integers(preset.n_objects[0], preset.n_objects[1] + 1))
    colors = rng.permutation(len(PALETTE))
    placed: list[tuple[np.ndarray, np.ndarray]] = []  # footprints
    objects: list[SynthObject] = []
    attempts = 0
    while len(objects) < n_target and attempts < 100 * n_target:
        attempts += 1
        cat = CATEGORIES[int(rng.choice(len(CATEGORIES), p=_CATEGORY_WEIGHTS))]
        parts = _object_parts(cat, rng)
        yaw = float(rng.uniform(0, 2 * np.pi))
        parts = _place(parts, yaw, np.zeros(2))
        tmp = SynthObject(0, cat, "", np.zeros(3), parts)
        lo, hi = tmp.footprint()
        xmin, xmax = WALL_MARGIN - lo[0], sx - WALL_MARGIN - hi[0]
        ymin, ymax = WALL_MARGIN - lo[1], sy - WALL_MARGIN - hi[1]
        if xmin >= xmax or ymin >= ymax:
            continue
        for _ in range(30):
            xy = np.array([rng.uniform(xmin, xmax), rng.uniform(ymin, ymax)])
            flo, fhi = lo + xy, hi + xy
            if all(np.any(flo >= ohi + MIN_GAP) or np.any(olo >= fhi + MIN_GAP) for olo, ohi in placed):
                break
        else:
            continue
        placed.append((flo, fhi))
        # Colours are distinct up to the palette size, then cycle (big rooms repeat colours, as real ones do).
        name, rgb = PALETTE[int(colors[len(objects) % len(PALETTE)])]
        objects.append(SynthObject(len(objects) + 1, cat, name, np.array(rgb, float), _place(parts, 0.0, xy)))
    if len(objects) < preset.n_objects[0]:
        log.warning("placed only %d of %d objects in a %.1f x %.1f m room", len(objects), n_target, sx, sy)
    return Room(sx, sy, preset.wall_height, objects)


# --------------------------------------------------------------------------------------------------
# Point cloud
# --------------------------------------------------------------------------------------------------


def _rect(origin, e1, e2, normal, spacing, rng) -> tuple[np.ndarray, np.ndarray]:
    e1, e2 = np.asarray(e1, float), np.asarray(e2, float)
    n1 = max(1, int(round(np.linalg.norm(e1) / spacing)))
    n2 = max(1, int(round(np.linalg.norm(e2) / spacing)))
    a, b = _grid01(n1, n2, rng)
    pts = np.asarray(origin, float) + a[:, None] * e1 + b[:, None] * e2
    return pts, np.tile(np.asarray(normal, float), (len(pts), 1))


def _noisy_colors(rgb: np.ndarray, normals: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    c = rgb[None, :] * shade(normals)[:, None] + rng.normal(0.0, _COLOR_NOISE, (len(normals), 3))
    return np.clip(np.rint(c), 0, 255).astype(np.uint8)


def sample_room(room: Room, preset: RoomSize, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Surface points (N, 3) float32, colours (N, 3) uint8, instance ids (N,) int32 (0 = floor/walls),
    shuffled. Hidden faces (object bottoms on the floor, faces inside another part of the same object,
    floor under objects) are not sampled, like a reconstructed mesh."""
    sx, sy, h, s = room.size_x, room.size_y, room.height, preset.structure_spacing
    structure = [
        _rect([0, 0, 0], [sx, 0, 0], [0, sy, 0], [0, 0, 1], s, rng),  # floor
        _rect([0, 0, 0], [sx, 0, 0], [0, 0, h], [0, 1, 0], s, rng),  # wall y = 0
        _rect([0, sy, 0], [sx, 0, 0], [0, 0, h], [0, -1, 0], s, rng),  # wall y = sy
        _rect([0, 0, 0], [0, sy, 0], [0, 0, h], [1, 0, 0], s, rng),  # wall x = 0
        _rect([sx, 0, 0], [0, sy, 0], [0, 0, h], [-1, 0, 0], s, rng),  # wall x = sx
    ]
    all_parts = [p for o in room.objects for p in o.parts]
    pts_l, col_l, ids_l = [], [], []
    for k, (pts, nrm) in enumerate(structure):
        keep = np.ones(len(pts), bool)
        if k == 0:  # floor hidden under objects
            for part in all_parts:
                keep &= ~part.inside(pts, _INSIDE_EPS)
        pts_l.append(pts[keep])
        col_l.append(_noisy_colors(np.array(WALL_RGB if k else FLOOR_RGB, float), nrm[keep], rng))
        ids_l.append(np.zeros(int(keep.sum()), np.int32))
    for obj in room.objects:
        for i, part in enumerate(obj.parts):
            pts, nrm = part.sample(preset.object_spacing, rng)
            keep = pts[:, 2] > _INSIDE_EPS  # faces lying on the floor are hidden
            for j, other in enumerate(obj.parts):
                if j != i:
                    keep &= ~other.inside(pts, _INSIDE_EPS)
            pts_l.append(pts[keep])
            col_l.append(_noisy_colors(obj.rgb, nrm[keep], rng))
            ids_l.append(np.full(int(keep.sum()), obj.instance_id, np.int32))
    points = np.concatenate(pts_l).astype(np.float32)
    colors = np.concatenate(col_l)
    ids = np.concatenate(ids_l)
    order = rng.permutation(len(points))  # masks must not be contiguous index ranges
    return points[order], colors[order], ids[order]


# --------------------------------------------------------------------------------------------------
# Cameras and ray casting
# --------------------------------------------------------------------------------------------------


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(4, 4) camera-to-world pose at ``eye`` looking at ``target``, OpenCV axes, world z up."""
    z = target - eye
    z = z / np.linalg.norm(z)
    up = np.array([0.0, 0.0, 1.0])
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-6:  # looking straight down/up: any horizontal right axis will do
        x = np.array([1.0, 0.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, z, eye
    return pose


def intrinsics_for(size: tuple[int, int]) -> np.ndarray:
    """(3, 3) pinhole intrinsics with a ~58 degree horizontal field of view (like ScanNet's depth camera)."""
    w, h = size
    f = 0.9 * w
    return np.array([[f, 0.0, (w - 1) / 2], [0.0, f, (h - 1) / 2], [0.0, 0.0, 1.0]])


@dataclass
class RayHits:
    """Nearest hit per ray: t (M,) float64 along the (unnormalised) ray, inf = none; normal (M, 3);
    part (M,) int32 index into the scene's part list, -1 = structure (floor/wall), -2 = nothing."""

    t: np.ndarray
    normal: np.ndarray
    part: np.ndarray


def _cast_room(room: Room, o: np.ndarray, d: np.ndarray) -> RayHits:
    """Where rays from inside the room leave it: floor or a wall; through the open top = no hit."""
    lo = np.array([0.0, 0.0, 0.0])
    hi = np.array([room.size_x, room.size_y, room.height])
    with np.errstate(divide="ignore", invalid="ignore"):
        tt = np.where(d > 0, (hi - o) / d, np.where(d < 0, (lo - o) / d, np.inf))
    axis = np.argmin(tt, axis=1)
    rows = np.arange(len(d))
    t = tt[rows, axis]
    n = np.zeros_like(d)
    n[rows, axis] = -np.sign(d[rows, axis])
    top = (axis == 2) & (d[:, 2] > 0)
    t[top] = np.inf
    part = np.where(top, -2, -1).astype(np.int32)
    return RayHits(t, n, part)


class Scene:
    """A room ready for ray casting: flat list of parts with their instance ids and base colours."""

    def __init__(self, room: Room):
        self.room = room
        self.parts: list[Part] = [p for o in room.objects for p in o.parts]
        self.part_instance = np.array([o.instance_id for o in room.objects for _ in o.parts], np.int32)
        self.part_rgb = np.array([o.rgb for o in room.objects for _ in o.parts], float).reshape(-1, 3)
        self.aabbs = [p.aabb() for p in self.parts]
        self._ray_cache: dict[tuple, np.ndarray] = {}

    def cast(self, o: np.ndarray, d: np.ndarray, subsets: list[np.ndarray | None] | None = None) -> RayHits:
        """Nearest hit of rays from ``o`` (3,) along ``d`` (M, 3). ``subsets[k]``: indices of the rays that
        may hit part k (None = all), a cull computed by the caller."""
        hits = _cast_room(self.room, o, d)
        for k, part in enumerate(self.parts):
            idx = None if subsets is None else subsets[k]
            if idx is not None and len(idx) == 0:
                continue
            dd = d if idx is None else d[idx]
            t, n = part.intersect(o, dd)
            sel = np.arange(len(d)) if idx is None else idx
            better = t < hits.t[sel]
            w = sel[better]
            hits.t[w] = t[better]
            hits.normal[w] = n[better]
            hits.part[w] = k
        return hits

    def instance_of(self, hits: RayHits) -> np.ndarray:
        """(M,) int32: object instance id per ray, 0 = floor/wall, -1 = nothing."""
        out = np.where(hits.part == -2, -1, 0).astype(np.int32)
        obj = hits.part >= 0
        out[obj] = self.part_instance[hits.part[obj]]
        return out

    def render(self, pose: np.ndarray, K: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Depth (H, W) float64 metres (0 = no hit), RGB (H, W, 3) uint8, instance (H, W) int32 (-1 = none)."""
        w, h = size
        R, o = pose[:3, :3], pose[:3, 3]
        d = _mul3(self._camera_rays(K, size), R.T)  # z_cam = 1 per ray, so t along d is the depth
        subsets = [self._pixels_of(lo, hi, R, o, K, size) for lo, hi in self.aabbs]
        hits = self.cast(o, d, subsets)
        depth = hits.t
        depth[~np.isfinite(depth)] = 0.0
        # Colour table rows: 0 nothing, 1 wall, 2 floor, 3 + k object part k.
        table = np.vstack([BACKGROUND_RGB, WALL_RGB, FLOOR_RGB, self.part_rgb]).astype(np.float64)
        code = np.where(hits.part >= 0, hits.part + 3,
                        np.where(hits.part == -1, 1 + (hits.normal[:, 2] > 0.5), 0))
        rgb = table[code] * shade(hits.normal)[:, None]  # background is black: its shade does not matter
        rgb = np.rint(rgb).astype(np.uint8).reshape(h, w, 3)
        return depth.reshape(h, w), rgb, self.instance_of(hits).reshape(h, w)

    def _camera_rays(self, K: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(H*W, 3) camera-frame rays K^-1 [u, v, 1] through pixel centres, cached per camera."""
        key = (K.tobytes(), size)
        if key not in self._ray_cache:
            w, h = size
            uu, vv = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
            self._ray_cache[key] = np.stack(
                [(uu.ravel() - K[0, 2]) / K[0, 0], (vv.ravel() - K[1, 2]) / K[1, 1], np.ones(w * h)], axis=1)
        return self._ray_cache[key]

    @staticmethod
    def _pixels_of(lo, hi, R, o, K, size) -> np.ndarray:
        """Flat pixel indices inside the projection of an AABB, clipped at the near plane (a part wholly
        behind the camera gets none; one straddling it is bounded by its edges' near-plane crossings)."""
        w, h = size
        near = 1e-3
        cam = (_BOX_CORNERS * (hi - lo) + lo - o) @ R  # (8, 3) camera coords
        z = cam[:, 2]
        front = cam[z > near]
        a, b = cam[_BOX_EDGES[:, 0]], cam[_BOX_EDGES[:, 1]]
        cross = (a[:, 2] > near) != (b[:, 2] > near)
        if cross.any():
            a, b = a[cross], b[cross]
            f = (near - a[:, 2]) / (b[:, 2] - a[:, 2])
            front = np.concatenate([front, a + f[:, None] * (b - a)])
        if len(front) == 0:
            return np.zeros(0, np.int64)
        u = K[0, 0] * front[:, 0] / front[:, 2] + K[0, 2]
        v = K[1, 1] * front[:, 1] / front[:, 2] + K[1, 2]
        u0, u1 = max(0, int(np.floor(u.min())) - 1), min(w - 1, int(np.ceil(u.max())) + 1)
        v0, v1 = max(0, int(np.floor(v.min())) - 1), min(h - 1, int(np.ceil(v.max())) + 1)
        if u0 > u1 or v0 > v1:
            return np.zeros(0, np.int64)
        return (np.arange(v0, v1 + 1)[:, None] * w + np.arange(u0, u1 + 1)[None, :]).ravel()


_BOX_CORNERS = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float64)
# Corner index = 4x + 2y + z: edges join corners differing in exactly one bit.
_BOX_EDGES = np.array([(i, i | bit) for i in range(8) for bit in (1, 2, 4) if not i & bit])


def choose_cameras(scene: Scene, preset: RoomSize, rng: np.random.Generator) -> list[np.ndarray]:
    """``preset.n_frames`` poses at 1.3-1.8 m looking near objects. Targets cycle through the objects in
    shuffled rounds so each is the target of ~n_frames/K frames; a candidate is kept only if the ray to
    its target point reaches the target object first (not occluded)."""
    room = scene.room
    objs = room.objects
    order: list[int] = []
    while len(order) < preset.n_frames:
        order += [int(i) for i in rng.permutation(len(objs))] if objs else [-1]
    poses = []
    margin = 0.35
    for i in range(preset.n_frames):
        k = order[i]
        pose = None
        for _ in range(60):
            if k >= 0:
                lo, hi = (np.min([p.aabb()[0] for p in objs[k].parts], 0), np.max([p.aabb()[1] for p in objs[k].parts], 0))
                target = (lo + hi) / 2 + (hi - lo) * rng.uniform(-0.25, 0.25, 3)
            else:
                target = np.array([room.size_x / 2, room.size_y / 2, 0.5])
            eye = np.array([rng.uniform(margin, room.size_x - margin), rng.uniform(margin, room.size_y - margin),
                            rng.uniform(1.3, 1.8)])
            dist = np.linalg.norm((eye - target)[:2])
            if not preset.cam_distance[0] <= dist <= preset.cam_distance[1]:
                continue
            pose = look_at(eye, target)
            if k < 0:
                break
            ray = (target - eye)[None, :]
            if scene.instance_of(scene.cast(eye, ray))[0] == objs[k].instance_id:
                break
        if pose is None:  # no candidate at the right distance: look from a room corner instead
            pose = look_at(np.array([margin, margin, 1.6]), target)
        poses.append(pose)
    return poses


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _write_ply(path: Path, points: np.ndarray, colors: np.ndarray) -> None:
    from plyfile import PlyData, PlyElement

    v = np.empty(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                     ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    v["x"], v["y"], v["z"] = points[:, 0], points[:, 1], points[:, 2]
    v["red"], v["green"], v["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    PlyData([PlyElement.describe(v, "vertex")], text=False, byte_order="<").write(str(path))


def _matrix_txt(path: Path, m: np.ndarray) -> None:
    path.write_text("\n".join(" ".join(f"{x:.9f}" for x in row) for row in m) + "\n")


def _is_synthetic_scan(folder: Path) -> bool:
    try:
        return "synthetic" in json.loads((folder / "scan.json").read_text()).get("tags", [])
    except (OSError, ValueError, AttributeError):
        return False


def generate_scan(out_dir: Path | str, name: str, seed: int, preset: str = "small") -> Path:
    """Write one synthetic room to ``out_dir/name`` (see module docstring) and return that folder.

    An existing folder is replaced only if it is itself a synthetic scan (scan.json tagged "synthetic");
    otherwise FileExistsError. The folder appears atomically (written beside it, then renamed).
    """
    if preset not in ROOM_SIZES:
        raise ValueError(f"unknown preset {preset!r} (choose from {', '.join(ROOM_SIZES)})")
    cfg = ROOM_SIZES[preset]
    out_dir = Path(out_dir)
    final = out_dir / name
    if final.exists() and not _is_synthetic_scan(final):
        raise FileExistsError(f"{final}: exists and is not a synthetic scan; not overwriting")
    t0 = time.perf_counter()
    rng = np.random.default_rng(np.random.SeedSequence(int(seed) % 2**64))
    room = make_room(rng, cfg)
    points, colors, ids = sample_room(room, cfg, rng)
    scene = Scene(room)
    poses = choose_cameras(scene, cfg, rng)
    K = intrinsics_for(cfg.image_size)
    t1 = time.perf_counter()

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    for sub in ("color", "depth", "pose", "intrinsic"):
        (tmp / sub).mkdir(parents=True)
    _write_ply(tmp / f"{name}.ply", points, colors)
    np.save(tmp / "gt_instances.npy", ids)
    labels = {str(o.instance_id): o.label for o in room.objects}
    (tmp / "gt_labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    meta = {"name": name, "tags": ["synthetic"], "depth_scale": 1000,
            "synthetic": {"seed": int(seed), "preset": preset}}
    (tmp / "scan.json").write_text(json.dumps(meta, indent=1) + "\n")
    K4 = np.eye(4)
    K4[:3, :3] = K
    _matrix_txt(tmp / "intrinsic" / "intrinsic_color.txt", K4)
    _matrix_txt(tmp / "intrinsic" / "intrinsic_depth.txt", K4)
    _render_frames(scene, poses, K, cfg.image_size, tmp)

    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    log.info("synthetic scan %s (%s, seed %d): %d objects, %d points, %d frames in %.1fs (layout %.1fs)",
             name, preset, seed, len(room.objects), len(points), len(poses), time.perf_counter() - t0, t1 - t0)
    return final


def _render_frames(scene: Scene, poses: list[np.ndarray], K: np.ndarray, size: tuple[int, int], folder: Path) -> None:
    from PIL import Image

    for i, pose in enumerate(poses):
        depth, rgb, _ = scene.render(pose, K, size)
        mm = np.minimum(np.rint(depth * 1000.0), 65534).astype(np.uint16)
        Image.fromarray(rgb).save(folder / "color" / f"{i}.jpg", quality=_JPEG_QUALITY, subsampling=0,
                                  optimize=False)
        Image.fromarray(mm).save(folder / "depth" / f"{i}.png", compress_level=1)
        _matrix_txt(folder / "pose" / f"{i}.txt", pose)


def scan_seed(seed: int, index: int) -> int:
    """Seed of the ``index``-th scan of a batch generated with ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(seed) % 2**64, index]).generate_state(1, np.uint64)[0])


def generate_scans(out_dir: Path | str, n: int, seed: int, preset: str = "small") -> list[Path]:
    """Write ``n`` rooms ``synth_000``, ``synth_001``, ... under ``out_dir``; scan i uses scan_seed(seed, i)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [generate_scan(out_dir, f"synth_{i:03d}", scan_seed(seed, i), preset) for i in range(n)]
